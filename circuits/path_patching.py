"""Path patching at head level (Wang et al. 2022), as PH3 (Jin et al. 2024, research/methods.md §7) uses it.

Sender head h's output (hook_z, every position) is replaced by its value in the paired reference run (the
negatives) while the change may reach the metric only along one path:

- to the logits, cheap form (`direct_path_patching`): (z_h^pos - z_h^ref) W_O^h at the last position, through the
  final norm with its scale frozen at the positives' run (centering kept for LayerNorm) and the unembedding,
  projected on W_U[answer] - W_U[wrong]. Two forward passes per batch; exact when there is no final norm. Needs
  heads that write z W_O into the residual stream: models with a norm after attention (Gemma) are refused.
- to the logits, by runs (`path_patching`, receivers=None): every other head's z and every MLP output frozen at
  their positives' values, so the final residual changes by h's write alone; the final norm is recomputed.
- through receivers (`path_patching` with receivers): run 1 as above records the receiver heads' q (or k / v)
  input; run 2 is the positives' run with only those inputs patched in, everything else free.

Scores are signed, in logit-difference units: mean over pairs of metric(positive) - metric(path patched), where the
metric is logit(answer) - logit(wrong). Positive = along the path, the head pushes the answer over the wrong token
(relative to the reference); for PH3 with answer = memory and wrong = context token, positive heads are memory
heads and negative heads context heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.circuits.examples import CircuitExamples, check_solvable, logit_diff
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads
from mechkit.scores import HeadScores

RECEIVER_INPUTS = ("q", "k", "v")
FINAL_NORM = "ln_final.hook_normalized"


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


@dataclass
class PathPatchingResult:
    """scores: per sender head, mean of metric(positive) - metric(path patched) (logit-difference units), NaN
    where no path exists (every receiver at or before the sender's layer). clean / corrupt: mean metric on the
    positives / negatives; accuracy: the model's on the positives; receivers None = the path to the logits."""

    scores: HeadScores
    clean: float
    corrupt: float
    accuracy: float
    receivers: list[HeadId] | None = None
    receiver_input: str | None = None

    @property
    def normalized(self) -> HeadScores:
        """Scores divided by clean - corrupt (1 = the path carries the whole effect), comparable to head_patching."""
        gap = self.clean - self.corrupt
        values = self.scores.scores / gap if gap != 0 else torch.full_like(self.scores.scores, float("nan"))
        s = self.scores
        return HeadScores(values, metric=s.metric + "_normalized", model=s.model, n_items=s.n_items, config=s.config)


def _metric(logits: Tensor, chunk: CircuitExamples) -> Float[Tensor, " batch"]:
    return logit_diff(logits[:, -1], chunk.answer_ids, chunk.wrong_ids).double().cpu()


def _final_scale(subject, cache: dict[str, Tensor], x: Tensor) -> tuple[bool, Tensor]:
    """(center, scale [batch]) of the final norm at the last position: LayerNorm if its normalized output has zero
    mean (else RMSNorm), scale = |centered x| / |normalized x|; no norm: (False, 1)."""
    if FINAL_NORM not in cache:
        return False, torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    n = cache[FINAL_NORM][:, -1].to(x)
    center = bool(n.mean(-1).abs().max() <= 1e-4 * n.abs().mean().clamp(min=1e-12))
    centered = x - x.mean(-1, keepdim=True) if center else x
    return center, centered.norm(dim=-1) / n.norm(dim=-1)


def _check_plain_writes(subject, layer: int, z: Tensor, attn_out: Tensor, W_O: Tensor, mask: Tensor) -> None:
    """hook_attn_out must be sum_h z_h W_O^h plus a constant bias at every real position."""
    rest = (attn_out.to(W_O) - torch.einsum("bphd,hdm->bpm", z.to(W_O), W_O))[mask.bool()]
    spread = (rest - rest[:1]).abs().max().item()
    tolerance = (1e-3 if W_O.dtype in (torch.float32, torch.float64) else 5e-2) * attn_out.abs().max().item()
    if spread > tolerance + 1e-6:
        raise MechkitError(
            f"the heads of layer {layer} of {subject.model_id} do not write z W_O into the residual stream (a norm "
            "follows attention), so the direct path has no closed form; use path_patching, which patches by runs"
        )


def direct_path_patching(
    subject,
    examples: CircuitExamples,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> PathPatchingResult:
    """Each head's direct path to the logits in closed form (frozen final-norm scale): two runs per batch."""
    accuracy = check_solvable(subject, examples, min_accuracy, criterion, on_unsolvable, batch_size)
    L, H = subject.n_layers, subject.n_heads
    W_U = subject.W_U
    W_O = [subject.W_O(layer).to(W_U) for layer in range(L)]
    final = f"blocks.{L - 1}.hook_resid_post"
    names = [_z(layer) for layer in range(L)] + [f"blocks.{layer}.hook_attn_out" for layer in range(L)] + [final]
    names += [FINAL_NORM] if FINAL_NORM in subject.hook_names else []
    total = torch.zeros(L, H, dtype=torch.float64)
    clean, corrupt = [], []
    for chunk in tqdm(list(examples.chunks(batch_size)), desc="direct path patching", disable=not verbose):
        logits, pos = subject.run_with_cache(chunk.positives, names_filter=names, last_only=True)
        logits_ref, ref = subject.run_with_cache(chunk.negatives, names_filter=names[:L], last_only=True)
        clean.append(_metric(logits, chunk))
        corrupt.append(_metric(logits_ref, chunk))
        direction = (W_U[:, chunk.answer_ids.to(W_U.device)] - W_U[:, chunk.wrong_ids.to(W_U.device)]).T  # [b, d]
        center, scale = _final_scale(subject, pos, pos[final][:, -1].to(W_U))
        mask = chunk.positives.attention_mask.to(W_U.device)
        for layer in range(L):
            _check_plain_writes(subject, layer, pos[_z(layer)], pos[f"blocks.{layer}.hook_attn_out"], W_O[layer], mask)
            dz = (pos[_z(layer)][:, -1] - ref[_z(layer)][:, -1]).to(W_U)
            write = torch.einsum("bhd,hdm->bhm", dz, W_O[layer])
            if center:
                write = write - write.mean(-1, keepdim=True)
            total[layer] += torch.einsum("bhm,bm->h", write / scale[:, None, None], direction).double().cpu()
    config = {"task": examples.name, "batch_size": batch_size, "min_accuracy": min_accuracy, "criterion": criterion}
    scores = HeadScores(total / len(examples), metric="path_patching_direct", model=subject.model_id,
                        n_items=len(examples), config=config)
    return PathPatchingResult(scores, torch.cat(clean).mean().item(), torch.cat(corrupt).mean().item(), accuracy)


def _set(value: Tensor):
    def hook(act, *, hook):
        return value.to(act)

    return hook


def _set_heads(value: Tensor, index: list[int]):
    def hook(act, *, hook):
        act = act.clone()
        act[:, :, index] = value[:, :, index].to(act)
        return act

    return hook


def _frozen(subject, sender: HeadId, pos: dict[str, Tensor], ref: dict[str, Tensor], mlps: list[str]) -> list:
    """Hooks setting every head's z and every MLP output to the positives' values, the sender's z to the ref's."""
    hooks = []
    for layer in range(subject.n_layers):
        z = pos[_z(layer)]
        if layer == sender.layer:
            z = z.clone()
            z[:, :, sender.head] = ref[_z(layer)][:, :, sender.head]
        hooks.append((_z(layer), _set(z)))
    return hooks + [(name, _set(pos[name])) for name in mlps]


def path_patching(
    subject,
    examples: CircuitExamples,
    receivers=None,
    receiver_input: str = "q",
    freeze_mlps: bool = True,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> PathPatchingResult:
    """Path patching by runs: each head's path to the logits (receivers None: one run per head and batch), or
    through the receivers' `receiver_input` ("q", "k" or "v"; two runs per head and batch).

    receivers: any head specification (`Subject.heads`). In grouped-query models a k / v receiver patches the
    key/value head its query head reads, so the other query heads sharing it are patched too.
    freeze_mlps: keep MLP outputs at their positives' values in the frozen run (as heads are).
    """
    if receiver_input not in RECEIVER_INPUTS:
        raise MechkitError(f"unknown receiver_input {receiver_input!r}; use one of {', '.join(RECEIVER_INPUTS)}")
    targets = None if receivers is None else sorted(set(subject.heads(receivers)))
    if targets is not None and not targets:
        raise MechkitError("receivers is empty; name at least one receiver head, or pass None for the logits")
    accuracy = check_solvable(subject, examples, min_accuracy, criterion, on_unsolvable, batch_size)
    L, H = subject.n_layers, subject.n_heads
    z_names = [_z(layer) for layer in range(L)]
    mlp_names = [f"blocks.{layer}.hook_mlp_out" for layer in range(L)] if freeze_mlps else []
    senders = all_heads(L, H)
    total = torch.zeros(L, H, dtype=torch.float64)
    clean, corrupt = [], []
    chunks = list(examples.chunks(batch_size))
    bar = tqdm(total=len(chunks) * len(senders), desc="path patching", disable=not verbose)
    for chunk in chunks:
        logits, pos = subject.run_with_cache(chunk.positives, names_filter=z_names + mlp_names, last_only=True)
        logits_ref, ref = subject.run_with_cache(chunk.negatives, names_filter=z_names, last_only=True)
        clean.append(_metric(logits, chunk))
        corrupt.append(_metric(logits_ref, chunk))
        mlps = [name for name in mlp_names if name in pos]  # attention-only models never fire their MLP hooks
        for sender in senders:
            frozen = _frozen(subject, sender, pos, ref, mlps)
            if targets is None:
                patched = subject.run_with_hooks(chunk.positives, frozen, last_only=True)
            else:
                downstream = [r for r in targets if r.layer > sender.layer]
                if not downstream:
                    total[sender.layer, sender.head] = float("nan")
                    bar.update()
                    continue
                patched = _via_receivers(subject, chunk, frozen, downstream, receiver_input)
            total[sender.layer, sender.head] += (clean[-1] - _metric(patched, chunk)).sum()
            bar.update()
    bar.close()
    config = {"task": examples.name, "batch_size": batch_size, "min_accuracy": min_accuracy, "criterion": criterion,
              "freeze_mlps": freeze_mlps}
    if targets is not None:
        config |= {"receivers": [r.label for r in targets], "receiver_input": receiver_input}
    metric = "path_patching" if targets is None else "path_patching_receivers"
    scores = HeadScores(total / len(examples), metric=metric, model=subject.model_id, n_items=len(examples),
                        config=config)
    return PathPatchingResult(scores, torch.cat(clean).mean().item(), torch.cat(corrupt).mean().item(), accuracy,
                              targets, None if targets is None else receiver_input)


def _via_receivers(subject, chunk, frozen, receivers: list[HeadId], receiver_input: str) -> Tensor:
    """Run 1 (frozen, sender patched) records the receivers' inputs; run 2 patches only those into the positives."""
    group = subject.n_heads // subject.n_kv_heads if receiver_input in ("k", "v") else 1
    by_layer: dict[int, list[int]] = {}
    for r in receivers:
        by_layer.setdefault(r.layer, []).append(r.head // group)
    names = {layer: f"blocks.{layer}.attn.hook_{receiver_input}" for layer in by_layer}
    _, recorded = subject.run_with_cache(chunk.positives, names_filter=list(names.values()), fwd_hooks=frozen,
                                         last_only=True)
    hooks = [(names[layer], _set_heads(recorded[names[layer]], sorted(set(index))))
             for layer, index in by_layer.items()]
    return subject.run_with_hooks(chunk.positives, hooks, last_only=True)
