"""nnsight backend: TransformerLens hook names mapped onto a Hugging Face decoder through nnsight.

The mapping is data: for each hook, the module (relative to a decoder layer) whose input or output holds the
activation, and how to reshape it to TransformerLens' shape. Post-rotary q/k are the arguments of the
attention function call inside the attention module's forward (reached with nnsight's `.source`), so they are
exactly what the model used, on every attention implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.hooks import LAYER_HOOKS, HookRef, hook_layer
from mechkit.subject import Subject


@dataclass(frozen=True)
class Site:
    """Where a hook's activation lives: `module` (dotted path from the decoder layer, "" = the layer itself),
    `slot` ("input", "output", "output0" = first element of a tuple output, or "attn_call" = the attention
    function's arguments), and `heads` ("q", "kv" or None: split the last dim into [head, d_head])."""

    module: str
    slot: str
    heads: str | None = None


_COMMON = {
    "hook_resid_pre": Site("", "input"),
    "attn.hook_q": Site("self_attn.q_proj", "output", "q"),
    "attn.hook_k": Site("self_attn.k_proj", "output", "kv"),
    "attn.hook_v": Site("self_attn.v_proj", "output", "kv"),
    "attn.hook_rot_q": Site("self_attn", "attn_call", "q"),
    "attn.hook_rot_k": Site("self_attn", "attn_call", "kv"),
    "attn.hook_z": Site("self_attn.o_proj", "input", "q"),
    "hook_resid_post": Site("", "output"),
}
SITES = {
    "llama": {**_COMMON, "hook_attn_out": Site("self_attn", "output0"),
              "hook_resid_mid": Site("post_attention_layernorm", "input"), "hook_mlp_out": Site("mlp", "output")},
    "gemma3_text": {**_COMMON, "hook_attn_out": Site("post_attention_layernorm", "output"),
                    "hook_resid_mid": Site("pre_feedforward_layernorm", "input"),
                    "hook_mlp_out": Site("post_feedforward_layernorm", "output")},
}
SITES["qwen2"] = SITES["llama"]
SITES["gemma2"] = SITES["gemma3_text"]
GEMMA_NORMS = {"gemma2", "gemma3_text"}  # RMSNorm multiplies by (1 + weight) rather than weight


def _module(root, path: str):
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root


class NNsightSubject(Subject):
    """Subject over `nnsight.NNsight(hf_model)`; supports the hooks in `mechkit.hooks.LAYER_HOOKS`."""

    backend = "nnsight"

    def __init__(self, hf_model, **kwargs):
        from nnsight import NNsight

        super().__init__(**kwargs)
        model_type = hf_model.config.model_type
        if model_type not in SITES:
            raise MechkitError(
                f"the nnsight backend has no hook mapping for model type {model_type!r} "
                f"(supported: {sorted(SITES)}); use backend='tl' if TransformerLens supports it"
            )
        self.sites = SITES[model_type]
        self.hf_model = hf_model.eval()
        self.model = NNsight(self.hf_model)
        self._attn_call = self._find_attention_call()

    def _find_attention_call(self) -> str:
        # nnsight instruments a forward when `.source` is first touched, which must happen outside a trace.
        sources = [layer.self_attn.source for layer in self.model.model.layers]
        calls = sorted(name for name in sources[0].names if name.startswith("attention_interface_"))
        if not calls:
            raise MechkitError("cannot find the attention function call in this transformers version's attention")
        return calls[-1]  # attention_interface_0 is the lookup of the function, the last one is its call

    @property
    def hook_names(self) -> list[str]:
        names = [f"blocks.{layer}.{hook}" for layer in range(self.n_layers) for hook in LAYER_HOOKS]
        return names + ["ln_final.hook_normalized"]

    def _split(self, tensor: Tensor, heads: str | None) -> Tensor:
        if heads is None:
            return tensor
        return tensor.reshape(*tensor.shape[:-1], -1, self.d_head)

    def new_cache(self, batch_size: int):
        """A full (non-sliding) cache: sliding-window layers are masked, not truncated, so key positions stay
        those of the whole sequence."""
        from transformers import DynamicCache

        return DynamicCache()

    def _forward(self, tokens, attention_mask, positions, hooks, last_only, cache=None) -> Tensor:
        order = {name: i for i, name in enumerate(self.hook_names)}
        by_name: dict[str, list] = {}
        for name, fn in sorted(hooks, key=lambda pair: order[pair[0]]):
            by_name.setdefault(name, []).append(fn)
        device = self.hf_model.device
        kwargs = dict(attention_mask=attention_mask.to(device), position_ids=positions.to(device),
                      past_key_values=cache, use_cache=cache is not None)
        if last_only:
            kwargs["logits_to_keep"] = 1
        with self.model.trace(tokens.to(device), **kwargs):
            done: set[tuple[int | None, str, str]] = set()
            for name in by_name:
                layer = hook_layer(name)
                if layer is None:
                    self._apply_final(name, by_name[name])
                    continue
                site = self.sites[name.split(".", 2)[2]]
                if (layer, site.module, site.slot) not in done:
                    done.add((layer, site.module, site.slot))
                    self._apply_site(layer, site, by_name)
            logits = self.model.output.logits.save()
        return logits

    def _final_norm_weight(self) -> Tensor:
        weight = self.hf_model.model.norm.weight.detach()
        return 1 + weight if self.hf_model.config.model_type in GEMMA_NORMS else weight

    def _apply_final(self, name: str, fns) -> None:
        """ln_final.hook_normalized is, as in TransformerLens, the normalized stream before the norm's weight."""
        envoy = self.model.model.norm
        weight = self._final_norm_weight()
        value = self._hooked(name, envoy.output / weight, {name: fns})
        envoy.output = value * weight

    def _apply_site(self, layer: int, site: Site, by_name) -> None:
        """Run every hook of one site in this layer, reading and writing the activation once."""
        names = [f"blocks.{layer}.{hook}" for hook, s in self.sites.items() if s == site]
        envoy = _module(self.model.model.layers[layer], site.module)
        if site.slot == "attn_call":
            call = getattr(envoy.source, self._attn_call)
            args, kw = call.inputs
            q, k = args[1].transpose(1, 2), args[2].transpose(1, 2)
            q = self._hooked(f"blocks.{layer}.attn.hook_rot_q", q, by_name)
            k = self._hooked(f"blocks.{layer}.attn.hook_rot_k", k, by_name)
            call.inputs = ((args[0], q.transpose(1, 2), k.transpose(1, 2), *args[3:]), kw)
            return
        if site.slot == "input":
            value = envoy.input
        elif site.slot == "output0":
            output = envoy.output
            value = output[0]
        else:
            value = envoy.output
        shape = value.shape
        for name in names:
            value = self._split(value, site.heads)
            value = self._hooked(name, value, by_name).reshape(shape)
        if site.slot == "input":
            envoy.input = value
        elif site.slot == "output0":
            envoy.output = (value, *output[1:])
        else:
            envoy.output = value

    @staticmethod
    def _hooked(name: str, value: Tensor, by_name) -> Tensor:
        for fn in by_name.get(name, ()):
            result = fn(value, hook=HookRef(name))
            value = value if result is None else result
        return value

    def W_O(self, layer: int) -> Tensor:
        weight = self.hf_model.model.layers[layer].self_attn.o_proj.weight.detach()  # [d_model, head * d_head]
        return weight.T.reshape(self.n_heads, self.d_head, self.d_model)

    @property
    def W_U(self) -> Tensor:
        return self.hf_model.lm_head.weight.detach().float().T * self._final_norm_weight().float()[:, None]
