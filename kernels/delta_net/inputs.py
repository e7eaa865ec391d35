"""DeltaNet-family inputs: checks shared by every implementation, and the Kaczmarz step size.

One recurrence covers the family (fla's K×V state convention, decay applied first as in Gated DeltaNet):
    S'_t = α_t S_{t-1},  e_t = v_t − S'_tᵀ k_t,  S_t = S'_t + β_t (d ⊙ k_t) e_tᵀ,  o_t = scale · S_tᵀ q_t
with α_t = exp(g_t) (g=None: α=1, DeltaNet), d = write_scale[head] (None: d=1; OSDN-style write key: writes with
d ⊙ k, reads and erases with k), and β_t given directly (in [0, 1]) or as the Kaczmarz step η_t / (‖k_t‖² + eps).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from jaxtyping import Float
from torch import Tensor

from ..checks import (
    KernelInputError,
    check_chunk_size,
    check_like,
    check_qkv,
    check_range,
    compute_dtype,
    resolve_scale,
)


class DeltaNetInputs(NamedTuple):
    B: int
    T: int
    H: int
    K: int
    V: int
    scale: float
    beta: Tensor  # [B, T, H], resolved from eta for Kaczmarz steps


def kaczmarz_beta(
    k: Float[Tensor, "batch time head d_k"], eta: Float[Tensor, "batch time head"], eps: float = 1e-6
) -> Float[Tensor, "batch time head"]:
    """Kaczmarz step `β_t = η_t / (‖k_t‖² + eps)` on unnormalized keys, in float32 (float64 for float64 keys).

    The erase factor along k_t is `1 − η_t ‖k_t‖² / (‖k_t‖² + eps)`, in (−1, 1] for η in [0, 2]: that is the
    non-expansive range checked here (η = 1, eps → 0 is the exact projection onto {S : Sᵀk_t = v_t}).
    """
    check_like("eta", eta, tuple(k.shape[:3]), "[batch, time, head]", k)
    check_range("eta", eta, 0.0, 2.0, "the Kaczmarz relaxation; beyond 2 the erase step expands the state")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or math.isinf(eps):
        raise KernelInputError(f"eps must be a positive finite number, got {eps!r}.")
    dt = compute_dtype(k.dtype)
    return eta.to(dt) / (k.to(dt).pow(2).sum(-1) + eps)


def check_delta_net(q, k, v, beta, eta, eps, g, write_scale, scale, initial_state, chunk_size) -> DeltaNetInputs:
    """Validate DeltaNet-family inputs (before any compute) and resolve β."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_chunk_size(chunk_size)
    if (beta is None) == (eta is None):
        raise KernelInputError("pass exactly one of beta (delta rule) and eta (Kaczmarz step β = η / (‖k‖² + eps)).")
    check_like("beta", beta, (B, T, H), "[batch, time, head]", q)
    check_range("beta", beta, 0.0, 1.0, "the delta-rule write strength; pass eta for Kaczmarz steps")
    check_like("g", g, (B, T, H), "[batch, time, head]", q)
    check_range("g", g, -math.inf, 0.0, "the natural-log decay, α = exp(g) in (0, 1]")
    check_like("write_scale", write_scale, (H, K), "[head, d_k]", q)
    check_range("write_scale", write_scale, 0.0, math.inf, "a per-feature scale of the write key")
    check_like("initial_state", initial_state, (B, H, K, V), "[batch, head, d_k, d_v]", q)
    beta = kaczmarz_beta(k, eta, eps) if beta is None else beta
    return DeltaNetInputs(B, T, H, K, V, resolve_scale(scale, K), beta)
