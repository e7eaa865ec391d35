"""Token-defined attention patterns and the share of a head's attention that falls on them.

A pattern says, for each query row, which keys a head of some kind should attend to, from token ids alone:
previous token, earlier copies of the current token (duplicate), the tokens that followed earlier occurrences of
the current n-token context (induction for n = 1, n-gram heads for n >= 1). A head's score is TransformerLens'
`detect_head` "mul" measure, summed over the chosen rows: attention mass on the pattern / attention mass, per
sequence, then averaged over sequences. Rows are streamed one layer and one block of queries at a time, so no
T x T pattern of the whole model is ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.attention import uniform_rows
from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.subject import Subject

TargetFn = Callable[[Batch, Tensor], Bool[Tensor, "batch n_query key"]]


def previous_token_targets(batch: Batch, query_positions: Int[Tensor, " n_query"]
                           ) -> Bool[Tensor, "batch n_query key"]:
    """Key t-1 for query t (both real tokens)."""
    keys = torch.arange(batch.tokens.shape[-1], device=query_positions.device)
    targets = keys[None, None, :] == query_positions[None, :, None] - 1
    return targets & _real_pairs(batch, query_positions)


def duplicate_token_targets(batch: Batch, query_positions: Int[Tensor, " n_query"]
                            ) -> Bool[Tensor, "batch n_query key"]:
    """Keys s < t holding the same token as query t."""
    keys = torch.arange(batch.tokens.shape[-1], device=query_positions.device)
    same = batch.tokens[:, query_positions, None] == batch.tokens[:, None, :]
    return same & (keys[None, None, :] < query_positions[None, :, None]) & _real_pairs(batch, query_positions)


def context_match_targets(order: int) -> TargetFn:
    """Order-n context match: key s+1 (s+1 <= t) whenever the n tokens ending at s equal the n tokens ending at
    query t. Order 1 is the induction pattern (TransformerLens' `get_induction_head_detection_pattern`); order n
    is an n-gram head's pattern (Akyurek et al. 2024). Contexts reaching into padding never match."""
    if order < 1:
        raise MechkitError(f"an n-gram order must be at least 1, got {order}")

    def targets(batch: Batch, query_positions: Tensor) -> Tensor:
        tokens, real = batch.tokens, batch.attention_mask.bool()
        width = tokens.shape[-1]
        keys = torch.arange(width, device=tokens.device)
        match = torch.ones(len(tokens), len(query_positions), width, dtype=torch.bool, device=tokens.device)
        for m in range(order):  # match[b, q, j]: context ending at key j-1 equals context ending at query q
            q_at, k_at = query_positions - m, keys - 1 - m
            ok = (q_at >= 0)[None, :, None] & (k_at >= 0)[None, None, :]
            q_tok = tokens[:, q_at.clamp(min=0)]
            k_tok = tokens[:, k_at.clamp(min=0)]
            q_real, k_real = real[:, q_at.clamp(min=0)], real[:, k_at.clamp(min=0)]
            match &= ok & (q_tok[:, :, None] == k_tok[:, None, :]) & q_real[:, :, None] & k_real[:, None, :]
        causal = (keys[None, None, :] >= 1) & (keys[None, None, :] <= query_positions[None, :, None])
        return match & causal & _real_pairs(batch, query_positions)

    return targets


def _real_pairs(batch: Batch, query_positions: Tensor) -> Bool[Tensor, "batch n_query key"]:
    real = batch.attention_mask.bool()
    return real[:, query_positions, None] & real[:, None, :]


@dataclass(frozen=True)
class PatternOptions:
    """Which rows and keys count (TransformerLens `detect_head` options plus a row choice).

    rows "matched": only query rows with at least one pattern key (a perfect head scores 1.0); "all": every real
    row, as `detect_head` does (a perfect induction head on a sequence repeated twice scores about 0.5).
    exclude_bos / exclude_current_token drop the first real key / the diagonal from both sums.
    """

    rows: str = "matched"
    exclude_bos: bool = False
    exclude_current_token: bool = False

    def __post_init__(self):
        if self.rows not in ("matched", "all"):
            raise MechkitError(f"rows must be 'matched' or 'all', got {self.rows!r}")


class PatternAccumulator:
    """Sums attention mass on a pattern and in total, per sequence and head, over blocks of query rows."""

    def __init__(self, batch: Batch, targets: TargetFn, options: PatternOptions, n_heads: int):
        self.batch, self.targets, self.options = batch, targets, options
        self.on_pattern = torch.zeros(len(batch), n_heads, dtype=torch.float64)
        self.total = torch.zeros(len(batch), n_heads, dtype=torch.float64)

    def add(self, query_positions: Tensor, rows: Float[Tensor, "batch head n_query key"]) -> None:
        targets = self.targets(self.batch, query_positions)
        if self.options.exclude_bos or self.options.exclude_current_token:
            rows = rows * self._kept_keys(query_positions)[:, None]
        real_rows = self.batch.attention_mask.bool()[:, query_positions]
        chosen = real_rows & targets.any(-1) if self.options.rows == "matched" else real_rows
        on_row = torch.einsum("bhqk,bqk->bhq", rows, targets.to(rows.dtype))  # mass on the pattern per row
        weight = chosen[:, None].to(torch.float64)
        self.on_pattern += (on_row.to(torch.float64) * weight).sum(-1)
        self.total += (rows.sum(-1).to(torch.float64) * weight).sum(-1)

    def _kept_keys(self, query_positions: Tensor) -> Bool[Tensor, "batch n_query key"]:
        width = self.batch.tokens.shape[-1]
        keep = torch.ones(len(self.batch), len(query_positions), width, dtype=torch.bool)
        if self.options.exclude_bos:
            first = (self.batch.attention_mask.cumsum(-1) == 1) & self.batch.attention_mask.bool()
            keep &= ~first[:, None, :]
        if self.options.exclude_current_token:
            keep &= torch.arange(width)[None, None, :] != query_positions[None, :, None]
        return keep

    def per_sequence(self) -> Float[Tensor, "batch head"]:
        """Score of each sequence and head; NaN for a sequence with no chosen row."""
        return torch.where(self.total > 0, self.on_pattern / self.total.clamp(min=1e-300), float("nan"))

    def scores(self) -> Float[Tensor, " head"]:
        """Mean over sequences that have chosen rows."""
        per_sequence = self.per_sequence()
        if per_sequence.isnan().all():
            raise MechkitError("no query row has a pattern key in these sequences; use longer or repeated sequences")
        return per_sequence.nanmean(0)


def pattern_scores(
    subject: Subject,
    batch: Batch,
    patterns: Mapping[str, TargetFn],
    options: PatternOptions = PatternOptions(),
    block_size: int = 256,
    verbose: bool = True,
) -> dict[str, Float[Tensor, "n_layers n_heads"]]:
    """Score of every head of every layer on each named pattern, from one forward pass over `batch`.

    Memory: the captured q/k of all layers plus one [batch, head, block_size, key] block of rows.
    """
    out = {name: torch.full((subject.n_layers, subject.n_heads), float("nan"), dtype=torch.float64)
           for name in patterns}
    current: dict[str, PatternAccumulator] = {}
    layer_now = None
    blocks = subject.iter_attention_blocks(batch, block_size=block_size)
    n_blocks = subject.n_layers * -(-batch.tokens.shape[-1] // block_size)
    for layer, positions, rows in tqdm(blocks, total=n_blocks, desc="attention rows", disable=not verbose):
        if layer != layer_now:
            _finish(current, out, layer_now)
            current = {name: PatternAccumulator(batch, fn, options, subject.n_heads) for name, fn in patterns.items()}
            layer_now = layer
        for accumulator in current.values():
            accumulator.add(positions, rows.cpu())
    _finish(current, out, layer_now)
    return out


def _finish(current: dict[str, PatternAccumulator], out: dict[str, Tensor], layer: int | None) -> None:
    for name, accumulator in current.items():
        out[name][layer] = accumulator.scores()


def uniform_baseline(batch: Batch, targets: TargetFn, options: PatternOptions = PatternOptions(),
                     block_size: int = 256) -> float:
    """The score a head attending uniformly over its causal prefix would get on `batch`."""
    accumulator = PatternAccumulator(batch, targets, options, n_heads=1)
    for positions in torch.arange(batch.tokens.shape[-1]).split(block_size):
        accumulator.add(positions, uniform_rows(positions, batch.attention_mask.bool(), None, 1, torch.float64))
    return float(accumulator.scores()[0])


def detect_head_reference(subject: Subject, texts: list[str], name: str, **options
                          ) -> Float[Tensor, "n_layers n_heads"]:
    """TransformerLens' `detect_head` on a TransformerLens-backed Subject, prompt by prompt (the reference method
    for tests and benchmarks).

    Each prompt's cache holds only the attention patterns: `detect_head`'s own full cache fails on Gemma 3 in
    TransformerLens 3.x (its q/k norm scale hooks cannot be cached with remove_batch_dim).
    """
    from transformer_lens.head_detector import detect_head
    from transformer_lens.utils import LocallyOverridenDefaults

    if subject.backend != "tl":
        raise MechkitError(f"detect_head needs the TransformerLens backend; load {subject.model_id} with backend='tl'")
    model, per_prompt = subject.model, []
    for text in texts:
        tokens = model.to_tokens(text, prepend_bos=subject.prepend_bos)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"),
                                        remove_batch_dim=True)
        with LocallyOverridenDefaults(model, prepend_bos=subject.prepend_bos):  # detect_head tokenizes again
            per_prompt.append(detect_head(model, text, name, cache=cache, **options))
    return torch.stack(per_prompt).mean(0)
