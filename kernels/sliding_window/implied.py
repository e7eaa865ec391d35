"""Implied attention of causal (sliding-window, momentum) softmax attention: the softmax pattern itself,
`A = softmax(scale · Q̂K̂ᵀ + mask)` `[batch, head, T, T]`, so that o = A v exactly."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from .inputs import check_softmax_attn, momentum_shear, visible


def implied_sliding_window_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    *,
    window: int | None = None,
    momentum: float = 0.0,
    scale: float | None = None,
) -> Float[Tensor, "batch head query key"]:
    """The attention pattern, in float64 for float64 inputs, else float32."""
    scale = check_softmax_attn(q, k, k, window, momentum, scale, 1)
    dt = compute_dtype(q.dtype)
    q, k = momentum_shear(q.to(dt), momentum) * scale, momentum_shear(k.to(dt), momentum)
    pos = torch.arange(q.shape[1], device=q.device)
    scores = torch.einsum("bthk,bshk->bhts", q, k).masked_fill(~visible(pos, pos, window), -torch.inf)
    return scores.softmax(-1)
