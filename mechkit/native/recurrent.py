"""What every recurrent (linear-attention family) mixer shares: projections, short convolution, padding, hooks on
the kernel's inputs, states and implied attention.

A subclass says how q and k are mapped (`features`), which per-head gates it has (`GATES`: name -> activation and
initial bias), how its kernel is called (`run_kernel`) and what its implied attention is (`implied`). Left padding
is exact: padded tokens get q = k = v = 0 and gates 0, so they neither write, erase nor decay the state.

Hooks: hook_q/k/v `[batch, new, head, d]` (the kernel's inputs, after convolution and feature map), one
`hook_<gate>` `[batch, new, head]` per gate, hook_state `[batch, head, n_chunks, d_k, d_s]` (the state entering
each chunk; computed only when hooked), hook_final_state `[batch, head, d_k, d_s]`, hook_pattern
`[batch, head, query, key]` (the exact implied attention A with z = A v, computed only when hooked; an edited
pattern changes z by (A' - A) v) and hook_z `[batch, new, head, d_head]`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechkit.errors import MechkitError
from mechkit.kernels.linear_attn.inputs import NORMALIZE_EPS
from mechkit.native.cache import Segment
from mechkit.native.config import NativeConfig
from mechkit.native.layers import ShortConv, observe


def l2norm(x: Tensor) -> Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


class RecurrentMixer(nn.Module):
    """Base of the recurrent mixers (see the module docstring)."""

    recurrent = True
    GATES: dict[str, tuple[Callable[[Tensor], Tensor], float]] = {}
    VIEWS: tuple[str, ...] = ()  # extra read-only hooks a subclass fills

    def __init__(self, config: NativeConfig, d_key: int):
        super().__init__()
        H = config.n_heads
        self.n_heads, self.d_key, self.d_value = H, d_key, config.d_head
        self.kernel, self.chunk_size = config.kernel, config.chunk_size
        self.W_Q, self.W_K = (nn.Linear(config.d_model, H * d_key, bias=False) for _ in range(2))
        self.W_V = nn.Linear(config.d_model, H * config.d_head, bias=False)
        self.W_O = nn.Linear(H * config.d_head, config.d_model, bias=False)
        channels = H * (2 * d_key + config.d_head)
        self.conv = ShortConv(channels, config.short_conv) if config.short_conv else None
        if self.GATES:
            self.W_G = nn.Linear(config.d_model, H * len(self.GATES))
            self.init_gates()
        for name in ("q", "k", "v", *self.GATES, *self.VIEWS, "state", "final_state", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    # -- what subclasses define --------------------------------------------------------------------------------
    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Map projected q, k `[batch, new, head, d_key]` to the kernel's inputs."""
        return q, k

    def run_kernel(self, q, k, v, gates: dict[str, Tensor], mask: Tensor | None, h0: Tensor | None,
                   output_states: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """(z, final_state, states or None) of this mixer's kernel from the state h0."""
        raise NotImplementedError

    def implied(self, q, k, gates: dict[str, Tensor], mask: Tensor | None) -> Float[Tensor, "batch head query key"]:
        """The exact implied attention A (z = A v from a zero state) of the hooked q, k and gates."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------------
    def init_gates(self) -> None:
        """Set each gate's bias to its initial value (`GATES`)."""
        if self.GATES:
            with torch.no_grad():
                bias = torch.tensor([bias for _, bias in self.GATES.values()])
                self.W_G.bias.copy_(bias.repeat(self.n_heads))  # output h * n_gates + gate

    def call_kernel(self, family: dict[str, Callable], *args, **kwargs) -> tuple[Tensor, Tensor, Tensor | None]:
        """Call `family[self.kernel]` with chunk size and states flag; outputs in the model's dtype (float32 states)."""
        output_states = kwargs.pop("output_states")
        out = family[self.kernel](*args, chunk_size=self.chunk_size, output_states=output_states, **kwargs)
        dtype = args[0].dtype
        state_dtype = torch.promote_types(dtype, torch.float32)
        states = out[2].to(state_dtype) if output_states else None
        return out[0].to(dtype), out[1].to(state_dtype), states

    def call_normalized(self, family: dict[str, Callable], q, k, v, mask: Tensor | None, h0: Tensor | None,
                        output_states: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """A normalized kernel call. Without padding the kernel normalizes itself (its state's last column sums
        the keys); with padding that column is the value of a real-token mask instead, so padded keys add nothing
        to the normalizer (the same state layout, so either call continues the other)."""
        if mask is None:
            return self.call_kernel(family, q, k, v, normalize=True, initial_state=h0, output_states=output_states)
        v_mask = torch.cat([v, mask.to(v.dtype)[:, :, None, None].expand_as(v[..., :1])], dim=-1)
        z, final, states = self.call_kernel(family, q, k, v_mask, normalize=False, initial_state=h0,
                                            output_states=output_states)
        return z[..., :-1] / (z[..., -1:] + NORMALIZE_EPS), final, states

    def forward(self, x: Float[Tensor, "batch new d_model"], seg: Segment) -> Float[Tensor, "batch new d_model"]:
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.d_key, self.d_value
        qkv = torch.cat([self.W_Q(x), self.W_K(x), self.W_V(x)], dim=-1)
        if seg.mask is not None:
            qkv = qkv * seg.mask[..., None]
        tail = None
        if self.conv is not None:
            qkv, tail = self.conv(qkv, seg.entry.get("conv") if seg.entry else None)
        q, k, v = (t.reshape(B, T, H, -1) for t in qkv.split([H * dk, H * dk, H * dv], dim=-1))
        q, k = self.features(q, k)
        gates = {}
        if self.GATES:
            raw = self.W_G(x).view(B, T, H, len(self.GATES)).unbind(-1)
            gates = {name: act(r) for (name, (act, _)), r in zip(self.GATES.items(), raw)}
        if seg.mask is not None:
            m = seg.mask.to(x.dtype)
            q, k, v = q * m[..., None, None], k * m[..., None, None], v * m[..., None, None]
            gates = {name: g * m[..., None] for name, g in gates.items()}
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        gates = {name: getattr(self, f"hook_{name}")(g) for name, g in gates.items()}
        h0 = seg.entry.get("state") if seg.entry else None
        z, final, states = self.run_kernel(q, k, v, gates, seg.mask, h0, bool(self.hook_state.fwd_hooks))
        if states is not None:
            observe(self.hook_state, states)
        observe(self.hook_final_state, final)
        if self.hook_pattern.fwd_hooks:
            if seg.continues:
                raise MechkitError(f"{self.hook_pattern.name} is the implied attention of a run from a zero state; "
                                   "hook it on a run without a cache (read hook_state for continued runs)")
            A = self.implied(q, k, gates, seg.mask)
            edited = self.hook_pattern(A)
            if edited is not A:
                z = z + torch.einsum("bhts,bshd->bthd", (edited - A).to(v.dtype), v)
        if seg.entry is not None:
            seg.entry["state"] = final
            if tail is not None:
                seg.entry["conv"] = tail
        return self.W_O(self.hook_z(z).reshape(B, T, -1))


def normalize_rows(A: Float[Tensor, "batch head query key"], mask: Bool[Tensor, "batch key"] | None
                   ) -> Float[Tensor, "batch head query key"]:
    """Keep real keys and divide each row by its sum (+ the kernels' epsilon), as `normalize_output` does."""
    if mask is not None:
        A = A * mask.to(A.dtype)[:, None, None, :]
    return A / (A.sum(-1, keepdim=True) + NORMALIZE_EPS)
