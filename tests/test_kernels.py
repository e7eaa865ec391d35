"""Kernels (CPU paths): chunk vs the float64 naive recurrence, implied attention, known answers, bad inputs, gradients.

The Triton kernels are tested in test_kernels_triton.py with the same cases (`make_case`, `assert_close`).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mechkit.errors import MechkitError
from mechkit.kernels.based import chunk_based, implied_based, naive_based, taylor_features
from mechkit.kernels.checks import KernelInputError
from mechkit.kernels.delta_net import (
    chunk_delta_net,
    implied_delta_net,
    kaczmarz_beta,
    naive_delta_net,
)
from mechkit.kernels.implied import normalized_abs
from mechkit.kernels.linear_attn import chunk_linear_attn, implied_linear_attn, naive_linear_attn

# variant -> family; every variant is one set of options of its family's single recurrence.
VARIANTS = {
    "linear": "linear_attn",
    "linear-normalized": "linear_attn",
    "delta": "delta_net",
    "gated-delta": "delta_net",
    "kaczmarz": "delta_net",
    "write-scale": "delta_net",
    "gated-kaczmarz-write-scale": "delta_net",
    "based": "based",
    "based-unnormalized": "based",
}
NAIVE = {"linear_attn": naive_linear_attn, "delta_net": naive_delta_net, "based": naive_based}
CHUNK = {"linear_attn": chunk_linear_attn, "delta_net": chunk_delta_net, "based": chunk_based}
IMPLIED = {"linear_attn": implied_linear_attn, "delta_net": implied_delta_net, "based": implied_based}
# (d_k, d_v) per family; Based has 1 + d_k + d_k² features, so its d_k stays small (the Based model uses 16).
HEAD_SIZES = {"based": [(4, 16), (8, 8), (16, 32)]}
DEFAULT_HEAD_SIZES = [(16, 32), (32, 16), (64, 64)]

# Relative RMS error vs the float64 naive recurrence. fp32 chunk/kernel paths measure 1e-7..2e-6 here (fp32
# rounding accumulated over at most a few hundred tokens); 1e-5 leaves ~5x headroom and still catches any
# algebra slip, which shows up at 1e-2 or more.
TOL_FP32 = 1e-5


def rel_rms(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return float((got - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


def assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, tol: float) -> None:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err = rel_rms(ref, got)
    assert err < tol, f"{name}: relative RMS error {err:.3g} >= {tol:g}"


def make_case(variant, B, T, H, K, V, *, dtype=torch.float32, initial_state=False, seed=0):
    """Random inputs for one variant: returns (family, (q, k, v) in `dtype`, options)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    family = VARIANTS[variant]
    q, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    opts, d_state = {}, V
    if variant == "linear-normalized":  # positive features keep the normalizer away from zero
        q, k, opts["normalize"], d_state = F.elu(q) + 1, F.elu(k) + 1, True, V + 1
    if family == "based":
        opts["normalize"] = variant == "based"
    if family == "delta_net":
        if "kaczmarz" in variant:  # unnormalized keys with norms spread over a factor ~20
            k = k * randn(B, T, H, 1).exp()
            opts["eta"] = 2 * rand(B, T, H)
        else:
            k = F.normalize(k, dim=-1)
            opts["beta"] = rand(B, T, H)
        if "gated" in variant:
            opts["g"] = F.logsigmoid(randn(B, T, H) + 2)
        if "write-scale" in variant:
            opts["write_scale"] = rand(H, K)
    if initial_state and family == "based":  # a reachable state: the one left by a random 7-token prefix
        opts["initial_state"] = naive_based(randn(B, 7, H, K), randn(B, 7, H, K), randn(B, 7, H, V), **opts)[1]
    elif initial_state:
        h0 = randn(B, H, K, d_state)
        opts["initial_state"] = h0.abs() if variant == "linear-normalized" else h0
    side = torch.float64 if dtype == torch.float64 else torch.float32  # beta, g, ... and h0
    opts = {name: x.to(side) if isinstance(x, torch.Tensor) else x for name, x in opts.items()}
    return family, tuple(x.to(dtype) for x in (q, k, v)), opts


def implied(family, q, k, opts):
    opts = {name: x for name, x in opts.items() if name != "initial_state"}
    return IMPLIED[family](q, k, **opts)


