"""The DeltaNet family (DeltaNet, gated DeltaNet, Kaczmarz steps, write-key scaling): one recurrence, one
signature for naive, chunk and triton."""

from .chunk import chunk_delta_net
from .implied import implied_delta_net
from .inputs import kaczmarz_beta
from .naive import naive_delta_net
from .triton import triton_delta_net

__all__ = ["chunk_delta_net", "implied_delta_net", "kaczmarz_beta", "naive_delta_net", "triton_delta_net"]
