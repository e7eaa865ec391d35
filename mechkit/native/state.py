"""State interventions: run a sequence in two pieces and edit one layer's recurrent state between them.

The pieces continue exactly (`NativeCache`), so an identity edit reproduces the unsplit run. The boundary is a
chunk boundary, so the state being edited is the one `hook_state` reports for chunk `boundary // chunk_size`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.native.model import NativeModel

StateEdit = Callable[[Tensor], Tensor]


def run_with_state_edit(
    model: NativeModel,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    boundary: int,
    edit_fn: StateEdit,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of `tokens` when layer `layer`'s state after the first `boundary` tokens is replaced by
    `edit_fn(state)` (state `[batch, head, d_k, d_s]`, same shape back). Run under `model.hooks(...)` to combine
    it with hooks; each piece calls every hook once."""
    cfg = model.cfg
    if not 0 <= layer < cfg.n_layers or not model.blocks[layer].attn.recurrent:
        recurrent = [i for i, block in enumerate(model.blocks) if block.attn.recurrent]
        raise MechkitError(f"layer {layer} has no recurrent state (mixers {list(cfg.mixers)}); pick one of the "
                           f"recurrent layers {recurrent}")
    width = tokens.shape[-1]
    if not 0 < boundary < width or boundary % cfg.chunk_size:
        raise MechkitError(f"boundary {boundary} must be a multiple of chunk_size {cfg.chunk_size} strictly inside "
                           f"the {width} tokens; move it to a chunk boundary")
    mask = torch.ones_like(tokens) if attention_mask is None else attention_mask
    cache = model.new_cache()
    first = model(tokens[:, :boundary], mask[:, :boundary], cache=cache)
    state = cache.layers[layer]["state"]
    edited = edit_fn(state)
    if not isinstance(edited, Tensor) or edited.shape != state.shape:
        got = tuple(edited.shape) if isinstance(edited, Tensor) else type(edited).__name__
        raise MechkitError(f"edit_fn must return a tensor of the state's shape {tuple(state.shape)}, got {got}")
    cache.layers[layer]["state"] = edited.to(state)
    second = model(tokens[:, boundary:], mask, cache=cache)
    return torch.cat([first, second], dim=1)
