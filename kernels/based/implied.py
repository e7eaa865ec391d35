"""Implied attention of Based: `A = (1 + S + S²/2) ⊙ M` with `S = scale · QKᵀ`, row-normalized by
`(A𝟙 + 1e-10)` when `normalize` (then a probability distribution). Defined for a zero initial state."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from ..linear_attn.inputs import NORMALIZE_EPS
from .features import check_based


def implied_based(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    *,
    normalize: bool = True,
    scale: float | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Exact implied attention, in float64 for float64 inputs, else float32."""
    scale = check_based(q, k, k, normalize, scale, None, 1)
    dt = compute_dtype(q.dtype)
    S = torch.einsum("bthk,bshk->bhts", q.to(dt), k.to(dt)) * scale
    A = (1 + S + S * S / 2).tril()
    return A / (A.sum(-1, keepdim=True) + NORMALIZE_EPS) if normalize else A
