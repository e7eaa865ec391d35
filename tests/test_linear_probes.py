"""Linear probes: known answers on synthetic features, folds and controls, and binding-ID features on tiny:llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_sentence

from mechkit.errors import MechkitError
from mechkit.probes.linear import (
    binding_id_features,
    binding_id_probe,
    default_role,
    entity_positions,
    fold_splits,
    probe_layers,
)
from mechkit.tasks.binding import make_prompts, schema_from_dict

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"
# Box letters that also occur in the clause's own words ("The"): found by str.find, they would point there.
TRICKY = schema_from_dict({
    "name": "tricky", "description": "entities inside the template's words",
    "roles": {"object": ["apple", "key", "coin", "pen"], "box": ["T", "h", "e", "i"]},
    "clause": "The {object} is in Box {box}.",
    "queries": [{"name": "box", "question": "Which box is the {object} in?", "answer_role": "box",
                 "answer_prefix": "Box "}],
})


def _synthetic(n_per_class: int = 100, n_classes: int = 3, d: int = 8, seed: int = 0):
    """Layer 0: standard normal noise; layer 1: the same noise plus 10 * one-hot(label), so the classes' means
    are 10 standard deviations apart and a linear probe separates them."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    rng.shuffle(labels)
    noise = rng.standard_normal((len(labels), d))
    signal = noise + 10.0 * np.eye(d)[labels]
    return np.stack([noise, signal], axis=1).astype(np.float32), labels


# --- probe_layers on synthetic features ----------------------------------------------------------------------


def test_noise_layer_is_at_chance_and_linear_layer_is_perfect_with_controls_at_chance():
    features, labels = _synthetic()
    result = probe_layers(features, labels, n_folds=5, seed=0, verbose=False)
    n = len(labels)
    bound = 4 * np.sqrt(1 / 3 * 2 / 3 / n)  # 4 binomial standard deviations of an accuracy over n items at p = 1/3
    assert (result.n_items, result.n_classes, result.n_folds, result.layers) == (300, 3, 5, [0, 1])
    assert result.chance == pytest.approx(1 / 3)
    assert abs(result.accuracy[0] - 1 / 3) < bound
    assert result.accuracy[1] == 1.0 and result.accuracy_std[1] == 0.0
    assert np.all(np.abs(result.control - 1 / 3) < bound)
    assert result.best_layer == 1
    records = result.records()
    assert [(r["layer"], r["metric"]) for r in records] == [(0, "accuracy"), (1, "accuracy"), (0, "control"),
                                                            (1, "control")]
    assert records[1]["score"] == 1.0 and all(r["n_items"] == 300 and r["seed"] == 0 for r in records)


def test_chance_is_the_majority_share_and_control_can_be_skipped():
    features, labels = _synthetic()
    labels = np.where(labels == 2, 1, labels)  # classes 0 (100 items) and 1 (200 items)
    result = probe_layers(torch.from_numpy(features), torch.from_numpy(labels), control=False, layers=["a", "b"],
                          verbose=False)
    assert result.chance == pytest.approx(2 / 3) and result.n_classes == 2
    assert np.isnan(result.control).all() and result.best_layer == "b"
    assert [r["metric"] for r in result.records()] == ["accuracy", "accuracy"]


def test_same_seed_same_numbers_and_another_seed_other_folds():
    features, labels = _synthetic(n_per_class=30)
    first = probe_layers(features, labels, seed=3, verbose=False)
    again = probe_layers(features, labels, seed=3, verbose=False)
    for field in ("accuracy", "accuracy_std", "control", "control_std"):
        assert np.array_equal(getattr(first, field), getattr(again, field))
    other = fold_splits(labels, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(fold_splits(labels, seed=3), other))


def test_folds_are_stratified_and_groups_stay_in_one_fold():
    labels = np.tile(np.arange(3), 20)  # 20 "prompts" of 3 groups, as binding_id_features returns them
    groups = np.repeat(np.arange(20), 3)
    for split_groups in (None, groups):
        splits = fold_splits(labels, split_groups, n_folds=5, seed=0)
        tested = np.sort(np.concatenate([test for _, test in splits]))
        assert len(splits) == 5 and np.array_equal(tested, np.arange(60))  # every item tested exactly once
        for train, test in splits:
            assert not set(train) & set(test)
            assert np.ptp(np.bincount(labels[test], minlength=3)) <= 1  # stratified
            if split_groups is not None:
                assert not set(groups[train]) & set(groups[test])  # no prompt on both sides


