"""REGBENCH generator, metrics and the in-context n-gram baseline: known answers."""

import numpy as np
import pytest
import torch

from mechkit.errors import MechkitError
from mechkit.tasks.dfa import DFA, minimize, random_dfa
from mechkit.tasks.ngram_lm import ngram_backoff_batch, ngram_backoff_probs
from mechkit.tasks.regbench import (
    PAD,
    SEP,
    VOCAB,
    Instance,
    RegBench,
    RegBenchConfig,
    accuracy,
    as_batch,
    from_text,
    label_mask,
    to_text,
    total_variation,
    true_next_distributions,
)

A, B, C = 0, 1, 2
# 0 -a-> 1, 0 -b-> 1, 1 -c-> 0: the language of prefixes of ((a|b) c)*.
ABC = DFA(2, {(0, A): 1, (0, B): 1, (1, C): 0})


@pytest.fixture(scope="module")
def bench():
    return RegBench(RegBenchConfig(seed=0, n_train_dfas=60, n_test_dfas=20))


def test_vocab_and_text_round_trip():
    assert len(VOCAB) == 20 and VOCAB[0] == "a" and VOCAB[17] == "r" and VOCAB[SEP] == "|" and VOCAB[PAD] == "."
    assert to_text([0, 1, SEP, 2, PAD]) == "a b | c ."
    assert from_text("a b | c .") == [0, 1, SEP, 2, PAD]
    with pytest.raises(MechkitError, match="unknown symbols"):
        from_text("a z")


def test_hand_built_dfa_step_next_symbols_accepts():
    d = DFA(3, {(0, A): 1, (1, B): 0, (1, C): 2})
    assert d.step(0, A) == 1 and d.step(0, B) is None and d.step(1, C) == 2
    assert d.next_symbols(0) == (A,) and d.next_symbols(1) == (B, C) and d.next_symbols(2) == ()
    assert d.run([A, B, A, C]) == 2 and d.run([B]) is None
    assert d.accepts([]) and d.accepts([A, B, A]) and not d.accepts([A, A]) and not d.accepts([A, C, A])
    assert d == DFA(3, (((1, C), 2), ((0, A), 1), ((1, B), 0)))  # items in any order, stored sorted
    with pytest.raises(MechkitError, match="out of range"):
        DFA(2, {(0, A): 2})


def test_minimize_merges_equivalent_states_and_trims_unreachable():
    # States 1 and 2 both accept exactly c(...) continuations back to 0; state 3 is unreachable.
    d = DFA(4, {(0, A): 1, (0, B): 2, (1, C): 0, (2, C): 0, (3, A): 0})
    assert minimize(d) == ABC
    # A 3-cycle on one letter is the language a*: one state with a self loop.
    assert minimize(DFA(3, {(0, A): 1, (1, A): 2, (2, A): 0})) == DFA(1, {(0, A): 0})
    # The finite language {"", a, aa} needs all three states (refinement takes two rounds).
    chain = DFA(3, {(0, A): 1, (1, A): 2})
    assert minimize(chain) == chain


def test_key_identifies_isomorphic_dfas():
    assert DFA(3, {(0, A): 2, (2, B): 1}).key() == DFA(3, {(0, A): 1, (1, B): 2}).key()
    assert DFA(3, {(0, A): 2, (2, B): 1}).key() != DFA(3, {(0, A): 1, (1, C): 2}).key()


def test_random_dfa_is_minimal_trimmed_and_live():
    rng = np.random.default_rng(5)
    for _ in range(200):
        d = random_dfa(rng)
        assert minimize(d) == d and 1 <= d.n_states <= 12
        assert all(d.next_symbols(s) for s in range(d.n_states))
        assert len({a for (_, a), _ in d.transitions}) <= 18


def test_generator_deterministic_and_seed_dependent(bench):
    again = RegBench(RegBenchConfig(seed=0, n_train_dfas=60, n_test_dfas=20))
    assert again.dfas == bench.dfas
    tokens = [i.tokens for i in bench.instances("test", 5, seed=1)]
    assert [i.tokens for i in again.instances("test", 5, seed=1)] == tokens
    assert [i.tokens for i in bench.instances("test", 5, seed=2)] != tokens
    other = RegBench(RegBenchConfig(seed=1, n_train_dfas=60, n_test_dfas=20))
    assert other.dfas["train"] != bench.dfas["train"]


def test_train_and_test_dfas_unique_and_disjoint(bench):
    train = {d.key() for d in bench.dfas["train"]}
    test = {d.key() for d in bench.dfas["test"]}
    assert len(train) == 60 and len(test) == 20 and not train & test


def test_instances_follow_the_recipe(bench):
    insts = bench.instances("train", 80, seed=0)
    assert [i.dfa for i in insts[:60]] == list(bench.dfas["train"]) and insts[60].dfa == bench.dfas["train"][0]
    for inst in insts:
        assert 10 <= len(inst.strings) <= 19
        assert all(1 <= len(w) <= 49 and inst.dfa.accepts(w) for w in inst.strings)
        assert to_text(inst.tokens) == " | ".join(to_text(w) for w in inst.strings)


def test_batch_and_label_mask():
    insts = [Instance(ABC, [A, C, SEP, B], [[A, C], [B]]), Instance(ABC, [B], [[B]])]
    tokens, mask = as_batch(insts)
    assert tokens.tolist() == [[A, C, SEP, B], [B, PAD, PAD, PAD]]
    assert mask.tolist() == [[True] * 4, [True, False, False, False]]
    assert label_mask(tokens).tolist() == [[True, False, True, False], [False] * 4]


