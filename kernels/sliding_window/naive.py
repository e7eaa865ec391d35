"""Causal (sliding-window, momentum) softmax attention token by token in float64: the reference.

`o_t = Σ_s softmax_s(scale · q̂_tᵀ k̂_s) v_s` over the keys query t sees (`inputs.py`).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .inputs import check_softmax_attn, momentum_shear


def naive_sliding_window_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    *,
    window: int | None = None,
    momentum: float = 0.0,
    scale: float | None = None,
    chunk_size: int = 64,
) -> Float[Tensor, "batch time head d_v"]:
    """Return o `[batch, time, head, d_v]` in float64. Softmax attention has no fixed-size state (its state is
    the KV cache, i.e. its inputs), so there is no final_state; `chunk_size` is accepted for one signature."""
    scale = check_softmax_attn(q, k, v, window, momentum, scale, chunk_size)
    q, k, v = momentum_shear(q.double(), momentum) * scale, momentum_shear(k.double(), momentum), v.double()
    o = []
    for t in range(q.shape[1]):
        lo = 0 if window is None else max(0, t - window + 1)
        p = torch.einsum("bhk,bshk->bhs", q[:, t], k[:, lo : t + 1]).softmax(-1)
        o.append(torch.einsum("bhs,bshv->bhv", p, v[:, lo : t + 1]))
    return torch.stack(o, dim=1)
