"""DeltaNet-family mixers: DeltaNet, Gated DeltaNet and Kaczmarz steps (the recurrence of `mechkit.kernels.delta_net`).

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,   z_t = S_tᵀ q_t / √d,   state d_head x d_head per head.

DeltaNet: α = 1, β = σ(W_β x), l2-normalized q and k. Gated DeltaNet: adds g = log α = logsigmoid(W_g x + b), b
initialised to 5 (α ≈ 0.993, slow forgetting). Kaczmarz: Gated DeltaNet with β = η / (‖k‖² + ε), η = σ(W_η x) and
unnormalized keys (with unit keys the step would equal η); its `hook_eta` is the kernel input and `hook_beta` a
read-only view of the resulting β.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mechkit.kernels.delta_net import (
    chunk_delta_net,
    implied_delta_net,
    kaczmarz_beta,
    naive_delta_net,
    triton_delta_net,
)
from mechkit.native.config import NativeConfig
from mechkit.native.layers import observe
from mechkit.native.recurrent import RecurrentMixer, l2norm

DELTA_KERNELS = {"naive": naive_delta_net, "chunk": chunk_delta_net, "triton": triton_delta_net}
_BETA = (torch.sigmoid, 0.0)
_DECAY = (F.logsigmoid, 5.0)


class DeltaNet(RecurrentMixer):
    """The delta rule: each token overwrites the value stored under its key by a fraction β."""

    GATES = {"beta": _BETA}

    def __init__(self, config: NativeConfig):
        super().__init__(config, config.d_head)

    def features(self, q, k):
        return l2norm(q), l2norm(k)

    def run_kernel(self, q, k, v, gates, mask, h0, output_states):
        return self.call_kernel(DELTA_KERNELS, q, k, v, **gates, initial_state=h0, output_states=output_states)

    def implied(self, q, k, gates, mask):
        return implied_delta_net(q, k, **gates)


class GatedDeltaNet(DeltaNet):
    """The delta rule with a data-dependent decay α = exp(g) applied first."""

    GATES = {"beta": _BETA, "g": _DECAY}


class Kaczmarz(DeltaNet):
    """Gated DeltaNet with the Kaczmarz step β = η / (‖k‖² + ε) on unnormalized keys."""

    GATES = {"eta": _BETA, "g": _DECAY}
    VIEWS = ("beta",)

    def features(self, q, k):
        return l2norm(q), k

    def run_kernel(self, q, k, v, gates, mask, h0, output_states):
        if self.hook_beta.fwd_hooks:
            observe(self.hook_beta, kaczmarz_beta(k, gates["eta"]))
        return super().run_kernel(q, k, v, gates, mask, h0, output_states)
