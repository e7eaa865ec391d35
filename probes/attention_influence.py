"""AttentionInfluence (Hua et al. 2025): how much a text leans on the retrieval heads.

AttentionInfluence(x) = (L_masked(x) - L_clean(x)) / L_clean(x), with L the mean next-token loss of text x, clean
and with the chosen heads masked to uniform attention. Texts are then ranked by it (highest first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mechkit.evaluation import mean_losses
from mechkit.heads import HeadId
from mechkit.interventions import UniformAttention
from mechkit.subject import Subject


@dataclass(frozen=True)
class Influence:
    """One text's losses (nats) and its AttentionInfluence; `index` is its position in the input list."""

    index: int
    text: str
    clean_loss: float
    masked_loss: float
    influence: float
    rank: int


def attention_influence(
    subject: Subject, texts: Sequence[str], heads: Sequence[HeadId], batch_size: int = 8, verbose: bool = True
) -> list[Influence]:
    """AttentionInfluence of every text with `heads` masked to uniform attention, ranked highest first."""
    heads = subject.heads(list(heads))
    clean = mean_losses(subject, texts, batch_size=batch_size, verbose=verbose)
    masked = mean_losses(subject, texts, [UniformAttention(heads)], batch_size, verbose=verbose)
    scores = [(m - c) / c for c, m in zip(clean, masked)]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    rank = {i: r + 1 for r, i in enumerate(order)}
    return [Influence(i, texts[i], clean[i], masked[i], scores[i], rank[i]) for i in order]