CHUNK_CASES = [
    pytest.param(variant, T, K, V, h0, id=f"{variant}-T={T}-dk{K}-dv{V}-h0={'random' if h0 else 'none'}")
    for variant, family in VARIANTS.items()
    for T in (1, 63, 65, 500)
    for K, V in HEAD_SIZES.get(family, DEFAULT_HEAD_SIZES)
    for h0 in (False, True)
]


@pytest.mark.parametrize("variant,T,K,V,initial_state", CHUNK_CASES)
def test_chunk_matches_naive(variant, T, K, V, initial_state):
    family, qkv, opts = make_case(variant, 1, T, 2, K, V, initial_state=initial_state)
    o, S, states = NAIVE[family](*qkv, **opts, chunk_size=32, output_states=True)
    o2, S2, states2 = CHUNK[family](*qkv, **opts, chunk_size=32, output_states=True)
    assert o2.dtype == torch.float32 and S2.dtype == torch.float32
    assert_close("o", o, o2, TOL_FP32)
    assert_close("final_state", S, S2, TOL_FP32)
    assert_close("states", states, states2, TOL_FP32)


@settings(max_examples=30, deadline=None)
@given(
    variant=st.sampled_from(list(VARIANTS)),
    shape=st.tuples(*(st.integers(1, n) for n in (2, 40, 2, 8, 8))),
    chunk_size=st.integers(1, 17),
    initial_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunk_matches_naive_on_random_shapes(variant, shape, chunk_size, initial_state, seed):
    # float64 throughout: the chunk algebra must match the recurrence to float64 rounding.
    family, qkv, opts = make_case(variant, *shape, dtype=torch.float64, initial_state=initial_state, seed=seed)
    ref = NAIVE[family](*qkv, **opts, chunk_size=chunk_size, output_states=True)
    got = CHUNK[family](*qkv, **opts, chunk_size=chunk_size, output_states=True)
    for name, r, g in zip(("o", "final_state", "states"), ref, got):
        assert_close(name, r, g, 1e-9)


def test_outputs_without_states():
    family, qkv, opts = make_case("gated-delta", 1, 10, 1, 4, 4)
    for fn in (NAIVE[family], CHUNK[family]):
        out = fn(*qkv, **opts, chunk_size=4)
        assert len(out) == 2 and out[1].shape == (1, 1, 4, 4)
    _, _, states = CHUNK[family](*qkv, **opts, chunk_size=4, output_states=True)
    assert states.shape == (1, 1, 3, 4, 4)  # ceil(10 / 4) chunks
    assert torch.equal(states[:, :, 0], torch.zeros_like(states[:, :, 0]))  # the state entering chunk 0 is h0 = 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_implied_attention_times_v_is_the_output(variant):
    family, qkv, opts = make_case(variant, 2, 65, 2, 8, 4, dtype=torch.float64)
    A = implied(family, qkv[0], qkv[1], opts)
    assert A.shape == (2, 2, 65, 65) and A.dtype == torch.float64
    assert torch.equal(A, A.tril())  # causal
    o, _ = NAIVE[family](*qkv, **opts)
    assert_close("A @ v", o, torch.einsum("bhts,bshv->bthv", A, qkv[2]), 1e-5)
    P = normalized_abs(A)
    assert (P >= 0).all() and torch.allclose(P.sum(-1), torch.ones(2, 2, 65, dtype=torch.float64))


def test_based_implied_attention_is_a_distribution_and_matches_the_feature_map():
    family, (q, k, _), opts = make_case("based", 1, 30, 2, 8, 8, dtype=torch.float64)
    A = implied(family, q, k, opts)
    lower = torch.ones(30, 30, dtype=torch.bool).tril()
    assert (A[..., lower] > 0).all() and torch.allclose(A.sum(-1), torch.ones(1, 2, 30, dtype=torch.float64))
    s = torch.einsum("bthk,bshk->bhts", q, k) / 8**0.5
    fq, fk = taylor_features(q, 8**-0.5), taylor_features(k, 8**-0.5)
    assert fq.shape[-1] == 1 + 8 + 64
    torch.testing.assert_close(torch.einsum("bthf,bshf->bhts", fq, fk), 1 + s + s * s / 2)


def test_delta_rule_implied_attention_is_signed_and_normalized_is_a_distribution():
    family, (q, k, _), opts = make_case("delta", 1, 30, 1, 8, 8, dtype=torch.float64)
    A = implied(family, q, k, opts)
    assert (A < 0).any() and (A > 0).any()
    assert torch.allclose(normalized_abs(torch.zeros(2, 3)), torch.zeros(2, 3))  # an all-zero row stays zero


def test_kaczmarz_step_with_eta_one_projects_exactly():
    # η = 1, eps → 0: after the write, the state maps k_t to v_t exactly (the Kaczmarz projection).
    family, (q, k, v), opts = make_case("kaczmarz", 1, 12, 2, 8, 4, dtype=torch.float64)
    eta = torch.ones(1, 12, 2, dtype=torch.float64)
    for fn in (naive_delta_net, chunk_delta_net):
        _, S = fn(q, k, v, eta=eta, eps=1e-300, chunk_size=5)
        torch.testing.assert_close(torch.einsum("bhk,bhkv->bhv", k[:, -1], S), v[:, -1])
    beta = kaczmarz_beta(k, eta, 1e-6)
    torch.testing.assert_close(beta, 1 / (k.pow(2).sum(-1) + 1e-6))


def test_linear_attention_known_answer():
    # One head, d_k = 1, q = k = 1: o_t = scale · Σ_{s<=t} v_s; normalized: the running mean of v.
    v = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 4, 1, 1)
    ones = torch.ones_like(v)
    o, S = chunk_linear_attn(ones, ones, v, scale=1.0, chunk_size=3)
    assert o.flatten().tolist() == [1.0, 3.0, 6.0, 10.0] and S.item() == 10.0
    o, S = chunk_linear_attn(ones, ones, v, normalize=True, chunk_size=3)
    torch.testing.assert_close(o.flatten(), torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64))
    assert S.flatten().tolist() == [10.0, 4.0]  # [Σ v, Σ k]: the normalizer is the last state column


