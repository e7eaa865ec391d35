"""Known-answer tests of the attention-row arithmetic, independent of any model."""

import math

import torch

from mechkit.attention import AttentionRule, attention_rows_from_qk, uniform_rows, visible_keys
from mechkit.interventions import uniform_z


def test_zero_queries_give_uniform_rows_over_the_causal_prefix():
    q = torch.zeros(1, 3, 2, 4)
    k = torch.randn(1, 6, 1, 4)
    positions = torch.tensor([0, 2, 5])
    rows = attention_rows_from_qk(q, k, positions, torch.ones(1, 6, dtype=torch.bool), AttentionRule(scale=1.0))
    for i, t in enumerate([1, 3, 6]):
        expected = torch.tensor([1 / t] * t + [0.0] * (6 - t))
        assert torch.allclose(rows[0, 0, i], expected) and torch.allclose(rows[0, 1, i], expected)


def test_window_and_padding_limit_the_visible_keys():
    mask = torch.tensor([[False, True, True, True, True, True]])
    allowed = visible_keys(torch.tensor([5, 2]), mask, window=3)
    assert allowed[0, 0].tolist() == [False, False, False, True, True, True]
    assert allowed[0, 1].tolist() == [False, True, True, False, False, False]


def test_scores_follow_softmax_of_scaled_softcapped_logits():
    q = torch.tensor([[[[1.0, 0.0]]]])  # [batch 1, query 1, head 1, d 2]
    k = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]]]])  # keys at positions 0, 1
    rule = AttentionRule(scale=0.5, softcap=1.5)
    rows = attention_rows_from_qk(q, k, torch.tensor([1]), torch.ones(1, 2, dtype=torch.bool), rule)
    logit = 1.5 * math.tanh(4.0 * 0.5 / 1.5)
    expected = math.exp(logit) / (math.exp(logit) + 1.0)
    assert abs(rows[0, 0, 0, 0].item() - expected) < 1e-6


def test_grouped_query_heads_read_their_own_kv_head():
    torch.manual_seed(0)
    q = torch.randn(2, 3, 4, 8)
    k = torch.randn(2, 7, 2, 8)
    positions = torch.tensor([2, 4, 6])
    mask = torch.ones(2, 7, dtype=torch.bool)
    rule = AttentionRule(scale=8**-0.5)
    rows = attention_rows_from_qk(q, k, positions, mask, rule)
    full_k = k.repeat_interleave(2, dim=2)  # heads 0,1 -> kv 0; heads 2,3 -> kv 1
    logits = torch.einsum("bqhd,bkhd->bhqk", q, full_k) * rule.scale
    causal = torch.arange(7)[None, :] <= positions[:, None]
    expected = torch.softmax(logits.masked_fill(~causal, float("-inf")), -1)
    assert torch.allclose(rows, expected, atol=1e-6)


def test_uniform_z_is_the_uniform_rows_times_v():
    torch.manual_seed(1)
    v = torch.randn(2, 9, 2, 5)
    mask = torch.ones(2, 9)
    mask[1, :3] = 0
    for window in (None, 3):
        rows = uniform_rows(torch.arange(9), mask.bool(), window, n_heads=1)[:, 0]  # [batch, query, key]
        expected = torch.einsum("bqk,bkd->bqd", rows, v[:, :, 1])
        got = uniform_z(v, mask, kv_head=1, window=window)
        real = mask.bool()
        assert torch.allclose(got[real], expected[real], atol=1e-6)