def test_true_distributions_and_hand_computed_metrics():
    inst = Instance(ABC, [A, C, SEP, B], [[A, C], [B]])
    q = true_next_distributions(inst)
    expected = torch.zeros(4, 20, dtype=torch.float64)
    expected[0, C] = expected[3, C] = 1.0
    expected[1, [A, B]] = expected[2, [A, B]] = 0.5
    assert torch.equal(q, expected)
    # Scored positions: 0 (next c) and 2 (next b); position 1's next token is '|'.
    assert accuracy(torch.tensor([[C, 5, 5, 5]]), [inst]) == 0.5
    assert accuracy(torch.tensor([[C, 5, B, 5]]), [inst]) == 1.0
    uniform = torch.full((1, 4, 20), 1 / 20, dtype=torch.float64)
    # L1 at position 0: 19/20 + 19/20 = 1.9; at positions 1, 2: 2 * 9/20 + 18/20 = 1.8.
    assert total_variation(uniform, [inst]) == pytest.approx((1.9 + 1.8) / 2)
    assert total_variation(uniform, [inst], all_positions=True) == pytest.approx((1.9 + 1.8 + 1.8) / 3)
    with pytest.raises(MechkitError, match="shape"):
        accuracy(torch.tensor([[C]]), [inst])


def test_oracle_and_impossible_predictors(bench):
    insts = bench.instances("test", 20, seed=3)
    tokens, _ = as_batch(insts)
    probs = torch.zeros(len(insts), tokens.shape[1], 20, dtype=torch.float64)
    for b, inst in enumerate(insts):
        probs[b, : len(inst.tokens)] = true_next_distributions(inst)
    assert accuracy(probs.argmax(-1), insts) == 1.0
    assert total_variation(probs, insts) == 0.0 and total_variation(probs, insts, all_positions=True) == 0.0
    assert accuracy(torch.full_like(tokens, SEP), insts) == 0.0
    assert accuracy(torch.full_like(tokens, PAD), insts) == 0.0


def test_accuracy_equals_string_acceptance_rule(bench):
    # The reference's rule: prefix of the current string + predicted symbol is accepted by the DFA.
    insts = bench.instances("test", 6, seed=4)
    tokens, _ = as_batch(insts)
    pred = torch.randint(0, 20, tokens.shape, generator=torch.Generator().manual_seed(0))
    correct = total = 0
    for b, inst in enumerate(insts):
        start = 0
        for t in range(len(inst.tokens) - 1):
            if inst.tokens[t] == SEP:
                start = t + 1
            if inst.tokens[t + 1] != SEP:
                total += 1
                correct += inst.dfa.accepts(inst.tokens[start : t + 1] + [int(pred[b, t])])
    assert accuracy(pred, insts) == correct / total


def test_ngram_hand_computed():
    # "b c | c c | a b | a", order 3, last position, context "_ a": count(_ a b) / count(_ a) = 1/2 for b;
    # a and c unseen after "_ a" share beta = 1/2 in proportion to the bigram back-off P2 given "a":
    # P2(b) = 1/2, and a, c share 1/2 by unigram counts (boundaries included) 2 : 3 -> 0.2, 0.3.
    tokens = from_text("b c | c c | a b | a")
    for order in (2, 3):
        row = ngram_backoff_probs(tokens, order)[-1]
        assert row[[A, B, C]].tolist() == pytest.approx([0.2, 0.5, 0.3]) and row.sum() == pytest.approx(1.0)
    assert ngram_backoff_probs(tokens, 1)[-1][[A, B, C]].tolist() == pytest.approx([2 / 7, 2 / 7, 3 / 7])
    # After "a": only one letter seen, so all mass on it; after "a b": unseen bigram contexts back off to unigrams.
    probs = ngram_backoff_probs(from_text("a b | a"), 3)
    assert probs[0, A] == 1.0 and probs[1, [A, B]].tolist() == pytest.approx([0.5, 0.5])
    # Every seen letter followed "a" (the reference's row sums to 1/2 here): renormalised.
    assert ngram_backoff_probs([A, A], 2)[1, A] == 1.0


def test_ngram_rows_are_distributions(bench):
    insts = bench.instances("test", 3, seed=5)
    for order in (1, 2, 3, 4):
        probs = ngram_backoff_batch([i.tokens for i in insts], order)
        for b, inst in enumerate(insts):
            rows = probs[b, : len(inst.tokens)]
            assert torch.allclose(rows.sum(-1), torch.ones(len(inst.tokens), dtype=torch.float64))
            assert (rows[:, SEP] == 0).all() and (rows >= 0).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ngram_backoff_probs([A], order=0), "order must be >= 1"),
        (lambda: ngram_backoff_probs([A, 25]), "ids in 0..19"),
        (lambda: RegBenchConfig(n_train_dfas=0), "n_test_dfas >= 1"),
        (lambda: RegBenchConfig(min_strings=5, max_strings=5), "min_strings < max_strings"),
        (lambda: RegBenchConfig(min_states=1), "min_states"),
        (
            lambda: RegBench(RegBenchConfig(n_train_dfas=20, n_test_dfas=5, min_states=2, max_states=2,
                                            min_alphabet=1, max_alphabet=1)),
            "Only 18 distinct DFAs",
        ),
        (lambda: RegBench(RegBenchConfig(n_train_dfas=2, n_test_dfas=1)).instances("val", 2), "split"),
    ],
    ids=["order0", "bad-id", "no-train-dfas", "string-range", "states", "too-few-unique", "split"],
)
def test_bad_input_raises(make, match):
    with pytest.raises(MechkitError, match=match):
        make()
