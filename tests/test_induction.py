"""Induction-family scores: known answers on hand-built patterns, TransformerLens agreement, probe behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mechkit

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.probes.attention_patterns import (
    PatternAccumulator,
    PatternOptions,
    context_match_targets,
    detect_head_reference,
    duplicate_token_targets,
    pattern_scores,
    previous_token_targets,
    uniform_baseline,
)
from mechkit.probes.induction import (
    InductionConfig,
    ablation_check,
    copy_share,
    copying_scores,
    find_induction_heads,
    random_token_batch,
    token_pool,
)

L = 6  # repeated-half length of the hand-built sequences


def repeated_batch() -> Batch:
    """BOS (id 0) + 6 distinct tokens, repeated twice: width 13."""
    tokens = torch.tensor([[0] + list(range(10, 10 + L)) * 2])
    return Batch(tokens, torch.ones_like(tokens))


def score_of(rows: torch.Tensor, batch: Batch, targets, options=PatternOptions()) -> float:
    acc = PatternAccumulator(batch, targets, options, n_heads=1)
    positions = torch.arange(batch.tokens.shape[-1])
    acc.add(positions, rows[None, None])
    return float(acc.scores()[0])


def stripe(width: int, offset: int) -> torch.Tensor:
    """All of each row's attention on key q - offset (on BOS where that key does not exist)."""
    rows = torch.zeros(width, width)
    for q in range(width):
        rows[q, q - offset if q - offset >= 0 else 0] = 1.0
    return rows


def test_perfect_induction_stripe_scores_one():
    batch = repeated_batch()
    rows = stripe(13, L - 1)  # second-half query q attends to q - L + 1, the token after the first occurrence
    assert score_of(rows, batch, context_match_targets(1)) == 1.0
    # only row 1 (sinking on BOS, its previous token) of the 12 previous-token rows is on that pattern
    assert score_of(rows, batch, previous_token_targets) == pytest.approx(1 / 12)


def test_perfect_previous_and_duplicate_heads_score_one():
    batch = repeated_batch()
    assert score_of(stripe(13, 1), batch, previous_token_targets) == 1.0
    assert score_of(stripe(13, L), batch, duplicate_token_targets) == 1.0


def test_uniform_attention_scores_the_uniform_baseline():
    batch = repeated_batch()
    uniform = torch.tril(torch.ones(13, 13, dtype=torch.float64))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    # Query q (0-based) sees q + 1 keys, exactly one of them on the pattern, for the 6 second-half rows q = 7..12.
    expected = float(np.mean([1 / (q + 1) for q in range(7, 13)]))
    assert score_of(uniform, batch, context_match_targets(1)) == pytest.approx(expected, abs=1e-12)
    assert uniform_baseline(batch, context_match_targets(1)) == pytest.approx(expected, abs=1e-12)
    # previous-token: rows 1..12, row q has 1 of q + 1 keys on the pattern.
    expected = float(np.mean([1 / (q + 1) for q in range(1, 13)]))
    assert uniform_baseline(batch, previous_token_targets) == pytest.approx(expected)


def test_all_rows_option_matches_detect_heads_dilution():
    batch = repeated_batch()
    rows = stripe(13, L - 1)
    assert score_of(rows, batch, context_match_targets(1), PatternOptions(rows="all")) == pytest.approx(6 / 13)


def test_perfect_order_two_head_scores_one_at_order_two_and_less_at_order_one():
    seq = [0, 1, 2, 3, 1, 2, 4, 1, 5, 2, 1, 2]
    tokens = torch.tensor([seq])
    batch = Batch(tokens, torch.ones_like(tokens))
    # By hand: order-2 matches ("1 2" again) exist only at q = 5 (key 3) and q = 11 (keys 3 and 6); the perfect
    # order-2 head splits those rows evenly over them and sinks every other row on BOS.
    rows = torch.zeros(12, 12, dtype=torch.float64)
    rows[:, 0] = 1.0
    rows[5] = 0.0
    rows[5, 3] = 1.0
    rows[11] = 0.0
    rows[11, [3, 6]] = 0.5
    assert score_of(rows, batch, context_match_targets(2)) == 1.0
    # Order-1 rows (the current token seen before) are q = 4, 5, 7, 9, 10, 11; only q = 5 and q = 11 put their
    # attention on order-1 keys ({3} and {3, 6, 10}), the other four sink on BOS: 2 / 6.
    assert score_of(rows, batch, context_match_targets(1)) == pytest.approx(1 / 3, abs=1e-12)


