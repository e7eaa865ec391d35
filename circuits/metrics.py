"""How well a head ranking recovers a known circuit: ROC-AUC, precision / recall at k, and the "best F1" of the
discrete-SAE paper's code (the harmonic mean of TPR and 1 - FPR, maximised along the ROC curve; research/methods.md
§6.3). Heads whose score is NaN (not scored) are left out.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from mechkit.errors import MechkitError
from mechkit.heads import all_heads, parse_heads
from mechkit.scores import HeadScores


def labelled(scores: HeadScores, true_heads) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_score) over the scored heads, layer-major: 1 for heads in `true_heads`, and each head's score."""
    truth = set(parse_heads(true_heads, scores.n_layers, scores.n_heads))
    pairs = [(head in truth, score) for head, score in zip(all_heads(scores.n_layers, scores.n_heads),
                                                           scores.scores.flatten().tolist()) if not math.isnan(score)]
    y_true = np.array([t for t, _ in pairs], dtype=int)
    if y_true.sum() == 0 or y_true.sum() == len(y_true):
        raise MechkitError(
            f"{scores.metric}: the true head set covers {int(y_true.sum())} of the {len(y_true)} scored heads; a "
            "ranking can only be judged with both true and other heads scored"
        )
    return y_true, np.array([s for _, s in pairs], dtype=float)


def roc_auc(scores: HeadScores, true_heads) -> float:
    """Probability that a true head outscores another head (ties count half): 1 perfect, 0.5 chance, 0 reversed."""
    return float(roc_auc_score(*labelled(scores, true_heads)))


def precision_recall_at_k(scores: HeadScores, true_heads, k: int) -> tuple[float, float]:
    """(precision, recall) of the `k` top-scored heads (`HeadScores.top`: ties go to the earlier head)."""
    y_true, _ = labelled(scores, true_heads)
    if k < 1:
        raise MechkitError(f"precision / recall at k needs k >= 1, got {k}")
    truth = set(parse_heads(true_heads, scores.n_layers, scores.n_heads))
    hits = sum(head in truth for head, _ in scores.top(k))
    return hits / min(k, len(y_true)), hits / int(y_true.sum())


def best_f1(scores: HeadScores, true_heads) -> float:
    """max over ROC thresholds of 2 TPR (1 - FPR) / (TPR + 1 - FPR), as in the reference code (not precision-based)."""
    fpr, tpr, _ = roc_curve(*labelled(scores, true_heads))
    tnr = 1 - fpr
    denom = tpr + tnr
    f1 = np.divide(2 * tpr * tnr, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def reference_heads(scores: HeadScores, threshold: float = 0.05) -> list:
    """The reference circuit of a task without a known one: heads whose |score| is at least `threshold`, layer-major
    (for exhaustive patching's normalized effect, the heads carrying at least that share of the clean - corrupt
    gap); NaN heads never qualify."""
    if not threshold > 0:
        raise MechkitError(f"the reference threshold must be positive, got {threshold}")
    return [head for head, score in zip(all_heads(scores.n_layers, scores.n_heads), scores.scores.flatten().tolist())
            if abs(score) >= threshold]
