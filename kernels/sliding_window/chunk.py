"""Causal (sliding-window, momentum) softmax attention by query chunks (PyTorch); autograd works.

Each chunk of C queries attends to the keys from `start − window + 1` (or 0) to its end: memory C × (C + window).
Each chunk is one `scaled_dot_product_attention` call with a boolean band mask (PyTorch's fused CPU kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from .inputs import check_softmax_attn, momentum_shear, visible


def sliding_window_chunks(q, k, v, window: int | None, momentum: float, scale: float, chunk_size: int) -> Tensor:
    """Unchecked core of `chunk_sliding_window_attn`."""
    dt, T = compute_dtype(q.dtype), q.shape[1]
    q, k, v = momentum_shear(q.to(dt), momentum), momentum_shear(k.to(dt), momentum), v.to(dt)
    q, k, v = (x.transpose(1, 2).contiguous() for x in (q, k, v))  # [B, H, T, d]: chunks are plain strided views
    pos = torch.arange(T, device=q.device)
    o = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        lo = 0 if window is None else max(0, start - window + 1)
        mask = visible(pos[start:end], pos[lo:end], window)  # [t, s]; the diagonal is always visible
        keys, values = k[:, :, lo:end], v[:, :, lo:end]
        o.append(F.scaled_dot_product_attention(q[:, :, start:end], keys, values, mask, scale=scale))
    return torch.cat(o, dim=2).transpose(1, 2)


def chunk_sliding_window_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    *,
    window: int | None = None,
    momentum: float = 0.0,
    scale: float | None = None,
    chunk_size: int = 64,
) -> Float[Tensor, "batch time head d_v"]:
    """Same signature as `naive_sliding_window_attn`; o in the input dtype (computed in float32, or float64)."""
    scale = check_softmax_attn(q, k, v, window, momentum, scale, chunk_size)
    return sliding_window_chunks(q, k, v, window, momentum, scale, chunk_size).to(q.dtype)
