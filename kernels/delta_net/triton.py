"""The DeltaNet family with the Triton forward kernel (`triton_kernel.py`); backward recomputes with the chunk path.

On CPU the kernel runs under the Triton interpreter: set `TRITON_INTERPRET=1` before the first call.
Supported: d_k, d_v in 16, 32, 64, 128; chunk_size in 16, 32, 64; float16/float32 (bfloat16 on CUDA only).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import n_chunks
from ..triton_support import load_kernels, with_chunk_backward
from .chunk import delta_net_chunks
from .inputs import check_delta_net


def triton_delta_net(
    q: Float[Tensor, "batch time head d_k"],
    k: Float[Tensor, "batch time head d_k"],
    v: Float[Tensor, "batch time head d_v"],
    beta: Float[Tensor, "batch time head"] | None = None,
    *,
    eta: Float[Tensor, "batch time head"] | None = None,
    eps: float = 1e-6,
    g: Float[Tensor, "batch time head"] | None = None,
    write_scale: Float[Tensor, "head d_k"] | None = None,
    scale: float | None = None,
    initial_state: Float[Tensor, "batch head d_k d_v"] | None = None,
    chunk_size: int = 64,
    output_states: bool = False,
):
    """Same signature and returns as `naive_delta_net`; o in the input dtype, states in float32."""
    x = check_delta_net(q, k, v, beta, eta, eps, g, write_scale, scale, initial_state, chunk_size)
    B, T, H, K, V = x.B, x.T, x.H, x.K, x.V
    kernels = load_kernels(".delta_net.triton_kernel", q, {"d_k": K, "d_v": V}, chunk_size)
    n_out = 3 if output_states else 2

    def forward(q, k, v, beta, g, write_scale, h0):
        o = torch.empty(B, T, H, V, dtype=v.dtype, device=v.device)
        final = q.new_empty(B, H, K, V, dtype=torch.float32)
        states = q.new_empty(B, H, n_chunks(T, chunk_size), K, V, dtype=torch.float32) if output_states else None

        def f32(x):
            return None if x is None else x.float().contiguous()

        kernels.KERNEL[(B * H,)](
            q.contiguous(), k.contiguous(), v.contiguous(), f32(beta), f32(g), f32(write_scale), o, f32(h0),
            states, final, T, x.scale, H=H, K=K, V=V, BT=chunk_size, USE_G=g is not None,
            USE_WRITE_SCALE=write_scale is not None, USE_INITIAL_STATE=h0 is not None,
            STORE_STATES=output_states, STORE_FINAL_STATE=True,
        )
        return (o, final, states)[:n_out]

    def reference(q, k, v, beta, g, write_scale, h0):
        return delta_net_chunks(q, k, v, beta, g, write_scale, h0, x.scale, chunk_size)[:n_out]

    return with_chunk_backward(forward, reference, q, k, v, x.beta, g, write_scale, initial_state)
