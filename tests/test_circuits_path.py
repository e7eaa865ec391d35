"""Path patching: the toy's known paths, the closed form against a hand computation, runs against the closed form,
receivers, grouped-query receivers, backends, batching, signs and refusals."""

from __future__ import annotations

import pytest
import torch

from mechkit.circuits.path_patching import direct_path_patching, path_patching
from mechkit.errors import HeadSpecError, MechkitError

from circuit_toys import SCALE, induction_examples, toy, toy_examples  # noqa: F401
from test_circuits_eap import random_task, tl_model


def test_the_direct_path_is_the_head_that_writes_the_answer(toy, toy_examples):  # noqa: F811
    """Measured: L1H2 20.00 (normalized 1.0045), L0H1 exactly 0 (it writes only the pointer block, which the
    unembedding does not read), the distractors |.| <= 0.11 (through the weakly unembedded junk block)."""
    result = direct_path_patching(toy, toy_examples, verbose=False)
    scores = result.scores
    assert scores.top(1)[0][0].label == "L1H2"
    assert scores["L1H2"] == pytest.approx(SCALE, abs=0.5)
    assert result.normalized["L1H2"] == pytest.approx(1.0, abs=0.02)
    assert scores["L0H1"] == 0.0
    assert max(abs(s) for h, s in scores.top(8) if h.label != "L1H2") < 0.25


def test_runs_equal_the_closed_form_without_a_final_norm(toy, toy_examples):  # noqa: F811
    closed = direct_path_patching(toy, toy_examples, verbose=False).scores.scores
    runs = path_patching(toy, toy_examples, verbose=False).scores.scores
    torch.testing.assert_close(runs, closed, atol=1e-4, rtol=0)


def test_two_step_path_patching_finds_the_sender_through_its_receiver(toy, toy_examples):  # noqa: F811
    """L0H1 reaches the logits only through L1H2's query: the whole effect there, nothing through its key or
    through the distractors; layer-1 senders have no path into layer 1 (NaN)."""
    via_q = path_patching(toy, toy_examples, receivers="L1H2", verbose=False).scores
    assert via_q["L0H1"] == pytest.approx(SCALE, abs=0.5)
    assert max(abs(via_q[(0, h)]) for h in (0, 2, 3)) < 1e-3
    assert all(via_q[(1, h)] != via_q[(1, h)] for h in range(4))
    via_k = path_patching(toy, toy_examples, receivers="L1H2", receiver_input="k", verbose=False).scores
    assert abs(via_k["L0H1"]) < 1e-3
    others = path_patching(toy, toy_examples, receivers=["L1H0", "L1H1", "L1H3"], verbose=False).scores
    assert others["L0H1"] == 0.0


@pytest.mark.parametrize("norm", ["LN", "RMS"])
def test_the_closed_form_equals_a_hand_computation(norm):
    """(z_pos - z_ref) W_O at the last position, centered for LayerNorm, divided by the final norm's scale of the
    positives' run, times the norm weight, through W_U[answer] - W_U[wrong]; float64."""
    subject = tl_model(seed=5, normalization_type=norm)
    examples = random_task(seed=5, mixed=False)
    result = direct_path_patching(subject, examples, min_accuracy=0.0, verbose=False)
    model = subject.model
    names = ["blocks.2.hook_resid_post"] + [f"blocks.{l}.attn.hook_z" for l in range(3)]
    _, pos = subject.run_with_cache(examples.positives, names)
    _, neg = subject.run_with_cache(examples.negatives, names)
    x = pos["blocks.2.hook_resid_post"][:, -1]
    if norm == "LN":
        x = x - x.mean(-1, keepdim=True)
    scale = (x.pow(2).mean(-1) + model.cfg.eps).sqrt()
    rows = torch.arange(len(examples))
    for layer in range(3):
        for head in range(4):
            dz = (pos[names[layer + 1]] - neg[names[layer + 1]])[:, -1, head]
            write = dz @ model.blocks[layer].attn.W_O[head]
            if norm == "LN":
                write = write - write.mean(-1, keepdim=True)
            logits = (write / scale[:, None] * model.ln_final.w) @ model.W_U
            expected = (logits[rows, examples.answer_ids] - logits[rows, examples.wrong_ids]).mean().item()
            assert result.scores[(layer, head)] == pytest.approx(expected, rel=1e-5, abs=1e-8)  # Subject.W_U: fp32
    assert result.scores.scores.abs().max() > 0.05


