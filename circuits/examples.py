"""Positive / negative example sets for circuit discovery, their logit-difference metric and a solvability check.

A positive is a prompt the model can complete (its answer is the next token); its negative is a minimal edit of it
that removes what makes the answer predictable. Pair i has the same length in both sets, so positives and negatives
also serve as clean / corrupt runs for activation patching, position by position.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mechkit.batch import Batch
from mechkit.errors import MechkitError

CRITERIA = ("argmax", "beats_wrong")


@dataclass(frozen=True)
class CircuitExamples:
    """`n` positive / negative pairs of one task.

    positives, negatives: left-padded Batches `[n, pos]` with identical attention masks (pair i has one length);
    answer_ids `[n]`: each positive's correct next token; wrong_ids `[n]`: a competing token. The task metric is the
    logit difference `logit(answer) - logit(wrong)` at the last position (`logit_diff`).
    """

    name: str
    positives: Batch
    negatives: Batch
    answer_ids: Int[Tensor, " n"]
    wrong_ids: Int[Tensor, " n"]

    def __post_init__(self) -> None:
        n = len(self.positives)
        if n == 0 or len(self.negatives) != n:
            raise MechkitError(
                f"task {self.name!r} has {n} positives and {len(self.negatives)} negatives; give one negative per "
                "positive (at least one pair)"
            )
        if not torch.equal(self.positives.attention_mask, self.negatives.attention_mask):
            raise MechkitError(
                f"task {self.name!r}: positives and negatives are padded differently; give each pair the same "
                "length (build them with CircuitExamples.from_token_ids)"
            )
        for what, ids in (("answer_ids", self.answer_ids), ("wrong_ids", self.wrong_ids)):
            if not isinstance(ids, Tensor) or ids.shape != (n,):
                raise MechkitError(f"task {self.name!r}: {what} must be a tensor of {n} token ids, one per pair")
        same = (self.answer_ids == self.wrong_ids).nonzero().flatten().tolist()
        if same:
            raise MechkitError(
                f"task {self.name!r}: pairs {same[:5]} have the same answer and wrong token, so their logit "
                "difference is always 0; pick a different competing token"
            )

    @classmethod
    def from_token_ids(
        cls,
        name: str,
        positives: Sequence[Sequence[int]],
        negatives: Sequence[Sequence[int]],
        answer_ids: Sequence[int],
        wrong_ids: Sequence[int],
        pad_id: int = 0,
    ) -> CircuitExamples:
        """Build from lists of token ids (BOS included where the model expects it); pair i must have one length."""
        if len(positives) != len(negatives) or len(answer_ids) != len(positives) or len(wrong_ids) != len(positives):
            raise MechkitError(
                f"task {name!r} got {len(positives)} positives, {len(negatives)} negatives, {len(answer_ids)} answers "
                f"and {len(wrong_ids)} wrong tokens; give the same number of each"
            )
        for i, (pos, neg) in enumerate(zip(positives, negatives)):
            if len(pos) != len(neg):
                raise MechkitError(
                    f"task {name!r}: positive {i} has {len(pos)} tokens but its negative has {len(neg)}; make each "
                    "negative a same-length edit of its positive"
                )
        if not positives or any(len(s) == 0 for s in positives):
            raise MechkitError(f"task {name!r} needs at least one pair, each of at least one token")
        return cls(name, Batch.from_sequences([list(s) for s in positives], pad_id),
                   Batch.from_sequences([list(s) for s in negatives], pad_id),
                   torch.as_tensor(list(answer_ids), dtype=torch.long), torch.as_tensor(list(wrong_ids), dtype=torch.long))

    @classmethod
    def from_texts(
        cls,
        subject,
        name: str,
        positives: Sequence[str],
        negatives: Sequence[str],
        answers: Sequence[str],
        wrongs: Sequence[str],
    ) -> CircuitExamples:
        """Tokenize prompts the subject's way (BOS as the model expects); each answer / wrong text must be one token."""
        encode = [subject.bos_prefix + _ids(subject, text) for text in (*positives, *negatives)]
        answer_ids = [_single_token(subject, text, name) for text in answers]
        wrong_ids = [_single_token(subject, text, name) for text in wrongs]
        n = len(positives)
        return cls.from_token_ids(name, encode[:n], encode[n:], answer_ids, wrong_ids, pad_id=subject.pad_id)

    def __len__(self) -> int:
        return len(self.positives)

    def select(self, rows: slice | list[int]) -> CircuitExamples:
        """The pairs `rows`, with the common left padding trimmed."""
        return CircuitExamples(self.name, self.positives.select(rows), self.negatives.select(rows),
                               self.answer_ids[rows], self.wrong_ids[rows])

    def chunks(self, batch_size: int) -> Iterator[CircuitExamples]:
        """Consecutive sub-sets of at most `batch_size` pairs."""
        if batch_size < 1:
            raise MechkitError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.select(slice(start, start + batch_size))


