"""Interchange interventions: counterfactual construction, known answers on hand-built toys, batching, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from binding_toys import TOY_TASK, toy_subject

from mechkit.errors import MechkitError
from mechkit.probes.binding_mechanisms import MECHANISMS, interchange, make_interchange_pairs, query_roles
from mechkit.tasks.binding import builtin_tasks, schema_from_dict


@pytest.mark.parametrize("task", list(builtin_tasks()))
@pytest.mark.parametrize("n_groups", [4, 5, 9])
def test_every_pair_points_the_three_mechanisms_at_different_answers(task, n_groups):
    schema = builtin_tasks()[task]
    for query in schema.queries:
        keys, answer = query_roles(schema, query.name), query.answer_role
        pairs = make_interchange_pairs(schema, n_groups, 3 * n_groups, seed=1, query=query.name)
        assert Counter(p.positional for p in pairs) == {q: 3 for q in range(n_groups)}
        for pair in pairs:
            original, cf = pair.original, pair.counterfactual
            assert len(set(pair.targets)) == 4  # positional, lexical, reflexive, no effect
            assert len({original.candidates[t] for t in pair.targets}) == 4
            # the definitions, checked on the entities themselves
            assert [cf.groups[pair.positional][r] for r in keys] == [original.groups[pair.lexical][r] for r in keys]
            assert cf.answer == original.groups[pair.reflexive][answer]
            assert original.answer == original.candidates[pair.no_effect]
            for role in schema.roles:  # the counterfactual only rearranges the original's entities
                assert sorted(g[role] for g in cf.groups) == sorted(g[role] for g in original.groups)


def test_pairs_are_deterministic_under_a_seed():
    first = make_interchange_pairs("boxes", 5, 10, seed=3)
    assert first == make_interchange_pairs("boxes", 5, 10, seed=3)
    assert first != make_interchange_pairs("boxes", 5, 10, seed=4)
    assert make_interchange_pairs("boxes", 5, 4, seed=3) == first[:4]


@pytest.mark.parametrize("rule, layers", [
    ("lexical", {0: "no_effect", 1: "lexical"}),
    ("positional", {0: "no_effect", 1: "lexical", 2: "positional"}),
])
def test_a_toy_that_binds_by_one_rule_is_classified_as_that_rule(rule, layers):
    subject = toy_subject(rule)
    result = interchange(subject, TOY_TASK, 6, 30, seed=0, verbose=False)
    assert result.clean_correct.all()
    shares = result.shares()
    for layer, mechanism in layers.items():
        assert shares[layer, MECHANISMS.index(mechanism)] == 1.0, (layer, shares[layer])
    last = max(layers)
    by_position = result.shares_by_position(last)
    assert torch.equal(by_position[:, MECHANISMS.index(layers[last])], torch.ones(6, dtype=torch.float64))


def test_toys_keep_the_causal_mask():
    """Hand-set weights must not switch the mask off: a later token cannot change an earlier position's output."""
    subject = toy_subject("positional")
    tokens = subject.tokenize(["A1B2C3\nB "]).tokens
    _, short = subject.run_with_cache(tokens[:, :-2], "blocks.2.hook_resid_post")
    _, full = subject.run_with_cache(tokens, "blocks.2.hook_resid_post")
    torch.testing.assert_close(full["blocks.2.hook_resid_post"][:, :-2], short["blocks.2.hook_resid_post"])


def test_records_are_tidy_and_sum_to_one_per_cell():
    result = interchange(toy_subject("lexical"), TOY_TASK, 4, 8, seed=0, verbose=False)
    rows = result.records()
    assert len(rows) == len(result.layers) * (1 + 4) * len(MECHANISMS)
    cells = Counter()
    for row in rows:
        cells[(row["layer"], row["query_position"])] += row["share"]
    assert all(abs(total - 1.0) < 1e-12 for total in cells.values())
    assert {row["n_pairs"] for row in rows if row["query_position"] == "all"} == {8}


def test_batched_equals_unbatched_and_backends_agree(tiny_tl, tiny_nnsight):
    kwargs = dict(task="code_dict", n_groups=4, n_pairs=6, seed=2, query="var_of_name", verbose=False)
    batched = interchange(tiny_tl, batch_size=4, **kwargs)
    single = interchange(tiny_tl, batch_size=1, **kwargs)
    other = interchange(tiny_nnsight, batch_size=3, **kwargs)
    assert batched.candidate_logits.shape == (tiny_tl.n_layers, 6, 4)
    torch.testing.assert_close(batched.candidate_logits, single.candidate_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batched.candidate_logits, other.candidate_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(batched.targets, single.targets)


def test_bad_input_is_refused_before_any_forward_pass(tiny_tl):
    with pytest.raises(MechkitError, match="at least 4 groups"):
        make_interchange_pairs("boxes", 3, 5)
    with pytest.raises(MechkitError, match="unknown binding task 'nope'"):
        interchange(tiny_tl, "nope", 4, 4, verbose=False)
    with pytest.raises(MechkitError, match="outside 2..9"):
        interchange(tiny_tl, "pets", 12, 4, verbose=False)
    with pytest.raises(MechkitError, match="layers"):
        interchange(tiny_tl, "boxes", 4, 4, layers=[7], verbose=False)
    two_digit = schema_from_dict({**_toy_record(), "roles": {"key": list("ABCDE"), "value": ["1", "2", "3", "45"]}})
    with pytest.raises(MechkitError, match="entity '45'.*single-token") as err:
        interchange(tiny_tl, two_digit, 4, 4, verbose=False)
    assert "\n" not in str(err.value)


def _toy_record() -> dict:
    return {"name": "toy", "roles": {"key": list("ABCD"), "value": list("1234")}, "clause": "{key}{value}",
            "separator": "", "queries": [{"name": "value_of_key", "question": "{key}", "answer_role": "value"}]}


@pytest.mark.real
def test_on_qwen_the_patch_does_nothing_at_layer_0_and_carries_the_answer_at_the_last_layer(qwen_nnsight):
    """At layer 0 the last token has not read the query yet; the last layer's residual stream holds the answer."""
    result = interchange(qwen_nnsight, "boxes", 5, 10, layers=[0, qwen_nnsight.n_layers - 1], seed=0, verbose=False)
    assert result.clean_correct.all()
    shares = result.shares()
    assert shares[0, MECHANISMS.index("no_effect")] == 1.0
    assert shares[1, MECHANISMS.index("reflexive")] >= 0.9
