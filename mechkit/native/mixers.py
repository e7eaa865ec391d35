"""The mixer registry: every sequence mixer a native layer can use, by name, in one dict."""

from __future__ import annotations

from mechkit.native.delta import DeltaNet, GatedDeltaNet, Kaczmarz
from mechkit.native.linear import BasedAttention, LinearAttention, NormalizedLinearAttention
from mechkit.native.softmax import SlidingWindowAttention, SoftmaxAttention

MIXERS = {
    "softmax": SoftmaxAttention,
    "sliding_window": SlidingWindowAttention,
    "linear": LinearAttention,
    "linear_normalized": NormalizedLinearAttention,
    "based": BasedAttention,
    "delta_net": DeltaNet,
    "gated_delta_net": GatedDeltaNet,
    "kaczmarz": Kaczmarz,
}
