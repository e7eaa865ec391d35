"""Multi-query associative recall (MQAR, Arora et al. 2023, "Zoology"), as `zoology/data/multiquery_ar.py` with one
pass over the pairs, and one generator per example.

One example of `seq_len` tokens:

    k1 v1 k2 v2 ... kK vK | x x q x x x q' x ...
    labels: -100 everywhere except at each query position, whose label is the value paired with that key.

Keys are drawn without replacement from 1 .. vocab/2 - 1, values from vocab/2 .. vocab - 1. Query i (key k_i) sits
at position 2K + 2·gap_i, the gaps drawn without replacement from 0 .. space - 1 (space = (seq_len - 2K) // 2) with
probability ∝ power_a · j^(power_a - 1), j = gap + 1 (mass near the start of the query region). Every other token of
the query region is uniform in 0 .. vocab - 1 when `random_non_queries` (it can collide with a key, as in Zoology),
else 0. Example i of split s uses `numpy.random.default_rng((seed, s, i))`, so examples do not depend on how many
were generated before, and train and test use separate streams.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.niah import Needle, Trial

SPLITS = ("train", "test")
IGNORE = -100


@dataclass(frozen=True)
class MQARConfig:
    """MQAR settings (Zoology defaults for power_a and random_non_queries)."""

    vocab_size: int = 256
    seq_len: int = 128
    n_kv_pairs: int = 8
    n_train: int = 20_000
    n_test: int = 1_000
    seed: int = 0
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        if self.n_kv_pairs < 1 or self.n_train < 1 or self.n_test < 1:
            raise MechkitError(f"n_kv_pairs, n_train and n_test must be at least 1, got {self.n_kv_pairs}, "
                               f"{self.n_train}, {self.n_test}; raise them")
        if self.seq_len % 2:
            raise MechkitError(f"seq_len must be even (key/value slots come in pairs), got {self.seq_len}")
        if 4 * self.n_kv_pairs > self.seq_len:
            raise MechkitError(f"{self.n_kv_pairs} key-value pairs need seq_len >= {4 * self.n_kv_pairs} (2 tokens "
                               f"per pair and 2 slots per query), got {self.seq_len}; lower n_kv_pairs")
        if self.n_kv_pairs > self.vocab_size // 2 - 1:
            raise MechkitError(f"{self.n_kv_pairs} distinct keys do not fit in the key half "
                               f"1..{self.vocab_size // 2 - 1} of a vocabulary of {self.vocab_size}; use "
                               f"vocab_size >= {2 * self.n_kv_pairs + 2}")
        if not 0 < self.power_a <= 1:
            raise MechkitError(f"power_a must lie in (0, 1] (1 is uniform query placement), got {self.power_a}")

    def to_dict(self) -> dict:
        return asdict(self)

    def size(self, split: str) -> int:
        if split not in SPLITS:
            raise MechkitError(f"unknown MQAR split {split!r}; use 'train' or 'test'")
        return self.n_train if split == "train" else self.n_test


def _gap_probabilities(config: MQARConfig) -> np.ndarray:
    space = (config.seq_len - 2 * config.n_kv_pairs) // 2
    p = config.power_a * np.arange(1, space + 1, dtype=np.float64) ** (config.power_a - 1)
    return p / p.sum()


def example(config: MQARConfig, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, labels), int64 arrays of `seq_len`, of example `index` of `split`."""
    if not 0 <= index < config.size(split):
        raise MechkitError(f"example {index} is outside the {split} split of {config.size(split)} examples")
    return _example(config, SPLITS.index(split), index, _gap_probabilities(config))


def _example(config: MQARConfig, split_index: int, index: int, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng((config.seed, split_index, index))
    K, T, half = config.n_kv_pairs, config.seq_len, config.vocab_size // 2
    keys = rng.choice(np.arange(1, half), size=K, replace=False)
    values = rng.choice(np.arange(half, config.vocab_size), size=K, replace=False)
    gaps = rng.choice(len(p), size=K, replace=False, p=p)
    tokens = np.zeros(T, dtype=np.int64)
    labels = np.full(T, IGNORE, dtype=np.int64)
    tokens[0:2 * K:2], tokens[1:2 * K:2] = keys, values
    query_positions = 2 * K + 2 * gaps
    tokens[query_positions] = keys
    labels[query_positions] = values
    if config.random_non_queries:
        noise = rng.integers(0, config.vocab_size, size=T)
        filler = np.ones(T, dtype=bool)
        filler[: 2 * K] = False
        filler[query_positions] = False
        tokens[filler] = noise[filler]
    return tokens, labels


def split_tensors(config: MQARConfig, split: str) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n seq"]]:
    """Every example of `split` as (tokens, labels) `[n, seq_len]` int64 tensors; labels -100 off the queries."""
    n, p, s = config.size(split), _gap_probabilities(config), SPLITS.index(split)
    pairs = [_example(config, s, i, p) for i in range(n)]
    return (torch.from_numpy(np.stack([t for t, _ in pairs])), torch.from_numpy(np.stack([l for _, l in pairs])))


def accuracy(pred_ids: Int[Tensor, "n seq"], labels: Int[Tensor, "n seq"]) -> float:
    """Share of labeled positions (label != -100) where the predicted id (the argmax of the logits at that
    position) is the label; every example has the same number of queries, so this is also the mean of the
    per-example accuracies."""
    if pred_ids.shape != labels.shape:
        raise MechkitError(f"predictions {tuple(pred_ids.shape)} and labels {tuple(labels.shape)} must share "
                           "[n, seq]; pass logits.argmax(-1) on the example tokens")
    keep = labels != IGNORE
    if not keep.any():
        raise MechkitError("these labels have no query position; pass MQAR labels")
    return float((pred_ids.to(labels.device) == labels)[keep].float().mean())


def retrieval_trials(config: MQARConfig, tokenizer, split: str = "test") -> list[Trial]:
    """MQAR as needle-in-a-haystack trials for the retrieval-head probe (`mechkit.probes.retrieval.run_trials` with
    `max_new_tokens=1, stops=()`): each example is cut after its last query whose key occurs once before it; the
    answer is that key's value and the answer span its value's slot, so a head scores when its most-attended key is
    the value it lets the model copy. Examples without such a query are skipped."""
    tokens, labels = split_tensors(config, split)
    trials = []
    for i, (row, label) in enumerate(zip(tokens.tolist(), labels.tolist())):
        usable = [q for q, value in enumerate(label) if value != IGNORE and row[:q].count(row[q]) == 1]
        if not usable:
            continue
        q = usable[-1]
        slot = row.index(row[q]) + 1  # the value after the key's only earlier occurrence
        key, value = tokenizer.decode([row[q]]), tokenizer.decode([label[q]])
        trials.append(Trial(f"{split}-{i}", 0, q + 1, 100.0 * slot / (q + 1), Needle(f"{key} {value}", key, value),
                            tokenizer.decode(row[:q + 1]), row[:q + 1], (slot, slot + 1), (slot - 1, slot + 1)))
    return trials
