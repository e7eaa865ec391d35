"""Native backend: a Subject over a mechkit NativeModel (`mechkit.load("native:<zoo name or checkpoint dir>")`).

Attention rows: softmax layers from the captured post-rotary q and k (as every backend); recurrent layers from their
exact implied attention A (z = A v), read as `normalized_abs(A)` (|A| row-normalized: a pattern whose rows sum to 1;
DeltaNet-family A is signed). Cached decoding continues each layer's state (`NativeCache`); with head tracking,
greedy decoding reads the rows of the decoded sequence afterwards, which is exact because the model is causal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor

from mechkit.attention import AttentionRule, attention_rows_from_qk
from mechkit.batch import Batch
from mechkit.errors import UnknownModelError
from mechkit.kernels.implied import normalized_abs
from mechkit.native.checkpoint import load_checkpoint, weights_sha256
from mechkit.native.model import NativeModel
from mechkit.native.tokenizer import WordTokenizer
from mechkit.subject import Subject


def _hf_view(model: NativeModel) -> SimpleNamespace:
    """The Hugging Face config fields `Subject` reads."""
    cfg = model.cfg
    return SimpleNamespace(num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                           num_key_value_heads=cfg.n_heads, hidden_size=cfg.d_model, head_dim=cfg.d_head,
                           max_position_embeddings=cfg.context_length, model_type="mechkit-native")


class NativeSubject(Subject):
    """Subject over a NativeModel; `config` is its NativeConfig, the tokenizer a `WordTokenizer` (no BOS)."""

    backend = "native"

    def __init__(self, model: NativeModel, *, model_id: str, weights_sha256: str | None = None):
        cfg = model.cfg
        words = cfg.token_names or [str(i) for i in range(cfg.vocab_size)]
        super().__init__(model_id=model_id, config=_hf_view(model), tokenizer=WordTokenizer(words),
                         prepend_bos=False, weights_sha256=weights_sha256)
        self.config = cfg
        self.model = model.eval()
        self._rules = [block.attn.rule if not block.attn.recurrent else AttentionRule(scale=cfg.d_head**-0.5)
                       for block in model.blocks]

    @property
    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict)

    def new_cache(self, batch_size: int):
        return self.model.new_cache()

    def _forward(self, tokens, attention_mask, positions, hooks, last_only, cache=None) -> Tensor:
        device = self.model.unembed.weight.device
        with self.model.hooks(fwd_hooks=hooks):
            return self.model(tokens.to(device), attention_mask.to(device), positions.to(device), cache=cache,
                              last_only=last_only)

    def W_O(self, layer: int) -> Tensor:
        weight = self.model.blocks[layer].attn.W_O.weight.detach()  # [d_model, head * d_head]
        return weight.T.reshape(self.n_heads, self.d_head, self.d_model)

    @property
    def W_U(self) -> Tensor:
        return self.model.unembed.weight.detach().float().T * self.model.ln_final.w.detach().float()[:, None]

    def is_recurrent(self, layer: int) -> bool:
        return self.model.blocks[layer].attn.recurrent

    def _row_hooks(self, layers: Sequence[int], positions: Tensor, captured: dict[str, Tensor]) -> list:
        def keep(tensor, *, hook):
            captured[hook.name] = tensor.detach()

        hooks = []
        for layer in layers:
            mixer = self.model.blocks[layer].attn
            names = ("rot_q", "rot_k") if not mixer.recurrent else ("q", "k", *mixer.GATES)
            hooks += [(f"blocks.{layer}.attn.hook_{name}", keep) for name in names]
        return hooks

    def _layer_rows(self, layer: int, positions: Tensor, captured: dict[str, Tensor], batch: Batch):
        """Softmax layers: rows from q/k with the layer's rule; recurrent layers: `normalized_abs` of the implied
        attention (one [batch, head, T, T] matrix per layer is held while its blocks are yielded)."""
        prefix = f"blocks.{layer}.attn.hook_"
        mixer = self.model.blocks[layer].attn
        key_mask = batch.attention_mask.bool()
        if not mixer.recurrent:
            q, k = captured.pop(prefix + "rot_q"), captured.pop(prefix + "rot_k")
            rule = self.attention_rule(layer)
            return lambda start, stop: attention_rows_from_qk(q[:, positions[start:stop]], k, positions[start:stop],
                                                              key_mask, rule)
        gates = {name: captured.pop(prefix + name) for name in mixer.GATES}
        mask = None if bool(key_mask.all()) else key_mask.to(captured[prefix + "q"].device)
        with torch.no_grad():
            A = normalized_abs(mixer.implied(captured.pop(prefix + "q"), captured.pop(prefix + "k"), gates, mask))
        return lambda start, stop: A[:, :, positions[start:stop].to(A.device)]

    def greedy_decode(self, inputs, max_new_tokens: int, stop_token_ids: Sequence[int] = (), interventions=(),
                      track_heads: bool = True):
        """Cached greedy decoding (`mechkit.decoding`); head argmax from the rows of the decoded sequence."""
        decoded = super().greedy_decode(inputs, max_new_tokens, stop_token_ids, interventions, track_heads=False)
        if not track_heads:
            return decoded
        batch = self.to_batch(inputs)
        width, steps = batch.tokens.shape[1], decoded.new_tokens.shape[1]
        valid = torch.arange(steps)[None, :] < decoded.n_new[:, None]  # [batch, steps]
        full = Batch(torch.cat([batch.tokens, decoded.new_tokens], dim=1),
                     torch.cat([batch.attention_mask, valid.long()], dim=1))
        argmax = torch.full((steps, len(batch), self.n_layers, self.n_heads), -1, dtype=torch.long)
        queries = torch.arange(width - 1, width - 1 + steps)
        for layer, _, rows in self.iter_attention_blocks(full, None, queries, None, interventions):
            argmax[:, :, layer] = rows.argmax(-1).permute(2, 0, 1).cpu()
        offsets = (width - batch.lengths)[None, :, None, None]
        decoded.argmax = torch.where(valid.T[:, :, None, None], argmax - offsets, -1)
        return decoded


def load_native(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> NativeSubject:
    """`native:<name>`: a shipped zoo model, or a checkpoint directory written by `mechkit train`."""
    from mechkit.native.zoo import ZOO, zoo_dir

    if name in ZOO:
        directory = zoo_dir(name)
    elif Path(name).expanduser().is_dir():
        directory = Path(name).expanduser()
    else:
        raise UnknownModelError(f"unknown native model {name!r}: use one of {', '.join(ZOO)} (see `mechkit models "
                                "list`) or the directory of a checkpoint written by `mechkit train`")
    model = load_checkpoint(directory).to(device=device, dtype=dtype)
    return NativeSubject(model, model_id=f"native:{name}", weights_sha256=weights_sha256(directory))
