"""Implied attention of linear attention: the value-independent A `[batch, head, T, T]` with o = A v.

Plain: `A = scale · (QKᵀ ⊙ M)`. Normalized: `A ← A / (A𝟙 + NORMALIZE_EPS)` row by row.
Defined for a zero initial state (with an initial state, o also has the term `scale · S_0ᵀ q_t`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import check_qkv, compute_dtype, resolve_scale
from .inputs import NORMALIZE_EPS


def implied_linear_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    *,
    normalize: bool = False,
    scale: float | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Exact implied attention, in float64 for float64 inputs, else float32."""
    check_qkv(q, k, k)
    scale = resolve_scale(scale, q.shape[-1])
    dt = compute_dtype(q.dtype)
    A = torch.einsum("bthk,bshk->bhts", q.to(dt) * scale, k.to(dt)).tril()
    return A / (A.sum(-1, keepdim=True) + NORMALIZE_EPS) if normalize else A
