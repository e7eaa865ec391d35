"""What every Triton wrapper needs: the checks the kernels impose, lazy kernel loading, and a backward pass.

Kernel modules are imported on the first call, so `TRITON_INTERPRET=1` only has to be set before that call.
The backward pass recomputes the forward with the family's chunk path under autograd (the kernels are
forward-only), so gradients equal the chunk path's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from .checks import KernelInputError

TILE_SIZES = (16, 32, 64, 128)
CHUNK_SIZES = (16, 32, 64)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def block_size(size: int) -> int:
    """The block a feature dimension of `size` (a multiple of 16) is split into: 64, 32 or 16."""
    return next(b for b in (64, 32, 16) if size % b == 0)


def load_kernels(module: str, q: torch.Tensor, dims: dict[str, int], chunk_size: int, blocked=None):
    """Check q's device and dtype, the head sizes `dims` (whole tiles) and `blocked` (split into blocks of 16-64)
    and `chunk_size`; import and return the kernel module."""
    import triton

    interpret = bool(triton.knobs.runtime.interpret)
    if q.device.type == "cpu" and not interpret:
        raise KernelInputError("Triton kernels on CPU tensors need TRITON_INTERPRET=1 set before the first call; "
                               "use the chunk_* functions for CPU work.")
    if q.device.type not in ("cpu", "cuda"):
        raise KernelInputError(f"Triton kernels run on CUDA tensors (or CPU with TRITON_INTERPRET=1), got {q.device}.")
    if q.dtype == torch.bfloat16 and interpret:
        raise KernelInputError("bfloat16 is not supported by the Triton interpreter (TRITON_INTERPRET=1); "
                               "use float16 or float32.")
    if q.dtype not in DTYPES:
        raise KernelInputError(f"Triton kernels take float16, bfloat16 or float32 inputs, got {q.dtype}; "
                               "use the chunk_* or naive_* functions for float64.")
    for name, size in dims.items():
        if size not in TILE_SIZES:
            raise KernelInputError(f"{name} = {size} cannot be tiled by the Triton kernels; supported sizes are "
                                   f"{', '.join(map(str, TILE_SIZES))} (use the chunk_* functions for other sizes).")
    for name, size in (blocked or {}).items():
        if size % 16:
            raise KernelInputError(f"{name} = {size} cannot be tiled by the Triton kernels; it must be a multiple "
                                   "of 16 (use the chunk_* functions for other sizes).")
    if chunk_size not in CHUNK_SIZES:
        raise KernelInputError(f"chunk_size = {chunk_size} is not supported by the Triton kernels; use one of "
                               f"{', '.join(map(str, CHUNK_SIZES))}.")
    kernels = importlib.import_module(module, __package__)
    if q.device.type == "cpu":
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(kernels.KERNEL, InterpretedFunction):
            raise KernelInputError("the Triton kernels were compiled before TRITON_INTERPRET=1 was set; "
                                   "set it before the first kernel call to run them on CPU.")
    return kernels


class _RecomputeBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, forward, reference, *tensors):
        ctx.reference = reference
        ctx.save_for_backward(*tensors)
        return tuple(forward(*tensors))

    @staticmethod
    def backward(ctx, *grads):
        needs = ctx.needs_input_grad[2:]
        inputs = [None if t is None else t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, needs)]
        with torch.enable_grad():
            outs = ctx.reference(*inputs)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        wrt = [x for x in inputs if x is not None and x.requires_grad]
        got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True))
        return (None, None, *(next(got) if x is not None and x.requires_grad else None for x in inputs))


def with_chunk_backward(forward: Callable, reference: Callable, *tensors: torch.Tensor | None) -> tuple:
    """`forward(*tensors)`, differentiable through `reference(*tensors)` (same outputs) when a tensor needs grad."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _RecomputeBackward.apply(forward, reference, *tensors)
    return tuple(forward(*tensors))
