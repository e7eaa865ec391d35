"""Interventions on heads and hooks, usable together in one run.

Each intervention turns into ordinary TransformerLens-style hooks for the Subject it is applied to, so the same
objects work on every backend and compose by listing them: ablate some heads, mask others to uniform attention
and patch a hook from a source run, all in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from mechkit.attention import uniform_rows
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, parse_heads

if TYPE_CHECKING:
    from mechkit.batch import Batch
    from mechkit.subject import Subject


def _by_layer(heads: list[HeadId]) -> dict[int, list[int]]:
    layers: dict[int, list[int]] = {}
    for head in heads:
        layers.setdefault(head.layer, []).append(head.head)
    return layers


class Intervention:
    """Base: `hooks` gives (hook name, fn) pairs; `rows` lets attention_rows report the intervened pattern.

    `hooks(subject, batch)` is called once per run; during cached decoding the same hooks see every call of the
    run and `batch.attention_mask` grows with the generated tokens (read it inside the hook, not before).
    """

    def hooks(self, subject: "Subject", batch: "Batch") -> list[tuple[str, object]]:
        raise NotImplementedError

    def rows(self, layer: int, rows: Tensor, query_positions: Tensor, batch: "Batch", window: int | None) -> Tensor:
        return rows


@dataclass(frozen=True)
class HeadAblation(Intervention):
    """Zero or mean ablation of chosen heads' outputs (`hook_z`).

    mode "mean" replaces a head's z by `means[layer][head]` ([n_heads, d_head] per layer) when given, else by
    its mean over the real (non-padding) tokens of the run's input (the prompt, when decoding).
    """

    heads: object
    mode: str = "zero"
    means: dict[int, Tensor] | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "heads", parse_heads(self.heads))
        if self.mode not in ("zero", "mean"):
            raise MechkitError(f"unknown ablation mode {self.mode!r}: use 'zero' or 'mean'")

    def hooks(self, subject, batch):
        subject.check_heads(self.heads)

        def make(layer: int, heads: list[int]):
            batch_means: dict[str, Tensor] = {}

            def ablate(z, *, hook):
                z = z.clone()
                if self.mode == "zero":
                    z[:, :, heads] = 0.0
                    return z
                if self.means is not None:
                    z[:, :, heads] = self.means[layer][heads].to(z)
                    return z
                if "z" not in batch_means:  # the first call of a run (the prompt) fixes the means for decoding
                    m = batch.attention_mask[:, -z.shape[1]:].to(z)[:, :, None, None]
                    batch_means["z"] = (z[:, :, heads] * m).sum((0, 1)) / m.sum()
                z[:, :, heads] = batch_means["z"]
                return z

            return ablate

        return [(f"blocks.{layer}.attn.hook_z", make(layer, heads)) for layer, heads in _by_layer(self.heads).items()]


def uniform_z(
    v: Float[Tensor, "batch pos kv_head d_head"],
    mask: Float[Tensor, "batch pos"],
    kv_head: int,
    window: int | None,
) -> Float[Tensor, "batch pos d_head"]:
    """The output a head would have if it attended uniformly to its visible keys: a running mean of v."""
    values = v[:, :, kv_head] * mask[..., None]
    sums = values.cumsum(1)
    counts = mask.cumsum(1)
    if window is not None and window < v.shape[1]:
        sums = sums - torch.nn.functional.pad(sums, (0, 0, window, 0))[:, : v.shape[1]]
        counts = counts - torch.nn.functional.pad(counts, (window, 0))[:, : v.shape[1]]
    return sums / counts.clamp(min=1)[..., None]


@dataclass(frozen=True)
class UniformAttention(Intervention):
    """Mask heads to uniform attention over their visible keys (causal prefix, or the window on sliding layers).

    This is the retrieval-head paper's masking. It is applied exactly by replacing the head's z with the running
    mean of its values, so it needs no T x T pattern on any backend.
    """

    heads: object

    def __post_init__(self):
        object.__setattr__(self, "heads", parse_heads(self.heads))

    def hooks(self, subject, batch):
        """Values are kept across the calls of one run, so cached decoding (one new token a call) stays exact."""
        subject.check_heads(self.heads)
        group = subject.n_heads // subject.n_kv_heads
        pairs = []
        for layer, heads in _by_layer(self.heads).items():
            history: list[Tensor] = []
            window = subject.attention_rule(layer).window

            def keep_v(v, *, hook, history=history):
                history.append(v)

            def replace_z(z, *, hook, history=history, heads=heads, window=window):
                v = torch.cat(history, dim=1)
                mask = batch.attention_mask[:, -v.shape[1]:].to(z)
                z = z.clone()
                for head in heads:
                    z[:, :, head] = uniform_z(v, mask, head // group, window)[:, -z.shape[1]:].to(z)
                return z

            pairs += [(f"blocks.{layer}.attn.hook_v", keep_v), (f"blocks.{layer}.attn.hook_z", replace_z)]
        return pairs

    def rows(self, layer, rows, query_positions, batch, window):
        heads = [h.head for h in self.heads if h.layer == layer]
        if not heads:
            return rows
        rows = rows.clone()
        uniform = uniform_rows(query_positions, batch.attention_mask.bool(), window, len(heads))
        rows[:, heads] = uniform.to(rows)
        return rows


@dataclass(frozen=True)
class ActivationPatch(Intervention):
    """Replace a hook's activation by a source run's (`value`, same shape), optionally at some positions / heads.

    Build one with `Subject.patch_from(hook_name, source_inputs)`.
    """

    hook_name: str
    value: Tensor = field(compare=False)
    positions: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def hooks(self, subject, batch):
        def patch(act, *, hook):
            if act.shape != self.value.shape:
                raise MechkitError(
                    f"cannot patch {self.hook_name}: source shape {tuple(self.value.shape)} differs from target "
                    f"{tuple(act.shape)}; tokenize source and target to the same length"
                )
            act = act.clone()
            pos = torch.arange(act.shape[1]) if self.positions is None else torch.as_tensor(self.positions)
            if self.heads is None:
                act[:, pos] = self.value[:, pos].to(act)
            else:
                heads = torch.as_tensor(self.heads)
                act[:, pos[:, None], heads[None, :]] = self.value[:, pos[:, None], heads[None, :]].to(act)
            return act

        return [(self.hook_name, patch)]
