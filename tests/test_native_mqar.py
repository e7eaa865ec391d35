"""MQAR generator: Zoology's layout, labels only at queries, per-example seeds, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechkit.errors import MechkitError
from mechkit.tasks import mqar
from mechkit.tasks.mqar import MQARConfig


def test_layout_and_labels():
    config = MQARConfig(vocab_size=64, seq_len=48, n_kv_pairs=5, n_train=20, n_test=5)
    tokens, labels = mqar.split_tensors(config, "train")
    K, half = config.n_kv_pairs, config.vocab_size // 2
    for row_tokens, row_labels in zip(tokens.tolist(), labels.tolist()):
        keys, values = row_tokens[0:2 * K:2], row_tokens[1:2 * K:2]
        assert len(set(keys)) == K and all(1 <= k < half for k in keys)
        assert len(set(values)) == K and all(half <= v < config.vocab_size for v in values)
        queries = [t for t, label in enumerate(row_labels) if label != mqar.IGNORE]
        assert len(queries) == K and all(t >= 2 * K and (t - 2 * K) % 2 == 0 for t in queries)
        pairs = dict(zip(keys, values))
        assert sorted(row_tokens[t] for t in queries) == sorted(keys)
        assert all(row_labels[t] == pairs[row_tokens[t]] for t in queries)


def test_zoology_example_without_noise():
    config = MQARConfig(vocab_size=12, seq_len=16, n_kv_pairs=2, random_non_queries=False)
    tokens, labels = mqar.example(config, "train", 0)
    fillers = np.ones(16, dtype=bool)
    fillers[:4] = False
    fillers[labels != mqar.IGNORE] = False
    assert (tokens[fillers] == 0).all() and (tokens[4:] != 0).sum() == 2


def test_examples_depend_only_on_seed_split_and_index():
    small, large = MQARConfig(n_train=10, n_test=3), MQARConfig(n_train=50, n_test=7)
    a, b = mqar.example(small, "train", 3), mqar.example(large, "train", 3)
    assert all((x == y).all() for x, y in zip(a, b))
    tokens, labels = mqar.split_tensors(small, "train")
    assert torch.equal(tokens[3], torch.from_numpy(a[0])) and torch.equal(labels[3], torch.from_numpy(a[1]))
    assert not np.array_equal(mqar.example(large, "test", 3)[0], a[0])
    assert not np.array_equal(mqar.example(MQARConfig(seed=1), "train", 3)[0], a[0])
    assert torch.equal(mqar.split_tensors(small, "test")[0], mqar.split_tensors(small, "test")[0])


def test_power_law_puts_queries_early():
    def mean_query_offset(power_a: float) -> float:
        config = MQARConfig(seq_len=128, n_kv_pairs=4, n_train=200, power_a=power_a)
        _, labels = mqar.split_tensors(config, "train")
        return float(torch.nonzero(labels != mqar.IGNORE)[:, 1].float().mean())

    assert mean_query_offset(0.01) < mean_query_offset(1.0) - 10


def test_accuracy():
    _, labels = mqar.split_tensors(MQARConfig(n_train=4), "train")
    assert mqar.accuracy(labels.clamp(min=0), labels) == 1.0
    wrong = labels.clamp(min=0).clone()
    wrong[0][labels[0] != mqar.IGNORE] += 1
    assert mqar.accuracy(wrong, labels) == pytest.approx(0.75)
    with pytest.raises(MechkitError, match="must share"):
        mqar.accuracy(labels[:, :-1], labels)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"seq_len": 30, "n_kv_pairs": 8}, "need seq_len >= 32", id="too-many-pairs-for-seq-len"),
        pytest.param({"vocab_size": 16, "n_kv_pairs": 8}, "vocab_size >= 18", id="too-many-pairs-for-vocab"),
        pytest.param({"seq_len": 127}, "even", id="odd-seq-len"),
        pytest.param({"n_kv_pairs": 0}, "at least 1", id="no-pairs"),
        pytest.param({"power_a": 0.0}, "power_a", id="bad-power"),
    ],
)
def test_bad_config_is_refused(kwargs, fragment):
    with pytest.raises(MechkitError, match=fragment):
        MQARConfig(**kwargs)


def test_bad_split_or_index():
    with pytest.raises(MechkitError, match="split"):
        mqar.split_tensors(MQARConfig(), "valid")
    with pytest.raises(MechkitError, match="outside"):
        mqar.example(MQARConfig(n_test=5), "test", 5)