def test_gated_delta_rule_known_answer():
    # d_k = 1, k = 1, β = 1: each write replaces the state, so o_t = v_t; the decay acts before the write.
    v = torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    ones = torch.ones_like(v)
    g = torch.full((1, 3, 1), -0.5, dtype=torch.float64)
    o, S = chunk_delta_net(ones, ones, v, ones[..., 0], g=g, scale=1.0, chunk_size=2)
    assert torch.allclose(o.flatten(), v.flatten()) and torch.allclose(S.flatten(), v[0, -1].flatten())
    # β = 0: nothing is written; the initial state only decays.
    h0 = torch.full((1, 1, 1, 1), 4.0, dtype=torch.float64)
    o, S = chunk_delta_net(ones, ones, v, 0 * ones[..., 0], g=g, scale=1.0, initial_state=h0, chunk_size=2)
    torch.testing.assert_close(o.flatten(), 4.0 * torch.exp(-0.5 * torch.arange(1.0, 4.0, dtype=torch.float64)))


def _bad(variant="gated-kaczmarz-write-scale", **change):
    family, (q, k, v), opts = make_case(variant, 1, 6, 2, 4, 3, initial_state=True)
    args = {"q": q, "k": k, "v": v} | opts
    for name, fn in change.items():
        args[name] = fn(args) if callable(fn) else fn
    return family, args


