"""The Triton forward kernel of linear attention (imported lazily by `triton.py`).

One program per (feature block of BK key features, batch·head) walks the chunks of BT tokens with its fp32 slice
of the state `S [BK, V]` (and, with NORMALIZE, of the key sum `z [BK]`) in registers. Everything is linear in
the key features, so each program writes partial outputs that the wrapper sums over feature blocks:
`num_c = Q_c S + (Q_c K_cᵀ ⊙ M) V_c` and, with NORMALIZE, `den_c = Q_c z + (Q_c K_cᵀ ⊙ M) 𝟙`; then
`S += K_cᵀ V_c`, `z += K_cᵀ 𝟙`. STORE_STATES writes the state entering each chunk, STORE_FINAL_STATE the state after
the last token; state tensors are `[K, V + NORMALIZE]` per (batch, head, chunk), the last column holding z.
"""

import triton
import triton.language as tl


@triton.jit
def linear_attn_fwd_kernel(
    q, k, v, num, den, h0, states, final_state,
    T, BH, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BT: tl.constexpr,
    NORMALIZE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    STORE_STATES: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
):
    i_k, i_bh = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    DS: tl.constexpr = V + NORMALIZE
    o_t, o_k, o_v = tl.arange(0, BT), i_k * BK + tl.arange(0, BK), tl.arange(0, V)
    causal = o_t[:, None] >= o_t[None, :]
    p_S = o_k[:, None] * DS + o_v[None, :]
    b_S = tl.zeros([BK, V], dtype=tl.float32)
    b_z = tl.zeros([BK], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_S += tl.load(h0 + i_bh * K * DS + p_S)
        if NORMALIZE:
            b_z += tl.load(h0 + i_bh * K * DS + o_k * DS + V)
    for i_t in range(NT):
        t = i_t * BT + o_t
        m = t < T
        row = (i_b * T + t) * H + i_h
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m[:, None], other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        if STORE_STATES:
            p_h = states + (i_bh * NT + i_t) * K * DS
            tl.store(p_h + p_S, b_S)
            if NORMALIZE:
                tl.store(p_h + o_k * DS + V, b_z)
        b_A = tl.where(causal, tl.dot(b_q, tl.trans(b_k), input_precision="ieee"), 0.0)
        b_o = tl.dot(b_q, b_S, input_precision="ieee") + tl.dot(b_A, b_v, input_precision="ieee")
        tl.store(num + (i_k * BH * T + row[:, None]) * V + o_v[None, :], b_o, mask=m[:, None])
        if NORMALIZE:
            tl.store(den + i_k * BH * T + row, tl.sum(b_q * b_z[None, :], 1) + tl.sum(b_A, 1), mask=m)
            b_z += tl.sum(b_k, 0)
        b_S += tl.dot(tl.trans(b_k), b_v, input_precision="ieee")
    if STORE_FINAL_STATE:
        tl.store(final_state + i_bh * K * DS + p_S, b_S)
        if NORMALIZE:
            tl.store(final_state + i_bh * K * DS + o_k * DS + V, b_z)


KERNEL = linear_attn_fwd_kernel
