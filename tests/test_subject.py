"""Subject on tiny random models: exact attention rows, backends agree, batching, interventions, bad input."""

import pytest
import torch

import mechkit
from mechkit import HeadAblation, UniformAttention
from mechkit.batch import Batch
from mechkit.errors import ContextTooLongError, HeadSpecError, MechkitError, UnknownModelError

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi there", "Attention is all you need, they said."]


def test_attention_rows_equal_transformer_lens_pattern(tiny_tl):
    batch = tiny_tl.tokenize(TEXTS)
    width = batch.tokens.shape[1]
    _, cache = tiny_tl.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_pattern"))
    rows = tiny_tl.attention_rows(batch, list(range(tiny_tl.n_layers)), list(range(width)))
    real = batch.attention_mask.bool()
    for layer, got in rows.items():
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
        for b in range(len(batch)):
            q = real[b]
            assert torch.allclose(got[b][:, q], pattern[b][:, q], atol=1e-5)


def test_attention_rows_equal_eager_attention_with_window_qk_norm_and_gqa(tiny_gemma):
    """tiny:gemma3 has a 4-token window on layers 0 and 2, q/k norms and 2 heads per key/value head."""
    batch = tiny_gemma.tokenize(TEXTS[0])
    width = batch.tokens.shape[1]
    with torch.no_grad():
        eager = tiny_gemma.hf_model(batch.tokens, attention_mask=batch.attention_mask, output_attentions=True)
    rows = tiny_gemma.attention_rows(batch, [0, 1, 2], list(range(width)))
    for layer in range(3):
        assert torch.allclose(rows[layer], eager.attentions[layer], atol=1e-5)
    beyond = rows[0][0, :, -1]  # last query of a window layer sees only the last 4 keys
    assert (beyond[:, :-4] == 0).all() and torch.allclose(beyond[:, -4:].sum(-1), torch.ones(4))


def test_backends_give_the_same_activations(tiny_tl, tiny_nnsight):
    batch = tiny_tl.tokenize(TEXTS)
    logits_tl, cache_tl = tiny_tl.run_with_cache(batch, names_filter=tiny_nnsight.hook_names)
    logits_nn, cache_nn = tiny_nnsight.run_with_cache(batch)
    real = batch.attention_mask.bool()
    assert set(cache_nn) == set(tiny_nnsight.hook_names) and set(cache_nn) <= set(cache_tl)
    for name, value in cache_nn.items():
        assert torch.allclose(value[real], cache_tl[name][real], atol=1e-4), name
    assert torch.allclose(logits_nn[real], logits_tl[real], atol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight", "tiny_gemma"])
def test_batched_equals_unbatched(fixture, request):
    subject = request.getfixturevalue(fixture)
    batch = subject.tokenize(TEXTS)
    rows = subject.attention_rows(batch, 1, [-1, -3])
    logits = subject.run_with_hooks(batch, last_only=True)
    losses = subject.token_losses(batch)
    for i, text in enumerate(TEXTS):
        single = subject.tokenize(text)
        n_keys = single.shape[1]
        assert torch.allclose(rows[i][:, :, -n_keys:], subject.attention_rows(single, 1, [-1, -3])[0], atol=1e-5)
        assert (rows[i][:, :, :-n_keys] == 0).all()  # padding keys get no attention
        assert torch.allclose(logits[i], subject.run_with_hooks(single, last_only=True)[0], atol=1e-4)
        n = single.shape[1] - 1
        assert torch.allclose(losses[i, -n:], subject.token_losses(single)[0], atol=1e-4)


def test_uniform_masking_makes_rows_uniform_and_matches_the_pattern_definition(tiny_tl, tiny_nnsight):
    heads = ["L1H2", "L2H0"]
    batch = tiny_tl.tokenize(TEXTS)
    mask = UniformAttention(heads)
    rows = tiny_tl.attention_rows(batch, 1, [-1], interventions=[mask])
    lengths = batch.lengths
    for b in range(len(batch)):
        row = rows[b, 2, 0]
        assert torch.allclose(row[-lengths[b]:], torch.full((int(lengths[b]),), 1 / float(lengths[b])), atol=1e-6)
    assert not torch.allclose(rows[0, 1, 0], rows[0, 2, 0])  # other heads untouched

    def uniform_pattern(head):
        def hook(pattern, *, hook):
            allowed = torch.ones_like(pattern[:, 0]).tril() * batch.attention_mask[:, None, :]
            pattern = pattern.clone()
            pattern[:, head] = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)
            return pattern
        return hook

    by_pattern = tiny_tl.run_with_hooks(batch, fwd_hooks=[("blocks.1.attn.hook_pattern", uniform_pattern(2)),
                                                          ("blocks.2.attn.hook_pattern", uniform_pattern(0))])
    by_intervention = tiny_tl.run_with_hooks(batch, interventions=[mask])
    on_nnsight = tiny_nnsight.run_with_hooks(batch, interventions=[mask])
    real = batch.attention_mask.bool()
    assert torch.allclose(by_intervention[real], by_pattern[real], atol=1e-4)
    assert torch.allclose(on_nnsight[real], by_pattern[real], atol=1e-4)
    assert not torch.allclose(by_intervention[real], tiny_tl.run_with_hooks(batch)[real], atol=1e-2)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight"])
