"""Triton kernels on CPU under the Triton interpreter, fp32 and fp16, against the float64 naive recurrence.

TRITON_INTERPRET must be set before the first kernel call (the kernel modules are imported then), so it is set
here at import time; no other test module calls a Triton kernel.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from test_kernels import NAIVE, VARIANTS, assert_close, make_case  # noqa: E402
from test_kernels_softmax import SOFTMAX_VARIANTS, make_qkv  # noqa: E402

from mechkit.kernels.based import chunk_based, triton_based  # noqa: E402
from mechkit.kernels.checks import KernelInputError  # noqa: E402
from mechkit.kernels.delta_net import chunk_delta_net, triton_delta_net  # noqa: E402
from mechkit.kernels.linear_attn import chunk_linear_attn, triton_linear_attn  # noqa: E402
from mechkit.kernels.sliding_window import (  # noqa: E402
    chunk_sliding_window_attn,
    naive_sliding_window_attn,
    triton_sliding_window_attn,
)

TRITON = {
    "linear_attn": triton_linear_attn,
    "delta_net": triton_delta_net,
    "based": triton_based,
    "sliding_window": triton_sliding_window_attn,
}
CHUNK = {"linear_attn": chunk_linear_attn, "delta_net": chunk_delta_net, "based": chunk_based}

# Relative RMS error vs float64 naive on the same (rounded) inputs. The kernels compute in fp32 from fp32 or fp16
# loads, so fp32 and all fp32 states measure 1e-7..1e-6 (1e-5 leaves headroom). fp16 outputs are rounded to fp16
# once, which alone gives ~2e-4 (unit roundoff 4.9e-4); 2e-3 allows that plus fp32 error, and any algebra slip
# shows up at 1e-2 or more.
TOL = {torch.float32: {"o": 1e-5, "state": 1e-5}, torch.float16: {"o": 2e-3, "state": 1e-5}}

# (T, d_k, d_v, chunk_size, initial_state): awkward lengths, every tile size, every chunk size.
SHAPES = [
    (1, 16, 32, 16, False),
    (1, 64, 64, 64, True),
    (63, 32, 16, 32, True),
    (63, 128, 32, 32, False),
    (65, 64, 64, 64, False),
    (65, 16, 128, 16, True),
    (500, 32, 32, 64, True),
    (500, 64, 16, 32, False),
]
# Based runs the linear-attention kernel on 1 + d_k + d_k² features (zero-padded to a multiple of 16): any d_k.
BASED_SHAPES = [(1, 8, 32, 16, False), (63, 16, 16, 32, True), (65, 5, 64, 64, False), (500, 16, 32, 64, True)]


def shape_id(shape):
    T, K, V, C, h0 = shape
    return f"T={T}-dk{K}-dv{V}-C{C}-h0={'random' if h0 else 'none'}"


TRITON_CASES = [
    pytest.param(variant, shape, id=f"{variant}-{shape_id(shape)}")
    for variant, family in VARIANTS.items()
    for shape in (BASED_SHAPES if family == "based" else SHAPES)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("variant,shape", TRITON_CASES)
def test_triton_matches_naive(variant, shape, dtype):
    T, K, V, chunk_size, initial_state = shape
    family, qkv, opts = make_case(variant, 1, T, 2, K, V, dtype=dtype, initial_state=initial_state)
    o, S, states = NAIVE[family](*qkv, **opts, chunk_size=chunk_size, output_states=True)
    o2, S2, states2 = TRITON[family](*qkv, **opts, chunk_size=chunk_size, output_states=True)
    assert o2.dtype == dtype and S2.dtype == states2.dtype == torch.float32
    assert_close("o", o, o2, TOL[dtype]["o"])
    assert_close("final_state", S, S2, TOL[dtype]["state"])
    assert_close("states", states, states2, TOL[dtype]["state"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape_id(shape)[: shape_id(shape).index("-h0")])
@pytest.mark.parametrize("variant", SOFTMAX_VARIANTS)
def test_triton_softmax_matches_naive(variant, shape, dtype):
    T, K, V, chunk_size, _ = shape
    qkv = make_qkv(1, T, 2, K, V, dtype=dtype)
    o = naive_sliding_window_attn(*qkv, **SOFTMAX_VARIANTS[variant])
    o2 = triton_sliding_window_attn(*qkv, **SOFTMAX_VARIANTS[variant], chunk_size=chunk_size)
    assert o2.dtype == dtype
    assert_close("o", o, o2, TOL[dtype]["o"])


def test_triton_softmax_backward_equals_chunk_backward():
    def grads(fn):
        tensors = [x.requires_grad_() for x in make_qkv(1, 40, 2, 16, 16)]
        fn(*tensors, window=9, momentum=0.5, chunk_size=16).pow(2).sum().backward()
        return [t.grad for t in tensors]

    for name, ref, got in zip("qkv", grads(chunk_sliding_window_attn), grads(triton_sliding_window_attn)):
        assert_close(f"grad {name}", ref, got, 1e-5)


@pytest.mark.parametrize("K", [48, 96, 288], ids=lambda k: f"dk{k}")
@pytest.mark.parametrize("variant", ["linear", "linear-normalized"])
def test_triton_linear_attention_splits_key_features_into_blocks(variant, K):
    family, qkv, opts = make_case(variant, 1, 65, 2, K, 16, initial_state=True)
    ref = NAIVE[family](*qkv, **opts, chunk_size=32, output_states=True)
    got = TRITON[family](*qkv, **opts, chunk_size=32, output_states=True)
    for name, r, g in zip(("o", "final_state", "states"), ref, got):
        assert_close(name, r, g, TOL[torch.float32]["o"])


@pytest.mark.parametrize("family", ["linear_attn", "delta_net"])
def test_triton_without_states_and_with_strided_inputs(family):
    variant = {"linear_attn": "linear", "delta_net": "gated-delta"}[family]
    _, (q, k, v), opts = make_case(variant, 2, 40, 2, 16, 16)
    q_strided = torch.cat([q, q], dim=-1)[..., :16]  # a non-contiguous view
    out = TRITON[family](q_strided, k, v, **opts, chunk_size=16)
    ref = NAIVE[family](q, k, v, **opts, chunk_size=16)
    assert len(out) == 2
    assert_close("o", ref[0], out[0], 1e-5)
    assert_close("final_state", ref[1], out[1], 1e-5)


@pytest.mark.parametrize("variant", ["linear-normalized", "gated-kaczmarz-write-scale", "based"])
def test_triton_backward_equals_chunk_backward(variant):
    family, qkv, opts = make_case(variant, 1, 20, 1, 16, 16, initial_state=True)
    names = [n for n, x in opts.items() if isinstance(x, torch.Tensor)]

    def grads(fn):
        tensors = [x.detach().requires_grad_() for x in qkv] + [opts[n].detach().requires_grad_() for n in names]
        o, S, states = fn(*tensors[:3], **(opts | dict(zip(names, tensors[3:]))), chunk_size=16, output_states=True)
        (o.pow(2).sum() + S.sum() + states.sin().sum()).backward()
        return [t.grad for t in tensors]

    for name, ref, got in zip(["q", "k", "v", *names], grads(CHUNK[family]), grads(TRITON[family])):
        assert_close(f"grad {name}", ref, got, 1e-5)


def _inputs(K=16, V=16, dtype=torch.float32):
    _, qkv, opts = make_case("gated-delta", 1, 8, 1, K, V, dtype=dtype)
    return qkv, opts


BAD_TRITON_INPUTS = {
    "head-size-24": (dict(K=24), {}, "d_k = 24 cannot be tiled by the Triton kernels;"),
    "value-size-8": (dict(V=8), {}, "d_v = 8 cannot be tiled"),
    "chunk-size-128": ({}, dict(chunk_size=128), "chunk_size = 128 is not supported by the Triton kernels"),
    "bfloat16": (dict(dtype=torch.bfloat16), {}, "bfloat16 is not supported by the Triton interpreter"),
    "float64": (dict(dtype=torch.float64), {}, "Triton kernels take float16, bfloat16 or float32 inputs"),
}


@pytest.mark.parametrize("family", ["linear_attn", "delta_net", "sliding_window"])
@pytest.mark.parametrize("case", BAD_TRITON_INPUTS)
def test_triton_bad_inputs_raise_one_clear_error(case, family):
    make, call, message = BAD_TRITON_INPUTS[case]
    qkv, opts = _inputs(**make)
    opts = opts if family == "delta_net" else {}
    with pytest.raises(KernelInputError, match=re.escape(message)):
        TRITON[family](*qkv, **opts, **call)


@pytest.mark.parametrize("family,message", [("linear_attn", "it must be a multiple of 16"),
                                            ("delta_net", "supported sizes are 16, 32, 64, 128"),
                                            ("sliding_window", "supported sizes are 16, 32, 64, 128")])
def test_triton_head_size_errors_name_what_is_supported(family, message):
    qkv, opts = _inputs(K=24)
    with pytest.raises(KernelInputError, match=message):
        TRITON[family](*qkv, **(opts if family == "delta_net" else {}))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    qkv, opts = _inputs()
    with pytest.raises(KernelInputError, match="TRITON_INTERPRET=1"):
        triton_delta_net(*qkv, **opts)
