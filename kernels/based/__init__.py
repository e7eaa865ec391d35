"""Based attention (Taylor feature-map linear attention): one signature for naive, chunk and triton."""

from .chunk import chunk_based
from .features import taylor_features
from .implied import implied_based
from .naive import naive_based
from .triton import triton_based

__all__ = ["chunk_based", "implied_based", "naive_based", "taylor_features", "triton_based"]
