"""Linear attention with the Triton forward kernel (`triton_kernel.py`); backward recomputes with the chunk path.

On CPU the kernel runs under the Triton interpreter: set `TRITON_INTERPRET=1` before the first call.
Supported: d_k a multiple of 16 (split into blocks of 16-64 features), d_v in 16, 32, 64, 128; chunk_size in 16,
32, 64; float16/float32 (bfloat16 on CUDA only).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import n_chunks
from ..triton_support import block_size, load_kernels, with_chunk_backward
from .chunk import linear_attn_chunks
from .inputs import check_linear_attn, divide_by_normalizer


def triton_linear_attn(
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
    """Same signature and returns as `naive_linear_attn`; o in the input dtype, states in float32."""
    B, T, H, K, V, scale = check_linear_attn(q, k, v, normalize, scale, initial_state, chunk_size)
    kernels = load_kernels(".linear_attn.triton_kernel", q, {"d_v": V}, chunk_size, blocked={"d_k": K})
    n_out = 3 if output_states else 2

    def forward(q, k, v, h0):
        N, DS, BK = n_chunks(T, chunk_size), V + int(normalize), block_size(K)
        num = q.new_empty(K // BK, B, T, H, V, dtype=torch.float32)
        den = q.new_empty(K // BK, B, T, H, 1, dtype=torch.float32) if normalize else None
        final = q.new_empty(B, H, K, DS, dtype=torch.float32)
        states = q.new_empty(B, H, N, K, DS, dtype=torch.float32) if output_states else None
        h0 = None if h0 is None else h0.float().contiguous()
        kernels.KERNEL[(K // BK, B * H)](
            q.contiguous(), k.contiguous(), v.contiguous(), num, den, h0, states, final, T, B * H, scale,
            H=H, K=K, V=V, BK=BK, BT=chunk_size, NORMALIZE=normalize, USE_INITIAL_STATE=h0 is not None,
            STORE_STATES=output_states, STORE_FINAL_STATE=True,
        )
        o = torch.cat([num.sum(0), den.sum(0)], dim=-1) if normalize else num.sum(0)
        return (divide_by_normalizer(o, normalize).to(v.dtype), final, states)[:n_out]

    def reference(q, k, v, h0):
        return linear_attn_chunks(q, k, v, h0, normalize, scale, chunk_size)[:n_out]

    return with_chunk_backward(forward, reference, q, k, v, initial_state)
