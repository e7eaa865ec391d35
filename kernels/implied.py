"""Implied-attention helpers shared by every family (the per-family matrices live in `<family>/implied.py`).

Implied attention is the exact value-independent matrix A `[batch, head, T, T]` with `o = A v` for a zero
initial state. It is signed for the delta rule (erasure), so detectors read `normalized_abs(A)`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def normalized_abs(A: Float[Tensor, "... query key"]) -> Float[Tensor, "... query key"]:
    """`|A|` with each row divided by its sum: a non-negative attention pattern whose rows sum to 1
    (an all-zero row stays zero)."""
    a = A.abs()
    total = a.sum(-1, keepdim=True)
    return a / torch.where(total > 0, total, torch.ones_like(total))