def _ids(subject, text: str) -> list[int]:
    return list(subject.tokenizer(text, add_special_tokens=False)["input_ids"])


def _single_token(subject, text: str, name: str) -> int:
    ids = _ids(subject, text)
    if len(ids) != 1:
        raise MechkitError(
            f"task {name!r}: answer {text!r} is {len(ids)} tokens for {subject.model_id}; use single-token answers"
        )
    return ids[0]


def logit_diff(
    logits: Float[Tensor, "batch vocab"], answer_ids: Int[Tensor, " batch"], wrong_ids: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """`logit(answer) - logit(wrong)` per row of last-position logits (float32)."""
    logits = logits.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answer_ids.to(logits.device)] - logits[rows, wrong_ids.to(logits.device)]


def last_logits(subject, batch: Batch, interventions=(), fwd_hooks=()) -> Float[Tensor, "batch vocab"]:
    """Last-position logits of `batch` with interventions / hooks applied."""
    return subject.run_with_hooks(batch, fwd_hooks, interventions, last_only=True)[:, -1]


def solved(
    logits: Float[Tensor, "batch vocab"], examples: CircuitExamples, criterion: str, model_id: str
) -> Bool[Tensor, " batch"]:
    """Which positives of `examples` the last-position `logits` of their prompts solve ("argmax": the answer is the
    top token; "beats_wrong": the answer's logit exceeds the wrong token's)."""
    if criterion not in CRITERIA:
        raise MechkitError(f"unknown accuracy criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    vocab = logits.shape[-1]
    ids = torch.cat([examples.answer_ids, examples.wrong_ids])
    if int(ids.max()) >= vocab or int(ids.min()) < 0:
        raise MechkitError(
            f"task {examples.name!r} has answer or wrong token ids outside {model_id}'s vocabulary of "
            f"{vocab}; build the task with this model's tokenizer"
        )
    if criterion == "argmax":
        return logits.argmax(-1).cpu() == examples.answer_ids
    return logit_diff(logits, examples.answer_ids, examples.wrong_ids).cpu() > 0


def task_accuracy(subject, examples: CircuitExamples, criterion: str = "argmax", batch_size: int = 32) -> float:
    """Fraction of positives solved (`solved`: "argmax" or "beats_wrong")."""
    if criterion not in CRITERIA:
        raise MechkitError(f"unknown accuracy criterion {criterion!r}; use one of {', '.join(CRITERIA)}")
    correct = sum(int(solved(last_logits(subject, chunk.positives), chunk, criterion, subject.model_id).sum())
                  for chunk in examples.chunks(batch_size))
    return correct / len(examples)


def check_solvable(
    subject,
    examples: CircuitExamples,
    min_accuracy: float = 0.5,
    criterion: str = "argmax",
    on_fail: str = "raise",
    batch_size: int = 32,
    logits: Float[Tensor, "n vocab"] | None = None,
) -> float:
    """The model's accuracy on the positives (`task_accuracy`, or from their last-position `logits` when a caller
    already ran them); below `min_accuracy` raise a MechkitError (`on_fail="raise"`) or warn (`"warn"`), since
    scoring heads on a task the model cannot do means nothing."""
    if on_fail not in ("raise", "warn"):
        raise MechkitError(f"on_fail must be 'raise' or 'warn', got {on_fail!r}")
    if logits is None:
        accuracy = task_accuracy(subject, examples, criterion, batch_size)
    else:
        accuracy = float(solved(logits, examples, criterion, subject.model_id).float().mean())
    if accuracy < min_accuracy:
        message = (
            f"{subject.model_id} solves only {accuracy:.1%} of the {len(examples)} positives of task "
            f"{examples.name!r} ({criterion}, min_accuracy {min_accuracy:.0%}); use a task or model where it succeeds, "
            "or lower min_accuracy"
        )
        if on_fail == "raise":
            raise MechkitError(message)
        warnings.warn(message, stacklevel=2)
    return accuracy
