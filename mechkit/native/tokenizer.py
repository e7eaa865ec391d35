"""The tokenizer of native models: one whitespace-separated word per token id, no special tokens.

Native models work on integer ids; text is the ids' words joined by spaces ("17 204 3" with decimal words, or
"a b | c" for REGBENCH's symbols). It has the parts of a Hugging Face tokenizer that mechkit's probes use. (The byte
tokenizer of `mechkit.models.tiny` does not fit: it reserves ids 0-2 and maps bytes, not task ids.)
"""

from __future__ import annotations

from collections.abc import Sequence

from mechkit.errors import MechkitError


class WordTokenizer:
    """Words <-> ids; `bos_token_id`, `eos_token_id` and `pad_token_id` are None (native tasks have none)."""

    bos_token_id = eos_token_id = pad_token_id = None
    all_special_ids: list[int] = []

    def __init__(self, words: Sequence[str]):
        self.words = tuple(words)
        self.ids = {word: i for i, word in enumerate(self.words)}

    @classmethod
    def decimal(cls, vocab_size: int) -> "WordTokenizer":
        return cls([str(i) for i in range(vocab_size)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        unknown = sorted({w for w in text.split() if w not in self.ids})
        if unknown:
            shown = ", ".join(self.words[:5]) + (", ..." if len(self.words) > 5 else "")
            raise MechkitError(f"unknown token words {unknown[:5]}; write space-separated words of this model's "
                               f"vocabulary ({shown})")
        return [self.ids[w] for w in text.split()]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        return self.words[int(ids)] if isinstance(ids, int) else [self.words[int(i)] for i in ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return " ".join(self.words[int(i)] for i in ids)

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(ids) for ids in sequences]
