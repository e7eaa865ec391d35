"""Linear attention, plain and normalized: one signature for naive, chunk and triton."""

from .chunk import chunk_linear_attn
from .implied import implied_linear_attn
from .naive import naive_linear_attn
from .triton import triton_linear_attn

__all__ = ["chunk_linear_attn", "implied_linear_attn", "naive_linear_attn", "triton_linear_attn"]
