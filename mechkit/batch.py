"""Token batches: left padding, attention masks and the positions derived from them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass
class Batch:
    """A left-padded batch of token ids.

    tokens: [batch, pos] ids, padding on the left; attention_mask: [batch, pos] 1 for real tokens;
    positions: [batch, pos] rotary positions, 0 at each row's first real token (clamped to 0 on padding).
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]

    @property
    def positions(self) -> Int[Tensor, "batch pos"]:
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_sequences(cls, sequences: list[list[int]], pad_id: int) -> "Batch":
        """Left-pad lists of token ids to one [batch, max_len] tensor."""
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("every sequence in a batch needs at least one token; drop empty texts first")
        width = max(len(s) for s in sequences)
        tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            tokens[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
        return cls(tokens, mask)

    def select(self, rows: slice | list[int]) -> "Batch":
        """A sub-batch with the common left padding trimmed."""
        mask = self.attention_mask[rows]
        start = int((mask.sum(0) == 0).long().cumprod(0).sum())
        return Batch(self.tokens[rows][:, start:], mask[:, start:])
