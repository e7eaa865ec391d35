"""Implied attention of the DeltaNet family: the value-independent A `[batch, head, T, T]` with o = A v.

Over the whole sequence (zero initial state; with one, o also has a state term), with G = cumsum(g),
Γ_ts = exp(G_t − G_s) for s ≤ t (0 above the diagonal) and write keys Wk = d ⊙ K:
    A = scale · (Q Wkᵀ ⊙ Γ) · (I + strict_tril(diag(β)(K Wkᵀ ⊙ Γ)))⁻¹ · diag(β)
A is signed (erasure); use `mechkit.kernels.implied.normalized_abs` for a pattern.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import compute_dtype
from .chunk import decay_matrix
from .inputs import check_delta_net


def implied_delta_net(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    beta: Float[Tensor, "batch time head"] | None = None,
    *,
    eta: Float[Tensor, "batch time head"] | None = None,
    eps: float = 1e-6,
    g: Float[Tensor, "batch time head"] | None = None,
    write_scale: Float[Tensor, "head d_k"] | None = None,
    scale: float | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Exact implied attention (one triangular solve of size T), in float64 for float64 inputs, else float32."""
    x = check_delta_net(q, k, k, beta, eta, eps, g, write_scale, scale, None, 1)
    dt = compute_dtype(q.dtype)
    Q, K = q.to(dt).transpose(1, 2) * x.scale, k.to(dt).transpose(1, 2)  # [B, H, T, d_k]
    W = K if write_scale is None else K * write_scale.to(dt)[None, :, None, :]
    b = x.beta.to(dt).transpose(1, 2)  # [B, H, T]
    decay = decay_matrix(torch.zeros_like(b) if g is None else g.to(dt).transpose(1, 2).cumsum(-1))
    L = b[..., None] * (K @ W.transpose(-1, -2)) * decay
    # unitriangular=True reads only the strict lower part of L: this solves (I + strict_tril(L)) X = diag(β).
    X = torch.linalg.solve_triangular(L, torch.diag_embed(b), upper=False, unitriangular=True)
    return ((Q @ W.transpose(-1, -2)) * decay) @ X