BAD_INPUTS = {
    "q-not-4d": ("delta", {"q": lambda a: a["q"][0]}, "4-D tensor"),
    "q-k-shape": ("delta", {"k": lambda a: a["k"][..., :2]}, "q and k must have the same shape"),
    "v-batch": ("delta", {"v": lambda a: a["v"].repeat(2, 1, 1, 1)}, "v must share"),
    "integer-q": ("linear", {"q": lambda a: a["q"].long()}, "floating-point"),
    "dtype-mix": ("linear", {"k": lambda a: a["k"].double()}, "one dtype"),
    "empty-time": ("linear", {n: (lambda a, n=n: a[n][:, :0]) for n in "qkv"}, "empty dimension"),
    "h0-shape": ("delta", {"initial_state": lambda a: a["initial_state"][..., :2]}, "initial_state must have shape"),
    "h0-normalized": ("linear-normalized", {"initial_state": lambda a: a["initial_state"][..., :3]}, "d_v + 1"),
    "h0-based": ("based", {"initial_state": lambda a: a["initial_state"][..., :3, :]}, "1 + d_k + d_k²"),
    "chunk-size": ("linear", {"chunk_size": 0}, "chunk_size must be a positive int"),
    "scale": ("linear", {"scale": "1"}, "scale must be a number"),
    "beta-above-1": ("delta", {"beta": lambda a: a["beta"] + 1}, "beta must lie in [0, 1]"),
    "beta-nan": ("delta", {"beta": lambda a: a["beta"] * torch.nan}, "beta must be finite"),
    "beta-shape": ("delta", {"beta": lambda a: a["beta"][..., None]}, "beta must have shape"),
    "beta-and-eta": ("delta", {"eta": lambda a: a["beta"]}, "exactly one of beta"),
    "neither-beta-nor-eta": ("kaczmarz", {"eta": None}, "exactly one of beta"),
    "eta-above-2": ("kaczmarz", {"eta": lambda a: a["eta"] + 2.5}, "eta must lie in [0, 2]"),
    "eps": ("kaczmarz", {"eps": 0.0}, "eps must be a positive"),
    "g-positive": ("gated-delta", {"g": lambda a: a["g"].abs() + 0.1}, "g must lie in [-inf, 0]"),
    "g-infinite": ("gated-delta", {"g": lambda a: a["g"] - torch.inf}, "g must be finite"),
    "write-scale-shape": ("write-scale", {"write_scale": lambda a: a["write_scale"].T}, "write_scale must have"),
    "write-scale-negative": ("write-scale", {"write_scale": lambda a: -a["write_scale"]}, "write_scale must lie"),
}


@pytest.mark.parametrize("impl", ["naive", "chunk"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_one_clear_error(case, impl):
    variant, change, message = BAD_INPUTS[case]
    family, args = _bad(variant, **change)
    fn = (NAIVE if impl == "naive" else CHUNK)[family]
    with pytest.raises(KernelInputError, match=re.escape(message)) as info:
        fn(**args)
    assert isinstance(info.value, MechkitError) and isinstance(info.value, ValueError)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")  # one sentence


@pytest.mark.parametrize("variant", ["linear-normalized", "gated-kaczmarz-write-scale", "based"])
def test_chunk_gradcheck(variant):
    family, qkv, opts = make_case(variant, 1, 5, 1, 3, 2, dtype=torch.float64, initial_state=True)
    names = [n for n, x in opts.items() if isinstance(x, torch.Tensor)]
    tensors = [x.detach().requires_grad_() for x in qkv] + [opts[n].detach().requires_grad_() for n in names]

    def fn(q, k, v, *rest):
        return CHUNK[family](q, k, v, **(opts | dict(zip(names, rest))), chunk_size=2, output_states=True)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("log_decay", [-1.0, -2.0], ids=["factored", "differences"])
def test_gated_chunk_matches_naive_on_both_decay_paths(log_decay):
    """Chunk-local decay sums down to -FACTORED_LOG_DECAY (40) fold e^{±G} into the operands; stronger decay (here
    -2 x 32 = -64 per chunk) builds Γ from differences. Both must match the recurrence."""
    family, qkv, opts = make_case("gated-delta", 1, 100, 2, 16, 16)
    opts["g"] = torch.full_like(opts["g"], log_decay) + 0.01 * opts["g"]  # about log_decay, not constant
    ref = NAIVE[family](*qkv, **opts, chunk_size=32, output_states=True)
    got = CHUNK[family](*qkv, **opts, chunk_size=32, output_states=True)
    for name, r, g in zip(("o", "final_state", "states"), ref, got):
        assert_close(name, r, g, TOL_FP32)


def test_gated_chunk_gradcheck_with_strong_decay():
    family, qkv, opts = make_case("gated-delta", 1, 5, 1, 3, 2, dtype=torch.float64, initial_state=True)
    opts["g"] = opts["g"] - 30.0  # -60 and below per chunk of 2: the differences path
    names = [n for n, x in opts.items() if isinstance(x, torch.Tensor)]
    tensors = [x.detach().requires_grad_() for x in qkv] + [opts[n].detach().requires_grad_() for n in names]

    def fn(q, k, v, *rest):
        return CHUNK[family](q, k, v, **(opts | dict(zip(names, rest))), chunk_size=2, output_states=True)

    assert torch.autograd.gradcheck(fn, tensors)
