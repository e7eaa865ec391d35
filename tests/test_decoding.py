"""Cached greedy decoding: same tokens and same per-head attention argmax as full recomputation."""

import pytest
import torch

from mechkit import HeadAblation, UniformAttention

PROMPTS = ["The quick brown fox jumps over the lazy dog. The quick", "Once upon a time"]


def reference_decode(subject, text, steps):
    """Full forward at every step on the Hugging Face model with eager attention, as the paper's code does."""
    hf = subject.hf_model
    ids = subject.tokenize(text).tokens
    tokens, argmax = [], []
    for _ in range(steps):
        with torch.no_grad():
            out = hf(ids, output_attentions=True)
        argmax.append(torch.stack([a[0, :, -1].argmax(-1) for a in out.attentions]))  # [layer, head]
        nxt = out.logits[0, -1].argmax()
        tokens.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tokens, torch.stack(argmax)


@pytest.mark.parametrize("fixture", ["tiny_nnsight", "tiny_gemma"])
def test_decode_matches_eager_reference(fixture, request):
    subject = request.getfixturevalue(fixture)
    for text in PROMPTS:
        decoded = subject.greedy_decode(text, max_new_tokens=12)
        tokens, argmax = reference_decode(subject, text, 12)
        assert decoded.generated(0) == tokens
        assert torch.equal(decoded.argmax[:, 0], argmax)


def test_backends_decode_alike(tiny_tl, tiny_nnsight):
    a = tiny_tl.greedy_decode(PROMPTS, max_new_tokens=10)
    b = tiny_nnsight.greedy_decode(PROMPTS, max_new_tokens=10)
    assert torch.equal(a.new_tokens, b.new_tokens) and torch.equal(a.argmax, b.argmax)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight", "tiny_gemma"])
def test_batched_decode_equals_unbatched_and_stops(fixture, request):
    subject = request.getfixturevalue(fixture)
    first = subject.greedy_decode(PROMPTS[1], max_new_tokens=8).generated(0)
    stop = first[3]
    batched = subject.greedy_decode(PROMPTS, max_new_tokens=8, stop_token_ids=[stop])
    for row, text in enumerate(PROMPTS):
        single = subject.greedy_decode(text, max_new_tokens=8, stop_token_ids=[stop])
        n = int(single.n_new[0])
        assert batched.generated(row) == single.generated(0)
        assert torch.equal(batched.argmax[:n, row], single.argmax[:n, 0])
        assert (batched.argmax[n:, row] == -1).all()
    assert batched.generated(1)[-1] == stop and int(batched.n_new[1]) <= 4


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight", "tiny_gemma"])
def test_decode_with_interventions_matches_full_recomputation(fixture, request):
    subject = request.getfixturevalue(fixture)
    interventions = [UniformAttention("L1H0,L2H3"), HeadAblation("L0H2", mode="mean")]
    decoded = subject.greedy_decode(PROMPTS[0], max_new_tokens=6, interventions=interventions, track_heads=False)
    batch = subject.tokenize(PROMPTS[0])
    ids = batch.tokens
    _, cache = subject.run_with_cache(batch, names_filter="blocks.0.attn.hook_z")
    means = {0: torch.zeros(subject.n_heads, subject.d_head)}
    means[0][2] = cache["blocks.0.attn.hook_z"][0, :, 2].mean(0)  # the prompt's mean, as decoding fixes it
    fixed = [interventions[0], HeadAblation("L0H2", mode="mean", means=means)]
    for token in decoded.generated(0):
        logits = subject.run_with_hooks(ids, interventions=fixed, last_only=True)
        assert int(logits[0, -1].argmax()) == token
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
