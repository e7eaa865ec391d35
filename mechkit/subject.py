"""Subject: one hooked model behind TransformerLens hook names, whatever the backend.

Backends implement a single primitive, `_run(batch, hooks, last_only)`: a forward pass over a left-padded batch
with TransformerLens-style hooks attached. Caching, interventions, exact attention rows and per-head outputs are
built on it here, once, so they behave the same on TransformerLens, nnsight and mechkit's native models.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from mechkit.attention import AttentionRule, attention_rows_from_qk
from mechkit.batch import Batch
from mechkit.errors import ContextTooLongError, HeadSpecError, MechkitError
from mechkit.heads import HeadId, parse_heads
from mechkit.hooks import HookFn, make_filter
from mechkit.interventions import ActivationPatch, Intervention


class Subject:
    """A loaded model with canonical hook names, batched runs, attention rows and interventions.

    Attributes: model_id, backend ("tl" | "nnsight"), config (the Hugging Face config), tokenizer, n_layers,
    n_heads (query heads), n_kv_heads (key/value heads), d_model, d_head, context_length, prepend_bos,
    weights_sha256 (None for in-memory models).
    """

    backend = "abstract"

    def __init__(self, *, model_id: str, config, tokenizer, prepend_bos: bool, weights_sha256: str | None):
        self.model_id = model_id
        self.config = config
        self.tokenizer = tokenizer
        self.prepend_bos = prepend_bos
        self.weights_sha256 = weights_sha256
        self.n_layers = config.num_hidden_layers
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.d_model = config.hidden_size
        self.d_head = getattr(config, "head_dim", None) or self.d_model // self.n_heads
        self.context_length = config.max_position_embeddings
        self._rules = [AttentionRule.from_hf_config(config, layer) for layer in range(self.n_layers)]

    # -- backend primitive -------------------------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        """Every hook name this backend can run, in execution order."""
        raise NotImplementedError

    def _forward(self, tokens: Tensor, attention_mask: Tensor, positions: Tensor, hooks: list[tuple[str, HookFn]],
                 last_only: bool, cache=None) -> Tensor:
        """Forward of `tokens` [batch, new] with hooks; logits [batch, new, vocab] ([batch, 1, vocab] when
        last_only). attention_mask covers cached + new tokens, positions the new ones. With a cache from
        `new_cache`, keys and values are appended to it (cached decoding)."""
        raise NotImplementedError

    def new_cache(self, batch_size: int):
        """An empty key/value cache for `_forward`."""
        raise NotImplementedError

    def _run(self, batch: Batch, hooks: list[tuple[str, HookFn]], last_only: bool) -> Tensor:
        return self._forward(batch.tokens, batch.attention_mask, batch.positions, hooks, last_only)

    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        """The output projection of `layer`, split per head."""
        raise NotImplementedError

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding with the final norm's elementwise weight folded in (float32): the direct path from the
        residual stream to the logits, up to the norm's positive per-position scale."""
        raise NotImplementedError

    # -- inputs --------------------------------------------------------------------------------------------
    def attention_rule(self, layer: int) -> AttentionRule:
        return self._rules[layer]

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> Batch:
        """Tokenize without the tokenizer's own special tokens, prepend BOS when asked (default: the model's
        choice, `self.prepend_bos`), and left-pad into a Batch."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        if bos and self.tokenizer.bos_token_id is None:
            raise MechkitError(f"{self.model_id}'s tokenizer has no BOS token; call tokenize with prepend_bos=False")
        sequences = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            sequences.append(([self.tokenizer.bos_token_id] if bos else []) + list(ids))
        if any(len(s) == 0 for s in sequences):
            raise MechkitError("an input text tokenizes to nothing; pass non-empty texts")
        batch = Batch.from_sequences(sequences, pad_id=self.pad_id)
        self.check_length(batch)
        return batch

    @property
    def bos_prefix(self) -> list[int]:
        """[BOS id] when this model's inputs start with BOS (`prepend_bos` and the tokenizer has one), else []:
        what to put before token ids a probe builds itself."""
        bos = self.tokenizer.bos_token_id
        return [bos] if self.prepend_bos and bos is not None else []

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, 0):
            if candidate is not None:
                return candidate
        return 0

    def to_batch(self, inputs) -> Batch:
        """Accept a Batch, a text, a list of texts, or a [batch, pos] / [pos] tensor of unpadded token ids."""
        if isinstance(inputs, Batch):
            self.check_length(inputs)
            return inputs
        if isinstance(inputs, Tensor):
            tokens = inputs[None] if inputs.ndim == 1 else inputs
            batch = Batch(tokens.long(), torch.ones_like(tokens, dtype=torch.long))
            self.check_length(batch)
            return batch
        return self.tokenize(inputs)

    def check_length(self, batch: Batch) -> None:
        if batch.tokens.shape[-1] > self.context_length:
            raise ContextTooLongError(
                f"input of {batch.tokens.shape[-1]} tokens is longer than {self.model_id}'s context of "
                f"{self.context_length}; shorten it"
            )

    def check_heads(self, heads: Iterable[HeadId]) -> None:
        for head in heads:
            if not (0 <= head.layer < self.n_layers and 0 <= head.head < self.n_heads):
                raise HeadSpecError(
                    f"head {head.label} is outside {self.model_id} ({self.n_layers} layers x {self.n_heads} heads)"
                )

    # -- runs ----------------------------------------------------------------------------------------------
    def _hooks(self, batch: Batch, fwd_hooks, interventions: Sequence[Intervention]) -> list[tuple[str, HookFn]]:
        hooks = [pair for intervention in interventions for pair in intervention.hooks(self, batch)]
        hooks += list(fwd_hooks)
        known = set(self.hook_names)
        unknown = sorted({name for name, _ in hooks if name not in known})
        if unknown:
            raise MechkitError(
                f"unknown hook name(s) {unknown} for the {self.backend} backend; see Subject.hook_names"
            )
        return hooks

    def run_with_hooks(self, inputs, fwd_hooks=(), interventions: Sequence[Intervention] = (), last_only=False):
        """Logits of a forward pass with hook functions `fn(tensor, *, hook)` and interventions applied."""
        batch = self.to_batch(inputs)
        with torch.no_grad():
            return self._run(batch, self._hooks(batch, fwd_hooks, interventions), last_only)

    def run_with_cache(
        self, inputs, names_filter=None, fwd_hooks=(), interventions: Sequence[Intervention] = (), last_only=False
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the activations of the hooks passing `names_filter` (a name, a list, or a predicate).

        Interventions run first, then `fwd_hooks`, then caching, so the cache holds what the model used.
        """
        keep = make_filter(names_filter)
        cache: dict[str, Tensor] = {}

        def save(tensor, *, hook):
            cache[hook.name] = tensor.detach()

        names = [name for name in self.hook_names if keep(name)]
        logits = self.run_with_hooks(inputs, list(fwd_hooks) + [(n, save) for n in names], interventions, last_only)
        return logits, cache

    def run_last_token_variants(
        self, inputs, variants: Sequence[Sequence[tuple[str, HookFn]]]
    ) -> Float[Tensor, "variant batch vocab"]:
        """Last-position logits of `inputs` under each variant's hooks, for hooks that change the last position only
        (e.g. a residual-stream patch at the last token, one variant per layer).

        The prefix (every token but the last) runs once into a key/value cache; each variant reruns only the last
        token on a copy of it, so V variants cost one prefix pass plus V one-token passes. Hooks see the last
        position only (tensors of shape [batch, 1, ...]).
        """
        batch = self.to_batch(inputs)
        if batch.tokens.shape[1] < 2:
            raise MechkitError("run_last_token_variants needs inputs of at least 2 tokens; use run_with_hooks")
        checked = [self._hooks(batch, hooks, ()) for hooks in variants]
        cache = self.new_cache(len(batch))
        last = (batch.tokens[:, -1:], batch.attention_mask, batch.positions[:, -1:])
        with torch.no_grad():
            self._forward(batch.tokens[:, :-1], batch.attention_mask[:, :-1], batch.positions[:, :-1], [], True,
                          cache)
            return torch.stack([self._forward(*last, hooks, True, copy.deepcopy(cache))[:, -1] for hooks in checked])

    def patch_from(self, hook_name: str, source_inputs, positions=None, heads=None) -> ActivationPatch:
        """An ActivationPatch that writes the source run's `hook_name` activation into later runs."""
        _, cache = self.run_with_cache(source_inputs, names_filter=hook_name, last_only=True)
        return ActivationPatch(hook_name, cache[hook_name], positions=positions, heads=heads)

    # -- attention -------------------------------------------------------------------------------------------
    def attention_rows(
        self,
        inputs,
        layers: int | Sequence[int],
        query_positions: Sequence[int] | Tensor,
        interventions: Sequence[Intervention] = (),
    ) -> Float[Tensor, "batch head n_query key"] | dict[int, Tensor]:
        """Exact attention probabilities of the given query rows for all (query) heads of the given layers.

        query_positions index the left-padded sequence; negative values count from the end, so -1 is every
        row's last token. Rows are recomputed from the captured post-rotary q (only those rows are kept) and k,
        with the layer's own rule; one forward pass serves all requested layers. Returns one tensor for an int
        `layers`, else a dict layer -> tensor (use `iter_attention_rows` to hold one layer's rows at a time).
        """
        if isinstance(layers, int):
            return next(self.iter_attention_rows(inputs, [layers], query_positions, interventions))[1]
        return dict(self.iter_attention_rows(inputs, layers, query_positions, interventions))

    def iter_attention_rows(
        self,
        inputs,
        layers: Sequence[int],
        query_positions: Sequence[int] | Tensor,
        interventions: Sequence[Intervention] = (),
    ) -> Iterator[tuple[int, Float[Tensor, "batch head n_query key"]]]:
        """(layer, rows) for each requested layer, from one forward pass, computing one layer's rows at a time.

        Memory: the captured q rows and k of the requested layers, plus one layer's rows.
        """
        for layer, _, rows in self.iter_attention_blocks(inputs, layers, query_positions, None, interventions):
            yield layer, rows

    def iter_attention_blocks(
        self,
        inputs,
        layers: Sequence[int] | None = None,
        query_positions: Sequence[int] | Tensor | None = None,
        block_size: int | None = 256,
        interventions: Sequence[Intervention] = (),
        fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    ) -> Iterator[tuple[int, Tensor, Float[Tensor, "batch head block key"]]]:
        """(layer, query_positions_block, rows) for every layer (default all) and block of query positions
        (default every position), from one forward pass.

        Positions in each yielded block are non-negative indices into the left-padded sequence. Memory: the
        captured q rows and k of the requested layers plus one block of rows ([batch, head, block_size, key]),
        so scores over every row of long sequences never hold a T x T pattern. block_size None: one block.
        `fwd_hooks` run in the same forward pass (e.g. to keep other activations the caller needs); it happens
        before the first block is yielded.
        """
        batch = self.to_batch(inputs)
        layer_list = list(range(self.n_layers)) if layers is None else list(layers)
        for layer in layer_list:
            if not 0 <= layer < self.n_layers:
                raise MechkitError(f"layer {layer} is outside {self.model_id} (0..{self.n_layers - 1})")
        width = batch.tokens.shape[-1]
        if query_positions is None:
            query_positions = torch.arange(width)
        positions = torch.as_tensor(query_positions, dtype=torch.long).reshape(-1)
        if ((positions >= width) | (positions < -width)).any():
            raise MechkitError(f"query positions {positions.tolist()} fall outside a sequence of {width} tokens")
        positions = positions % width
        if block_size is not None and block_size < 1:
            raise MechkitError(f"block_size must be at least 1, got {block_size}")
        captured: dict[str, Tensor] = {}
        hooks = self._row_hooks(layer_list, positions, captured) + list(fwd_hooks)
        self.run_with_hooks(batch, hooks, interventions, last_only=True)
        step = max(len(positions) if block_size is None else block_size, 1)
        for layer in layer_list:
            rows_of = self._layer_rows(layer, positions, captured, batch)
            window = self.attention_rule(layer).window
            for start in range(0, len(positions), step):
                block = positions[start:start + step]
                rows = rows_of(start, start + step)
                for intervention in interventions:
                    rows = intervention.rows(layer, rows, block, batch, window)
                yield layer, block, rows

    def _row_hooks(self, layers: Sequence[int], positions: Tensor, captured: dict[str, Tensor]
                   ) -> list[tuple[str, HookFn]]:
        """Hooks keeping what `_layer_rows` needs: post-rotary q at `positions` and k of every layer."""

        def keep_q(q, *, hook):
            captured[hook.name] = q[:, positions].detach()

        def keep_k(k, *, hook):
            captured[hook.name] = k.detach()

        hooks = []
        for layer in layers:
            hooks += [(f"blocks.{layer}.attn.hook_rot_q", keep_q), (f"blocks.{layer}.attn.hook_rot_k", keep_k)]
        return hooks

    def _layer_rows(self, layer: int, positions: Tensor, captured: dict[str, Tensor], batch: Batch):
        """A function (start, stop) -> rows [batch, head, n, key] of positions[start:stop] of `layer`, from the
        captured activations (which it releases)."""
        q = captured.pop(f"blocks.{layer}.attn.hook_rot_q")
        k = captured.pop(f"blocks.{layer}.attn.hook_rot_k")
        key_mask, rule = batch.attention_mask.bool(), self.attention_rule(layer)
        return lambda start, stop: attention_rows_from_qk(q[:, start:stop], k, positions[start:stop], key_mask, rule)

    def head_results(
        self, inputs, layer: int, interventions: Sequence[Intervention] = ()
    ) -> Float[Tensor, "batch pos head d_model"]:
        """Each head's write into the residual stream (z @ W_O per head, TransformerLens' hook_result).

        For Gemma the sum over heads is the attention output before its post-attention norm."""
        _, cache = self.run_with_cache(inputs, f"blocks.{layer}.attn.hook_z", interventions=interventions,
                                       last_only=True)
        z = cache[f"blocks.{layer}.attn.hook_z"]
        return torch.einsum("bphd,hdm->bphm", z, self.W_O(layer).to(z))

    def token_losses(self, inputs, interventions: Sequence[Intervention] = ()) -> Float[Tensor, "batch pos_minus_1"]:
        """Next-token cross-entropy per position (nats); NaN where the target or the context is padding."""
        batch = self.to_batch(inputs)
        logits = self.run_with_hooks(batch, interventions=interventions)
        logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tokens, mask = batch.tokens.to(logits.device), batch.attention_mask.to(logits.device)
        losses = -logprobs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        valid = (mask[:, :-1] * mask[:, 1:]).bool()
        return losses.masked_fill(~valid, float("nan"))

    def greedy_decode(self, inputs, max_new_tokens: int, stop_token_ids: Sequence[int] = (),
                      interventions: Sequence[Intervention] = (), track_heads: bool = True):
        """Cached greedy decoding recording each head's most-attended key per step (`mechkit.decoding`)."""
        from mechkit.decoding import greedy_decode

        return greedy_decode(self, inputs, max_new_tokens, stop_token_ids, interventions, track_heads)

    def heads(self, spec) -> list[HeadId]:
        """Parse a head specification and check it against this model."""
        heads = parse_heads(spec, n_layers=self.n_layers, n_heads=self.n_heads)
        self.check_heads(heads)
        return heads

    def __repr__(self) -> str:
        return (f"Subject({self.model_id!r}, backend={self.backend!r}, layers={self.n_layers}, "
                f"heads={self.n_heads} query / {self.n_kv_heads} key-value, context={self.context_length})")
