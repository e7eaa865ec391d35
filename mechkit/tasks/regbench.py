"""REGBENCH (Akyürek et al. 2024): in-context learning of random regular languages.

An instance is a random minimal DFA (`mechkit.tasks.dfa`) and 10..19 strings sampled from it by a uniform PFA,
joined as "w1 | w2 | ... | wn"; a model must infer the language in context. Follows `berlino/seq_icl`
(`src/dataloaders/dfa.py`, `train.py`, `analyze.py`) with these differences: token ids (letters 0..17, '|' 18,
'.' 19; the reference sorts '.' first); deduplication by a canonical, isomorphism-invariant key (the reference keeps
DFA objects in a set, but its `DFA` defines `__hash__` without `__eq__`, so nothing is ever deduplicated and train
and test need not be disjoint); the test pool is one split (the reference halves its 500 held-out DFAs into val and
test); each split's instances cycle through its DFA pool (n = pool size gives one instance per DFA, as there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.tasks.dfa import DFA, N_LETTERS, check_dfa_params, random_dfa

VOCAB: tuple[str, ...] = tuple(chr(ord("a") + i) for i in range(N_LETTERS)) + ("|", ".")
SEP = 18
PAD = 19
_IDS = {s: i for i, s in enumerate(VOCAB)}


def to_text(ids: Sequence[int]) -> str:
    """Render ids as letters separated by single spaces ('|' and '.' as is): [0, 1, 18, 2] -> "a b | c"."""
    if any(not 0 <= int(i) < len(VOCAB) for i in ids):
        raise MechkitError(f"REGBENCH ids must lie in 0..{len(VOCAB) - 1}; map other ids before calling to_text.")
    return " ".join(VOCAB[int(i)] for i in ids)


def from_text(text: str) -> list[int]:
    """Inverse of `to_text`: whitespace-separated symbols 'a'..'r', '|' or '.' to ids."""
    unknown = sorted(set(text.split()) - set(_IDS))
    if unknown:
        raise MechkitError(f"REGBENCH text has unknown symbols {unknown}; use space-separated 'a'..'r', '|' and '.'.")
    return [_IDS[s] for s in text.split()]


@dataclass
class RegBenchConfig:
    """REGBENCH settings (defaults: the reference's `icl_dfa.yaml`).

    String counts and lengths use numpy's exclusive upper bound as the reference does: `rng.integers(min_strings,
    max_strings)` strings (10..19) of `rng.integers(1, max_string_len)` symbols (1..49). `max_attempts` bounds the
    DFA draws (default 10 x the number of DFAs needed, as in the reference).
    """

    seed: int = 0
    n_train_dfas: int = 5000
    n_test_dfas: int = 500
    min_strings: int = 10
    max_strings: int = 20
    max_string_len: int = 50
    min_states: int = 4
    max_states: int = 12
    min_alphabet: int = 4
    max_alphabet: int = 18
    max_out: int = 4
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.n_train_dfas < 1 or self.n_test_dfas < 1:
            raise MechkitError(f"Set n_train_dfas and n_test_dfas >= 1, got {self.n_train_dfas}/{self.n_test_dfas}.")
        if not 1 <= self.min_strings < self.max_strings or self.max_string_len < 2:
            raise MechkitError("Need 1 <= min_strings < max_strings and max_string_len >= 2 (exclusive upper bounds).")
        check_dfa_params(self.min_states, self.max_states, self.min_alphabet, self.max_alphabet, self.max_out)


@dataclass(frozen=True)
class Instance:
    """One REGBENCH sequence: `tokens` = strings joined by SEP ("w1 | w2 | ... | wn"), no padding."""

    dfa: DFA
    tokens: list[int]
    strings: list[list[int]]


class RegBench:
    """Disjoint, deduplicated pools of train and test DFAs (`self.dfas["train"|"test"]`), built from `config.seed`."""

    SPLITS = ("train", "test")

    def __init__(self, config: RegBenchConfig) -> None:
        self.config = c = config
        rng = np.random.default_rng(c.seed)
        need = c.n_train_dfas + c.n_test_dfas
        attempts = c.max_attempts if c.max_attempts is not None else 10 * need
        pool: dict[tuple, DFA] = {}
        for _ in range(attempts):
            dfa = random_dfa(rng, c.max_states, c.min_states, c.max_alphabet, c.min_alphabet, c.max_out)
            pool.setdefault(dfa.key(), dfa)
            if len(pool) == need:
                break
        if len(pool) < need:
            raise MechkitError(
                f"Only {len(pool)} distinct DFAs in {attempts} draws but {need} are needed; lower n_train_dfas/"
                "n_test_dfas or widen the state and alphabet ranges."
            )
        dfas = list(pool.values())
        order = rng.permutation(need)
        self.dfas = {
            "train": tuple(dfas[i] for i in order[: c.n_train_dfas]),
            "test": tuple(dfas[i] for i in order[c.n_train_dfas :]),
        }

    def instances(self, split: str, n: int, seed: int = 0) -> list[Instance]:
        """`n` instances; instance i uses DFA i mod pool size; strings drawn from rng((config.seed, split, seed))."""
        if split not in self.SPLITS or n < 1:
            raise MechkitError(f"Ask for n >= 1 instances of split 'train' or 'test', got n={n}, split={split!r}.")
        c, pool = self.config, self.dfas[split]
        rng = np.random.default_rng([c.seed, self.SPLITS.index(split), seed])
        out = []
        for i in range(n):
            dfa = pool[i % len(pool)]
            n_strings = int(rng.integers(c.min_strings, c.max_strings))
            strings = [dfa.sample_string(rng, int(rng.integers(1, c.max_string_len))) for _ in range(n_strings)]
            tokens = [t for k, w in enumerate(strings) for t in ([SEP] if k else []) + w]
            out.append(Instance(dfa, tokens, strings))
        return out


def as_batch(
    instances: Sequence[Instance], pad: int = PAD
) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """RIGHT-padded token ids [batch, max_len] (as the reference; pad '.') and a [batch, max_len] real-token mask."""
    if not instances:
        raise MechkitError("Pass at least one REGBENCH instance to batch.")
    width = max(len(x.tokens) for x in instances)
    tokens = torch.full((len(instances), width), pad, dtype=torch.long)
    mask = torch.zeros(len(instances), width, dtype=torch.bool)
    for b, x in enumerate(instances):
        tokens[b, : len(x.tokens)] = torch.tensor(x.tokens)
        mask[b, : len(x.tokens)] = True
    return tokens, mask


def label_mask(tokens: Int[Tensor, "batch pos"], sep: int = SEP, pad: int = PAD) -> Bool[Tensor, "batch pos"]:
    """Positions t that are scored: token t+1 exists and is neither '|' nor pad (the reference's -100 labels)."""
    nxt = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], pad)], dim=1)
    return (nxt != sep) & (nxt != pad)


def true_next_distributions(instance: Instance) -> Float[Tensor, "pos vocab"]:
    """Row t: the PFA's next-symbol distribution after tokens[: t + 1] (uniform over the current state's out-edges).

    The current state is the DFA state after the current string's prefix, state 0 right after a '|'. float64.
    """
    dfa, state = instance.dfa, 0
    rows = torch.zeros(len(instance.tokens), len(VOCAB), dtype=torch.float64)
    for t, tok in enumerate(instance.tokens):
        state = 0 if tok == SEP else dfa.step(state, tok)
        if state is None:
            raise MechkitError(f"Instance token {tok} at position {t} is rejected by its DFA; rebuild the instance.")
        options = list(dfa.next_symbols(state))
        if options:  # a dead-end state (never in generated DFAs) leaves its row zero
            rows[t, options] = 1.0 / len(options)
    return rows


def _scored(instance: Instance, all_positions: bool = False) -> Tensor:
    """Bool [len - 1]: positions t < len - 1 whose next token is not '|' (all of them if `all_positions`)."""
    nxt = torch.tensor(instance.tokens[1:], dtype=torch.long)
    return torch.ones_like(nxt, dtype=torch.bool) if all_positions else nxt != SEP


def _check_batch(x: Tensor, instances: Sequence[Instance], name: str) -> None:
    if not instances:
        raise MechkitError("Pass at least one REGBENCH instance to score.")
    width = max(len(i.tokens) for i in instances) - 1
    if x.shape[0] != len(instances) or x.shape[1] < width:
        raise MechkitError(
            f"{name} has shape {tuple(x.shape)} but needs [{len(instances)}, >= {width}, ...]; pass the model's "
            "outputs on `as_batch(instances)`."
        )


def _mean(total: float, count: int) -> float:
    if count == 0:
        raise MechkitError("The instances have no scored position; use strings of at least two symbols.")
    return total / count


def accuracy(pred_ids: Int[Tensor, "batch pos"], instances: Sequence[Instance]) -> float:
    """Fraction of scored positions whose greedy prediction keeps the current string accepted by the DFA.

    pred_ids[b, t] predicts token t + 1; positions whose next token is '|' (or padding) are skipped. Micro-average
    over all scored positions of all instances, as the reference's `_get_dfa_accuracy` per batch.
    """
    _check_batch(pred_ids, instances, "pred_ids")
    correct = total = 0
    for b, inst in enumerate(instances):
        keep = _scored(inst)
        pred = pred_ids[b, : len(keep)].long().cpu().unsqueeze(1)
        ok = true_next_distributions(inst)[:-1].gather(1, pred).squeeze(1) > 0
        correct += int(ok[keep].sum())
        total += int(keep.sum())
    return _mean(correct, total)


def total_variation(
    probs: Float[Tensor, "batch pos vocab"], instances: Sequence[Instance], all_positions: bool = False
) -> float:
    """Mean over scored positions of the FULL L1 distance sum_v |p - q| (twice the total variation; range [0, 2]).

    q is the true PFA distribution (`true_next_distributions`), p the model's probabilities over the 20 ids. This
    is the reference's `model_dfa_diff` normalisation (L1 summed over positions / number of positions);
    `all_positions=True` also scores positions whose next token is '|', exactly as `model_dfa_diff` does.
    """
    _check_batch(probs, instances, "probs")
    if probs.shape[-1] != len(VOCAB):
        raise MechkitError(f"probs must have {len(VOCAB)} entries on the last dim, got {probs.shape[-1]}.")
    l1 = total = 0.0
    for b, inst in enumerate(instances):
        keep = _scored(inst, all_positions)
        q = true_next_distributions(inst)[:-1]
        diff = (probs[b, : len(keep)].double().cpu() - q).abs().sum(-1)
        l1 += float(diff[keep].sum())
        total += int(keep.sum())
    return _mean(l1, total)