def test_ablations_and_patching_compose(fixture, request):
    subject = request.getfixturevalue(fixture)
    batch = subject.tokenize(TEXTS)
    zero = HeadAblation("L0H1,L2H3")
    mean = HeadAblation([(1, 0)], mode="mean")
    _, cache = subject.run_with_cache(batch, names_filter=lambda n: n.endswith("hook_z"), interventions=[zero, mean])
    assert (cache["blocks.0.attn.hook_z"][:, :, 1] == 0).all()
    assert (cache["blocks.2.attn.hook_z"][:, :, 3] == 0).all()
    _, clean = subject.run_with_cache(batch, names_filter="blocks.1.attn.hook_z", interventions=[zero])
    real = batch.attention_mask.bool()
    expected_mean = clean["blocks.1.attn.hook_z"][:, :, 0][real].mean(0)
    assert torch.allclose(cache["blocks.1.attn.hook_z"][0, -1, 0], expected_mean, atol=1e-5)

    source = subject.tokenize(["The quack brown fox jumps over the lazy dog."])
    target = subject.tokenize(["The quick brown fox jumps over the lazy dog."])
    patch = subject.patch_from("blocks.1.hook_resid_pre", source)
    patched = subject.run_with_hooks(target, interventions=[patch], last_only=True)
    assert torch.allclose(patched, subject.run_with_hooks(source, last_only=True), atol=1e-5)
    partial = subject.run_with_hooks(target, interventions=[zero, patch], last_only=True)
    assert not torch.allclose(partial, patched, atol=1e-3)  # composes with the ablation


def test_head_results_sum_to_attention_output(tiny_tl):
    batch = tiny_tl.tokenize(TEXTS[:1])
    results = tiny_tl.head_results(batch, 1)
    _, cache = tiny_tl.run_with_cache(batch, names_filter="blocks.1.hook_attn_out")
    assert results.shape == (1, batch.shape[1], 4, tiny_tl.d_model)
    assert torch.allclose(results.sum(2), cache["blocks.1.hook_attn_out"], atol=1e-5)


def test_tiny_models_are_deterministic():
    a = mechkit.load("tiny:gemma3", backend="nnsight")
    b = mechkit.load("tiny:gemma3", backend="nnsight")
    batch = a.tokenize(TEXTS)
    assert torch.equal(a.run_with_hooks(batch), b.run_with_hooks(batch))


