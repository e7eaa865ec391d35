"""The Subject on the packaged pretrained models (marked `real`; CI runs them after fetching both models)."""

import math
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.real

PARAGRAPH = (Path(__file__).parent / "data" / "paragraph.txt").read_text().strip()


def test_gemma_perplexity_on_a_fixed_paragraph_is_low(gemma_tl):
    losses = gemma_tl.token_losses(PARAGRAPH)
    perplexity = math.exp(float(losses.nanmean()))
    assert perplexity < 30, perplexity


def test_gemma_attention_rows_equal_pattern_beyond_the_sliding_window(gemma_tl):
    batch = gemma_tl.tokenize(" ".join([PARAGRAPH] * 4))
    width = batch.shape[1]
    assert width > 600
    sliding, full = 0, 5  # Gemma 3: layers 5, 11, 17 are global, the others slide over 512 tokens
    assert gemma_tl.attention_rule(sliding).window == 512 and gemma_tl.attention_rule(full).window is None
    queries = [0, 300, 520, width - 1]
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in (sliding, full)]
    _, cache = gemma_tl.run_with_cache(batch, names_filter=names)
    rows = gemma_tl.attention_rows(batch, [sliding, full], queries)
    for layer in (sliding, full):
        expected = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, queries]
        assert torch.allclose(rows[layer], expected, atol=1e-5)
    last = rows[sliding][0, :, -1]
    assert (last[:, : width - 512] == 0).all() and (last[:, width - 512:].sum(-1) - 1).abs().max() < 1e-5
    assert (rows[full][0, :, -1, : width - 512].sum(-1) > 0).all()


def test_smollm_attention_rows_equal_pattern(smollm_tl):
    batch = smollm_tl.tokenize([PARAGRAPH, PARAGRAPH[:200]])
    layers = [0, 14, 29]
    _, cache = smollm_tl.run_with_cache(batch, names_filter=[f"blocks.{l}.attn.hook_pattern" for l in layers])
    rows = smollm_tl.attention_rows(batch, layers, [-1, -5, 40])
    for layer in layers:
        expected = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, [-1, -5, 40]]
        assert torch.allclose(rows[layer][0], expected[0], atol=1e-5)
        assert torch.allclose(rows[layer][1, :, :2], expected[1, :, :2], atol=1e-5)  # row 1's position 40 is pad


@pytest.mark.parametrize("fixture", ["gemma_tl", "smollm_tl"])
def test_real_batched_equals_unbatched(fixture, request):
    subject = request.getfixturevalue(fixture)
    texts = [PARAGRAPH[:400], PARAGRAPH[:120]]
    batch = subject.tokenize(texts)
    rows = subject.attention_rows(batch, [2], [-1])[2]
    logits = subject.run_with_hooks(batch, last_only=True)
    for i, text in enumerate(texts):
        single = subject.tokenize(text)
        assert torch.allclose(rows[i][..., -single.shape[1]:], subject.attention_rows(single, 2, [-1])[0], atol=1e-5)
        assert torch.allclose(logits[i], subject.run_with_hooks(single, last_only=True)[0], atol=1e-3)


@pytest.mark.parametrize(("fixture", "bos"), [("gemma_tl", "<bos>"), ("smollm_tl", "<|im_start|>")])
def test_raw_text_starts_with_exactly_one_bos(fixture, bos, request):
    subject = request.getfixturevalue(fixture)
    tokens = subject.tokenize("Hello world").tokens[0].tolist()
    assert subject.tokenizer.convert_ids_to_tokens(tokens[:2])[0] == bos and tokens[1] != tokens[0]
    assert subject.tokenize("Hello world", prepend_bos=False).tokens[0].tolist() == tokens[1:]


def test_gemma_nnsight_backend_agrees_with_transformer_lens(gemma_tl, gemma_nnsight):
    """The nnsight backend (HF sdpa attention) gives the same rows beyond the window, hooks and logits."""
    batch = gemma_tl.tokenize([" ".join([PARAGRAPH] * 3), PARAGRAPH])
    queries = [-1, 530]
    rows_tl = gemma_tl.attention_rows(batch, [0, 5], queries)
    rows_nn = gemma_nnsight.attention_rows(batch, [0, 5], queries)
    for layer in (0, 5):
        assert torch.allclose(rows_nn[layer], rows_tl[layer], atol=1e-5)
    names = ["blocks.3.attn.hook_z", "blocks.3.hook_attn_out", "blocks.3.hook_resid_mid", "blocks.3.hook_mlp_out"]
    logits_tl, cache_tl = gemma_tl.run_with_cache(batch, names_filter=names, last_only=True)
    logits_nn, cache_nn = gemma_nnsight.run_with_cache(batch, names_filter=names, last_only=True)
    real = batch.attention_mask.bool()
    for name in names:
        scale = cache_tl[name][real].abs().max()
        assert (cache_nn[name][real] - cache_tl[name][real]).abs().max() < 1e-4 * scale, name
    assert (logits_nn - logits_tl).abs().max() < 1e-3 * logits_tl.abs().max()
