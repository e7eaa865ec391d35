"""In-context n-gram back-off language model: the REGBENCH baseline (`ngram.py::predict_with_n_gram_back_off`).

At every position the model is re-estimated from the strings seen so far in the same sequence (strings are split
at SEP; each is left-padded with order - 1 boundary symbols). For a context c of length n - 1 (the last n - 1
symbols of the padded current string):

    P_n(x) = count(c x) / count(c)                                   if c x was seen,
    P_n(x) = beta * P_{n-1}(x) / sum_{x' unseen after c} P_{n-1}(x')   otherwise, beta = 1 - sum_{seen x} P_n(x),
    P_1(x) = count(x) / total unigram count (boundary symbols included),

over the letters seen so far (SEP, pad and unseen letters get 0). count(c) includes occurrences of c with no
continuation (the current one at least), which is what leaves beta > 0. Deviation: when every seen letter has
followed c there is no unseen letter to receive beta and the reference returns a row summing to less than 1; here
each row is renormalised to sum to 1 (same argmax, rows otherwise identical).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechkit.errors import MechkitError
from mechkit.tasks.regbench import SEP, VOCAB

_BOUNDARY = -1


def _backoff(context: tuple[int, ...], counts: list[Counter], vocab: list[int]) -> dict[int, float]:
    """P_n over `vocab` for n = len(context) + 1, backing off recursively."""
    n = len(context) + 1
    if n == 1:
        total = sum(counts[1].values())
        return {x: counts[1][(x,)] / total for x in vocab}
    seen = {x: counts[n][context + (x,)] / counts[n - 1][context] for x in vocab if context + (x,) in counts[n]}
    unseen = [x for x in vocab if x not in seen]
    if not unseen:
        return seen
    lower = _backoff(context[1:], counts, vocab)
    alpha = (1.0 - sum(seen.values())) / sum(lower[x] for x in unseen)
    return seen | {x: alpha * lower[x] for x in unseen}


def ngram_backoff_probs(
    tokens: Sequence[int], order: int = 3, vocab_size: int = len(VOCAB), sep: int = SEP
) -> Float[Tensor, "pos vocab"]:
    """Row t: the in-context `order`-gram back-off distribution of token t + 1 given tokens[: t + 1]. float64.

    Rows before any letter has been seen are all zero (as in the reference); every other row sums to 1.
    """
    if order < 1:
        raise MechkitError(f"The n-gram order must be >= 1 (1 = unigram), got {order}.")
    if any(not 0 <= int(x) < vocab_size for x in tokens) or not 0 <= sep < vocab_size:
        raise MechkitError(f"Tokens and sep must be ids in 0..{vocab_size - 1}; check vocab_size.")
    counts = [Counter() for _ in range(order + 1)]
    seen: set[int] = set()
    rows = np.zeros((len(tokens), vocab_size))
    text: list[int] = []

    def start_string() -> None:
        text[:] = [_BOUNDARY] * (order - 1)
        for n in range(1, order):  # the n-grams lying inside the padding
            counts[n][(_BOUNDARY,) * n] += order - n

    start_string()
    for t, tok in enumerate(int(x) for x in tokens):
        if tok == sep:
            start_string()
        else:
            text.append(tok)
            seen.add(tok)
            for n in range(1, order + 1):
                counts[n][tuple(text[-n:])] += 1
        if seen:
            probs = _backoff(tuple(text[len(text) - order + 1 :]), counts, sorted(seen))
            total = sum(probs.values())
            for x, p in probs.items():
                rows[t, x] = p / total
    return torch.from_numpy(rows)


def ngram_backoff_batch(
    sequences: Sequence[Sequence[int]], order: int = 3, width: int | None = None, vocab_size: int = len(VOCAB)
) -> Float[Tensor, "batch pos vocab"]:
    """`ngram_backoff_probs` of each sequence, right-padded with zero rows to `width` (default: the longest)."""
    width = width if width is not None else max(len(s) for s in sequences)
    out = torch.zeros(len(sequences), width, vocab_size, dtype=torch.float64)
    for b, seq in enumerate(sequences):
        out[b, : len(seq)] = ngram_backoff_probs(seq, order, vocab_size)[:width]
    return out
