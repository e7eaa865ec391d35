"""Memory heads and context heads in knowledge conflicts, and PH3 pruning (Jin et al. 2024, research/methods.md §7).

A conflict prompt ("The capital of France is London. The capital of France is") pits the memorized object (" Paris")
against the one the context asserts (" London"); LD = logit(memory) - logit(context) at the last position.

Scoring (`score_conflict_heads`): path patching of every head's path to the logits. In the conflict run every head's
z and every MLP output are frozen at the last position, head h's z there is replaced by its value in a reference,
and the score is LD(conflict) - LD(patched), in logit units: > 0 = h pushes memory over context (memory head),
< 0 = h pushes context (context head). Only the last position matters for this path (all else is frozen and
causal), so the prefix runs once into a key/value cache and each head costs one one-token pass. References:

- "mean" (default): h's mean last-position z over the conflict prompts. It removes what is specific to the prompt
  (which subject, which context object), so the score is h's own contribution to LD, the quantity that pruning
  removes (mean ablation uses the same means).
- "aligned" (the same prompt with the true object in context) and "no_context" (the bare query): a head that
  recalls the fact writes the same thing whether or not the context agrees, so these references score it 0; they
  find only heads whose output changes with the context (mostly context heads). Kept as options.

Pruning (`prune_conflict_heads`): zero or mean ablate the top-k memory heads (context-following should rise, LD
fall), the top-k context heads (the reverse), and k random heads drawn from the rest (`n_random` seeded draws) as
the control; on the conflict prompts and on the no-context queries (does the model still know the fact?).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.batch import Batch
from mechkit.circuits.examples import last_logits, logit_diff
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads, random_heads
from mechkit.interventions import HeadAblation
from mechkit.scores import HeadScores
from mechkit.tasks.conflicts import ConflictSet, conflict_set

REFERENCES = ("mean", "aligned", "no_context")
MODES = ("zero", "mean")
KINDS = ("memory", "context", "random")
GROUP = 8  # heads per cached-prefix call (each returns [GROUP, batch, vocab] logits)


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@dataclass
class ConflictHeadsResult:
    """scores: signed path-patching scores (LD units; > 0 memory, < 0 context heads); memory_heads / context_heads:
    the top-k of each sign, strongest first; records: the pruning table (`prune_conflict_heads`); clean_ld: mean LD
    on the conflict prompts; follows_context: share of them with logit(context) > logit(memory)."""

    scores: HeadScores
    memory_heads: list[HeadId]
    context_heads: list[HeadId]
    records: list[dict] = field(default_factory=list)
    clean_ld: float = math.nan
    follows_context: float = math.nan
    config: dict = field(default_factory=dict)

    def head_records(self) -> list[dict]:
        """The scores as tidy records plus `kind` ("memory" / "context" / "") and `rank` (1 = strongest)."""
        rank = {h: ("memory", i + 1) for i, h in enumerate(self.memory_heads)}
        rank |= {h: ("context", i + 1) for i, h in enumerate(self.context_heads)}
        rows = self.scores.to_records()
        for row in rows:
            kind, r = rank.get(HeadId(row["layer"], row["head"]), ("", None))
            row |= {"kind": kind, "rank": r}
        return rows

    def summary(self) -> list[dict]:
        """Pruning records averaged over random draws: one row per (mode, kind, k)."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.records:
            groups.setdefault((row["mode"], row["kind"], row["k"]), []).append(row)
        out = []
        for (mode, kind, k), rows in groups.items():
            mean = {key: float(np.mean([r[key] for r in rows])) for key in _MEASURES}
            out.append({"model": rows[0]["model"], "mode": mode, "kind": kind, "k": k, "n_draws": len(rows), **mean})
        return out


_MEASURES = ("follows_context", "follows_memory", "mean_ld", "knows", "no_context_ld")


def _ld(logits: Tensor, conflicts_memory: Tensor, conflicts_context: Tensor) -> Tensor:
    return logit_diff(logits, conflicts_memory, conflicts_context).double().cpu()


def _references(subject, conflicts: ConflictSet, reference: str, batch_size: int) -> Tensor | None:
    """Per-layer last-position z `[layer, n or 1, head, d_head]` of the reference, or None for "aligned" (per chunk)."""
    if reference == "aligned":
        return None
    L = subject.n_layers
    batch = conflicts.examples.positives if reference == "mean" else conflicts.no_context
    parts = []
    for start in range(0, len(batch), batch_size):
        _, cache = subject.run_with_cache(batch.select(slice(start, start + batch_size)),
                                          names_filter=[_z(layer) for layer in range(L)], last_only=True)
        parts.append(torch.stack([cache[_z(layer)][:, -1].float().cpu() for layer in range(L)]))
    z = torch.cat(parts, dim=1)
    return z.mean(1, keepdim=True) if reference == "mean" else z


def _set_last(value: Tensor):
    def hook(act, *, hook):
        return value.to(act)[:, None]

    return hook


