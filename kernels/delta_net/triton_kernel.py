"""The Triton forward kernel of the DeltaNet family (imported lazily by `triton.py`).

One program per (batch, head) walks the chunks of BT tokens with the fp32 state `S [K, V]` in registers and
applies the WY/UT chunk step of `chunk.py`; `(I + A)⁻¹` is built blockwise (see the comment in the kernel).
USE_G / USE_WRITE_SCALE switch on the decay and the write-key scale; STORE_STATES writes the state entering each
chunk `[K, V]` per (batch, head, chunk), STORE_FINAL_STATE the state after the last token.
"""

import triton
import triton.language as tl


@triton.jit
def delta_net_fwd_kernel(
    q, k, v, beta, g, write_scale, o, h0, states, final_state,
    T, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
    USE_G: tl.constexpr, USE_WRITE_SCALE: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    STORE_STATES: tl.constexpr, STORE_FINAL_STATE: tl.constexpr,
):
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, K), tl.arange(0, V)
    lower = o_t[:, None] >= o_t[None, :]
    eye = tl.where(o_t[:, None] == o_t[None, :], 1.0, 0.0)
    p_S = o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([K, V], dtype=tl.float32)
    if USE_INITIAL_STATE:
        b_S += tl.load(h0 + i_bh * K * V + p_S)
    b_d = tl.full([K], 1.0, dtype=tl.float32)
    if USE_WRITE_SCALE:
        b_d = tl.load(write_scale + i_h * K + o_k).to(tl.float32)
    for i_t in range(NT):
        t = i_t * BT + o_t
        m = t < T
        row = (i_b * T + t) * H + i_h
        b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=m[:, None], other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + row[:, None] * K + o_k[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        b_v = tl.load(v + row[:, None] * V + o_v[None, :], mask=m[:, None], other=0.0).to(tl.float32)
        b_beta = tl.load(beta + row, mask=m, other=0.0).to(tl.float32)
        b_G = tl.zeros([BT], dtype=tl.float32)
        if USE_G:
            b_G = tl.cumsum(tl.load(g + row, mask=m, other=0.0).to(tl.float32), 0)
        b_G_last = tl.sum(tl.where(o_t == BT - 1, b_G, 0.0), 0)
        b_decay = tl.where(lower, tl.exp(b_G[:, None] - b_G[None, :]), 0.0)
        b_w = b_k * b_d[None, :]
        b_A = tl.where(o_t[:, None] > o_t[None, :],
                       b_beta[:, None] * tl.dot(b_k, tl.trans(b_w), input_precision="ieee") * b_decay, 0.0)
        # (I + A)⁻¹ = (I + N)⁻¹ D⁻¹ with D = I + (16×16 diagonal blocks of A), N = D⁻¹ (A off those blocks).
        # D⁻¹ by forward substitution, row r%16 == i of every block at once: row_r = e_r − Σ_{j<r} A_rj row_j.
        b_Ad = tl.where(o_t[:, None] // 16 == o_t[None, :] // 16, b_A, 0.0)
        b_Di = eye
        for i in range(1, 16):
            b_Di = tl.where((o_t % 16 == i)[:, None], eye - tl.dot(b_Ad, b_Di, input_precision="ieee"), b_Di)
        b_N = tl.dot(b_Di, b_A - b_Ad, input_precision="ieee")  # strictly block-lower, N⁴ = 0 for BT <= 64
        b_N2 = tl.dot(b_N, b_N, input_precision="ieee")
        b_Ai = tl.dot(eye - b_N, b_Di + tl.dot(b_N2, b_Di, input_precision="ieee"), input_precision="ieee")
        b_u = tl.dot(b_Ai, b_beta[:, None] * b_v, input_precision="ieee")
        b_W = tl.dot(b_Ai, (b_beta * tl.exp(b_G))[:, None] * b_k, input_precision="ieee")
        if STORE_STATES:
            tl.store(states + (i_bh * NT + i_t) * K * V + p_S, b_S)
        b_vnew = b_u - tl.dot(b_W, b_S, input_precision="ieee")
        b_qw = tl.dot(b_q, tl.trans(b_w), input_precision="ieee") * b_decay
        b_o = tl.dot(b_q * tl.exp(b_G)[:, None], b_S, input_precision="ieee") + \
            tl.dot(b_qw, b_vnew, input_precision="ieee")
        tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=m[:, None])
        b_tail = b_w * tl.exp(b_G_last - b_G)[:, None]
        b_S = b_S * tl.exp(b_G_last) + tl.dot(tl.trans(b_tail), b_vnew, input_precision="ieee")
    if STORE_FINAL_STATE:
        tl.store(final_state + i_bh * K * V + p_S, b_S)


KERNEL = delta_net_fwd_kernel
