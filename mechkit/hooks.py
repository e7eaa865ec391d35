"""TransformerLens hook names, name filters and the hook-function signature shared by every backend."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

HookFn = Callable[..., "torch.Tensor | None"]  # fn(tensor, *, hook) -> tensor | None, as in TransformerLens

LAYER_HOOKS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_rot_q",
    "attn.hook_rot_k",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
)
"""Per-layer hooks every backend provides, in execution order (shapes as in TransformerLens)."""


def act_name(kind: str, layer: int | None = None) -> str:
    """TransformerLens' `get_act_name` shorthands: act_name("pattern", 3), act_name("z", 0), act_name("resid_post", 5)."""
    attn = {"q", "k", "v", "z", "rot_q", "rot_k", "pattern", "attn_scores", "result"}
    if layer is None:
        return "ln_final.hook_normalized" if kind == "ln_final" else f"hook_{kind}"
    return f"blocks.{layer}.attn.hook_{kind}" if kind in attn else f"blocks.{layer}.hook_{kind}"


def make_filter(names_filter) -> Callable[[str], bool]:
    """A predicate from a TransformerLens-style filter: None (all), a name, a list of names, or a predicate."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(name: str) -> int | None:
    """The block index of a hook name, or None for hooks outside the blocks."""
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class HookRef:
    """What a hook function receives as `hook` on backends without TransformerLens HookPoints."""

    name: str

    def layer(self) -> int | None:
        return hook_layer(self.name)
