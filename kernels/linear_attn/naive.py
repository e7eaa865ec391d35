"""Linear attention, token by token in float64: the reference.

`S_t = S_{t-1} + k_t v_tᵀ` (`[d_k, d_v]`), `o_t = scale · S_tᵀ q_t`; token t attends to itself.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .inputs import append_ones, check_linear_attn, divide_by_normalizer


def naive_linear_attn(
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
    """Return `(o, final_state)` or `(o, final_state, states)`, all float64.

    o `[batch, time, head, d_v]`; final_state `[batch, head, d_k, d_s]`; states `[batch, head, n_chunks, d_k, d_s]`
    (the state entering each chunk of `chunk_size` tokens). `d_s = d_v`, or `d_v + 1` with `normalize`.
    """
    B, T, H, K, V, scale = check_linear_attn(q, k, v, normalize, scale, initial_state, chunk_size)
    q, k = q.double() * scale, k.double()
    v = append_ones(v.double(), normalize)
    S = q.new_zeros(B, H, K, v.shape[-1]) if initial_state is None else initial_state.double().clone()
    o, states = [], []
    for t in range(T):
        if t % chunk_size == 0:
            states.append(S)
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = divide_by_normalizer(torch.stack(o, dim=1), normalize)
    return (o, S, torch.stack(states, dim=2)) if output_states else (o, S)
