"""Causal softmax attention with an optional sliding window and momentum shear: one signature for naive, chunk
and triton."""

from .chunk import chunk_sliding_window_attn
from .implied import implied_sliding_window_attn
from .inputs import momentum_shear
from .naive import naive_sliding_window_attn
from .triton import triton_sliding_window_attn

__all__ = [
    "chunk_sliding_window_attn",
    "implied_sliding_window_attn",
    "momentum_shear",
    "naive_sliding_window_attn",
    "triton_sliding_window_attn",
]
