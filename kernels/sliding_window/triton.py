"""Causal (sliding-window, momentum) softmax attention with the Triton forward kernel (`triton_kernel.py`);
the momentum shear runs in PyTorch, and backward recomputes with the chunk path.

On CPU the kernel runs under the Triton interpreter: set `TRITON_INTERPRET=1` before the first call.
Supported: d_k, d_v in 16, 32, 64, 128; chunk_size (the block size) in 16, 32, 64; float16/float32.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import n_chunks
from ..triton_support import load_kernels, with_chunk_backward
from .chunk import sliding_window_chunks
from .inputs import check_softmax_attn, momentum_shear


def triton_sliding_window_attn(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    *,
    window: int | None = None,
    momentum: float = 0.0,
    scale: float | None = None,
    chunk_size: int = 64,
) -> Float[Tensor, "batch time head d_v"]:
    """Same signature as `naive_sliding_window_attn`; o in the input dtype."""
    scale = check_softmax_attn(q, k, v, window, momentum, scale, chunk_size)
    B, T, H, K = q.shape
    V = v.shape[-1]
    kernels = load_kernels(".sliding_window.triton_kernel", q, {"d_k": K, "d_v": V}, chunk_size)

    def forward(q, k, v):
        o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
        qs, ks = (momentum_shear(x.float() if momentum else x, momentum).contiguous() for x in (q, k))
        kernels.KERNEL[(n_chunks(T, chunk_size), B * H)](
            qs, ks, v.contiguous(), o, T, window or 0, scale,
            H=H, K=K, V=V, BT=chunk_size, USE_WINDOW=window is not None,
        )
        return (o,)

    def reference(q, k, v):
        return (sliding_window_chunks(q, k, v, window, momentum, scale, chunk_size).to(q.dtype),)

    return with_chunk_backward(forward, reference, q, k, v)[0]
