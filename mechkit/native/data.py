"""Training data of native models, as token and label tensors `[n, seq_len]` (label -100 where nothing is scored).

mqar: `mechkit.tasks.mqar` (labels at the queries). induction: `seq_len / 2` uniform random tokens repeated once;
from the first repeated token on, each position is labeled with the next token. regbench: `mechkit.tasks.regbench`
instances (one per DFA of each pool, cut to seq_len), labeled with the next symbol where `label_mask` scores it,
scored by `regbench.accuracy` (a prediction is right when the DFA accepts it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.tasks import mqar, regbench

if TYPE_CHECKING:
    from mechkit.native.train import TrainConfig

TASKS = ("mqar", "induction", "regbench")


@dataclass
class TaskData:
    """Train and test tensors of one task; `accuracy(pred_ids)` scores argmax predictions `[n_test, seq_len]`."""

    train_tokens: Int[Tensor, "n seq"]
    train_labels: Int[Tensor, "n seq"]
    test_tokens: Int[Tensor, "n_test seq"]
    test_labels: Int[Tensor, "n_test seq"]
    vocab_size: int
    token_names: tuple[str, ...]
    accuracy: Callable[[Tensor], float]


def task_data(config: "TrainConfig") -> TaskData:
    """The data `config.task` names, generated from `config.seed`."""
    if config.task == "mqar":
        return _mqar(config)
    if config.task == "induction":
        return _induction(config)
    if config.task == "regbench":
        return _regbench(config)
    raise MechkitError(f"unknown task {config.task!r}; use one of {', '.join(TASKS)}")


def _mqar(c: "TrainConfig") -> TaskData:
    cfg = mqar.MQARConfig(vocab_size=c.vocab_size, seq_len=c.seq_len, n_kv_pairs=c.kv_pairs, n_train=c.n_train,
                          n_test=c.n_test, seed=c.seed)
    (train, train_labels), (test, test_labels) = (mqar.split_tensors(cfg, s) for s in mqar.SPLITS)
    return TaskData(train, train_labels, test, test_labels, c.vocab_size, (),
                    lambda pred: mqar.accuracy(pred, test_labels))


def _repeated(c: "TrainConfig", split: int, n: int) -> tuple[Tensor, Tensor]:
    half = c.seq_len // 2
    rows = [np.random.default_rng((c.seed, split, i)).integers(0, c.vocab_size, size=half) for i in range(n)]
    tokens = torch.from_numpy(np.tile(np.stack(rows), 2))
    labels = torch.full_like(tokens, mqar.IGNORE)
    labels[:, half:-1] = tokens[:, half + 1:]
    return tokens, labels


def _induction(c: "TrainConfig") -> TaskData:
    if c.seq_len < 4 or c.seq_len % 2:
        raise MechkitError(f"the induction task repeats a sequence once, so seq_len must be even and >= 4, got "
                           f"{c.seq_len}")
    (train, train_labels), (test, test_labels) = _repeated(c, 0, c.n_train), _repeated(c, 1, c.n_test)
    return TaskData(train, train_labels, test, test_labels, c.vocab_size, (),
                    lambda pred: mqar.accuracy(pred, test_labels))


def _regbench_split(bench: regbench.RegBench, split: str, n: int, seq_len: int):
    instances = [dataclasses.replace(x, tokens=x.tokens[:seq_len]) for x in bench.instances(split, n)]
    tokens, _ = regbench.as_batch(instances)
    tokens = torch.nn.functional.pad(tokens, (0, seq_len - tokens.shape[1]), value=regbench.PAD)
    nxt = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], regbench.PAD)], dim=1)
    labels = torch.where(regbench.label_mask(tokens), nxt, mqar.IGNORE)
    return tokens, labels, instances


def _regbench(c: "TrainConfig") -> TaskData:
    bench = regbench.RegBench(regbench.RegBenchConfig(seed=c.seed, n_train_dfas=c.n_train, n_test_dfas=c.n_test,
                                                      max_string_len=c.max_string_len))
    train, train_labels, _ = _regbench_split(bench, "train", c.n_train, c.seq_len)
    test, test_labels, instances = _regbench_split(bench, "test", c.n_test, c.seq_len)
    return TaskData(train, train_labels, test, test_labels, len(regbench.VOCAB), regbench.VOCAB,
                    lambda pred: regbench.accuracy(pred, instances))
