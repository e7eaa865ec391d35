"""Head-level activation patching (the exhaustive, slow reference) and ablation-based circuit faithfulness.

Both use the task metric of `CircuitExamples`: the logit difference `logit(answer) - logit(wrong)` at the last
position of the positives, averaged over pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.circuits.examples import CircuitExamples, check_solvable, last_logits, logit_diff
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads
from mechkit.interventions import ActivationPatch, HeadAblation, Intervention
from mechkit.scores import HeadScores

ABLATIONS = ("mean", "zero", "resample")


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@dataclass
class PatchingResult:
    """scores: per head, (clean - patched) / (clean - corrupt) of the mean metric, where patched is the positives'
    run with that head's z (every position) taken from the paired negatives; 1 = the head alone carries the whole
    effect, 0 = none. clean / corrupt: mean metric on positives / negatives; accuracy: the model's on positives."""

    scores: HeadScores
    clean: float
    corrupt: float
    accuracy: float


def _metric(subject, batch, chunk: CircuitExamples, interventions: Sequence[Intervention] = ()) -> Tensor:
    return logit_diff(last_logits(subject, batch, interventions), chunk.answer_ids, chunk.wrong_ids).cpu()


def head_patching(
    subject,
    examples: CircuitExamples,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> PatchingResult:
    """Exhaustive head-level activation patching: one patched run of every batch per head (n_layers x n_heads runs).

    The normalized effect is a ratio of means over pairs (robust when one pair's clean - corrupt gap is near 0).
    """
    accuracy = check_solvable(subject, examples, min_accuracy, criterion, on_unsolvable, batch_size)
    chunks = list(examples.chunks(batch_size))
    clean = torch.cat([_metric(subject, c.positives, c) for c in chunks]).mean().item()
    corrupt = torch.cat([_metric(subject, c.negatives, c) for c in chunks]).mean().item()
    if not abs(clean - corrupt) > 1e-6 * max(1.0, abs(clean)):
        raise MechkitError(
            f"task {examples.name!r}: the negatives leave the mean logit difference unchanged ({clean:.4g}), so "
            "patching has no effect to attribute; make each negative an edit that breaks the task"
        )
    names = [_z(layer) for layer in range(subject.n_layers)]
    patched = torch.zeros(subject.n_layers, subject.n_heads, dtype=torch.float64)
    bar = tqdm(total=len(chunks) * subject.n_layers * subject.n_heads, desc="patching heads", disable=not verbose)
    for chunk in chunks:
        _, cache = subject.run_with_cache(chunk.negatives, names_filter=names, last_only=True)
        for layer in range(subject.n_layers):
            for head in range(subject.n_heads):
                patch = ActivationPatch(_z(layer), cache[_z(layer)], heads=(head,))
                patched[layer, head] += _metric(subject, chunk.positives, chunk, [patch]).double().sum()
                bar.update()
    bar.close()
    scores = (clean - patched / len(examples)) / (clean - corrupt)
    config = {"batch_size": batch_size, "min_accuracy": min_accuracy, "criterion": criterion, "task": examples.name}
    return PatchingResult(
        HeadScores(scores, metric="activation_patching", model=subject.model_id, n_items=len(examples), config=config),
        clean, corrupt, accuracy,
    )


@dataclass
class Faithfulness:
    """Mean metric on the positives with the full model, with only `heads` kept (every other head ablated), and
    with every head ablated; `recovered` = (circuit - ablated) / (full - ablated)."""

    full: float
    circuit: float
    ablated: float
    ablation: str
    heads: list[HeadId]

    @property
    def recovered(self) -> float:
        gap = self.full - self.ablated
        return (self.circuit - self.ablated) / gap if gap != 0 else float("nan")


def head_means(subject, examples: CircuitExamples, batch_size: int = 32) -> dict[int, Float[Tensor, "head d_head"]]:
    """Each layer's z averaged over the real tokens of all positives and negatives (for mean ablation)."""
    names = [_z(layer) for layer in range(subject.n_layers)]
    sums: dict[int, Tensor] = {}
    count = 0.0
    for chunk in examples.chunks(batch_size):
        for batch in (chunk.positives, chunk.negatives):
            _, cache = subject.run_with_cache(batch, names_filter=names, last_only=True)
            mask = batch.attention_mask.float()[:, :, None, None]
            for layer, name in enumerate(names):
                total = (cache[name].float().cpu() * mask).sum((0, 1))
                sums[layer] = sums.get(layer, 0) + total
            count += float(mask.sum())
    return {layer: total / count for layer, total in sums.items()}


def _ablate(heads: list[HeadId], ablation: str, means, negative_z: dict[str, Tensor] | None) -> list[Intervention]:
    if not heads:
        return []
    if ablation == "resample":
        by_layer: dict[int, list[int]] = {}
        for head in heads:
            by_layer.setdefault(head.layer, []).append(head.head)
        return [ActivationPatch(_z(layer), negative_z[_z(layer)], heads=tuple(hs)) for layer, hs in by_layer.items()]
    return [HeadAblation(heads, mode=ablation, means=means)]


def circuit_faithfulness(
    subject,
    examples: CircuitExamples,
    heads,
    ablation: str = "mean",
    batch_size: int = 32,
    verbose: bool = True,
) -> Faithfulness:
    """The task metric with only the circuit `heads` kept vs the full model vs all heads ablated.

    ablation: "mean" (z set to its mean over the real tokens of all positives and negatives), "zero", or "resample"
    (z taken from the paired negative, every position).
    """
    if ablation not in ABLATIONS:
        raise MechkitError(f"unknown ablation {ablation!r}; use one of {', '.join(ABLATIONS)}")
    circuit = sorted(set(subject.heads(heads)))
    everything = all_heads(subject.n_layers, subject.n_heads)
    others = [h for h in everything if h not in set(circuit)]
    means = head_means(subject, examples, batch_size) if ablation == "mean" else None
    names = [_z(layer) for layer in range(subject.n_layers)]
    full, kept, ablated = [], [], []
    for chunk in tqdm(list(examples.chunks(batch_size)), desc="faithfulness", disable=not verbose):
        negative_z = None
        if ablation == "resample":
            _, negative_z = subject.run_with_cache(chunk.negatives, names_filter=names, last_only=True)
        full.append(_metric(subject, chunk.positives, chunk))
        kept.append(_metric(subject, chunk.positives, chunk, _ablate(others, ablation, means, negative_z)))
        ablated.append(_metric(subject, chunk.positives, chunk, _ablate(everything, ablation, means, negative_z)))
    full_m, kept_m, ablated_m = (torch.cat(parts).mean().item() for parts in (full, kept, ablated))
    return Faithfulness(full_m, kept_m, ablated_m, ablation, circuit)
