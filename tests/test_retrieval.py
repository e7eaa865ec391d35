"""Retrieval-head scores equal a literal re-implementation of the paper's code (HF eager attention,
output_attentions=True at every decode step), trial by trial and head by head."""

import dataclasses

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from mechkit.heads import HeadId, random_heads
from mechkit.niah import Needle, builtin_haystack, build_trial, rouge1_recall
from mechkit.probes.retrieval import (
    TrialOutcome,
    newline_stop_ids,
    retrieval_hits,
    retrieval_scores,
    run_trials,
)


def paper_reference(subject, input_ids, answer_span, stops, max_steps):
    """retrieval_head_detection.py: prefill input[:-1], then decode from the last prompt token with eager
    attention; per step and head, topk(1) of the last attention row; a hit adds 1/(end - start).

    The code indexes the returned attention row by prompt position. Hugging Face's default cache for
    sliding-window models keeps only the window, which would shift those indices, so the reference uses a full
    DynamicCache (the paper's models had no sliding window)."""
    hf = subject.hf_model
    start, end = answer_span
    ids = torch.tensor([input_ids])
    score = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    argmax = []
    implementation = hf.config._attn_implementation
    hf.set_attn_implementation("eager")  # attention probabilities are only returned by the eager path
    with torch.no_grad():
        out = hf(ids[:, :-1], use_cache=True, past_key_values=DynamicCache())
        past, inp, generated = out.past_key_values, ids[:, -1], []
        for _ in range(max_steps):
            out = hf(input_ids=inp.view(1, 1), past_key_values=past, use_cache=True, output_attentions=True)
            past = out.past_key_values
            inp = out.logits[0, -1].argmax()
            generated.append(int(inp))
            argmax.append(torch.stack([attn[0, :, -1].topk(1).indices[:, 0] for attn in out.attentions]))
            for layer, attn in enumerate(out.attentions):
                for head in range(subject.n_heads):
                    i = int(attn[0, head, -1].topk(1).indices[0])
                    if start <= i < end and input_ids[i] == int(inp):
                        score[layer, head] += 1 / (end - start)
            if int(inp) in stops:
                break
    hf.set_attn_implementation(implementation)
    return generated, score, torch.stack(argmax)


def test_hits_follow_the_paper_rule_on_a_hand_built_case():
    argmax = torch.full((3, 2, 2), 0)
    argmax[0, 1, 0] = 5  # step 0, L1H0 looks at position 5, which holds token 42 == generated[0]
    argmax[1, 1, 0] = 6  # step 1: position 6 holds 43 == generated[1]
    argmax[1, 0, 1] = 9  # outside the span (5, 8)
    argmax[2, 1, 1] = 7  # in the span but holds 44 while 99 was generated
    hits = retrieval_hits(argmax, [42, 43, 99], list(range(37, 47)), (5, 8))
    expected = torch.zeros(2, 2, dtype=torch.float64)
    expected[1, 0] = 2 / 3
    assert torch.equal(hits, expected)


def test_scores_average_counted_trials_only(tiny_nnsight):
    outcomes = [
        TrialOutcome("a", 0, 100, 0, 100, "x", 1.0, True, [[0, 1, 0.5], [2, 3, 1.0]]),
        TrialOutcome("b", 0, 100, 50, 100, "x", 1.0, True, [[0, 1, 1.0]]),
        TrialOutcome("c", 0, 100, 100, 100, "y", 0.0, False, []),
    ]
    scores = retrieval_scores(tiny_nnsight, outcomes, config={})
    assert scores.n_items == 2 and scores[HeadId(0, 1)] == 0.75 and scores[HeadId(2, 3)] == 0.5
    assert scores[HeadId(1, 1)] == 0.0


def _span_everything(trial):
    """Make every prompt token part of the 'answer' so random tiny models produce hits to compare."""
    return dataclasses.replace(trial, answer_span=(0, len(trial.input_ids)))


@pytest.mark.parametrize("fixture", ["tiny_nnsight", "tiny_gemma", "tiny_tl"])
def test_decode_hits_equal_paper_reference_on_tiny_models(fixture, request, tiny_nnsight):
    subject = request.getfixturevalue(fixture)
    reference_subject = subject if hasattr(subject, "hf_model") else tiny_nnsight
    haystack = builtin_haystack()
    needle = Needle("The code word is bright lantern.", "What is the code word?", "bright lantern")
    stops = newline_stop_ids(subject.tokenizer)
    for depth in (0, 60):
        trial = _span_everything(build_trial(subject.tokenizer, haystack, needle, 120, depth, prepend_bos=True,
                                             chat=False))
        decoded = subject.greedy_decode(torch.tensor(trial.input_ids), 10, stops)
        generated = decoded.generated(0)
        ours = retrieval_hits(decoded.argmax[:, 0], generated, trial.input_ids, trial.answer_span)
        ref_generated, ref, ref_argmax = paper_reference(reference_subject, trial.input_ids, trial.answer_span,
                                                         stops, 10)
        assert generated == ref_generated
        assert torch.equal(decoded.argmax[:, 0], ref_argmax)  # random weights rarely copy: compare the argmaxes
        assert torch.allclose(ours, ref)


def test_random_heads_exclude_the_top_list_and_follow_the_seed():
    top = [HeadId(0, 0), HeadId(1, 2)]
    a = random_heads(3, 4, 5, top, np.random.default_rng(7))
    b = random_heads(3, 4, 5, top, np.random.default_rng(7))
    assert a == b and len(set(a)) == 5 and not set(a) & set(top)


@pytest.mark.real
def test_gemma_scores_equal_paper_reference_trial_by_trial(gemma_nnsight):
    subject = gemma_nnsight
    haystack = builtin_haystack()
    needle = Needle("The secret password for the vault is purple elephant.", "What is the secret password for the vault?",
                    "purple elephant")
    trials = [build_trial(subject.tokenizer, haystack, needle, length, depth, prepend_bos=True, chat=False)
              for length, depth in [(300, 30), (400, 80)]]
    outcomes = run_trials(subject, trials, max_new_tokens=12, verbose=False)
    stops = newline_stop_ids(subject.tokenizer)
    for trial, outcome in zip(trials, outcomes):
        generated, ref, _ = paper_reference(subject, trial.input_ids, trial.answer_span, stops, 12)
        response = subject.tokenizer.decode(generated, skip_special_tokens=True).strip()
        assert outcome.response == response
        assert outcome.recall == rouge1_recall(needle.answer, response)
        if outcome.counted:
            assert torch.allclose(outcome.hit_tensor(subject.n_layers, subject.n_heads), ref)
    assert any(o.counted for o in outcomes), [o.response for o in outcomes]
