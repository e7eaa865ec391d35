"""Softmax attention inputs: checks, the causal sliding-window mask and the momentum shear.

Query t sees key s iff `t − window < s ≤ t` (`window` keys including itself; None: every s ≤ t). flash-attn's
`window_size=(window − 1, 0)` is the same mask. Momentum attention (Maitra 2026) shears post-rotary queries and keys,
`x̂_t = x_t + γ (x_t − x_{t−1})` with `x̂_0 = x_0` (p_0 = 0); values are unchanged.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import KernelInputError, check_chunk_size, check_qkv, resolve_scale


def check_softmax_attn(q, k, v, window, momentum, scale, chunk_size) -> float:
    """Validate softmax-attention inputs; return the resolved scale."""
    check_qkv(q, k, v)
    check_chunk_size(chunk_size)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise KernelInputError(f"window must be a positive int (keys seen, the query's own included) or None, "
                               f"got {window!r}.")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not math.isfinite(momentum):
        raise KernelInputError(f"momentum must be a finite number (the shear γ; 0 turns it off), got {momentum!r}.")
    return resolve_scale(scale, q.shape[-1])


def momentum_shear(x: Float[Tensor, "batch time head d"], gamma: float) -> Float[Tensor, "batch time head d"]:
    """`x_t + γ (x_t − x_{t−1})`, with no change at t = 0; `x` itself when γ = 0."""
    if gamma == 0:
        return x
    previous = torch.cat([x[:, :1], x[:, :-1]], dim=1)
    return x + gamma * (x - previous)


def visible(t: Tensor, s: Tensor, window: int | None) -> Tensor:
    """Boolean mask `[len(t), len(s)]`: may query position t see key position s."""
    seen = s[None, :] <= t[:, None]
    return seen if window is None else seen & (s[None, :] > t[:, None] - window)
