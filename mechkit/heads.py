"""Attention-head identifiers and parsing of the head specifications users type.

A head is `HeadId(layer, head)`, both 0-based, labelled `L{layer}H{head}`. Readers also accept `(layer, head)`,
`"l-h"` (the retrieval-head reference files' key format) and TransformerLens' `{layer: [heads]}`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from mechkit.errors import HeadSpecError

ACCEPTED_FORMS = (
    "a HeadId, a (layer, head) pair, 'L3H2', '3-2', a comma-separated string or list of these, or {layer: [heads]}"
)

_HEAD_PATTERNS = (re.compile(r"L(\d+)H(\d+)", re.IGNORECASE), re.compile(r"(\d+)-(\d+)"))


@dataclass(frozen=True, order=True)
class HeadId:
    """One attention head; sorts layer-major."""

    layer: int
    head: int

    @property
    def label(self) -> str:
        """`L{layer}H{head}`, e.g. `L3H2`."""
        return f"L{self.layer}H{self.head}"

    def __str__(self) -> str:
        return self.label


def _bad_spec(spec: object) -> HeadSpecError:
    return HeadSpecError(f"cannot read head spec {spec!r}; use {ACCEPTED_FORMS}.")


def _is_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_pair(spec: object) -> bool:
    """True for a `(layer, head)` tuple or list of two ints."""
    return isinstance(spec, (tuple, list)) and len(spec) == 2 and all(_is_int(v) for v in spec)


def parse_head(spec: object, n_layers: int | None = None, n_heads: int | None = None) -> HeadId:
    """One head from a HeadId, `(layer, head)`, `"L3H2"` (any case) or `"3-2"`; range-checked when sizes are given."""
    if isinstance(spec, HeadId):
        head = spec
    elif _is_pair(spec):
        layer, head_index = (operator.index(v) for v in spec)
        if layer < 0 or head_index < 0:
            raise _bad_spec(spec)
        head = HeadId(layer, head_index)
    elif isinstance(spec, str):
        matches = (p.fullmatch(spec.strip()) for p in _HEAD_PATTERNS)
        match = next((m for m in matches if m), None)
        if match is None:
            raise _bad_spec(spec)
        head = HeadId(int(match[1]), int(match[2]))
    else:
        raise _bad_spec(spec)
    for index, size, what in ((head.layer, n_layers, "layers"), (head.head, n_heads, "heads per layer")):
        if size is not None and index >= size:
            raise HeadSpecError(f"head spec {spec!r} is outside the model, which has {size} {what} numbered from 0.")
    return head


def parse_heads(spec: object, n_layers: int | None = None, n_heads: int | None = None) -> list[HeadId]:
    """Heads from `"L3H2,4-1"`, an iterable of single-head specs, a single head spec, or `{layer: [heads]}`.

    Order is kept as given; an empty string or a blank item in a comma-separated string is an error.
    """
    if isinstance(spec, str):
        items: Iterable[object] = spec.split(",")
    elif isinstance(spec, Mapping):
        try:
            items = [(layer, head) for layer, heads in spec.items() for head in heads]
        except TypeError:
            raise _bad_spec(spec) from None
    elif isinstance(spec, HeadId) or _is_pair(spec):
        items = [spec]
    elif isinstance(spec, Iterable):
        items = spec
    else:
        raise _bad_spec(spec)
    return [parse_head(item, n_layers, n_heads) for item in items]


def all_heads(n_layers: int, n_heads: int) -> list[HeadId]:
    """Every head of an `n_layers` x `n_heads` model, layer-major (L0H0, L0H1, ..., L1H0, ...)."""
    return [HeadId(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def random_heads(n_layers: int, n_heads: int, k: int, exclude: Iterable[HeadId], rng: np.random.Generator
                 ) -> list[HeadId]:
    """`k` heads drawn without replacement from those not in `exclude`."""
    pool = [h for h in all_heads(n_layers, n_heads) if h not in set(exclude)]
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(k, len(pool)), replace=False))]
