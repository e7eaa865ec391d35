"""Greedy decoding with a key/value cache, recording where every head looks at each step.

A run costs one prefill (logits for the last position only) plus one cached forward per generated token. At each
step the hooks capture the step's post-rotary query and the cached keys, recompute the query's attention row for
every head (`attention_rows_from_qk`) and keep only each head's most-attended key, so no attention matrix is
kept, whatever the context length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Int
from torch import Tensor

from mechkit.attention import attention_rows_from_qk
from mechkit.batch import Batch
from mechkit.errors import ContextTooLongError, MechkitError

if TYPE_CHECKING:
    from mechkit.interventions import Intervention
    from mechkit.subject import Subject


@dataclass
class Decoded:
    """A greedy continuation of a batch.

    new_tokens: [batch, steps] generated ids (pad id after a row stopped); n_new: [batch] tokens each row generated
    (its stop token included); prompt_lengths: [batch] real prompt tokens per row; argmax: [steps, batch, n_layers,
    n_heads] (or None when heads were not tracked): for the step whose query is the step's input token (the last
    prompt token at step 0, then each generated token), the key each query head attends to most, as an index into
    the row's own unpadded sequence (prompt + generated); -1 once the row has stopped.
    """

    new_tokens: Int[Tensor, "batch steps"]
    n_new: Int[Tensor, " batch"]
    prompt_lengths: Int[Tensor, " batch"]
    argmax: Int[Tensor, "steps batch n_layers n_heads"] | None

    def generated(self, row: int) -> list[int]:
        return self.new_tokens[row, : int(self.n_new[row])].tolist()


def _argmax_hooks(subject: "Subject", running: Batch, record: Tensor, step: list[int], interventions):
    """Hooks filling record[step, :, layer] with each head's most-attended key (in padded coordinates)."""
    queries: dict[int, Tensor] = {}

    def keep_q(q, *, hook):
        queries[hook.layer()] = q[:, -1:].detach()

    def row_argmax(k, *, hook):
        layer = hook.layer()
        rule = subject.attention_rule(layer)
        position = torch.tensor([k.shape[1] - 1])
        rows = attention_rows_from_qk(queries.pop(layer), k.detach(), position, running.attention_mask.bool(), rule)
        for intervention in interventions:
            rows = intervention.rows(layer, rows, position, running, rule.window)
        record[step[0], :, layer] = rows[:, :, 0].argmax(-1).cpu()

    hooks = []
    for layer in range(subject.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_rot_q", keep_q), (f"blocks.{layer}.attn.hook_rot_k", row_argmax)]
    return hooks


def greedy_decode(
    subject: "Subject",
    inputs,
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    interventions: Sequence["Intervention"] = (),
    track_heads: bool = True,
) -> Decoded:
    """Greedy-decode up to `max_new_tokens` per row (a row stops after emitting a stop token)."""
    batch = subject.to_batch(inputs)
    if max_new_tokens < 1:
        raise MechkitError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    width = batch.tokens.shape[1]
    if width + max_new_tokens > subject.context_length:
        raise ContextTooLongError(
            f"a prompt of {width} tokens plus {max_new_tokens} new tokens exceeds {subject.model_id}'s context of "
            f"{subject.context_length}; shorten the prompt or generate fewer tokens"
        )
    size = len(batch)
    running = Batch(batch.tokens, batch.attention_mask)
    record = torch.full((max_new_tokens, size, subject.n_layers, subject.n_heads), -1, dtype=torch.long)
    step = [0]
    hooks = subject._hooks(running, [], interventions)
    if track_heads:
        hooks += _argmax_hooks(subject, running, record, step, interventions)
    stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long)
    new_tokens = torch.full((size, max_new_tokens), subject.pad_id, dtype=torch.long)
    done = torch.zeros(size, dtype=torch.bool)
    n_new = torch.zeros(size, dtype=torch.long)
    cache = subject.new_cache(size)
    tokens, positions = batch.tokens, batch.positions
    with torch.no_grad():
        for step[0] in range(max_new_tokens):
            logits = subject._forward(tokens, running.attention_mask, positions, hooks, True, cache)
            record[step[0], done] = -1
            chosen = logits[:, -1].argmax(-1).cpu()
            chosen[done] = subject.pad_id
            new_tokens[:, step[0]] = chosen
            n_new += (~done).long()
            done |= torch.isin(chosen, stops)
            if done.all():
                break
            tokens = chosen[:, None]
            positions = positions[:, -1:] + 1
            running.attention_mask = torch.cat([running.attention_mask, (~done).long()[:, None]], dim=1)
    steps = int(n_new.max())
    offsets = (width - batch.lengths)[None, :, None, None]
    argmax = torch.where(record >= 0, record - offsets, record)[:steps] if track_heads else None
    return Decoded(new_tokens[:, :steps], n_new, batch.lengths, argmax)