def score_conflict_heads(
    subject,
    conflicts: ConflictSet,
    reference: str = "mean",
    freeze_mlps: bool = True,
    batch_size: int = 32,
    verbose: bool = True,
) -> HeadScores:
    """Signed per-head scores `[n_layers, n_heads]`: mean over conflict prompts of LD(conflict) - LD(head's
    last-position z from `reference`, every other head's z and every MLP output frozen); logit units."""
    check_conflict_options(reference=reference)
    L, H = subject.n_layers, subject.n_heads
    examples = conflicts.examples
    ref_all = _references(subject, conflicts, reference, batch_size)
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(L)] if freeze_mlps else []
    senders = all_heads(L, H)
    total = torch.zeros(L, H, dtype=torch.float64)
    starts = list(range(0, len(examples), batch_size))
    bar = tqdm(total=len(starts) * len(senders), desc="conflict heads", disable=not verbose)
    for start in starts:
        rows = slice(start, start + batch_size)
        chunk = examples.select(rows)
        names = [_z(layer) for layer in range(L)] + mlp_names
        logits, pos = subject.run_with_cache(chunk.positives, names_filter=names, last_only=True)
        clean = _ld(logits[:, -1], chunk.answer_ids, chunk.wrong_ids)
        z = [pos[_z(layer)][:, -1] for layer in range(L)]
        if ref_all is None:
            _, neg = subject.run_with_cache(chunk.negatives, names_filter=names[:L], last_only=True)
            ref = [neg[_z(layer)][:, -1] for layer in range(L)]
        else:
            ref = [ref_all[layer][rows] if ref_all.shape[1] > 1 else ref_all[layer].expand_as(z[layer].cpu())
                   for layer in range(L)]
        frozen_mlps = [(name, _set_last(pos[name][:, -1])) for name in mlp_names if name in pos]
        for g in range(0, len(senders), GROUP):
            variants = []
            for sender in senders[g:g + GROUP]:
                patched = z[sender.layer].clone()
                patched[:, sender.head] = ref[sender.layer][:, sender.head].to(patched)
                hooks = [(_z(layer), _set_last(patched if layer == sender.layer else z[layer])) for layer in range(L)]
                variants.append(hooks + frozen_mlps)
            out = subject.run_last_token_variants(chunk.positives, variants)
            for sender, variant_logits in zip(senders[g:g + GROUP], out):
                ld = _ld(variant_logits, chunk.answer_ids, chunk.wrong_ids)
                total[sender.layer, sender.head] += (clean - ld).sum()
            bar.update(len(variants))
    bar.close()
    config = {"task": examples.name, "reference": reference, "freeze_mlps": freeze_mlps, "batch_size": batch_size}
    return HeadScores(total / len(examples), metric="conflict_path_patching", model=subject.model_id,
                      n_items=len(examples), config=config)


def split_heads(scores: HeadScores, k: int) -> tuple[list[HeadId], list[HeadId]]:
    """(memory heads, context heads): the up-to-k heads with the largest positive / most negative scores."""
    memory = [h for h, s in scores.top(k) if s > 0]
    context = [h for h, s in scores.top(k, largest=False) if s < 0]
    return memory, context


def _last_z_means(subject, batch: Batch, batch_size: int) -> dict[int, Tensor]:
    """Per layer, each head's mean last-position z over `batch` `[n_heads, d_head]` (the mean-ablation value)."""
    L = subject.n_layers
    sums = [0.0] * L
    for start in range(0, len(batch), batch_size):
        _, cache = subject.run_with_cache(batch.select(slice(start, start + batch_size)),
                                          names_filter=[_z(layer) for layer in range(L)], last_only=True)
        for layer in range(L):
            sums[layer] = sums[layer] + cache[_z(layer)][:, -1].double().sum(0).cpu()
    return {layer: (sums[layer] / len(batch)).float() for layer in range(L)}


def _measure(subject, conflicts: ConflictSet, interventions, batch_size: int) -> dict[str, float]:
    """Shares and mean LDs on the conflict prompts and on the no-context queries under `interventions`."""
    out = {}
    for name, batch in (("conflict", conflicts.examples.positives), ("no_context", conflicts.no_context)):
        lds = []
        for start in range(0, len(batch), batch_size):
            rows = slice(start, start + batch_size)
            logits = last_logits(subject, batch.select(rows), interventions)
            lds.append(_ld(logits, conflicts.memory_ids[rows], conflicts.context_ids[rows]))
        out[name] = torch.cat(lds)
    ld, bare = out["conflict"], out["no_context"]
    return {"follows_context": float((ld < 0).double().mean()), "follows_memory": float((ld > 0).double().mean()),
            "mean_ld": float(ld.mean()), "knows": float((bare > 0).double().mean()),
            "no_context_ld": float(bare.mean())}


