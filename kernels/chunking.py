"""The chunk layouts the PyTorch chunked kernels share: `[batch, head, n_chunks, chunk, dim]` or, for kernels that
loop over chunks, `[n_chunks, batch, head, chunk, dim]` (each chunk one contiguous block); contiguous either way, so
every per-chunk matmul runs on plain strided batches without copies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import n_chunks


def to_chunks(x: Tensor, chunk_size: int, dtype: torch.dtype, chunk_first: bool = False) -> Tensor:
    """`[B, T, H, d]` (or `[B, T, H]`, read as d = 1) -> contiguous `[B, H, N, C, d]` (`chunk_first`:
    `[N, B, H, C, d]`), zero-padded at the end."""
    B, T, H = x.shape[:3]
    N = n_chunks(T, chunk_size)
    x = x.to(dtype).reshape(B, T, H, -1)
    if N * chunk_size != T:  # padding copies, so only when needed
        x = F.pad(x, (0, 0, 0, 0, 0, N * chunk_size - T))
    x = x.reshape(B, N, chunk_size, H, -1)
    return x.permute(1, 0, 3, 2, 4).contiguous() if chunk_first else x.permute(0, 3, 1, 2, 4).contiguous()


def from_chunks(x: Tensor, T: int, chunk_first: bool = False) -> Tensor:
    """`[B, H, N, C, d]` (`chunk_first`: `[N, B, H, C, d]`) -> `[B, T, H, d]`, the padding dropped (a strided
    view)."""
    x = x.permute(1, 0, 3, 2, 4) if chunk_first else x.permute(0, 2, 3, 1, 4)  # [B, N, C, H, d]
    B, N, C, H, d = x.shape
    return x.reshape(B, N * C, H, d)[:, :T]


def bmm(a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` over matching leading dims as one `torch.bmm`, which reads transposed operands in place (the batched
    `@` of 5-D tensors copies them)."""
    lead = a.shape[:-2]
    return torch.bmm(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])).view(*lead, a.shape[-2], b.shape[-1])
