"""Based attention inputs: checks, and the Taylor feature map that turns it into linear attention.

`φ(x) = [1, √scale · x, scale · vec(x xᵀ) / √2]` (`1 + d + d²` features), so that
`φ(q)ᵀφ(k) = 1 + s + s²/2` with `s = scale · qᵀk` (default scale `d^-1/2`, as in zoology and Based).
`1 + s + s²/2 = ((s + 1)² + 1) / 2 ≥ 1/2`, so normalized Based attention is a probability distribution.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import check_chunk_size, check_like, check_qkv, resolve_scale


def n_features(d_k: int) -> int:
    return 1 + d_k + d_k * d_k


def taylor_features(x: Float[Tensor, "... d"], scale: float) -> Float[Tensor, "... f"]:
    """The second-order Taylor feature map of exp, `[..., d] -> [..., 1 + d + d²]`."""
    square = (x[..., :, None] * x[..., None, :]).flatten(-2)
    return torch.cat([torch.ones_like(x[..., :1]), x * math.sqrt(scale), square * (scale / math.sqrt(2))], dim=-1)


def check_based(q, k, v, normalize, scale, initial_state, chunk_size) -> float:
    """Validate Based inputs; return the resolved scale."""
    B, T, H, K, V = check_qkv(q, k, v)
    check_chunk_size(chunk_size)
    d_s = V + int(normalize)
    layout = f"[batch, head, 1 + d_k + d_k², d_v{' + 1' if normalize else ''}]"
    check_like("initial_state", initial_state, (B, H, n_features(K), d_s), layout, q)
    return resolve_scale(scale, K)
