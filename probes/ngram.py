"""n-gram heads (Akyurek et al. 2024): heads that attend to the tokens that followed earlier occurrences of the
current n-token context, scored for several orders on REGBENCH strings or text; and the static n-gram layer.

An order-n head at query t attends to every key s+1 (s+1 <= t) whose preceding n tokens equal the n tokens
ending at t (order 1 is the induction pattern). A head's order-n score is the share of its attention on those
keys over the rows that have one (`attention_patterns`): 1.0 for a perfect order-n head, the uniform baseline
for a head that spreads its attention evenly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.probes.attention_patterns import context_match_targets, pattern_scores, uniform_baseline
from mechkit.scores import HeadScores
from mechkit.subject import Subject
from mechkit.tasks import regbench


def parse_orders(spec: str | Sequence[int]) -> tuple[int, ...]:
    """Orders from "1,2,3" or a sequence; each at least 1, no repeats."""
    try:
        orders = tuple(int(x) for x in (spec.split(",") if isinstance(spec, str) else spec))
    except ValueError:
        raise MechkitError(f"orders {spec!r} must be comma-separated integers such as 1,2,3") from None
    if not orders or min(orders) < 1 or len(set(orders)) != len(orders):
        raise MechkitError(f"orders {spec!r} must be distinct integers of at least 1, e.g. 1,2,3")
    return orders


def symbol_token_ids(subject: Subject) -> list[int]:
    """The Subject's token id for each REGBENCH symbol written as text (" a" .. " r", " |"): one token each."""
    ids = []
    for symbol in range(regbench.SEP + 1):
        text = " " + regbench.to_text([symbol])
        pieces = subject.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            raise MechkitError(f"{subject.model_id} splits the REGBENCH symbol {text!r} into {len(pieces)} tokens; "
                               "n-gram scores on REGBENCH need one token per symbol, so score a text file instead "
                               "(--data FILE)")
        ids.append(pieces[0])
    return ids


def regbench_batch(subject: Subject, n_sequences: int, seed: int, max_tokens: int | None = None) -> Batch:
    """REGBENCH instances from test automata, written in the Subject's tokens (BOS + " a b | c ..."),
    left-padded; each truncated to `max_tokens` symbols when given."""
    bench = regbench.RegBench(regbench.RegBenchConfig(seed=seed, n_train_dfas=1, n_test_dfas=n_sequences))
    ids = symbol_token_ids(subject)
    bos = subject.bos_prefix
    rows = [bos + [ids[s] for s in inst.tokens[:max_tokens]] for inst in bench.instances("test", n_sequences, seed)]
    return Batch.from_sequences(rows, pad_id=subject.pad_id)


@dataclass(frozen=True)
class NgramConfig:
    """orders: the n-gram orders to score; data "regbench" (REGBENCH test automata as text) or a list of texts
    given to `find_ngram_heads`; n_sequences / max_tokens: how many REGBENCH instances, cut to this many symbols."""

    orders: tuple[int, ...] = (1, 2, 3)
    data: str = "regbench"
    n_sequences: int = 16
    max_tokens: int = 400
    block_size: int = 256
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NgramResult:
    """scores: "ngram_{n}" -> HeadScores; baselines: the uniform-attention score per metric."""

    scores: dict[str, HeadScores]
    baselines: dict[str, float] = field(default_factory=dict)


def find_ngram_heads(subject: Subject, config: NgramConfig = NgramConfig(), texts: Sequence[str] | None = None,
                     verbose: bool = True) -> NgramResult:
    """Order-n scores of every head for each order in `config.orders`, from one forward pass over the data."""
    orders = parse_orders(config.orders)
    if texts is not None:
        batch = subject.tokenize(list(texts))
    elif config.data == "regbench":
        batch = regbench_batch(subject, config.n_sequences, config.seed, config.max_tokens)
    else:
        raise MechkitError(f"data {config.data!r}: pass texts, or use data='regbench'")
    shortest = int(batch.lengths.min())
    if shortest <= max(orders) + 1:
        raise MechkitError(f"a sequence of {shortest} tokens is too short for order {max(orders)} (it needs more "
                           f"than {max(orders) + 1}); use longer texts or lower orders")
    patterns = {f"ngram_{n}": context_match_targets(n) for n in orders}
    raw = pattern_scores(subject, batch, patterns, block_size=config.block_size, verbose=verbose)
    settings = {**config.to_dict(), "orders": list(orders), "data": "texts" if texts is not None else config.data}
    scores = {name: HeadScores(values.float(), metric=name, model=subject.model_id, n_items=len(batch),
                               seed=config.seed, config=settings) for name, values in raw.items()}
    baselines = {name: uniform_baseline(batch, fn) for name, fn in patterns.items()}
    return NgramResult(scores, baselines)


def ngram_attention(input_ids: Int[Tensor, "batch pos"], order: int) -> Float[Tensor, "batch pos pos"]:
    """The hard-wired order-n head of the static n-gram layer: uniform over the strictly earlier keys s+1 < t
    whose preceding n tokens match the n tokens ending at t; rows with no match are zero (reference `ngram.py`)."""
    batch = Batch(input_ids, torch.ones_like(input_ids))
    width = input_ids.shape[-1]
    positions = torch.arange(width, device=input_ids.device)
    targets = context_match_targets(order)(batch, positions) & (positions[None, :] < positions[:, None])[None]
    targets = targets.to(torch.float32)
    return targets / targets.sum(-1, keepdim=True).clamp(min=1.0)


class NgramLayer(nn.Module):
    """Static n-gram layer: y = Linear(A_n x) + Linear(x), with A_n the order-n `ngram_attention` of the
    input ids (no learned attention). x: [batch, pos, d_model]; input_ids: [batch, pos]."""

    def __init__(self, d_model: int, order: int = 1):
        super().__init__()
        if order < 1:
            raise MechkitError(f"an n-gram order must be at least 1, got {order}")
        self.order = order
        self.t0 = nn.Linear(d_model, d_model)
        self.t1 = nn.Linear(d_model, d_model)

    def forward(self, x: Float[Tensor, "batch pos d_model"], input_ids: Int[Tensor, "batch pos"]
                ) -> Float[Tensor, "batch pos d_model"]:
        pattern = ngram_attention(input_ids, self.order).to(x)
        return self.t0(pattern @ x) + self.t1(x)
