"""Entity binding (methods.md §4): how well a model answers binding queries, before looking for its mechanisms.

`task_accuracy` asks each prompt's query and restricts the answer to the entities in the prompt: the prediction is
the group whose answer-role entity has the highest logit at the last position (its first token, see
`mechkit.tasks.binding.encode_prompts`). Chance is 1 / n_groups. Accuracy is reported per number of groups and
per position of the queried group, since binding mechanisms are known to be sharp for the first and last groups
and weaker in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.errors import MechkitError
from mechkit.subject import Subject
from mechkit.tasks.binding import BindingSchema, encode_prompts, get_task, make_prompts


@dataclass
class AccuracyRun:
    """One number of groups: candidate_logits [n_prompts, n_groups], the queried position and the prediction
    (argmax over the candidates) per prompt."""

    n_groups: int
    candidate_logits: Float[Tensor, "prompt n_groups"]
    query_position: Int[Tensor, " prompt"]
    predicted: Int[Tensor, " prompt"]

    @property
    def correct(self) -> Bool[Tensor, " prompt"]:
        return self.predicted == self.query_position

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean())

    @property
    def chance(self) -> float:
        return 1.0 / self.n_groups

    def by_position(self) -> list[float]:
        """Accuracy of the prompts querying each group position 0..n_groups-1 (NaN where none did)."""
        return [float(self.correct[self.query_position == p].double().mean()) for p in range(self.n_groups)]


@dataclass
class TaskAccuracy:
    """Task accuracy of one model on one task and query: runs keyed by number of groups."""

    model: str
    task: str
    query: str
    seed: int
    chat: bool
    runs: dict[int, AccuracyRun]

    def records(self) -> list[dict]:
        """Tidy rows: model, task, query, n_groups, query_position ("all" or an index), accuracy, chance,
        n_prompts, seed."""
        rows = []
        for n, run in self.runs.items():
            cells = [("all", run.accuracy, len(run.predicted))]
            cells += [(p, acc, int((run.query_position == p).sum())) for p, acc in enumerate(run.by_position())]
            rows += [dict(model=self.model, task=self.task, query=self.query, n_groups=n, query_position=position,
                          accuracy=accuracy, chance=run.chance, n_prompts=count, seed=self.seed)
                     for position, accuracy, count in cells]
        return rows


def task_accuracy(
    subject: Subject,
    task: str | BindingSchema,
    n_groups: int | list[int],
    n_prompts: int,
    seed: int = 0,
    query: str | None = None,
    chat: bool | None = None,
    batch_size: int = 8,
    verbose: bool = True,
) -> TaskAccuracy:
    """Accuracy with answers restricted to the prompt's entities, for each number of groups in `n_groups`.

    Prompt i of each n queries group i % n (every position equally often). chat None: the tokenizer's chat
    template when it has one. All prompts are built and tokenized before the first forward pass.
    """
    schema = get_task(task)
    counts = [n_groups] if isinstance(n_groups, int) else list(n_groups)
    if not counts or len(set(counts)) != len(counts):
        raise MechkitError(f"n_groups {n_groups} must be one number or a list of distinct numbers")
    if batch_size < 1:
        raise MechkitError(f"batch_size must be at least 1, got {batch_size}")
    encoded = {n: encode_prompts(subject, make_prompts(schema, n, n_prompts, seed, query), chat) for n in counts}
    runs = {}
    for n, enc in encoded.items():
        logits = []
        for start in tqdm(range(0, n_prompts, batch_size), desc=f"{schema.name}, {n} groups", disable=not verbose):
            rows = list(range(start, min(start + batch_size, n_prompts)))
            last = subject.run_with_hooks(enc.batch.select(rows), last_only=True)[:, -1].float().cpu()
            logits.append(last.gather(-1, enc.candidate_ids[rows]))
        candidate_logits = torch.cat(logits)
        runs[n] = AccuracyRun(n, candidate_logits, enc.answer_index, candidate_logits.argmax(-1))
    chosen = schema.query(query).name
    return TaskAccuracy(subject.model_id, schema.name, chosen, seed, next(iter(encoded.values())).chat, runs)
