"""Softmax-attention kernels (causal, sliding window, momentum) on CPU: chunk vs the float64 naive loop, the
implied pattern, known answers, bad inputs, gradients. The Triton kernel is tested in test_kernels_triton.py."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kernels import TOL_FP32, assert_close

from mechkit.kernels.checks import KernelInputError
from mechkit.kernels.sliding_window import (
    chunk_sliding_window_attn,
    implied_sliding_window_attn,
    momentum_shear,
    naive_sliding_window_attn,
)

SOFTMAX_VARIANTS = {
    "causal": {},
    "window-1": {"window": 1},
    "window-20": {"window": 20},
    "momentum": {"momentum": 0.7},
    "window-20-momentum": {"window": 20, "momentum": -0.3},
}


def make_qkv(B, T, H, K, V, *, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple((1.5 * torch.randn(B, T, H, d, generator=gen, dtype=torch.float64)).to(dtype) for d in (K, K, V))


@pytest.mark.parametrize("K,V", [(16, 32), (32, 16), (64, 64)], ids=["dk16-dv32", "dk32-dv16", "dk64-dv64"])
@pytest.mark.parametrize("T", [1, 63, 65, 500], ids=lambda t: f"T={t}")
@pytest.mark.parametrize("variant", SOFTMAX_VARIANTS)
def test_chunk_matches_naive(variant, T, K, V):
    qkv = make_qkv(1, T, 2, K, V)
    o = naive_sliding_window_attn(*qkv, **SOFTMAX_VARIANTS[variant])
    o2 = chunk_sliding_window_attn(*qkv, **SOFTMAX_VARIANTS[variant], chunk_size=32)
    assert o.dtype == torch.float64 and o2.dtype == torch.float32
    assert_close("o", o, o2, TOL_FP32)


@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, n) for n in (2, 40, 2, 8, 8))),
    window=st.none() | st.integers(1, 45),
    momentum=st.sampled_from([0.0, 0.5, -1.0]),
    chunk_size=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_chunk_matches_naive_on_random_shapes(shape, window, momentum, chunk_size, seed):
    qkv = make_qkv(*shape, dtype=torch.float64, seed=seed)
    o = naive_sliding_window_attn(*qkv, window=window, momentum=momentum)
    o2 = chunk_sliding_window_attn(*qkv, window=window, momentum=momentum, chunk_size=chunk_size)
    assert_close("o", o, o2, 1e-9)


@pytest.mark.parametrize("variant", SOFTMAX_VARIANTS)
def test_implied_pattern_times_v_is_the_output(variant):
    opts = SOFTMAX_VARIANTS[variant]
    q, k, v = make_qkv(2, 65, 2, 8, 4, dtype=torch.float64)
    A = implied_sliding_window_attn(q, k, **opts)
    assert A.shape == (2, 2, 65, 65) and (A >= 0).all()
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 2, 65, dtype=torch.float64))
    t, s = torch.arange(65)[:, None], torch.arange(65)[None, :]
    outside = (s > t) | (s <= t - opts.get("window", 65))
    assert (A[..., outside] == 0).all()
    assert_close("A @ v", naive_sliding_window_attn(q, k, v, **opts), torch.einsum("bhts,bshv->bthv", A, v), 1e-5)


def test_known_answers():
    q, k, v = make_qkv(1, 9, 2, 4, 3, dtype=torch.float64)
    for fn in (naive_sliding_window_attn, chunk_sliding_window_attn):
        torch.testing.assert_close(fn(q, k, v, window=1), v)  # a window of one key: the token's own value
    torch.testing.assert_close(chunk_sliding_window_attn(q, 0 * k, v)[:, 3], v[:, :4].mean(1))  # uniform
    x = torch.tensor([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
    assert momentum_shear(x, 0.5).flatten().tolist() == [1.0, 2.5, 5.0]  # x_t + γ(x_t − x_{t−1}), p_0 = 0


def test_momentum_scores_contain_the_previous_token_match():
    # q̂_tᵀk̂_s = (1+γ)²q_tᵀk_s − γ(1+γ)(q_{t−1}ᵀk_s + q_tᵀk_{s−1}) + γ²q_{t−1}ᵀk_{s−1}:
    # one layer sees the match of the previous tokens.
    q, k, v = make_qkv(1, 12, 1, 8, 2, dtype=torch.float64)
    g = 0.4
    A = implied_sliding_window_attn(q, k, momentum=g, scale=1.0)
    qp, kp = torch.cat([q[:, :1], q[:, :-1]], 1), torch.cat([k[:, :1], k[:, :-1]], 1)

    def dot(a, b):
        return torch.einsum("bthk,bshk->bhts", a, b)

    scores = (1 + g) ** 2 * dot(q, k) - g * (1 + g) * (dot(qp, k) + dot(q, kp)) + g * g * dot(qp, kp)
    mask = torch.ones(12, 12, dtype=torch.bool).tril()
    torch.testing.assert_close(A, scores.masked_fill(~mask, -torch.inf).softmax(-1))


BAD_INPUTS = {
    "window-0": ({"window": 0}, "window must be a positive int"),
    "window-float": ({"window": 2.5}, "window must be a positive int"),
    "momentum-nan": ({"momentum": float("nan")}, "momentum must be a finite number"),
    "momentum-str": ({"momentum": "0.5"}, "momentum must be a finite number"),
    "chunk-size": ({"chunk_size": -1}, "chunk_size must be a positive int"),
    "v-time": ({"v": lambda v: v[:, :3]}, "v must share [batch, time, head]"),
}


@pytest.mark.parametrize("fn", [naive_sliding_window_attn, chunk_sliding_window_attn], ids=["naive", "chunk"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_one_clear_error(case, fn):
    change, message = dict(BAD_INPUTS[case][0]), BAD_INPUTS[case][1]
    q, k, v = make_qkv(1, 6, 1, 4, 4)
    if "v" in change:
        v = change.pop("v")(v)
    with pytest.raises(KernelInputError, match=re.escape(message)):
        fn(q, k, v, **change)


def test_chunk_gradcheck():
    tensors = [x.requires_grad_() for x in make_qkv(1, 7, 1, 3, 2, dtype=torch.float64)]
    assert torch.autograd.gradcheck(
        lambda q, k, v: chunk_sliding_window_attn(q, k, v, window=3, momentum=0.5, chunk_size=2), tensors
    )
