"""The Triton forward kernel of causal (sliding-window) softmax attention (imported lazily by `triton.py`).

One program per (query block of BT, batch·head) runs an online softmax (flash-attention style, fp32) over the key
blocks its queries can see: from the block holding `start − W + 1` (USE_WINDOW) or 0, to its own block.
Softmax attention keeps no fixed-size state, so there is nothing for STORE_STATES / STORE_FINAL_STATE to write.
"""

import triton
import triton.language as tl


@triton.jit
def sliding_window_fwd_kernel(
    q, k, v, o, T, W, scale,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, USE_WINDOW: tl.constexpr,
):
    i_t, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, K), tl.arange(0, V)
    t = i_t * BT + o_t
    row = (i_b * T + t) * H + i_h
    b_q = tl.load(q + row[:, None] * K + o_k[None, :], mask=(t < T)[:, None], other=0.0).to(tl.float32) * scale
    b_m = tl.full([BT], -1e30, dtype=tl.float32)
    b_l = tl.zeros([BT], dtype=tl.float32)
    b_acc = tl.zeros([BT, V], dtype=tl.float32)
    first = 0
    if USE_WINDOW:
        first = tl.maximum(i_t * BT - W + 1, 0) // BT
    for i_s in range(first, i_t + 1):
        s = i_s * BT + o_t
        col = (i_b * T + s) * H + i_h
        b_k = tl.load(k + col[:, None] * K + o_k[None, :], mask=(s < T)[:, None], other=0.0).to(tl.float32)
        b_v = tl.load(v + col[:, None] * V + o_v[None, :], mask=(s < T)[:, None], other=0.0).to(tl.float32)
        seen = (s[None, :] <= t[:, None]) & (s[None, :] < T)
        if USE_WINDOW:
            seen = seen & (s[None, :] > t[:, None] - W)
        b_s = tl.where(seen, tl.dot(b_q, tl.trans(b_k), input_precision="ieee"), -1e30)
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp(b_m - b_m_new)
        b_p = tl.where(seen, tl.exp(b_s - b_m_new[:, None]), 0.0)
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p, b_v, input_precision="ieee")
        b_m = b_m_new
    b_o = b_acc / tl.where(t < T, b_l, 1.0)[:, None]
    tl.store(o + row[:, None] * V + o_v[None, :], b_o.to(o.dtype.element_ty), mask=(t < T)[:, None])


KERNEL = sliding_window_fwd_kernel
