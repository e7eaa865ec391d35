"""Whole-text evaluation of a Subject: mean next-token loss per text, clean or under interventions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mechkit.errors import MechkitError
from mechkit.interventions import Intervention
from mechkit.subject import Subject


def mean_losses(
    subject: Subject,
    texts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    batch_size: int = 8,
    verbose: bool = True,
) -> list[float]:
    """Mean next-token cross-entropy (nats) over the real tokens of each text, in order.

    Texts are tokenized as `subject.tokenize` does (its BOS choice) and run `batch_size` at a time, left-padded;
    padding never counts, so the numbers do not depend on `batch_size`. A text needs at least two tokens.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise MechkitError("no texts to evaluate; pass at least one non-empty text")
    if batch_size < 1:
        raise MechkitError(f"batch_size must be at least 1, got {batch_size}")
    batch = subject.tokenize(texts)  # checks every text up front (empty, too long) before any forward pass
    short = [i for i, n in enumerate(batch.lengths.tolist()) if n < 2]
    if short:
        raise MechkitError(
            f"text {short[0]} ({texts[short[0]]!r}) is a single token, so there is no next token to predict; "
            "drop it or make it longer"
        )
    losses: list[float] = []
    desc = "loss (intervened)" if interventions else "loss"
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not verbose):
        rows = batch.select(slice(start, start + batch_size))
        per_token = subject.token_losses(rows, interventions=interventions)
        losses += torch.nanmean(per_token.float(), dim=-1).tolist()
    return losses
