"""TransformerLens backend: a HookedTransformer built offline from a Hugging Face model already in memory."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from mechkit.subject import Subject


def hooked_transformer(hf_model, tokenizer, tl_official_name: str | None, dtype: torch.dtype, device: str):
    """Convert an HF causal LM to a HookedTransformer without contacting a hub.

    With `tl_official_name` TransformerLens' built-in config is used (e.g. google/gemma-3-270m); otherwise the
    manual route reads the HF config (written to a neutrally named temporary directory, because TransformerLens
    dispatches on substrings of the path) and converts the in-memory weights.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict

    if tl_official_name is not None:
        return HookedTransformer.from_pretrained_no_processing(
            tl_official_name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype, device=device,
            default_padding_side="left", n_ctx=hf_model.config.max_position_embeddings,
        )
    with tempfile.TemporaryDirectory(prefix="mechkit-cfg-") as neutral:
        hf_model.config.to_json_file(str(Path(neutral) / "config.json"))
        cfg = get_pretrained_model_config(neutral, dtype=dtype, device=device, default_prepend_bos=False)
        state = get_pretrained_state_dict(neutral, cfg, hf_model=hf_model, dtype=dtype)
    # TransformerLens would reload the tokenizer by name (a hub call for in-memory ones): attach ours directly.
    cfg.tokenizer_name = None
    model = HookedTransformer(cfg, tokenizer=None, move_to_device=False)
    model.tokenizer = tokenizer
    model.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0  # what set_tokenizer records, for to_tokens
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(device)


class TLSubject(Subject):
    """Subject over a TransformerLens HookedTransformer: every TransformerLens hook name is available."""

    backend = "tl"

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.model = model.eval()
        self.context_length = min(self.context_length, model.cfg.n_ctx)
        self.d_head = model.cfg.d_head
        if not model.cfg.use_attn_scale:  # hand-built models may switch the 1/sqrt(d_head) logit scale off
            self._rules = [dataclasses.replace(rule, scale=1.0) for rule in self._rules]

    @property
    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict)

    def new_cache(self, batch_size: int):
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        return TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, batch_size)

    def _forward(self, tokens, attention_mask, positions, hooks, last_only, cache=None) -> Tensor:
        """TransformerLens derives positions from the mask itself (and keeps the cached part of the mask)."""
        device = self.model.cfg.device
        kwargs = dict(attention_mask=attention_mask[:, -tokens.shape[1]:].to(device), past_kv_cache=cache)
        with self.model.hooks(fwd_hooks=hooks):
            if not last_only:
                return self.model(tokens.to(device), **kwargs)
            resid = self.model(tokens.to(device), stop_at_layer=self.n_layers, **kwargs)[:, -1:]
            norm = getattr(self.model, "ln_final", None)  # absent when normalization_type is None
            return self.model.unembed(resid if norm is None else norm(resid))

    def W_O(self, layer: int) -> Tensor:
        return self.model.blocks[layer].attn.W_O.detach()

    @property
    def W_U(self) -> Tensor:
        scale = getattr(getattr(self.model, "ln_final", None), "w", None)  # TransformerLens stores Gemma's (1 + weight) already
        W_U = self.model.W_U.detach().float()
        return W_U if scale is None else W_U * scale.detach().float()[:, None]
