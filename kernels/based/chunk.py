"""Based attention in chunks (PyTorch): linear-attention chunks on Taylor features; autograd works."""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from ..linear_attn.chunk import linear_attn_chunks
from .features import check_based, taylor_features


def chunk_based(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    *,
    normalize: bool = True,
    scale: float | None = None,
    initial_state: Float[Tensor, "batch head feature d_s"] | None = None,
    chunk_size: int = 64,
    output_states: bool = False,
):
    """Same signature and returns as `naive_based`; o in the input dtype, states in float32 (float64 for
    float64 inputs)."""
    scale = check_based(q, k, v, normalize, scale, initial_state, chunk_size)
    dt = compute_dtype(q.dtype)
    fq, fk = taylor_features(q.to(dt), scale), taylor_features(k.to(dt), scale)
    o, final, states = linear_attn_chunks(fq, fk, v.to(dt), initial_state, normalize, 1.0, chunk_size)
    o = o.to(q.dtype)
    return (o, final, states) if output_states else (o, final)
