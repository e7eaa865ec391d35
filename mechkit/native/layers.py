"""Small building blocks of native models: LayerNorm with TransformerLens' hook, rotary embedding, the causal short
convolution of recurrent mixers, the MLP, and read-only hooks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from mechkit.errors import MechkitError


class LayerNorm(nn.Module):
    """LayerNorm whose `hook_normalized` sees `(x - mean) / std` before the elementwise weight and bias (as in
    TransformerLens)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        x = self.hook_normalized(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return x * self.w + self.b


class MLP(nn.Module):
    """GELU MLP with `hook_pre` / `hook_post` on the hidden pre- and post-activations `[batch, pos, d_mlp]`."""

    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.W_in, self.W_out = nn.Linear(d_model, d_mlp), nn.Linear(d_mlp, d_model)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_out(self.hook_post(F.gelu(self.hook_pre(self.W_in(x)))))


def rotary(x: Float[Tensor, "batch pos head d_head"], positions: Int[Tensor, "batch pos"], base: float
           ) -> Float[Tensor, "batch pos head d_head"]:
    """Rotary embedding (GPT-NeoX layout: the two halves of each head rotate as pairs) at the given positions."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = positions.to(x.device, torch.float32)[..., None, None] * freq  # [batch, pos, 1, half]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class ShortConv(nn.Module):
    """Causal depthwise convolution over time followed by SiLU (fla's ShortConvolution), `[batch, pos, channels]`.

    `forward(x, tail)` continues after `tail` (the previous `size - 1` inputs, zeros at the start) and returns
    (y, new_tail), so a sequence run in pieces gives the same y as in one piece."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(channels, 1, size) / size**0.5)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Float[Tensor, "batch pos channels"], tail: Tensor | None
                ) -> tuple[Float[Tensor, "batch pos channels"], Tensor]:
        if tail is None:
            tail = x.new_zeros(x.shape[0], self.size - 1, x.shape[-1])
        full = torch.cat([tail.to(x), x], dim=1)
        y = F.conv1d(full.transpose(1, 2), self.weight, self.bias, groups=x.shape[-1]).transpose(1, 2)
        return F.silu(y), full[:, full.shape[1] - (self.size - 1):]


def observe(hook: HookPoint, value: Tensor) -> None:
    """Run a read-only hook (states are results, not inputs): a hook that returns a new tensor is refused."""
    if hook.fwd_hooks and hook(value) is not value:
        raise MechkitError(f"{hook.name} is read-only (editing it would not change the run); edit a state with "
                           "mechkit.native.run_with_state_edit, or edit hook_q/hook_k/hook_v/hook_beta/hook_g instead")
