"""Linear attention in chunks (PyTorch): the fast CPU path; autograd works.

Per chunk c of C tokens: `S_c = S_0 + Σ_{c'<c} K_{c'}ᵀ V_{c'}` (an exclusive cumsum over chunks) and
`O_c = scale · (Q_c S_c + (Q_c K_cᵀ ⊙ M) V_c)` with M the causal mask, diagonal included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype, n_chunks
from .inputs import append_ones, check_linear_attn, divide_by_normalizer


def linear_attn_chunks(q, k, v, h0, normalize: bool, scale: float, chunk_size: int):
    """Unchecked core of `chunk_linear_attn`: return (o, final_state, states)."""
    (B, T, H, K), C = q.shape, chunk_size
    N, dt = n_chunks(T, C), compute_dtype(q.dtype)

    def chunked(x):  # [B, T, H, d] -> [B, H, N, C, d], zero-padded at the end
        x = F.pad(x.to(dt), (0, 0, 0, 0, 0, N * C - T))
        return x.reshape(B, N, C, H, -1).permute(0, 3, 1, 2, 4)

    qc, kc, vc = chunked(q) * scale, chunked(k), chunked(append_ones(v, normalize))
    kv = kc.transpose(-1, -2) @ vc  # [B, H, N, K, d_s]
    h0 = kv.new_zeros(B, H, 1, K, vc.shape[-1]) if h0 is None else h0.to(dt)[:, :, None]
    S = h0 + torch.cumsum(torch.cat([torch.zeros_like(kv[:, :, :1]), kv], dim=2), dim=2)  # [B, H, N+1, K, d_s]
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    o = qc @ S[:, :, :-1] + ((qc @ kc.transpose(-1, -2)) * mask) @ vc
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, -1)[:, :T]
    return divide_by_normalizer(o, normalize).to(q.dtype), S[:, :, -1], S[:, :, :-1]


def chunk_linear_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    *,
    normalize: bool = False,
    scale: float | None = None,
    initial_state: Float[Tensor, "batch head d_k d_s"] | None = None,
    chunk_size: int = 64,
    output_states: bool = False,
):
    """Same signature and returns as `naive_linear_attn`; o in the input dtype, states in float32 (float64 for
    float64 inputs)."""
    *_, scale = check_linear_attn(q, k, v, normalize, scale, initial_state, chunk_size)
    o, final, states = linear_attn_chunks(q, k, v, initial_state, normalize, scale, chunk_size)
    return (o, final, states) if output_states else (o, final)