def test_context_match_hand_checked_positions():
    tokens = torch.tensor([[0, 1, 2, 1, 2]])
    batch = Batch(tokens, torch.ones_like(tokens))
    t1 = context_match_targets(1)(batch, torch.arange(5))[0]
    t2 = context_match_targets(2)(batch, torch.arange(5))[0]
    assert t1.nonzero().tolist() == [[3, 2], [4, 3]]  # q=3 (token 1): key after the 1 at 1; q=4 (token 2): key 3
    assert t2.nonzero().tolist() == [[4, 3]]  # "1 2" at (3, 4) matches "1 2" at (1, 2): key 3


def test_padding_never_matches():
    tokens = torch.tensor([[7, 7, 0, 1, 1], [0, 1, 2, 1, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    batch = Batch(tokens, mask)
    for fn in (previous_token_targets, duplicate_token_targets, context_match_targets(1), context_match_targets(3)):
        targets = fn(batch, torch.arange(5))
        assert not targets[0, :, :2].any() and not targets[0, :2].any()


def test_order_below_one_is_refused():
    with pytest.raises(MechkitError, match="at least 1"):
        context_match_targets(0)


def test_rows_option_is_checked():
    with pytest.raises(MechkitError, match="matched"):
        PatternOptions(rows="some")


def test_sequences_without_any_match_are_refused():
    tokens = torch.tensor([[0, 1, 2, 3]])
    batch = Batch(tokens, torch.ones_like(tokens))
    with pytest.raises(MechkitError, match="no query row"):
        uniform_baseline(batch, context_match_targets(1))


DETECT = (("previous_token_head", previous_token_targets), ("duplicate_token_head", duplicate_token_targets),
          ("induction_head", context_match_targets(1)))


def test_scores_equal_transformer_lens_detect_head(tiny_tl):
    texts = ["abcdefgh abcdefgh", "the cat the cat sat"]
    for text in texts:
        tl_tokens = tiny_tl.model.to_tokens(text, prepend_bos=tiny_tl.prepend_bos)
        assert tl_tokens.tolist() == tiny_tl.tokenize(text).tokens.tolist()
    for name, fn in DETECT:
        excluding = PatternOptions(rows="all", exclude_bos=True, exclude_current_token=True)
        for options in (PatternOptions(rows="all"), excluding):
            batch = tiny_tl.tokenize(texts)
            ours = pattern_scores(tiny_tl, batch, {"x": fn}, options, block_size=5, verbose=False)["x"]
            theirs = detect_head_reference(tiny_tl, texts, name, exclude_bos=options.exclude_bos,
                                           exclude_current_token=options.exclude_current_token)
            assert torch.allclose(ours.float(), theirs.float(), atol=1e-5), name


@pytest.mark.real
@pytest.mark.parametrize("fixture", ["gemma_tl", "smollm_tl"])
def test_agreement_with_detect_head_on_packaged_models(request, fixture):
    """Same prompts, all heads: mechkit's default scores (rows with a pattern key) correlate >= 0.99 with
    detect_head's; with detect_head's row choice they are equal."""
    subject = request.getfixturevalue(fixture)
    pool = token_pool(subject.tokenizer)
    rng = np.random.default_rng(0)
    random_text = subject.tokenizer.decode(rng.choice(pool, 30).tolist())
    texts = ["The cat sat on the mat. The cat sat on the mat. The dog ran home.", f"{random_text}{random_text}",
             "one two three four five six one two three four five six"]
    batch = subject.tokenize(texts)
    for name, fn in DETECT:
        theirs = detect_head_reference(subject, texts, name).double()
        ours = pattern_scores(subject, batch, {"x": fn}, verbose=False)["x"]
        exact = pattern_scores(subject, batch, {"x": fn}, PatternOptions(rows="all"), verbose=False)["x"]
        assert torch.allclose(exact, theirs, atol=1e-4), name
        assert np.corrcoef(ours.flatten().numpy(), theirs.flatten().numpy())[0, 1] >= 0.99, name


def test_detect_head_reference_needs_transformer_lens(tiny_nnsight):
    with pytest.raises(MechkitError, match="TransformerLens backend"):
        detect_head_reference(tiny_nnsight, ["ab ab"], "induction_head")


def test_batched_scores_equal_unbatched(tiny_tl):
    texts = ["abcabc abcabc", "xyz xyz xyz q"]
    patterns = {"induction": context_match_targets(1), "dup": duplicate_token_targets}
    together = pattern_scores(tiny_tl, tiny_tl.tokenize(texts), patterns, verbose=False)
    singles = [pattern_scores(tiny_tl, tiny_tl.tokenize(t), patterns, verbose=False) for t in texts]
    for name in patterns:
        assert torch.allclose(together[name], (singles[0][name] + singles[1][name]) / 2, atol=1e-6)


def test_block_size_does_not_change_scores(tiny_gemma):
    batch = tiny_gemma.tokenize(["abcdefghij abcdefghij"])
    a = pattern_scores(tiny_gemma, batch, {"i": context_match_targets(1)}, block_size=3, verbose=False)["i"]
    b = pattern_scores(tiny_gemma, batch, {"i": context_match_targets(1)}, block_size=1000, verbose=False)["i"]
    assert torch.allclose(a, b, atol=1e-10)


def test_token_pool_drops_specials_and_ends(tiny_tl):
    tok = tiny_tl.tokenizer
    full = token_pool(tok)
    assert not set(full.tolist()) & set(tok.all_special_ids)
    trimmed = token_pool(tok, 0.1)
    cut = int(len(full) * 0.1)
    assert trimmed.tolist() == full[cut:len(full) - cut].tolist()
    with pytest.raises(MechkitError, match="exclude_fraction"):
        token_pool(tok, 0.5)


def test_random_batches_follow_the_seed_and_repeat(tiny_tl):
    pool = token_pool(tiny_tl.tokenizer)
    a = random_token_batch(tiny_tl, 10, 3, 2, pool, seed=5)
    b = random_token_batch(tiny_tl, 10, 3, 2, pool, seed=5)
    c = random_token_batch(tiny_tl, 10, 3, 2, pool, seed=6)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert torch.equal(a.tokens[:, 1:11], a.tokens[:, 11:])
    assert (a.tokens[:, 0] == tiny_tl.tokenizer.bos_token_id).all()
    u = random_token_batch(tiny_tl, 30, 2, 4, pool, seed=1, unique=True)
    assert all(len(set(row[1:31])) == 30 for row in u.tokens.tolist())


def test_bad_random_batch_requests_are_refused(tiny_tl):
    pool = token_pool(tiny_tl.tokenizer)
    with pytest.raises(MechkitError, match="too few"):
        random_token_batch(tiny_tl, len(pool) + 1, 1, 4, pool, seed=0, unique=True)
    with pytest.raises(MechkitError, match="repeats"):
        random_token_batch(tiny_tl, 10, 1, 0, pool, seed=0)
    with pytest.raises(MechkitError, match="seq_len"):
        random_token_batch(tiny_tl, 1, 1, 2, pool, seed=0)


def test_copy_share_known_answers():
    boosts = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 9.0, 9.0]])
    allowed = torch.tensor([[True, True, True, True], [True, True, True, True], [True, True, False, False]])
    # row 0: mean 1 -> centred [2, 0, -1, -1]: all positive boost on entry 0
    # row 1: mean 1 -> [1, 1, -1, -1]: half on entry 0; row 2: only two allowed, equal -> nothing above the mean
    share = copy_share(boosts, allowed, torch.tensor([0, 0, 0]))
    assert share.tolist() == [1.0, 0.5, 0.0]
    assert copy_share(boosts, allowed, torch.tensor([1, 3, 1])).tolist() == [0.0, 0.0, 0.0]