def test_bad_input_is_refused_with_a_clear_message(tiny_tl):
    with pytest.raises(ContextTooLongError, match="longer than"):
        tiny_tl.tokenize("x" * 400)
    with pytest.raises(HeadSpecError):
        tiny_tl.heads("L9H0")
    with pytest.raises(HeadSpecError):
        tiny_tl.run_with_hooks("hello", interventions=[HeadAblation("L0H7")])
    with pytest.raises(MechkitError, match="unknown hook name"):
        tiny_tl.run_with_hooks("hello", fwd_hooks=[("blocks.0.hook_nothing", lambda t, hook: t)])
    with pytest.raises(MechkitError, match="outside a sequence"):
        tiny_tl.attention_rows("hello", 0, [99])
    with pytest.raises(UnknownModelError, match="gemma-3-270m"):
        mechkit.load("gpt-17")
    with pytest.raises(MechkitError, match="unsupported dtype"):
        mechkit.load("tiny:llama", dtype="int8")


def test_hub_name_in_the_local_hf_cache_loads_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from mechkit.models.tiny import tiny_model

    snapshot = tmp_path / "models--mechkit-test--tiny" / "snapshots" / "abc123"
    model, tokenizer = tiny_model("llama", seed=3)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (tmp_path / "models--mechkit-test--tiny" / "refs").mkdir()
    (tmp_path / "models--mechkit-test--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    subject = mechkit.load("mechkit-test/tiny", backend="nnsight")
    batch = subject.tokenize("hello")
    with torch.no_grad():
        expected = model(batch.tokens).logits
    assert torch.allclose(subject.run_with_hooks(batch), expected, atol=1e-5)


def test_iter_attention_rows_streams_the_same_rows(tiny_tl):
    batch = tiny_tl.tokenize(TEXTS)
    together = tiny_tl.attention_rows(batch, [0, 2], [-1, 5])
    streamed = list(tiny_tl.iter_attention_rows(batch, [0, 2], [-1, 5]))
    assert [layer for layer, _ in streamed] == [0, 2]
    for layer, rows in streamed:
        assert torch.equal(rows, together[layer])


def test_hook_name_shorthands_and_filters():
    from mechkit.hooks import act_name, hook_layer, make_filter

    assert act_name("pattern", 3) == "blocks.3.attn.hook_pattern"
    assert act_name("resid_post", 5) == "blocks.5.hook_resid_post"
    assert act_name("embed") == "hook_embed" and act_name("ln_final") == "ln_final.hook_normalized"
    assert hook_layer("blocks.12.attn.hook_z") == 12 and hook_layer("hook_embed") is None
    names = ["blocks.0.attn.hook_z", "blocks.0.hook_resid_post", "blocks.1.attn.hook_z"]
    assert [n for n in names if make_filter("blocks.0.attn.hook_z")(n)] == names[:1]
    assert [n for n in names if make_filter(names[1:])(n)] == names[1:]
    assert [n for n in names if make_filter(lambda n: n.endswith("hook_z"))(n)] == [names[0], names[2]]
    assert all(make_filter(None)(n) for n in names)


@pytest.mark.parametrize("fixture", ["tiny_tl", "tiny_nnsight", "tiny_gemma", "native"])
def test_last_token_variants_equal_full_runs_with_the_same_last_token_hooks(fixture, request):
    subject = mechkit.load("native:mqar-delta-net") if fixture == "native" else request.getfixturevalue(fixture)
    batch = Batch.from_sequences([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], pad_id=subject.pad_id)  # left-padded
    source = torch.randn(2, subject.d_model, generator=torch.Generator().manual_seed(0))

    def write_last(tensor, *, hook):
        tensor = tensor.clone()
        tensor[:, -1] = source.to(tensor)
        return tensor

    variants = [[]] + [[(f"blocks.{layer}.hook_resid_pre", write_last)] for layer in range(subject.n_layers)]
    fast = subject.run_last_token_variants(batch, variants)
    full = torch.stack([subject.run_with_hooks(batch, hooks, last_only=True)[:, -1] for hooks in variants])
    assert fast.shape == (len(variants), 2, full.shape[-1])
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(full[1], full[0])  # the patch matters, so the equality is not vacuous
    with pytest.raises(MechkitError, match="at least 2 tokens"):
        subject.run_last_token_variants(torch.tensor([[5]]), variants)
