"""Native models: hook names and shapes, exact implied attention, padding, pieces, state edits, kernels, config."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mechkit.errors import MechkitError
from mechkit.kernels.delta_net import naive_delta_net
from mechkit.native import MIXERS, NativeConfig, NativeModel, run_with_state_edit

RECURRENT = [name for name, mixer in MIXERS.items() if mixer.recurrent]


def tiny(mixers, **kwargs) -> NativeModel:
    settings = dict(vocab_size=40, d_model=32, n_heads=2, d_head=16, feature_dim=4, chunk_size=8, d_mlp=32,
                    context_length=64, window=5)
    return NativeModel(NativeConfig(mixers=tuple(mixers), **{**settings, **kwargs})).eval()


def tokens(batch=2, width=29, seed=0):
    return torch.randint(0, 40, (batch, width), generator=torch.Generator().manual_seed(seed))


def run_cached(model, x, names):
    cache = {}

    def save(t, *, hook):
        cache[hook.name] = t

    with model.hooks(fwd_hooks=[(n, save) for n in names]):
        logits = model(x)
    return logits, cache


def test_hook_names_follow_transformer_lens():
    names = set(tiny(["softmax", "gated_delta_net"], ngram_orders=(1,)).hook_dict)
    for name in ("hook_embed", "ln_final.hook_normalized", "hook_ngram_out"):
        assert name in names
    for layer in (0, 1):
        for hook in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                     "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern"):
            assert f"blocks.{layer}.{hook}" in names
    assert {"blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k"} <= names
    for hook in ("beta", "g", "state", "final_state"):
        assert f"blocks.1.attn.hook_{hook}" in names
    assert "blocks.1.attn.hook_rot_q" not in names
    assert "blocks.0.hook_mlp_out" not in set(tiny(["linear"], d_mlp=0).hook_dict)


def test_hook_shapes():
    model = tiny(["softmax", "delta_net"])
    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_q", "blocks.1.attn.hook_beta",
             "blocks.1.attn.hook_state", "blocks.1.attn.hook_final_state", "blocks.1.attn.hook_pattern",
             "blocks.1.attn.hook_z"]
    _, cache = run_cached(model, tokens(width=29), names)
    shapes = {name.split(".", 1)[1]: tuple(cache[name].shape) for name in names}
    assert shapes == {"0.attn.hook_q": (2, 29, 2, 16), "0.attn.hook_pattern": (2, 2, 29, 29),
                      "1.attn.hook_q": (2, 29, 2, 16), "1.attn.hook_beta": (2, 29, 2),
                      "1.attn.hook_state": (2, 2, 4, 16, 16), "1.attn.hook_final_state": (2, 2, 16, 16),
                      "1.attn.hook_pattern": (2, 2, 29, 29), "1.attn.hook_z": (2, 29, 2, 16)}


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_pattern_is_exact_and_hooks_do_not_change_the_run(mixer):
    model = tiny([mixer, mixer])
    x = tokens()
    names = [f"blocks.1.attn.hook_{n}" for n in ("pattern", "v", "z")]
    logits, cache = run_cached(model, x, names)
    A, v, z = (cache[n] for n in names)
    torch.testing.assert_close(torch.einsum("bhts,bshd->bthd", A, v), z, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(model(x), logits, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("mixer", RECURRENT)
def test_edited_pattern_changes_z(mixer):
    model = tiny([mixer])
    z = {}

    def zero(t, *, hook):
        return torch.zeros_like(t)

    def save(t, *, hook):
        z["z"] = t

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", zero), ("blocks.0.attn.hook_z", save)]):
        model(tokens())
    assert z["z"].abs().max() < 1e-5


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_left_padding_is_exact(mixer):
    model = tiny([mixer, "softmax"], ngram_orders=(1, 2))
    x = tokens(2, 24)
    short = x[1, 7:]
    padded = torch.stack([x[0], torch.cat([torch.zeros(7, dtype=torch.long), short])])
    mask = torch.ones_like(padded)
    mask[1, :7] = 0
    out = model(padded, attention_mask=mask)
    torch.testing.assert_close(out[1, 7:], model(short[None])[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out[0], model(x[:1])[0], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mixer", list(MIXERS))
def test_pieces_continue_exactly(mixer):
    model = tiny([mixer, "softmax"], ngram_orders=(1,))
    x = tokens(2, 30)
    cache = model.new_cache()
    pieces = [model(x[:, :11], cache=cache), model(x[:, 11:12], cache=cache), model(x[:, 12:], cache=cache)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(x), atol=2e-5, rtol=1e-4)


def test_sliding_window_pattern_stays_in_the_window():
    model = tiny(["sliding_window"])
    _, cache = run_cached(model, tokens(width=20), ["blocks.0.attn.hook_pattern"])
    A = cache["blocks.0.attn.hook_pattern"]
    distance = torch.arange(20)[:, None] - torch.arange(20)[None, :]
    assert A[..., (distance < 0) | (distance >= 5)].abs().max() == 0
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 2, 20))


def test_hook_state_matches_the_naive_recurrence():
    model = tiny(["delta_net"], short_conv=0)
    names = [f"blocks.0.attn.hook_{n}" for n in ("q", "k", "v", "beta", "state", "final_state")]
    _, cache = run_cached(model, tokens(width=20), names)
    q, k, v, beta, states, final = (cache[n] for n in names)
    _, ref_final, ref_states = naive_delta_net(q, k, v, beta, chunk_size=8, output_states=True)
    torch.testing.assert_close(states.double(), ref_states, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.double(), ref_final, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mixer", RECURRENT)
def test_identity_state_edit_reproduces_the_run(mixer):
    model = tiny(["softmax", mixer])
    x = tokens(2, 30)
    torch.testing.assert_close(run_with_state_edit(model, x, 1, 16, lambda s: s), model(x), atol=2e-5, rtol=1e-4)


def test_state_edit_changes_only_later_positions_and_is_the_hooked_state():
    model = tiny(["gated_delta_net", "softmax"])
    x = tokens(1, 30)
    seen = {}

    def keep(state):
        seen["state"] = state.clone()
        return torch.zeros_like(state)

    edited = run_with_state_edit(model, x, 0, 16, keep)
    _, cache = run_cached(model, x, ["blocks.0.attn.hook_state"])
    torch.testing.assert_close(seen["state"], cache["blocks.0.attn.hook_state"][:, :, 2])
    reference = model(x)
    torch.testing.assert_close(edited[:, :16], reference[:, :16])
    assert (edited[:, 16:] - reference[:, 16:]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("layer", "boundary", "edit", "fragment"),
    [
        pytest.param(0, 16, lambda s: s, "no recurrent state", id="softmax-layer"),
        pytest.param(1, 12, lambda s: s, "multiple of chunk_size", id="inside-a-chunk"),
        pytest.param(1, 32, lambda s: s, "strictly inside", id="at-the-end"),
        pytest.param(1, 16, lambda s: s[:, :1], "state's shape", id="wrong-shape"),
    ],
)
def test_bad_state_edits_are_refused(layer, boundary, edit, fragment):
    with pytest.raises(MechkitError, match=fragment):
        run_with_state_edit(tiny(["softmax", "linear"]), tokens(1, 32), layer, boundary, edit)


def test_states_are_read_only():
    model = tiny(["linear"])

    def edit(t, *, hook):
        return t * 2

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_final_state", edit)]):
        with pytest.raises(MechkitError, match="read-only"):
            model(tokens())


@pytest.mark.parametrize("mixer", ["linear", "based", "kaczmarz"])
def test_naive_kernel_gives_the_same_logits(mixer):
    chunk, naive = tiny([mixer]), tiny([mixer], kernel="naive")
    torch.testing.assert_close(naive(tokens()), chunk(tokens()), atol=1e-4, rtol=1e-4)


def test_triton_kernel_gives_the_same_logits_under_the_interpreter():
    script = (
        "import torch; from mechkit.native import NativeConfig, NativeModel\n"
        "cfg = dict(vocab_size=40, mixers=('delta_net', 'linear', 'based'), d_model=32, n_heads=1, d_head=16,\n"
        "           feature_dim=4, chunk_size=16)\n"
        "x = torch.randint(0, 40, (1, 20), generator=torch.Generator().manual_seed(0))\n"
        "a = NativeModel(NativeConfig(**cfg))(x); b = NativeModel(NativeConfig(**cfg, kernel='triton'))(x)\n"
        "print(float((a - b).abs().max()))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-4


def test_read_returns_the_logits_of_the_marked_positions():
    model, x = tiny(["softmax", "delta_net"], ngram_orders=(1,)), tokens()
    read = torch.zeros(x.shape, dtype=torch.bool)
    read[0, [3, 17]], read[1, 28] = True, True
    full = model(x)
    assert torch.allclose(model(x, read=read), full[read], atol=1e-6) and model(x, read=read).shape == (3, 40)
    for bad in ({"read": read[:, :5]}, {"read": read, "last_only": True}):
        with pytest.raises(MechkitError, match="read must be a boolean mask shaped like tokens"):
            model(x, **bad)


def test_weights_come_from_the_seed():
    config = NativeConfig(vocab_size=40, mixers=("kaczmarz",), d_model=16, d_head=16)
    a, b, c = NativeModel(config, seed=1), NativeModel(config, seed=1), NativeModel(config, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_state_sizes():
    model = tiny(["softmax", "linear", "based", "linear_normalized"])
    assert model.state_sizes() == [None, 2 * 16 * 16, 2 * (1 + 4 + 16) * 17, 2 * 16 * 17]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"mixers": ("softmax", "mamba")}, "unknown: \\['mamba'\\]", id="unknown-mixer"),
        pytest.param({"mixers": ()}, "non-empty", id="no-layers"),
        pytest.param({"mixers": ("linear",), "kernel": "cuda"}, "unknown kernel", id="bad-kernel"),
        pytest.param({"mixers": ("linear",), "token_names": ("a", "b")}, "token_names", id="short-vocabulary"),
        pytest.param({"mixers": ("softmax",), "d_head": 15}, "even d_head", id="odd-rotary-head"),
    ],
)
def test_bad_config_is_refused(kwargs, fragment):
    with pytest.raises(MechkitError, match=fragment):
        NativeModel(NativeConfig(vocab_size=40, **kwargs))


def test_too_long_input_is_refused():
    with pytest.raises(MechkitError, match="context of 64"):
        tiny(["linear"])(tokens(1, 65))
