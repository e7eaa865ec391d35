"""Linear attention in chunks (PyTorch): the fast CPU path; autograd works.

Per chunk c of C tokens: `S_c = S_0 + Σ_{c'<c} K_{c'}ᵀ V_{c'}` (an exclusive cumsum over chunks) and
`O_c = scale · (Q_c S_c + (Q_c K_cᵀ ⊙ M) V_c)` with M the causal mask, diagonal included.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from ..chunking import bmm, from_chunks, to_chunks
from .inputs import append_ones, check_linear_attn, divide_by_normalizer


def linear_attn_chunks(q, k, v, h0, normalize: bool, scale: float, chunk_size: int):
    """Unchecked core of `chunk_linear_attn`: return (o, final_state, states)."""
    T, C, dt = q.shape[1], chunk_size, compute_dtype(q.dtype)
    qc, kc, vc = (to_chunks(x, C, dt) for x in (q, k, append_ones(v, normalize)))  # [B, H, N, C, d]
    qc = qc * scale
    kv = bmm(kc.transpose(-1, -2), vc)  # [B, H, N, K, d_s]
    # States entering each chunk: an exclusive prefix sum over chunks, as one matmul (cumsum over a middle dim is slow)
    N = kv.shape[2]
    before = torch.ones(N, N, dtype=dt, device=q.device).tril(-1)
    S = (before @ kv.flatten(-2)).view_as(kv)
    if h0 is not None:
        S = S + h0.to(dt)[:, :, None]
    final = S[:, :, -1] + kv[:, :, -1]
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    o = bmm(qc, S) + bmm(bmm(qc, kc.transpose(-1, -2)) * mask, vc)
    return divide_by_normalizer(from_chunks(o, T), normalize).to(q.dtype), final, S


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
