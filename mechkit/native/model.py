"""NativeModel: a small language model as a TransformerLens HookedRootModule with TransformerLens hook names.

    hook_embed [batch, pos, d_model] -> (hook_ngram_out, with static n-gram layers) -> blocks -> ln_final -> unembed
    block l: hook_resid_pre -> ln1 -> attn (the layer's mixer) -> hook_attn_out -> hook_resid_mid
             [-> ln2 -> mlp -> hook_mlp_out] -> hook_resid_post

Mixers and their hooks: `mechkit.native.softmax`, `mechkit.native.recurrent`. Weights are drawn from a local
generator seeded with `seed`.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechkit.errors import MechkitError
from mechkit.native.cache import NativeCache, Segment
from mechkit.native.config import NativeConfig
from mechkit.native.layers import MLP, LayerNorm, ShortConv
from mechkit.native.mixers import MIXERS
from mechkit.native.recurrent import RecurrentMixer


class Block(nn.Module):
    """Pre-LayerNorm residual block: mixer, then (when d_mlp > 0) MLP."""

    def __init__(self, config: NativeConfig, layer: int):
        super().__init__()
        # registered in execution order, so the model's hook_dict lists hooks in the order they run
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(config.d_model)
        self.attn = MIXERS[config.mixers[layer]](config)
        self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        self.ln2 = LayerNorm(config.d_model) if config.d_mlp else None
        self.mlp = MLP(config.d_model, config.d_mlp) if config.d_mlp else None
        self.hook_mlp_out = HookPoint() if config.d_mlp else None
        self.hook_resid_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"], seg: Segment) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), seg)))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(self.ln2(x)))
        return self.hook_resid_post(x)


class NativeModel(HookedRootModule):
    """A native efficient-attention language model (see the module docstring)."""

    def __init__(self, config: NativeConfig, seed: int = 0):
        super().__init__()
        from mechkit.probes.ngram import NgramLayer

        self.cfg = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.hook_embed = HookPoint()
        self.ngram = nn.ModuleList(NgramLayer(config.d_model, order) for order in config.ngram_orders)
        self.hook_ngram_out = HookPoint() if config.ngram_orders else None
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.ln_final = LayerNorm(config.d_model)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights(torch.Generator().manual_seed(seed))
        self.setup()

    def _init_weights(self, generator: torch.Generator) -> None:
        """Linear weights N(0, 1/fan_in), embedding N(0, 1), convolutions N(0, 1/size), biases 0, gate biases as
        their mixer sets them, norms 1 and 0."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, module.in_features**-0.5, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.Embedding):
                    module.weight.normal_(0.0, 1.0, generator=generator)
                elif isinstance(module, ShortConv):
                    module.weight.normal_(0.0, module.size**-0.5, generator=generator)
                    module.bias.zero_()
            for module in self.modules():
                if isinstance(module, RecurrentMixer):
                    module.init_gates()

    def forward(
        self,
        tokens: Int[Tensor, "batch new"],
        attention_mask: Int[Tensor, "batch key"] | None = None,
        positions: Int[Tensor, "batch new"] | None = None,
        cache: NativeCache | None = None,
        last_only: bool = False,
        read: Bool[Tensor, "batch new"] | None = None,
    ) -> Float[Tensor, "batch new_or_1 vocab"] | Float[Tensor, "n_read vocab"]:
        """Logits of `tokens` (left-padded when `attention_mask` has zeros).

        attention_mask covers cached + new tokens (default all ones); positions are the new tokens' rotary
        positions (default: from the mask). With a cache the run continues from it and updates it. last_only: the
        last position's logits `[batch, 1, vocab]`; read: only the logits of the marked positions, `[n_read, vocab]`
        in row-major order (training reads its labeled positions only: the unembedding is most of a step at a large
        vocabulary).
        """
        B, T = tokens.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=tokens.device)
        if attention_mask.shape != (B, past + T):
            raise MechkitError(f"attention_mask has shape {tuple(attention_mask.shape)} but {B} rows of {past} cached "
                               f"+ {T} new tokens need ({B}, {past + T}); pass a mask over the whole sequence")
        if read is not None and (last_only or read.shape != tokens.shape):
            raise MechkitError(f"read must be a boolean mask shaped like tokens {tuple(tokens.shape)}, without "
                               f"last_only; got {tuple(read.shape)} with last_only={last_only}")
        if T == 0 or past + T > self.cfg.context_length:
            raise MechkitError(f"{past + T} tokens (with {T} new) do not fit a context of {self.cfg.context_length}; "
                               "pass 1 .. context_length tokens")
        if positions is None:
            positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        real = bool(attention_mask.all())
        mask = None if real else attention_mask[:, past:].bool()
        key_mask = None if real else attention_mask.bool()
        x = self.hook_embed(self.embed(tokens))
        if self.hook_ngram_out is not None:
            x = x + self.hook_ngram_out(self._ngram(tokens, x, attention_mask, cache))
        if cache is not None:
            cache.ids = tokens if cache.ids is None else torch.cat([cache.ids, tokens], dim=1)
        for layer, block in enumerate(self.blocks):
            x = block(x, Segment(positions, mask, key_mask, None if cache is None else cache.layers[layer]))
        if last_only:
            x = x[:, -1:]
        if read is not None:
            x = x[read]
        return self.unembed(self.ln_final(x))

    def _ngram(self, tokens: Tensor, x: Tensor, attention_mask: Tensor, cache: NativeCache | None) -> Tensor:
        """Sum of the static n-gram layers over the whole prefix (cached ids included), at the new positions.
        Padding gets distinct negative ids, so it matches nothing."""
        ids, xs = tokens, x
        if cache is not None and cache.ids is not None:
            ids, xs = torch.cat([cache.ids, tokens], dim=1), torch.cat([self.embed(cache.ids), x], dim=1)
        distinct = -1 - torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        ids = torch.where(attention_mask.bool(), ids, distinct)
        return sum(layer(xs, ids) for layer in self.ngram)[:, -tokens.shape[1]:]

    def new_cache(self) -> NativeCache:
        return NativeCache.empty(self.cfg.n_layers)

    def state_sizes(self) -> list[int | None]:
        """Numbers in each layer's recurrent state (all heads); None for softmax layers (their key/value cache grows
        with the context)."""
        cache = self.new_cache()
        with torch.no_grad():
            self(torch.zeros(1, 1, dtype=torch.long, device=self.unembed.weight.device), cache=cache)
        return [entry["state"].numel() if "state" in entry else None for entry in cache.layers]
