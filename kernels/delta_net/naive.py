"""The DeltaNet family token by token in float64: the reference (recurrence in `inputs.py`)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from .inputs import check_delta_net, kaczmarz_beta


def naive_delta_net(
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
    """Return `(o, final_state)` or `(o, final_state, states)`, all float64.

    o `[batch, time, head, d_v]`; final_state `[batch, head, d_k, d_v]`; states `[batch, head, n_chunks, d_k, d_v]`
    (the state entering each chunk of `chunk_size` tokens).
    """
    x = check_delta_net(q, k, v, beta, eta, eps, g, write_scale, scale, initial_state, chunk_size)
    q, k, v = q.double() * x.scale, k.double(), v.double()
    beta = x.beta.double() if eta is None else kaczmarz_beta(k, eta, eps)  # β from float64 keys
    w = k if write_scale is None else k * write_scale.double()
    alpha = torch.ones_like(beta) if g is None else g.double().exp()
    S = q.new_zeros(x.B, x.H, x.K, x.V) if initial_state is None else initial_state.double().clone()
    o, states = [], []
    for t in range(x.T):
        if t % chunk_size == 0:
            states.append(S)
        S = alpha[:, t, :, None, None] * S
        e = v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + (beta[:, t, :, None] * w[:, t])[..., None] * e[:, :, None, :]
        o.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(o, dim=1)
    return (o, S, torch.stack(states, dim=2)) if output_states else (o, S)