def test_the_closed_form_refuses_a_norm_after_attention_and_runs_do_not(tiny_gemma):
    examples = random_task(seed=6)
    with pytest.raises(MechkitError, match="do not write z W_O into the residual stream"):
        direct_path_patching(tiny_gemma, examples, min_accuracy=0.0, verbose=False)
    runs = path_patching(tiny_gemma, examples, min_accuracy=0.0, verbose=False).scores.scores
    assert torch.isfinite(runs).all() and runs.abs().max() > 0.01


def test_backends_agree_and_grouped_query_receivers_share_their_key_value_head(tiny_tl, tiny_nnsight):
    examples = random_task(seed=7)
    for run in (lambda s: direct_path_patching(s, examples, min_accuracy=0.0, verbose=False),
                lambda s: path_patching(s, examples, min_accuracy=0.0, verbose=False),
                lambda s: path_patching(s, examples, ["L2H0"], "k", min_accuracy=0.0, verbose=False)):
        torch.testing.assert_close(run(tiny_tl).scores.scores, run(tiny_nnsight).scores.scores, atol=1e-4, rtol=0,
                                   equal_nan=True)
    one = path_patching(tiny_tl, examples, ["L2H0"], "v", min_accuracy=0.0, verbose=False).scores.scores
    pair = path_patching(tiny_tl, examples, ["L2H0", "L2H1"], "v", min_accuracy=0.0, verbose=False).scores.scores
    other = path_patching(tiny_tl, examples, ["L2H2"], "v", min_accuracy=0.0, verbose=False).scores.scores
    torch.testing.assert_close(one, pair, equal_nan=True)  # query heads 0 and 1 read key/value head 0
    assert not torch.allclose(one[:2], other[:2])


def test_swapping_answer_and_wrong_flips_every_score(tiny_tl):
    """The PH3 reading: with answer = memory and wrong = context token, memory heads score > 0, context heads < 0."""
    examples = random_task(seed=8)
    swapped = type(examples)("swapped", examples.positives, examples.negatives, examples.wrong_ids,
                             examples.answer_ids)
    for run in (direct_path_patching, path_patching):
        a = run(tiny_tl, examples, min_accuracy=0.0, verbose=False).scores.scores
        b = run(tiny_tl, swapped, min_accuracy=0.0, verbose=False).scores.scores
        torch.testing.assert_close(a, -b, atol=1e-5, rtol=0)
        assert a.abs().max() > 0.05


def test_batched_equals_unbatched_and_runs_are_deterministic(toy):  # noqa: F811
    examples = induction_examples(n=10)
    for run in (direct_path_patching, lambda *a, **k: path_patching(*a, receivers="L1H2", **k)):
        one = run(toy, examples, batch_size=32, verbose=False).scores.scores
        split = run(toy, examples, batch_size=3, verbose=False).scores.scores
        again = run(toy, examples, batch_size=32, verbose=False).scores.scores
        torch.testing.assert_close(one, split, atol=1e-4, rtol=0, equal_nan=True)
        assert torch.equal(one.nan_to_num(7.0), again.nan_to_num(7.0))


def test_bad_receivers_are_refused(toy, toy_examples):  # noqa: F811
    with pytest.raises(MechkitError, match="unknown receiver_input 'o'"):
        path_patching(toy, toy_examples, receivers="L1H2", receiver_input="o", verbose=False)
    with pytest.raises(MechkitError, match="receivers is empty"):
        path_patching(toy, toy_examples, receivers=[], verbose=False)
    with pytest.raises(HeadSpecError):
        path_patching(toy, toy_examples, receivers="L5H0", verbose=False)