def prune_conflict_heads(
    subject,
    conflicts: ConflictSet,
    scores: HeadScores,
    ks: tuple[int, ...] = (1, 2, 4, 8),
    modes: tuple[str, ...] = ("zero",),
    n_random: int = 3,
    seed: int = 0,
    batch_size: int = 32,
    verbose: bool = True,
) -> list[dict]:
    """Tidy records, one per (mode, kind, k, draw): follows_context / follows_memory (shares of conflict prompts
    with LD < 0 / > 0), mean_ld (logits), knows (share of no-context queries with LD > 0), no_context_ld; kind
    "none" (k=0) is the unablated model. Random heads avoid the top-k of both kinds; draw d uses seed (seed, k, d)."""
    _check_ks(subject, ks)
    check_conflict_options(modes=modes, n_random=n_random)
    means = _last_z_means(subject, conflicts.examples.positives, batch_size) if "mean" in modes else None
    base = {"model": subject.model_id, "n_items": len(conflicts.examples), "seed": seed}
    plans = []
    for k in ks:
        memory, context = split_heads(scores, k)
        for kind, heads in (("memory", memory), ("context", context)):
            plans.append((kind, k, 0, heads))
        for draw in range(n_random):
            rng = np.random.default_rng((seed, k, draw))
            plans.append(("random", k, draw, random_heads(subject.n_layers, subject.n_heads, k, memory + context, rng)))
    records = []
    bar = tqdm(total=len(modes) * (1 + len(plans)), desc="pruning", disable=not verbose)
    for mode in modes:
        records.append({**base, "mode": mode, "kind": "none", "k": 0, "draw": 0, "heads": "",
                        **_measure(subject, conflicts, (), batch_size)})
        bar.update()
        for kind, k, draw, heads in plans:
            ablation = [HeadAblation(heads, mode=mode, means=means)] if heads else []
            records.append({**base, "mode": mode, "kind": kind, "k": k, "draw": draw,
                            "heads": " ".join(h.label for h in heads), "n_ablated": len(heads),
                            **_measure(subject, conflicts, ablation, batch_size)})
            bar.update()
    bar.close()
    return records


def check_conflict_options(k: int = 1, ks: tuple[int, ...] | None = None, reference: str = "mean",
                           modes: tuple[str, ...] = ("zero",), n_random: int = 0, flags: bool = False) -> None:
    """Raise a one-sentence MechkitError for an option of `conflict_heads` out of range, before any model work
    (the head-count bound on k needs the model: `_check_ks`). `flags`: name the options as command-line flags."""
    def name(option: str) -> str:
        return "--" + option.replace("_", "-") if flags else option

    if k < 1 or (ks is not None and min(ks, default=1) < 1):
        raise MechkitError(f"{name('k')} {k} and {name('ks')} {list(ks or ())} must be positive numbers of heads")
    if reference not in REFERENCES:
        raise MechkitError(f"{name('reference')} {reference!r} is not one of {', '.join(REFERENCES)}")
    if not modes or any(mode not in MODES for mode in modes):
        raise MechkitError(f"{name('modes')} {','.join(modes)!r} must be a comma list of {', '.join(MODES)}")
    if n_random < 0:
        raise MechkitError(f"{name('n_random')} {n_random} must be 0 or more")


def _check_ks(subject, ks) -> None:
    n = subject.n_layers * subject.n_heads
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n for k in ks):
        raise MechkitError(f"k must be whole numbers between 1 and {n} (the number of heads of {subject.model_id}), "
                           f"got {list(ks)}; pass smaller k")


def conflict_heads(
    subject,
    n: int | None = None,
    seed: int = 0,
    k: int = 4,
    ks: tuple[int, ...] | None = (1, 2, 4, 8),
    reference: str = "mean",
    modes: tuple[str, ...] = ("zero",),
    n_random: int = 3,
    conflicts: ConflictSet | None = None,
    batch_size: int = 32,
    verbose: bool = True,
) -> ConflictHeadsResult:
    """PH3 end to end: the known-only conflict set (n facts, seeded; or `conflicts`), signed head scores, the top-k
    memory / context heads, and the pruning table for each k in `ks` (None: no pruning; ks larger than the model's
    head count are dropped)."""
    n_heads = subject.n_layers * subject.n_heads
    _check_ks(subject, (k,))
    if ks is not None:
        ks = tuple(x for x in ks if not (isinstance(x, int) and x > n_heads)) or (k,)
        _check_ks(subject, ks)
    check_conflict_options(reference=reference)
    if conflicts is None:
        conflicts = conflict_set(subject, n, seed, known_only=True, batch_size=batch_size)
    scores = score_conflict_heads(subject, conflicts, reference, batch_size=batch_size, verbose=verbose)
    scores.seed = seed
    memory, context = split_heads(scores, k)
    records = [] if ks is None else prune_conflict_heads(subject, conflicts, scores, ks, modes, n_random, seed,
                                                         batch_size, verbose)
    base = _measure(subject, conflicts, (), batch_size)
    config = {"n": len(conflicts.examples), "seed": seed, "k": k, "ks": None if ks is None else list(ks),
              "reference": reference, "modes": list(modes), "n_random": n_random}
    return ConflictHeadsResult(scores, memory, context, records, base["mean_ld"], base["follows_context"], config)

