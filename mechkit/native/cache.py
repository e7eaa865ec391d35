"""What a native model carries between calls (NativeCache) and what each mixer sees of the current call (Segment).

A run may be split into pieces (cached decoding, state interventions): each piece continues from the cache, so the
pieces together compute exactly what one call over the whole sequence computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxtyping import Bool, Int
from torch import Tensor


@dataclass
class NativeCache:
    """Per-layer carried state, filled by the first call and updated by every later one.

    layers[l]: softmax layers {"k": rotated keys [batch, pos, head, d_head], "v": values}; recurrent layers
    {"state": [batch, head, d_k, d_s], "conv": the short convolution's last inputs [batch, size - 1, channels]}.
    ids: every token id seen so far [batch, pos] (static n-gram layers read the whole prefix).
    """

    layers: list[dict[str, Tensor]]
    ids: Int[Tensor, "batch pos"] | None = None

    @classmethod
    def empty(cls, n_layers: int) -> "NativeCache":
        return cls([{} for _ in range(n_layers)])

    @property
    def length(self) -> int:
        return 0 if self.ids is None else self.ids.shape[1]


@dataclass
class Segment:
    """The tokens of one call as a mixer sees them.

    positions: rotary positions of the new tokens; mask: [batch, new] real-token mask, None when every token is
    real; key_mask: [batch, cached + new], None when every key is real; entry: this layer's cache entry (read for
    the state to continue from, then updated), None for a call without a cache.
    """

    positions: Int[Tensor, "batch new"]
    mask: Bool[Tensor, "batch new"] | None
    key_mask: Bool[Tensor, "batch key"] | None
    entry: dict[str, Tensor] | None = field(default=None)

    @property
    def continues(self) -> bool:
        return bool(self.entry)
