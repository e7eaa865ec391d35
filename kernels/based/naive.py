"""Based attention token by token in float64: the reference.

Normalized linear attention on Taylor features (`features.py`): `S_t = S_{t-1} + φ(k_t)[v_t, 1]ᵀ`,
`o_t = num_t / (den_t + 1e-10)` with `[num_t, den_t] = S_tᵀ φ(q_t)`; `normalize=False` drops the denominator.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from ..linear_attn.naive import naive_linear_attn
from .features import check_based, taylor_features


def naive_based(
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
    """Return `(o, final_state)` or `(o, final_state, states)`, all float64.

    o `[batch, time, head, d_v]`; final_state `[batch, head, 1 + d_k + d_k², d_s]`; states
    `[batch, head, n_chunks, 1 + d_k + d_k², d_s]` (entering each chunk). `d_s = d_v + 1` with `normalize`, else d_v.
    """
    scale = check_based(q, k, v, normalize, scale, initial_state, chunk_size)
    fq, fk = taylor_features(q.double(), scale), taylor_features(k.double(), scale)
    return naive_linear_attn(fq, fk, v.double(), normalize=normalize, scale=1.0, initial_state=initial_state,
                             chunk_size=chunk_size, output_states=output_states)
