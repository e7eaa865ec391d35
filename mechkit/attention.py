"""Exact attention rows from captured post-rotary queries and keys.

A probe that needs attention asks for the rows of a few query positions. They are recomputed here from the
queries of those rows and the keys of the whole sequence, with the model's own rules (grouped-query heads,
sliding windows, logit soft-capping, the attention scale), so no layer's full T x T pattern is ever kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class AttentionRule:
    """How one layer turns q.k into probabilities.

    scale: multiplies q.k (1/sqrt(d_head) for most models, query_pre_attn_scalar**-0.5 for Gemma).
    softcap: logits become softcap * tanh(logits / softcap) when set (Gemma 2).
    window: a query at position i sees keys j with i - window < j <= i when set (sliding-window layers).
    """

    scale: float
    softcap: float | None = None
    window: int | None = None

    @classmethod
    def from_hf_config(cls, config, layer: int) -> "AttentionRule":
        """The rule of `layer` of a Hugging Face decoder config (Llama, Gemma 2/3, Qwen2 families)."""
        d_head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        scalar = getattr(config, "query_pre_attn_scalar", None) or d_head
        layer_types = getattr(config, "layer_types", None)
        sliding = layer_types is not None and layer_types[layer] == "sliding_attention"
        window = getattr(config, "sliding_window", None) if sliding else None
        # Gemma 3 keeps the config field but its attention never applies it (Gemma 2 does).
        softcap = None if config.model_type == "gemma3_text" else getattr(config, "attn_logit_softcapping", None)
        return cls(scale=float(scalar) ** -0.5, softcap=softcap, window=window)


def visible_keys(
    query_positions: Int[Tensor, " n_query"],
    key_mask: Bool[Tensor, "batch key"],
    window: int | None,
) -> Bool[Tensor, "batch n_query key"]:
    """Which keys each query row may attend to: causal, not padding, inside the window if any.

    Positions are indices into the (left-padded) sequence, so relative distances are the model's own.
    """
    keys = torch.arange(key_mask.shape[-1], device=key_mask.device)
    allowed = keys[None, :] <= query_positions[:, None]
    if window is not None:
        allowed &= keys[None, :] > query_positions[:, None] - window
    return allowed[None] & key_mask[:, None, :]


def attention_rows_from_qk(
    q_rows: Float[Tensor, "batch n_query head d_head"],
    k: Float[Tensor, "batch key kv_head d_head"],
    query_positions: Int[Tensor, " n_query"],
    key_mask: Bool[Tensor, "batch key"],
    rule: AttentionRule,
) -> Float[Tensor, "batch head n_query key"]:
    """Attention probabilities of the given query rows for all heads, computed in float32 or wider.

    Rows of padding queries (no visible key) are all zero. Logits are computed only over the keys some query of
    the block can see (up to the last query, and inside the window on sliding layers); the rest of each row is 0.

    Query head h reads key/value head h // (n_heads // n_kv_heads), as in grouped-query attention.
    """
    batch, n_query, n_heads, d_head = q_rows.shape
    n_kv, width = k.shape[2], k.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    dtype = torch.promote_types(q_rows.dtype, torch.float32)
    allowed = visible_keys(query_positions.to(k.device), key_mask.to(k.device), rule.window)
    lo = 0 if rule.window is None or not n_query else max(int(query_positions.min()) - rule.window + 1, 0)
    hi = int(query_positions.max()) + 1 if n_query else 0
    q = q_rows.to(dtype).reshape(batch, n_query, n_kv, n_heads // n_kv, d_head)
    logits = torch.einsum("bqkgd,btkd->bkgqt", q, k[:, lo:hi].to(dtype)) * rule.scale
    if rule.softcap is not None:
        logits = torch.tanh(logits / rule.softcap) * rule.softcap
    logits = logits.masked_fill(~allowed[:, None, None, :, lo:hi], float("-inf"))
    rows = torch.zeros(batch, n_kv, n_heads // n_kv, n_query, width, dtype=dtype, device=k.device)
    rows[..., lo:hi] = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # a padding query sees no key: all zero
    return rows.reshape(batch, n_heads, n_query, width)


def uniform_rows(
    query_positions: Int[Tensor, " n_query"],
    key_mask: Bool[Tensor, "batch key"],
    window: int | None,
    n_heads: int,
    dtype: torch.dtype = torch.float32,
) -> Float[Tensor, "batch head n_query key"]:
    """Uniform attention over each query's visible keys (the retrieval-head paper's masking)."""
    allowed = visible_keys(query_positions, key_mask, window).to(dtype)
    rows = allowed / allowed.sum(-1, keepdim=True).clamp(min=1)
    return rows[:, None].expand(-1, n_heads, -1, -1)
