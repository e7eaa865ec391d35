"""Induction-family head scores: previous-token, duplicate-token, induction, prefix matching and copying.

Conventions (methods.md §2): induction-family scores run on random token sequences repeated twice with BOS
prepended (TransformerLens / ARENA: 10 sequences of 50 tokens); a head's score is the share of its attention on
the pattern's keys over the rows that have one (`attention_patterns`), so a perfect head scores 1.0. Prefix
matching (Olsson et al. 2022) uses unique tokens drawn from a pool without the most and least frequent ones,
repeated 4 times. Copying is the share of a head's positive logit boost, among the tokens seen so far, that goes
to the token it attends to most, read through its OV circuit from that token's own value vector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, random_heads
from mechkit.interventions import HeadAblation
from mechkit.probes.attention_patterns import (
    context_match_targets,
    duplicate_token_targets,
    pattern_scores,
    previous_token_targets,
    uniform_baseline,
)
from mechkit.scores import HeadScores
from mechkit.subject import Subject

INDUCTION_PATTERNS = {
    "previous_token": previous_token_targets,
    "duplicate_token": duplicate_token_targets,
    "induction": context_match_targets(1),
}


def token_pool(tokenizer, exclude_fraction: float = 0.0) -> Int[np.ndarray, " n"]:
    """Ordinary token ids (no special, added or `<...>` control pieces such as byte-fallback and unused slots),
    in id order, without the first and last `exclude_fraction` of them.

    Ids stand in for frequency ranks (BPE vocabularies are built most frequent merge first); Olsson et al. drop
    the 4% most and least frequent tokens by corpus counts, which are not available offline.
    """
    if not 0.0 <= exclude_fraction < 0.5:
        raise MechkitError(f"exclude_fraction must be in [0, 0.5), got {exclude_fraction}")
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids = np.array([i for i, piece in enumerate(pieces)
                    if i not in special and piece and not (piece.startswith("<") and piece.endswith(">"))])
    cut = int(len(ids) * exclude_fraction)
    return ids[cut:len(ids) - cut]


def random_token_batch(
    subject: Subject,
    seq_len: int,
    n_sequences: int,
    repeats: int,
    pool: Int[np.ndarray, " n"],
    seed: int,
    unique: bool = False,
) -> Batch:
    """`n_sequences` rows of BOS (when the model prepends one) + a random sequence of `seq_len` pool tokens
    repeated `repeats` times; `unique` draws without replacement within a row."""
    if seq_len < 2 or repeats < 1 or n_sequences < 1:
        raise MechkitError(f"need seq_len >= 2, repeats >= 1 and n_sequences >= 1 (got {seq_len}, {repeats}, "
                           f"{n_sequences}); increase them")
    if unique and len(pool) < seq_len:
        raise MechkitError(f"the token pool has {len(pool)} tokens, too few for {seq_len} unique tokens per "
                           "sequence; lower the sequence length or the excluded fraction")
    rng = np.random.default_rng(seed)
    bos = subject.bos_prefix
    rows = []
    for _ in range(n_sequences):
        body = rng.choice(pool, size=seq_len, replace=not unique).tolist()
        rows.append(bos + body * repeats)
    batch = Batch(torch.tensor(rows, dtype=torch.long), torch.ones(n_sequences, len(rows[0]), dtype=torch.long))
    subject.check_length(batch)
    return batch


def copy_share(
    boosts: Float[Tensor, "... n"], allowed: Tensor, attended: Int[Tensor, "..."]
) -> Float[Tensor, "..."]:
    """Share of the positive, mean-centred logit boost (over the `allowed` entries) that goes to entry
    `attended`; 0 where no entry is boosted above the mean."""
    allowed = allowed.expand_as(boosts)
    n_allowed = allowed.sum(-1, keepdim=True).clamp(min=1)
    centred = (boosts - (boosts * allowed).sum(-1, keepdim=True) / n_allowed) * allowed
    positive = centred.clamp(min=0)
    total = positive.sum(-1)
    chosen = torch.gather(positive, -1, attended[..., None]).squeeze(-1)
    return torch.where(total > 0, chosen / total.clamp(min=1e-30), 0.0)


def copying_scores(subject: Subject, batch: Batch, block_size: int = 256, verbose: bool = True
                   ) -> Float[Tensor, "n_layers n_heads"]:
    """Copying score of every head on `batch` (e.g. unique tokens repeated, so that heads attend to real tokens).

    At each query j a head attends most to some key s. Its OV output from s's value, read through the
    unembedding (`Subject.W_U`), gives a logit boost to each distinct token of the prefix x_0..x_j; the boosts
    are centred on their mean and clipped at zero, and the score at j is the share of the positive boost that
    goes to s's token. Mean over queries and sequences, skipping queries whose most-attended key is BOS (the
    attention sink: nothing is copied there); NaN for a head that always sinks. Uses s's own value (not the
    query's, the quirk of the reference implementation) and the direct path only (norms after the head are not
    applied).
    """
    names = [f"blocks.{layer}.attn.hook_v" for layer in range(subject.n_layers)]
    values: dict[str, Tensor] = {}

    def keep_v(v, *, hook):
        values[hook.name] = v.detach()

    argmax: dict[int, list[Tensor]] = {}
    blocks = subject.iter_attention_blocks(batch, block_size=block_size, fwd_hooks=[(n, keep_v) for n in names])
    for layer, _, rows in tqdm(blocks, desc="attention rows", disable=not verbose):
        argmax.setdefault(layer, []).append(rows.argmax(-1).cpu())
    tokens, real = batch.tokens, batch.attention_mask.bool()
    W_U = subject.W_U
    readout = W_U[:, tokens.to(W_U.device)].permute(1, 0, 2).cpu()  # [batch, d_model, pos]: logit of each pos's token
    width = tokens.shape[-1]
    same = (tokens[:, :, None] == tokens[:, None, :]) & real[:, :, None] & real[:, None, :]
    first = same.int().argmax(-1)  # [batch, pos]: where each position's token first occurs
    distinct = first == torch.arange(width)[None]
    allowed = torch.tril(torch.ones(width, width, dtype=torch.bool))[None, None] & (distinct & real)[:, None, None, :]
    sink = (real.cumsum(-1) == 1) & real & subject.prepend_bos  # the BOS position of each row, if any
    group = subject.n_heads // subject.n_kv_heads
    scores = torch.full((subject.n_layers, subject.n_heads), float("nan"), dtype=torch.float64)
    for layer in range(subject.n_layers):
        source = torch.cat(argmax[layer], dim=-1)  # [batch, head, query]
        v = values.pop(names[layer]).float().cpu().repeat_interleave(group, dim=2)  # [batch, pos, head, d_head]
        v_source = torch.gather(v.permute(0, 2, 1, 3), 2, source[..., None].expand(-1, -1, -1, v.shape[-1]))
        out = torch.einsum("bhqd,hdm->bhqm", v_source, subject.W_O(layer).float().cpu())
        boosts = torch.einsum("bhqm,bmp->bhqp", out, readout)  # [batch, head, query, prefix position]
        share = copy_share(boosts, allowed, torch.gather(first[:, None].expand_as(source), 2, source))
        counted = real[:, None] & ~torch.gather(sink[:, None].expand_as(source), 2, source)
        n = counted.sum((0, 2))
        scores[layer] = torch.where(n > 0, (share * counted).sum((0, 2)) / n.clamp(min=1), float("nan"))
    return scores


@dataclass(frozen=True)
class InductionConfig:
    """seq_len / n_sequences: the repeated random sequences (ARENA: 50, 10). prefix_len / prefix_repeats /
    exclude_fraction: Olsson's prefix-matching sequences (25 unique tokens, 4 repeats, 4% dropped at each end of
    the pool). copying: also compute copying scores (on the prefix-matching sequences)."""

    seq_len: int = 50
    n_sequences: int = 10
    prefix_len: int = 25
    prefix_repeats: int = 4
    exclude_fraction: float = 0.04
    copying: bool = True
    threshold: float = 0.4
    block_size: int = 256
    seed: int = 0

    def __post_init__(self):
        if self.seq_len < 2 or self.prefix_len < 2 or self.n_sequences < 1:
            raise MechkitError(f"seq_len and prefix_len must be at least 2 and n_sequences at least 1 (got "
                               f"{self.seq_len}, {self.prefix_len}, {self.n_sequences}); increase them")
        if self.prefix_repeats < 2:
            raise MechkitError(f"prefix matching needs the sequence repeated at least twice, got prefix_repeats="
                               f"{self.prefix_repeats}; use 4 as Olsson et al. do")
        if not 0.0 <= self.exclude_fraction < 0.5:
            raise MechkitError(f"exclude_fraction must be in [0, 0.5), got {self.exclude_fraction}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InductionResult:
    """scores: metric -> HeadScores; baselines: metric -> the uniform-attention score on the same tokens."""

    scores: dict[str, HeadScores]
    baselines: dict[str, float] = field(default_factory=dict)

    def induction_heads(self, threshold: float | None = None) -> list[HeadId]:
        threshold = self.scores["induction"].config.get("threshold", 0.4) if threshold is None else threshold
        return self.scores["induction"].above(threshold)


def find_induction_heads(subject: Subject, config: InductionConfig = InductionConfig(), verbose: bool = True
                         ) -> InductionResult:
    """Previous-token, duplicate-token, induction, prefix-matching and (optionally) copying scores of every head."""
    pool = token_pool(subject.tokenizer)
    repeated = random_token_batch(subject, config.seq_len, config.n_sequences, 2, pool, config.seed)
    olsson_pool = token_pool(subject.tokenizer, config.exclude_fraction)
    olsson = random_token_batch(subject, config.prefix_len, config.n_sequences, config.prefix_repeats, olsson_pool,
                                config.seed + 1, unique=True)
    raw = pattern_scores(subject, repeated, INDUCTION_PATTERNS, block_size=config.block_size, verbose=verbose)
    raw["prefix_matching"] = pattern_scores(subject, olsson, {"prefix_matching": context_match_targets(1)},
                                            block_size=config.block_size, verbose=verbose)["prefix_matching"]
    baselines = {name: uniform_baseline(repeated, fn) for name, fn in INDUCTION_PATTERNS.items()}
    baselines["prefix_matching"] = uniform_baseline(olsson, context_match_targets(1))
    if config.copying:
        raw["copying"] = copying_scores(subject, olsson, config.block_size, verbose)
    settings = config.to_dict()
    scores = {name: HeadScores(values.float(), metric=name, model=subject.model_id, n_items=config.n_sequences,
                               seed=config.seed, config=settings) for name, values in raw.items()}
    return InductionResult(scores, baselines)


def ablation_check(
    subject: Subject,
    scores: HeadScores,
    k: int,
    n_draws: int = 5,
    seq_len: int = 50,
    n_sequences: int = 10,
    seed: int = 0,
    verbose: bool = True,
) -> list[dict]:
    """Loss on the repeated half of random repeated sequences with the top-k heads of `scores` mean-ablated,
    vs k random heads from outside the top k (`n_draws` draws), vs no ablation.

    Mean ablation replaces a head's z by its mean over the evaluated tokens. Records: {"kind": "none" | "top" |
    "random", "draw", "heads", "loss", "loss_first_half"}: mean next-token cross-entropy (nats) over predictions
    of second-half tokens, and of first-half tokens (random, so unpredictable: the no-induction reference).
    """
    n_all = subject.n_layers * subject.n_heads
    if not 1 <= k < n_all:
        raise MechkitError(f"k must be between 1 and {n_all - 1} heads for {subject.model_id}, got {k}")
    batch = random_token_batch(subject, seq_len, n_sequences, 2, token_pool(subject.tokenizer), seed + 3)
    start = batch.tokens.shape[1] - seq_len  # first position of the repeated half
    top = [head for head, _ in scores.top(k)]
    rng = np.random.default_rng(seed)
    settings = [("none", 0, []), ("top", 0, top)]
    settings += [("random", d, random_heads(subject.n_layers, subject.n_heads, k, top, rng)) for d in range(n_draws)]
    records = []
    for kind, draw, heads in tqdm(settings, desc="ablation", disable=not verbose):
        interventions = [HeadAblation(heads, mode="mean")] if heads else []
        losses = subject.token_losses(batch, interventions).float()  # [batch, pos - 1]: loss predicting token p + 1
        records.append({"kind": kind, "draw": draw, "heads": [h.label for h in heads],
                        "loss": float(losses[:, start - 1:].mean()),
                        "loss_first_half": float(losses[:, :start - 1].nanmean())})
    return records