def test_groups_prevent_leakage_through_group_identity():
    """Features name the group only and each group has one random label: with items of a test group in training
    the probe reads the label off the group (about 1.0); with whole groups per fold it is near chance."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 5)
    labels = np.repeat(rng.permutation(np.repeat([0, 1], 20)), 5)
    centres = rng.standard_normal((40, 64))  # 64 > 40: any labelling separable
    features = (centres[groups] + 0.05 * rng.standard_normal((200, 64)))[:, None]
    leaky = probe_layers(features, labels, seed=0, verbose=False)
    grouped = probe_layers(features, labels, groups, seed=0, verbose=False)
    bound = 4 * np.sqrt(0.25 / 40)  # 4 binomial standard deviations over 40 independent groups
    assert leaky.accuracy[0] == 1.0 and abs(grouped.accuracy[0] - 0.5) < bound
    # the control permutes labels across groups too (within them, a group's one label would stay unchanged)
    assert abs(grouped.control[0] - 0.5) < bound and grouped.control[0] != grouped.accuracy[0]


def _bad_inputs():
    features, labels = _synthetic(n_per_class=10)
    nan = features.copy()
    nan[4, 1, 0] = np.nan
    inf = features.copy()
    inf[7, 0, 2] = np.inf
    few = labels.copy()
    few[np.flatnonzero(labels == 2)[3:]] = 0  # class 2 keeps 3 items
    groups = np.arange(30) % 4
    return [
        ((features[:, 0], labels), {}, ("[item, layer, d]", "(30, 8)")),
        ((features, labels[:-1]), {}, ("30 items", "(29,)", "one label per item")),
        ((features, np.zeros(30, dtype=int)), {}, ("1 class(es)", "at least 2")),
        ((features, labels.astype(float)), {}, ("integers", "float64")),
        ((features, few), {}, ("class 2 has 3 item(s)", "n_folds=5")),
        ((nan, labels), {}, ("1 NaN or infinite", "item 4, layer 1")),
        ((inf, labels), {}, ("item 7, layer 0",)),
        ((features, labels), {"groups": groups[:-1]}, ("groups has shape (29,)",)),
        ((features, labels), {"groups": groups}, ("4 distinct values", "n_folds=5")),
        ((features, labels), {"layers": [0]}, ("1 entries", "2 layers")),
        ((features, labels), {"n_folds": 1}, ("n_folds must be at least 2",)),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_is_refused_in_one_sentence_before_fitting(case, monkeypatch):
    args, kwargs, parts = _bad_inputs()[case]
    monkeypatch.setattr("mechkit.probes.linear._fold_accuracies", lambda *a: pytest.fail("fitted before checking"))
    with pytest.raises(MechkitError) as err:
        probe_layers(*args, verbose=False, **kwargs)
    assert_one_sentence(err, *parts)


# --- binding-ID features -----------------------------------------------------------------------------------------


def _first_real(encoded, row: int) -> int:
    return encoded.batch.tokens.shape[1] - int(encoded.batch.lengths[row])


def test_positions_are_each_entitys_last_token_in_a_left_padded_batch(tiny_tl):
    prompts = make_prompts("boxes", 3, 6, seed=0)
    encoded, positions = entity_positions(tiny_tl, prompts, "object")
    assert positions.shape == (6, 3) and len(set(encoded.batch.lengths.tolist())) > 1  # rows are padded
    tok = tiny_tl.tokenizer
    for row, prompt in enumerate(prompts):
        text, _ = prompt.render()
        first = _first_real(encoded, row) + 1  # after BOS
        for group, entities in enumerate(prompt.groups):
            end = text.index(f"The {entities['object']} is") + 4 + len(entities["object"])
            assert tok.decode(encoded.batch.tokens[row, first:positions[row, group] + 1].tolist()) == text[:end]


def test_entities_inside_template_words_are_located_by_field_not_by_search(tiny_tl):
    prompts = make_prompts(TRICKY, 3, 4, seed=1)
    encoded, positions = entity_positions(tiny_tl, prompts, "box")
    dot = tiny_tl.tokenizer.convert_tokens_to_ids(".")
    for row, prompt in enumerate(prompts):
        dots = torch.nonzero(encoded.batch.tokens[row] == dot).flatten()[:3]  # the three clauses' full stops
        assert positions[row].tolist() == (dots - 1).tolist()
        letters = tiny_tl.tokenizer.convert_ids_to_tokens(encoded.batch.tokens[row, positions[row]].tolist())
        assert letters == [group["box"] for group in prompt.groups]


def test_positions_follow_the_chat_template(tiny_tl, monkeypatch):
    prompts = make_prompts("boxes", 3, 3, seed=0)
    plain, plain_positions = entity_positions(tiny_tl, prompts, "object")
    monkeypatch.setattr(tiny_tl.tokenizer, "chat_template", TEMPLATE, raising=False)
    chat, chat_positions = entity_positions(tiny_tl, prompts, "object")
    assert chat.chat is True
    for row in range(3):
        # "<user>" (6 byte tokens) instead of BOS (1 token) before the context
        assert (chat_positions[row] - _first_real(chat, row)).tolist() == \
            (plain_positions[row] - _first_real(plain, row) + 5).tolist()


@pytest.mark.parametrize("backend", ["tiny_tl", "tiny_nnsight"])
def test_features_are_the_cached_residual_at_the_positions_batched_or_not(backend, request):
    subject = request.getfixturevalue(backend)
    prompts = make_prompts("boxes", 3, 5, seed=2)
    features, labels, groups = binding_id_features(subject, prompts, "object", layers=[2, 0], batch_size=2,
                                                   verbose=False)
    assert features.shape == (15, 2, subject.d_model) and features.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2] * 5 and groups.tolist() == [p for p in range(5) for _ in range(3)]
    single, _, _ = binding_id_features(subject, prompts, "object", layers=[2, 0], batch_size=1, verbose=False)
    torch.testing.assert_close(features, single, atol=1e-5, rtol=0)
    encoded, positions = entity_positions(subject, prompts, "object")
    _, cache = subject.run_with_cache(encoded.batch, names_filter=["blocks.2.hook_resid_post",
                                                                   "blocks.0.hook_resid_post"])
    rows = torch.arange(5)[:, None]
    for column, name in enumerate(["blocks.2.hook_resid_post", "blocks.0.hook_resid_post"]):
        direct = cache[name][rows, positions].float().flatten(0, 1)
        torch.testing.assert_close(features[:, column], direct, atol=1e-5, rtol=0)
    pre, _, _ = binding_id_features(subject, prompts, "object", layers=[1], hook="resid_pre", verbose=False)
    torch.testing.assert_close(pre[:, 0], features[:, 1], atol=1e-5, rtol=0)  # resid_pre of 1 = resid_post of 0


class _SlowTokenizer:
    """A tokenizer without character offsets (as Python "slow" tokenizers are)."""

    is_fast = False

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("call, parts", [
    (lambda s, p: binding_id_features(s, p, "colour"), ("'colour'", "'boxes'", "object, box")),
    (lambda s, p: binding_id_features(s, p, "object", hook="attn_out"), ("'attn_out'", "resid_post")),
    (lambda s, p: binding_id_features(s, p, "object", layers=[0, 3]), ("[0, 3]", "0..2")),
    (lambda s, p: binding_id_features(s, p, "object", batch_size=0), ("batch_size",)),
    (lambda s, p: binding_id_probe(s, "boxes", 3, 4), ("n_prompts=4", "n_folds=5")),
    (lambda s, p: binding_id_probe(s, "boxes", 3, 10, role="person"), ("'person'", "object, box")),
])
def test_binding_feature_errors_areassert_one_sentence(tiny_tl, call, parts, monkeypatch):
    monkeypatch.setattr(tiny_tl, "run_with_cache", lambda *a, **k: pytest.fail("ran the model before checking"))
    with pytest.raises(MechkitError) as err:
        call(tiny_tl, make_prompts("boxes", 3, 2, seed=0))
    assert_one_sentence(err, *parts)


def test_a_tokenizer_without_offsets_is_refused(tiny_tl, monkeypatch):
    monkeypatch.setattr(tiny_tl, "tokenizer", _SlowTokenizer(tiny_tl.tokenizer))
    with pytest.raises(MechkitError) as err:
        entity_positions(tiny_tl, make_prompts("boxes", 3, 2, seed=0), "object")
    assert_one_sentence(err, "tiny:llama", "not a fast tokenizer", "offsets")


def test_default_role_is_the_first_role_the_default_question_names():
    assert default_role("boxes") == "object"
    assert default_role("people_objects_locations") == "person"
    assert default_role(TRICKY) == "object"


def test_binding_id_probe_runs_end_to_end(tiny_tl):
    result = binding_id_probe(tiny_tl, "boxes", 3, 10, seed=0, layers=[0, 2], n_folds=5, verbose=False)
    assert result.layers == [0, 2] and result.accuracy.shape == result.control.shape == (2,)
    assert (result.n_items, result.n_classes, result.n_folds, result.seed) == (30, 3, 5, 0)
    assert result.chance == pytest.approx(1 / 3) and result.best_layer in (0, 2)
    assert np.all((result.accuracy >= 0) & (result.accuracy <= 1)) and np.all(np.isfinite(result.control))
    assert len(result.records()) == 4
    again = binding_id_probe(tiny_tl, "boxes", 3, 10, seed=0, layers=[0, 2], n_folds=5, verbose=False)
    assert np.array_equal(result.accuracy, again.accuracy) and np.array_equal(result.control, again.control)
