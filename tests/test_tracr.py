"""tracr ground truths: exact conversion to TransformerLens, true head sets, errors.

tracr and JAX are imported unguarded: CI installs them (mechkit[circuits]), so a missing install fails here.
Every program is checked on every sequence over its vocabulary of length 1..max_seq_len (363 sequences for the
3-token programs, 126 for pair_balance, 340 for shuffle_dyck2).
"""

from __future__ import annotations

import einops
import jax  # noqa: F401  (a missing JAX must fail, not skip)
import numpy as np
import pytest
import torch
import tracr  # noqa: F401
from tracr.rasp import rasp

from mechkit.circuits import tracr_models as tm
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, parse_heads

# Known answers, read off tracr's layer allocation of each program graph.
EXPECTED_TRUE_HEADS = {
    "reverse": "L0H0,L3H0",  # length (SelectorWidth), reverse (Aggregate)
    "sort": "L1H0,L2H0",  # target_pos (SelectorWidth), sort (Aggregate)
    "hist": "L0H0",  # hist (SelectorWidth)
    "frac_prevs": "L1H0",  # frac_prevs (numerical Aggregate); layer 0 attention is padding
    "pair_balance": "L1H0,L1H1",  # opens, closes (numerical Aggregates)
    "shuffle_dyck2": "L0H0,L1H0,L1H1,L1H2,L1H3,L5H0,L6H0",  # length; opens/closes x2; last_zero; has_neg
}
TOL = 1e-5  # float32: residual stream, logits and numerical outputs agree to 1e-5 absolute + 1e-5 relative

_CACHE: dict[str, tuple[tm.TracrProgram, object]] = {}


def _compiled(name: str) -> tuple[tm.TracrProgram, object]:
    if name not in _CACHE:
        compiled = tm.compile_program(name)
        _CACHE[name] = (compiled, tm.to_hooked_transformer(compiled))
    return _CACHE[name]


def test_registry_has_programs_with_metadata() -> None:
    assert set(EXPECTED_TRUE_HEADS) == set(tm.PROGRAMS)
    for name, spec in tm.PROGRAMS.items():
        assert spec.name == name and spec.vocab and spec.max_seq_len >= 4 and spec.compiler_bos not in spec.vocab


@pytest.mark.parametrize("name", sorted(tm.PROGRAMS))
def test_weights_are_copied_exactly(name: str) -> None:
    compiled, model = _compiled(name)
    params = compiled.assembled.params
    assert model.cfg.dtype == torch.float32 and model.cfg.normalization_type is None
    assert np.array_equal(model.W_E.detach().numpy(), np.asarray(params["token_embed"]["embeddings"]))
    assert np.array_equal(model.W_pos.detach().numpy(), np.asarray(params["pos_embed"]["embeddings"]))
    for layer in range(compiled.n_layers):
        attn = f"transformer/layer_{layer}/attn"
        for tl_name, tracr_name in (("Q", "query"), ("K", "key"), ("V", "value")):
            w = einops.rearrange(model.blocks[layer].attn.state_dict()[f"W_{tl_name}"].numpy(), "h d k -> d (h k)")
            assert np.array_equal(w, np.asarray(params[f"{attn}/{tracr_name}"]["w"]))
        w_o = einops.rearrange(model.blocks[layer].attn.W_O.detach().numpy(), "h k d -> (h k) d")
        assert np.array_equal(w_o, np.asarray(params[f"{attn}/linear"]["w"]))
        if not model.cfg.attn_only:
            w_in = model.blocks[layer].mlp.W_in.detach().numpy()
            assert np.array_equal(w_in, np.asarray(params[f"transformer/layer_{layer}/mlp/linear_1"]["w"]))


@pytest.mark.parametrize("name", sorted(tm.PROGRAMS))
def test_converted_model_matches_tracr_on_every_input(name: str) -> None:
    compiled, model = _compiled(name)
    n_checked = 0
    for seqs in tm.all_inputs(compiled).values():
        ref, got = tm.run_tracr(compiled, seqs), tm.run_converted(compiled, model, seqs)
        np.testing.assert_allclose(got.residuals, ref.residuals, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(got.logits, ref.logits, rtol=TOL, atol=TOL)
        for seq, ref_out, got_out in zip(seqs, ref.decoded, got.decoded):
            truth = rasp.evaluate(compiled.program, list(seq))  # the program's own semantics
            if compiled.categorical:
                assert got_out == ref_out == list(truth), seq
            else:
                np.testing.assert_allclose(got_out, ref_out, rtol=TOL, atol=TOL, err_msg=str(seq))
                np.testing.assert_allclose(ref_out, np.asarray(truth, dtype=float), atol=1e-3, err_msg=str(seq))
        n_checked += len(seqs)
    assert n_checked == sum(len(compiled.spec.vocab) ** n for n in range(1, compiled.spec.max_seq_len + 1))


def test_batched_tracr_run_equals_tracr_apply() -> None:
    compiled, _ = _compiled("reverse")
    seqs = [("a", "b", "c", "c", "a"), ("c", "a", "b", "b", "b")]
    batched = tm.run_tracr(compiled, seqs).decoded
    assert batched == [compiled.assembled.apply([compiled.spec.compiler_bos, *s]).decoded[1:] for s in seqs]
    assert batched[0] == ["a", "c", "c", "b", "a"]


@pytest.mark.parametrize("name", sorted(tm.PROGRAMS))
def test_true_heads_are_the_nonzero_heads_and_pass_ablation(name: str) -> None:
    compiled, model = _compiled(name)
    heads = tm.true_heads(compiled)
    assert heads and heads == parse_heads(EXPECTED_TRUE_HEADS[name])
    assert all(isinstance(h, HeadId) for h in heads) and set(compiled.head_labels) == set(heads)
    weight_norm = sum(
        getattr(model, w).detach().abs().sum(dim=(-1, -2)) for w in ("W_Q", "W_K", "W_V", "W_O")
    )  # [n_layers, n_heads]
    nonzero = {HeadId(layer, head) for layer, head in torch.nonzero(weight_norm).tolist()}
    assert nonzero == set(heads)
    changes = tm.head_ablation_changes(compiled, model)  # [n_layers, n_heads] inputs whose output changed
    for layer in range(compiled.n_layers):
        for head in range(compiled.n_heads):
            if HeadId(layer, head) in heads:
                assert changes[layer, head] > 0, f"ablating true head L{layer}H{head} never changed the output"
            else:
                assert changes[layer, head] == 0, f"ablating padding head L{layer}H{head} changed the output"


def test_unknown_program_is_a_clear_error() -> None:
    with pytest.raises(tm.UnknownTracrProgramError, match=r"unknown tracr program 'nope'; choose one of") as info:
        tm.compile_program("nope")
    assert isinstance(info.value, MechkitError)
    assert all(name in str(info.value) for name in tm.PROGRAMS)


def test_bad_inputs_are_clear_errors() -> None:
    compiled, _ = _compiled("hist")
    with pytest.raises(tm.TracrInputError, match="not in the vocabulary"):
        tm.encode_inputs(compiled, [("a", "z")])
    with pytest.raises(tm.TracrInputError, match="1 to 5 tokens"):
        tm.encode_inputs(compiled, [("a",) * 6])
    with pytest.raises(tm.TracrInputError, match="equal-length"):
        tm.encode_inputs(compiled, [("a",), ("a", "b")])
