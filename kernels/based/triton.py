"""Based attention with the linear-attention Triton kernel on Taylor features (zero-padded to a multiple of 16).

The features are built in float32 in PyTorch (so gradients flow through them); see `linear_attn/triton.py` for
the kernel, its checks and its backward pass. Any d_k works; d_v must be 16, 32, 64 or 128.
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..linear_attn.triton import triton_linear_attn
from .features import check_based, n_features, taylor_features


def triton_based(
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
    """Same signature and returns as `naive_based`; o in the input dtype, states in float32."""
    scale = check_based(q, k, v, normalize, scale, initial_state, chunk_size)
    n = n_features(q.shape[-1])
    pad = -n % 16

    def features(x):
        return F.pad(taylor_features(x.float(), scale), (0, pad))

    h0 = None if initial_state is None else F.pad(initial_state, (0, 0, 0, pad))
    o, *states = triton_linear_attn(features(q), features(k), v.float(), normalize=normalize, scale=1.0,
                                    initial_state=h0, chunk_size=chunk_size, output_states=output_states)
    return (o.to(v.dtype), *(s[..., :n, :] for s in states))
