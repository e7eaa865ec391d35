"""Softmax attention with rotary positions (the mixer of a plain Transformer layer), optionally in a sliding window."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechkit.attention import AttentionRule, attention_rows_from_qk, visible_keys
from mechkit.errors import MechkitError
from mechkit.native.cache import Segment
from mechkit.native.config import NativeConfig
from mechkit.native.layers import rotary


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention, rotary on q and k.

    Hooks (TransformerLens shapes): hook_q/k/v `[batch, new, head, d_head]`, hook_rot_q `[batch, new, head, d_head]`,
    hook_rot_k `[batch, key, head, d_head]` (cached + new keys), hook_pattern `[batch, head, new, key]`, hook_z.
    The pattern is materialised only when a hook is attached to it (or the batch is padded, or a cache is used);
    otherwise `scaled_dot_product_attention` computes the same output.
    """

    recurrent = False

    def __init__(self, config: NativeConfig, window: int | None = None):
        super().__init__()
        if config.d_head % 2:
            raise MechkitError(f"softmax layers need an even d_head for rotary positions, got {config.d_head}")
        H, D = config.n_heads, config.d_head
        self.n_heads, self.d_head, self.base = H, D, config.rotary_base
        self.rule = AttentionRule(scale=D**-0.5, window=window)
        self.W_Q, self.W_K, self.W_V = (nn.Linear(config.d_model, H * D, bias=False) for _ in range(3))
        self.W_O = nn.Linear(H * D, config.d_model, bias=False)
        for name in ("q", "k", "v", "rot_q", "rot_k", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: Float[Tensor, "batch new d_model"], seg: Segment) -> Float[Tensor, "batch new d_model"]:
        B, T, _ = x.shape
        q, k, v = (hook(W(x).view(B, T, self.n_heads, self.d_head))
                   for W, hook in ((self.W_Q, self.hook_q), (self.W_K, self.hook_k), (self.W_V, self.hook_v)))
        q, k = rotary(q, seg.positions, self.base), rotary(k, seg.positions, self.base)
        if seg.continues:
            k, v = torch.cat([seg.entry["k"], k], dim=1), torch.cat([seg.entry["v"], v], dim=1)
        if seg.entry is not None:
            seg.entry.update(k=k, v=v)
        q, k = self.hook_rot_q(q), self.hook_rot_k(k)
        if self.hook_pattern.fwd_hooks or seg.key_mask is not None or seg.continues:
            width = k.shape[1]
            key_mask = seg.key_mask
            if key_mask is None:
                key_mask = torch.ones(B, width, dtype=torch.bool, device=x.device)
            queries = torch.arange(width - T, width)
            pattern = self.hook_pattern(attention_rows_from_qk(q, k, queries, key_mask, self.rule))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern.to(v.dtype), v)
        else:
            mask = None
            if self.rule.window is not None:
                every_key = torch.ones(1, T, dtype=torch.bool, device=x.device)
                mask = visible_keys(torch.arange(T, device=x.device), every_key, self.rule.window)[0]
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask, is_causal=mask is None,
                                               scale=self.rule.scale).transpose(1, 2)
        return self.W_O(self.hook_z(z).reshape(B, T, -1))


class SlidingWindowAttention(SoftmaxAttention):
    """Softmax attention over the last `config.window` tokens, its own included (Based's hybrid partner)."""

    def __init__(self, config: NativeConfig):
        super().__init__(config, window=config.window)
