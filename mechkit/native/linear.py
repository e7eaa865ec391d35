"""Linear-attention mixers: plain (l2-normalized q, k), normalized (elu + 1 features) and Based (Taylor features).

State per head: plain `d_head x d_head`; normalized `d_head x (d_head + 1)`; Based `(1 + f + f²) x (d_head + 1)`
with f = feature_dim (the last column is the normalizer).
"""

from __future__ import annotations

import torch.nn.functional as F

from mechkit.kernels.based import chunk_based, implied_based, naive_based, triton_based
from mechkit.kernels.linear_attn import chunk_linear_attn, implied_linear_attn, naive_linear_attn, triton_linear_attn
from mechkit.native.config import NativeConfig
from mechkit.native.recurrent import RecurrentMixer, l2norm, normalize_rows

LINEAR_KERNELS = {"naive": naive_linear_attn, "chunk": chunk_linear_attn, "triton": triton_linear_attn}
BASED_KERNELS = {"naive": naive_based, "chunk": chunk_based, "triton": triton_based}


class LinearAttention(RecurrentMixer):
    """`S_t = S_{t-1} + k_t v_tᵀ`, `z_t = S_tᵀ q_t / √d` with l2-normalized q and k."""

    def __init__(self, config: NativeConfig):
        super().__init__(config, config.d_head)

    def features(self, q, k):
        return l2norm(q), l2norm(k)

    def run_kernel(self, q, k, v, gates, mask, h0, output_states):
        return self.call_kernel(LINEAR_KERNELS, q, k, v, initial_state=h0, output_states=output_states)

    def implied(self, q, k, gates, mask):
        return implied_linear_attn(q, k)


class NormalizedLinearAttention(RecurrentMixer):
    """Linear attention on elu + 1 features, each output divided by its normalizer `q_tᵀ Σ_s k_s / √d`."""

    def __init__(self, config: NativeConfig):
        super().__init__(config, config.d_head)

    def features(self, q, k):
        return F.elu(q) + 1, F.elu(k) + 1

    def run_kernel(self, q, k, v, gates, mask, h0, output_states):
        return self.call_normalized(LINEAR_KERNELS, q, k, v, mask, h0, output_states)

    def implied(self, q, k, gates, mask):
        return normalize_rows(implied_linear_attn(q, k), mask)


class BasedAttention(RecurrentMixer):
    """Based (Arora et al. 2024): normalized linear attention on the Taylor features of q, k `[.., feature_dim]`,
    so the implied attention is `(1 + s + s²/2)` row-normalized, s = q·k / √f."""

    def __init__(self, config: NativeConfig):
        super().__init__(config, config.feature_dim)

    def run_kernel(self, q, k, v, gates, mask, h0, output_states):
        return self.call_normalized(BASED_KERNELS, q, k, v, mask, h0, output_states)

    def implied(self, q, k, gates, mask):
        return normalize_rows(implied_based(q, k, normalize=False), mask)
