"""Linear-attention inputs: checks shared by every implementation, and the normalizer column.

With `normalize=True` the state carries the running key sum `z_t = Σ_{s≤t} k_s` as one extra value column:
the state is `Σ k_s [v_s, 1]ᵀ` of shape `[d_k, d_v + 1]`, and `o_t = num_t / (den_t + NORMALIZE_EPS)` with
`[num_t, den_t] = scale · q_tᵀ S_t`.
"""

from __future__ import annotations

import torch

from ..checks import check_chunk_size, check_like, check_qkv, resolve_scale

NORMALIZE_EPS = 1e-10


def check_linear_attn(q, k, v, normalize, scale, initial_state, chunk_size) -> tuple[int, int, int, int, int, float]:
    """Validate linear-attention inputs; return (B, T, H, d_k, d_v, scale)."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_chunk_size(chunk_size)
    layout = "[batch, head, d_k, d_v + 1]" if normalize else "[batch, head, d_k, d_v]"
    check_like("initial_state", initial_state, (B, H, K, V + int(normalize)), layout, q)
    return B, T, H, K, V, resolve_scale(scale, K)


def append_ones(v: torch.Tensor, normalize: bool) -> torch.Tensor:
    """`[..., d_v]` -> `[..., d_v + 1]` with a ones column when normalizing, else `v` unchanged."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1) if normalize else v


def divide_by_normalizer(o: torch.Tensor, normalize: bool) -> torch.Tensor:
    """`[..., d_v + 1]` numerator and denominator -> `[..., d_v]` output when normalizing, else `o` unchanged."""
    return o[..., :-1] / (o[..., -1:] + NORMALIZE_EPS) if normalize else o