def test_hand_built_copying_head_scores_one():
    """Layer 0 head 0 made a perfect copier: 8 tokens embedded one-hot in dims 0..7, its OV circuit the identity
    on dims 0..15, the unembedding reading the same one-hot dims (BOS zero there). Whatever it attends to, its
    boost goes only to the attended token, so its score is exactly 1."""
    subject = mechkit.load("tiny:llama", backend="tl")  # a fresh copy: the weights are edited
    model, ids = subject.model, list(range(100, 108))
    bos = subject.tokenizer.bos_token_id
    with torch.no_grad():
        for i, token in enumerate(ids):
            model.W_E[token] = 0.0
            model.W_E[token, i] = 1.0
        model.W_E[bos, :16] = 0.0
        model.blocks[0].ln1.w[:16] = 1.0
        model.ln_final.w[:16] = 1.0
        attn = model.blocks[0].attn
        attn._W_V[0] = 0.0
        attn._W_V[0, :16, :16] = torch.eye(16)
        attn._b_V[0] = 0.0
        attn.W_O[0] = 0.0
        attn.W_O[0, :16, :16] = torch.eye(16)
        model.W_U[:16] = 0.0
        for i, token in enumerate(ids):
            model.W_U[i, token] = 1.0
    tokens = torch.tensor([[bos] + ids * 2, [bos] + ids[::-1] * 2])
    scores = copying_scores(subject, Batch(tokens, torch.ones_like(tokens)), verbose=False)
    assert scores[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert (scores[~scores.isnan()] < 1.0 - 1e-3).sum() >= scores[~scores.isnan()].numel() - 2


def test_copying_scores_are_shares(tiny_tl):
    batch = random_token_batch(tiny_tl, 12, 2, 1, token_pool(tiny_tl.tokenizer), seed=3, unique=True)
    scores = copying_scores(tiny_tl, batch, verbose=False)
    assert scores.shape == (tiny_tl.n_layers, tiny_tl.n_heads)
    assert ((scores >= 0) & (scores <= 1)).all()


def test_copying_scores_agree_across_backends(tiny_tl, tiny_nnsight):
    batch = random_token_batch(tiny_tl, 12, 2, 1, token_pool(tiny_tl.tokenizer), seed=3, unique=True)
    assert torch.allclose(copying_scores(tiny_tl, batch, verbose=False),
                          copying_scores(tiny_nnsight, batch, verbose=False), atol=1e-4)


def test_find_induction_heads_is_deterministic_and_complete(tiny_tl):
    config = InductionConfig(seq_len=8, n_sequences=2, prefix_len=6, seed=4)
    a = find_induction_heads(tiny_tl, config, verbose=False)
    b = find_induction_heads(tiny_tl, config, verbose=False)
    assert set(a.scores) == {"previous_token", "duplicate_token", "induction", "prefix_matching", "copying"}
    for name in a.scores:
        assert torch.equal(a.scores[name].scores, b.scores[name].scores)
        assert not a.scores[name].scores.isnan().any()
    assert 0 < a.baselines["induction"] < 1


def test_ablation_check_records(tiny_tl):
    config = InductionConfig(seq_len=8, n_sequences=2, prefix_len=6, copying=False)
    result = find_induction_heads(tiny_tl, config, verbose=False)
    records = ablation_check(tiny_tl, result.scores["induction"], k=2, n_draws=2, seq_len=8, n_sequences=2,
                             verbose=False)
    assert [r["kind"] for r in records] == ["none", "top", "random", "random"]
    top = set(records[1]["heads"])
    assert all(not top & set(r["heads"]) for r in records[2:])
    assert all(np.isfinite(r["loss"]) for r in records)
    with pytest.raises(MechkitError, match="k must be"):
        ablation_check(tiny_tl, result.scores["induction"], k=0)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"prefix_repeats": 1}, "repeated at least twice"),
    ({"seq_len": 1}, "seq_len"),
    ({"n_sequences": 0}, "n_sequences"),
    ({"exclude_fraction": 0.5}, "exclude_fraction"),
])
def test_bad_induction_configs_are_refused(kwargs, fragment):
    with pytest.raises(MechkitError, match=fragment):
        InductionConfig(**kwargs)


def test_vocabulary_too_small_for_prefix_matching(tiny_tl):
    """The byte tokenizer's pool is a few hundred tokens: 400 unique tokens per sequence cannot be drawn."""
    with pytest.raises(MechkitError, match="too few"):
        find_induction_heads(tiny_tl, InductionConfig(seq_len=8, n_sequences=1, prefix_len=400), verbose=False)
