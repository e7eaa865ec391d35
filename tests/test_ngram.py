"""n-gram head scores, REGBENCH in a Subject's tokens, and the static n-gram layer."""

from __future__ import annotations

import pytest
import torch

from mechkit.errors import MechkitError
from mechkit.probes.ngram import (
    NgramConfig,
    NgramLayer,
    find_ngram_heads,
    ngram_attention,
    parse_orders,
    regbench_batch,
    symbol_token_ids,
)

TEXTS = ["abcabdabcabd xyz abcab", "the cat sat. the cat ran. the cat sat."]


def test_parse_orders():
    assert parse_orders("1,2,3") == (1, 2, 3)
    assert parse_orders([2]) == (2,)
    for bad in ("0,1", "1,1", "a", ""):
        with pytest.raises(MechkitError, match="orders"):
            parse_orders(bad)


def test_ngram_attention_hand_checked():
    ids = torch.tensor([[5, 1, 2, 1, 2, 1]])
    # order 1, strictly earlier keys s+1 < t: t=3 (token 1): key 2 (after the 1 at 1); t=4 (token 2): key 3 is
    # the query's own predecessor... key s+1 with s=2 is 3 < 4: yes; t=5 (token 1): keys 2 and 4 -> 1/2 each.
    a1 = ngram_attention(ids, 1)[0]
    assert a1[3].tolist() == [0, 0, 1, 0, 0, 0]
    assert a1[4].tolist() == [0, 0, 0, 1, 0, 0]
    assert a1[5].tolist() == [0, 0, 0.5, 0, 0.5, 0]
    # order 2: t=4 context "1 2" matches (1, 2) -> key 3; t=5 context "2 1" matches (2, 3) -> key 4
    a2 = ngram_attention(ids, 2)[0]
    assert a2[4].tolist() == [0, 0, 0, 1, 0, 0] and a2[5].tolist() == [0, 0, 0, 0, 1, 0]
    assert a2[:4].sum() == 0


def test_ngram_layer_mixes_matched_positions():
    torch.manual_seed(0)
    layer = NgramLayer(4, order=1)
    ids = torch.tensor([[5, 1, 2, 1, 2, 1]])
    x = torch.randn(1, 6, 4)
    y = layer(x, ids)
    expected = layer.t0(ngram_attention(ids, 1) @ x) + layer.t1(x)
    assert torch.allclose(y, expected)
    with pytest.raises(MechkitError, match="at least 1"):
        NgramLayer(4, order=0)


def test_find_ngram_heads_on_texts(tiny_tl):
    result = find_ngram_heads(tiny_tl, NgramConfig(orders=(1, 2)), texts=TEXTS, verbose=False)
    assert set(result.scores) == {"ngram_1", "ngram_2"}
    for name, scores in result.scores.items():
        assert not scores.scores.isnan().any() and ((scores.scores >= 0) & (scores.scores <= 1)).all()
        assert 0 < result.baselines[name] < 1
    again = find_ngram_heads(tiny_tl, NgramConfig(orders=(1, 2)), texts=TEXTS, verbose=False)
    assert torch.equal(result.scores["ngram_2"].scores, again.scores["ngram_2"].scores)


def test_batched_equals_unbatched(tiny_tl):
    both = find_ngram_heads(tiny_tl, NgramConfig(orders=(2,)), texts=TEXTS, verbose=False).scores["ngram_2"].scores
    singles = [find_ngram_heads(tiny_tl, NgramConfig(orders=(2,)), texts=[t], verbose=False).scores["ngram_2"].scores
               for t in TEXTS]
    assert torch.allclose(both, (singles[0] + singles[1]) / 2, atol=1e-6)


def test_too_short_sequences_are_refused(tiny_tl):
    with pytest.raises(MechkitError, match="too short for order 3"):
        find_ngram_heads(tiny_tl, NgramConfig(orders=(3,)), texts=["abc"], verbose=False)


def test_regbench_needs_one_token_per_symbol(tiny_tl):
    with pytest.raises(MechkitError, match="one token per symbol"):
        symbol_token_ids(tiny_tl)  # the byte tokenizer writes " a" as two tokens


@pytest.mark.real
def test_regbench_in_gemma_tokens(gemma_tl):
    ids = symbol_token_ids(gemma_tl)
    assert len(set(ids)) == len(ids) == 19
    batch = regbench_batch(gemma_tl, 3, seed=0, max_tokens=50)
    assert len(batch) == 3 and batch.tokens.shape[1] <= 51
    assert (batch.tokens[batch.attention_mask.bool()] != gemma_tl.pad_id).all()
