"""Input checks shared by every kernel family: one clear sentence per bad input, raised before any compute."""

from __future__ import annotations

import torch

from mechkit.errors import MechkitError


class KernelInputError(MechkitError):
    """Kernel inputs with a wrong shape, dtype, device or value range."""


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Check q, k `[batch, time, head, d_k]` and v `[batch, time, head, d_v]`; return (B, T, H, d_k, d_v)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
            raise KernelInputError(f"{name} must be a 4-D tensor [batch, time, head, dim], got {got}.")
        if not x.is_floating_point():
            raise KernelInputError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    if q.shape != k.shape:
        raise KernelInputError(
            f"q and k must have the same shape [batch, time, head, d_k], got {_shape(q)} and {_shape(k)}."
        )
    if v.shape[:3] != q.shape[:3]:
        raise KernelInputError(
            f"v must share [batch, time, head] with q, got v {_shape(v)} and q {_shape(q)}."
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise KernelInputError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}.")
    if q.device != k.device or q.device != v.device:
        raise KernelInputError(f"q, k and v must be on one device, got {q.device}, {k.device} and {v.device}.")
    B, T, H, K = q.shape
    if min(B, T, H, K, v.shape[3]) == 0:
        raise KernelInputError(f"q, k and v must not have an empty dimension, got q {_shape(q)} and v {_shape(v)}.")
    return B, T, H, K, v.shape[3]


def check_like(name: str, x: torch.Tensor | None, shape: tuple[int, ...], layout: str, ref: torch.Tensor) -> None:
    """Check an optional side input (beta, g, a state, ...) has `shape` and lives on `ref`'s device."""
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or _shape(x) != shape:
        got = _shape(x) if isinstance(x, torch.Tensor) else type(x).__name__
        raise KernelInputError(f"{name} must have shape {layout} = {shape}, got {got}.")
    if not x.is_floating_point():
        raise KernelInputError(f"{name} must be a floating-point tensor, got {x.dtype}.")
    if x.device != ref.device:
        raise KernelInputError(f"{name} must be on {ref.device} like q, got {x.device}.")


def check_range(name: str, x: torch.Tensor | None, low: float, high: float, why: str) -> None:
    """Check every entry of `x` is finite and in [low, high]; `why` finishes the error sentence."""
    if x is None:
        return
    if not bool(torch.isfinite(x.detach()).all()):
        raise KernelInputError(f"{name} must be finite; it has NaN or infinite entries.")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < low or hi > high:
        raise KernelInputError(f"{name} must lie in [{low:g}, {high:g}] ({why}), got values in [{lo:.4g}, {hi:.4g}].")


def check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise KernelInputError(f"chunk_size must be a positive int, got {chunk_size!r}.")


def resolve_scale(scale: float | None, d_k: int) -> float:
    """The query scale: `d_k ** -0.5` by default."""
    if scale is None:
        return d_k**-0.5
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale == scale:
        raise KernelInputError(f"scale must be a number or None, got {scale!r}.")
    return float(scale)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def n_chunks(T: int, chunk_size: int) -> int:
    return -(-T // chunk_size)
