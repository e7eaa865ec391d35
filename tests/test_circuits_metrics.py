"""Circuit-recovery metrics on hand-made rankings."""

from __future__ import annotations

import math

import pytest
import torch

from mechkit.circuits.metrics import best_f1, labelled, precision_recall_at_k, reference_heads, roc_auc
from mechkit.errors import MechkitError
from mechkit.scores import HeadScores

TRUE = ["L0H0", "L1H1"]


def _scores(values) -> HeadScores:
    return HeadScores(torch.tensor(values, dtype=torch.float64), metric="hand", model="none")


def test_perfect_reversed_and_tied_rankings():
    assert roc_auc(_scores([[4.0, 1.0], [2.0, 3.0]]), TRUE) == 1.0
    assert roc_auc(_scores([[0.0, 3.0], [2.0, 1.0]]), TRUE) == 0.0
    assert roc_auc(_scores([[1.0, 1.0], [1.0, 1.0]]), TRUE) == 0.5
    # true scores 4, 1; others 3, 2: of the 4 (true, other) pairs, 2 are ordered right
    assert roc_auc(_scores([[4.0, 3.0], [2.0, 1.0]]), TRUE) == 0.5


def test_precision_recall_at_k_by_hand():
    scores = _scores([[4.0, 3.0], [2.0, 1.0]])  # order: L0H0 (true), L0H1, L1H0, L1H1 (true)
    assert precision_recall_at_k(scores, TRUE, 1) == (1.0, 0.5)
    assert precision_recall_at_k(scores, TRUE, 2) == (0.5, 0.5)
    assert precision_recall_at_k(scores, TRUE, 4) == (0.5, 1.0)
    assert precision_recall_at_k(scores, TRUE, 10) == (0.5, 1.0)  # k past the heads: precision over all of them
    with pytest.raises(MechkitError, match="k >= 1"):
        precision_recall_at_k(scores, TRUE, 0)


def test_best_f1_is_the_harmonic_mean_of_tpr_and_tnr():
    assert best_f1(_scores([[4.0, 1.0], [2.0, 3.0]]), TRUE) == 1.0
    # thresholds: 4 -> TPR 1/2, TNR 1 -> 2/3; 3 -> 1/2, 1/2 -> 1/2; 2 -> 1/2, 0; 1 -> 1, 0
    assert best_f1(_scores([[4.0, 3.0], [2.0, 1.0]]), TRUE) == pytest.approx(2 / 3)


def test_nan_heads_are_left_out_and_degenerate_truth_refused():
    scores = _scores([[4.0, math.nan], [2.0, 3.0]])
    y_true, y_score = labelled(scores, TRUE)
    assert y_true.tolist() == [1, 0, 1] and y_score.tolist() == [4.0, 2.0, 3.0]
    assert roc_auc(scores, TRUE) == 1.0
    with pytest.raises(MechkitError, match="covers 0 of the 4 scored heads"):
        roc_auc(_scores([[1.0, 2.0], [3.0, 4.0]]), [])
    with pytest.raises(MechkitError, match="covers 4 of the 4"):
        roc_auc(_scores([[1.0, 2.0], [3.0, 4.0]]), ["L0H0", "L0H1", "L1H0", "L1H1"])


def test_reference_heads_are_those_above_the_threshold_in_absolute_value():
    scores = HeadScores(torch.tensor([[0.5, -0.2, 0.01], [float("nan"), 0.05, -0.049]]), metric="m", model="m")
    assert [h.label for h in reference_heads(scores, 0.05)] == ["L0H0", "L0H1", "L1H1"]
    assert [h.label for h in reference_heads(scores, 0.3)] == ["L0H0"]
    with pytest.raises(MechkitError, match="must be positive"):
        reference_heads(scores, 0.0)
