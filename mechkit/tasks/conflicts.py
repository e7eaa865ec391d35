"""Knowledge-conflict prompts (methods.md §7): a fact the model knows, contradicted in its context.

A fact is a subject, a relation label, a query template ("The capital of {subject} is"), the true object the model
should recall (`memory`, " Paris") and a counterfactual object of the same type (`context`, " London"). Its prompts:

- no context: the query alone, "The capital of France is";
- conflict:   a context sentence asserting the counterfactual, then the query,
              "The capital of France is London. The capital of France is";
- aligned:    the same with the true object, "The capital of France is Paris. The capital of France is".

The context sentence is the query followed by the object and a full stop, or the fact's own `statement` template
("{subject}'s capital is {object}") when it has one. Objects must be one token with their leading space right
after the query, for the tokenizer at hand; `usable_facts` keeps those. Built-in facts, written for this project,
live in `mechkit/data/conflict_facts.jsonl`; `load_facts` reads the same format (one JSON object per line).

`conflict_set` pairs conflict prompts (positives) with aligned prompts (negatives, same length): answer = memory,
wrong = context, so the examples' logit difference is LD = logit(memory) - logit(context) of §7, and patching
aligned -> conflict isolates what the contradicting context changes.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from mechkit.batch import Batch
from mechkit.circuits.examples import CircuitExamples, last_logits
from mechkit.errors import MechkitError
from mechkit.jsonl import read_jsonl

_REQUIRED = ("subject", "relation", "prompt", "memory", "context")
_FORMAT = ("one JSON object per line with string fields subject, relation, prompt (a query naming {subject}), "
           "memory (the true object), context (a counterfactual object of the same type) and optional statement "
           "(a sentence naming {subject} and {object})")
KNOW_CRITERIA = ("candidates", "argmax", "beats_context")


@dataclass(frozen=True)
class ConflictFact:
    """One fact and its counterfactual; `prompt` and `statement` are str.format templates."""

    subject: str
    relation: str
    prompt: str
    memory: str
    context: str
    statement: str | None = None

    @property
    def query(self) -> str:
        return self.prompt.format(subject=self.subject)

    def sentence(self, obj: str) -> str:
        """The context sentence asserting `obj`, with its full stop."""
        template = self.statement if self.statement is not None else self.prompt + " {object}"
        return template.format(subject=self.subject, object=obj) + "."

    @property
    def conflict_prompt(self) -> str:
        return f"{self.sentence(self.context)} {self.query}"

    @property
    def aligned_prompt(self) -> str:
        return f"{self.sentence(self.memory)} {self.query}"


def _placeholders(template: str) -> set[str] | None:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return None


def fact_from_dict(record: Any, where: str = "conflict fact") -> ConflictFact:
    """A ConflictFact from a parsed JSON object; errors name `where` and the field."""
    if not isinstance(record, dict):
        raise MechkitError(f"{where} is not a JSON object; write {_FORMAT}")
    unknown = sorted(set(record) - {*_REQUIRED, "statement"})
    if unknown:
        raise MechkitError(f"{where}: unknown field {unknown[0]!r}; write {_FORMAT}")
    for key in (*_REQUIRED, "statement"):
        value = record.get(key)
        if value is None and key == "statement":
            continue
        if not isinstance(value, str):
            problem = "is missing" if value is None else f"must be a string, got {type(value).__name__}"
            raise MechkitError(f"{where}: field {key!r} {problem}; write {_FORMAT}")
        if not value.strip() or value != value.strip():
            raise MechkitError(f"{where}: field {key!r} is {value!r}; give a non-empty string without surrounding "
                               "whitespace")
    if _placeholders(record["prompt"]) != {"subject"}:
        raise MechkitError(f"{where}: field 'prompt' must name {{subject}} and no other placeholder, got "
                           f"{record['prompt']!r}")
    if record.get("statement") is not None and _placeholders(record["statement"]) != {"subject", "object"}:
        raise MechkitError(f"{where}: field 'statement' must name {{subject}} and {{object}} and nothing else, got "
                           f"{record['statement']!r}")
    if record["memory"] == record["context"]:
        raise MechkitError(f"{where}: field 'context' equals 'memory' ({record['memory']!r}); give a counterfactual "
                           "object that differs from the true one")
    return ConflictFact(**{key: record.get(key) for key in (*_REQUIRED, "statement")})


def load_facts(path: str | Path) -> list[ConflictFact]:
    """Facts from a UTF-8 JSONL file (blank lines are skipped); a bad line raises naming file, line and field."""
    facts, seen = [], {}
    for number, where, record in read_jsonl(path, "conflict fact file", f"write {_FORMAT}"):
        fact = fact_from_dict(record, where)
        key = (fact.subject, fact.prompt)
        if key in seen:
            raise MechkitError(f"{where} repeats the query of line {seen[key]} ({fact.query!r}); keep one fact per "
                               "query")
        seen[key] = number
        facts.append(fact)
    if not facts:
        raise MechkitError(f"conflict fact file {path} holds no fact; write {_FORMAT}")
    return facts


@cache
def _builtin() -> tuple[ConflictFact, ...]:
    return tuple(load_facts(Path(str(resources.files("mechkit") / "data" / "conflict_facts.jsonl"))))


def builtin_facts() -> list[ConflictFact]:
    """The facts written for this project (mechkit/data/conflict_facts.jsonl)."""
    return list(_builtin())


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _object_id(tokenizer, query: str, obj: str) -> int | None:
    """The one token " obj" adds right after `query`, or None."""
    base, full = _ids(tokenizer, query), _ids(tokenizer, f"{query} {obj}")
    return full[-1] if len(full) == len(base) + 1 and full[:-1] == base else None


def usable_facts(subject, facts: Sequence[ConflictFact] | None = None) -> list[ConflictFact]:
    """The facts whose memory and context objects are single tokens after the query for this subject's tokenizer,
    and whose conflict and aligned prompts tokenize to the same length."""
    tok = subject.tokenizer
    keep = []
    for fact in builtin_facts() if facts is None else facts:
        if None in (_object_id(tok, fact.query, fact.memory), _object_id(tok, fact.query, fact.context)):
            continue
        if len(_ids(tok, fact.conflict_prompt)) == len(_ids(tok, fact.aligned_prompt)):
            keep.append(fact)
    return keep


@dataclass(frozen=True)
class ConflictSet:
    """Conflict / aligned pairs (`examples`: answer = memory, wrong = context), the bare queries (`no_context`),
    and per fact the token ids of every object of its relation in the pool (`candidate_ids`, for "knows")."""

    facts: tuple[ConflictFact, ...]
    examples: CircuitExamples
    no_context: Batch
    candidate_ids: tuple[tuple[int, ...], ...]

    @property
    def memory_ids(self) -> Tensor:
        return self.examples.answer_ids

    @property
    def context_ids(self) -> Tensor:
        return self.examples.wrong_ids


def _build(subject, facts: Sequence[ConflictFact], pool: Sequence[ConflictFact]) -> ConflictSet:
    tok, bos = subject.tokenizer, list(subject.bos_prefix)
    objects: dict[str, set[str]] = {}
    for fact in pool:
        objects.setdefault(fact.relation, set()).update((fact.memory, fact.context))
    memory = [_object_id(tok, f.query, f.memory) for f in facts]
    context = [_object_id(tok, f.query, f.context) for f in facts]
    candidates = []
    for fact in facts:
        ids = {_object_id(tok, fact.query, obj) for obj in objects[fact.relation]}
        candidates.append(tuple(sorted(i for i in ids if i is not None)))
    examples = CircuitExamples.from_token_ids(
        "conflict", [bos + _ids(tok, f.conflict_prompt) for f in facts],
        [bos + _ids(tok, f.aligned_prompt) for f in facts], memory, context, pad_id=subject.pad_id)
    no_context = Batch.from_sequences([bos + _ids(tok, f.query) for f in facts], subject.pad_id)
    return ConflictSet(tuple(facts), examples, no_context, tuple(candidates))


def _logits(subject, batch: Batch, batch_size: int) -> Tensor:
    rows = [last_logits(subject, batch.select(slice(s, s + batch_size))).float().cpu()
            for s in range(0, len(batch), batch_size)]
    return torch.cat(rows)


def knows(subject, conflicts: ConflictSet, criterion: str = "candidates", batch_size: int = 32
          ) -> Bool[Tensor, " n"]:
    """Per fact, whether the model recalls the memory object with no context: "candidates" (its logit beats every
    other object of the same relation in the pool), "argmax" (top token) or "beats_context" (beats the
    counterfactual)."""
    if criterion not in KNOW_CRITERIA:
        raise MechkitError(f"unknown knowledge criterion {criterion!r}; use one of {', '.join(KNOW_CRITERIA)}")
    logits = _logits(subject, conflicts.no_context, batch_size)
    memory = logits[torch.arange(len(logits)), conflicts.memory_ids]
    if criterion == "argmax":
        return logits.argmax(-1) == conflicts.memory_ids
    if criterion == "beats_context":
        return memory > logits[torch.arange(len(logits)), conflicts.context_ids]
    rivals = [logits[i, [c for c in ids if c != int(conflicts.memory_ids[i])]].max() for i, ids in
              enumerate(conflicts.candidate_ids)]
    return memory > torch.stack(rivals)


def conflict_rates(subject, conflicts: ConflictSet, batch_size: int = 32) -> dict[str, float]:
    """Shares of facts: known without context (each KNOW_CRITERIA), and in the conflict prompt, the context object
    on top ("follows_context_argmax"), beating memory ("follows_context"), or memory on top ("memory_argmax")."""
    rates = {f"knows_{c}": float(knows(subject, conflicts, c, batch_size).float().mean()) for c in KNOW_CRITERIA}
    logits = _logits(subject, conflicts.examples.positives, batch_size)
    rows = torch.arange(len(logits))
    top = logits.argmax(-1)
    rates["follows_context"] = float((logits[rows, conflicts.context_ids] > logits[rows, conflicts.memory_ids])
                                     .float().mean())
    rates["follows_context_argmax"] = float((top == conflicts.context_ids).float().mean())
    rates["memory_argmax"] = float((top == conflicts.memory_ids).float().mean())
    return rates


def conflict_set(
    subject,
    n: int | None = None,
    seed: int = 0,
    facts: Sequence[ConflictFact] | None = None,
    known_only: bool = False,
    criterion: str = "candidates",
    batch_size: int = 32,
) -> ConflictSet:
    """Conflict examples for `subject` from `facts` (default: the built-in ones) that its tokenizer can use; with
    `known_only`, only the facts it recalls without context (`knows` with `criterion`, one forward pass). n=None
    keeps all in file order, else a seeded sample of n (kept in file order)."""
    pool = usable_facts(subject, facts)
    if not pool:
        raise MechkitError(f"none of the conflict facts has single-token objects for {subject.model_id}'s "
                           "tokenizer; write facts whose objects are common words")
    if known_only:
        known = knows(subject, _build(subject, pool, pool), criterion, batch_size)
        chosen = [fact for fact, k in zip(pool, known.tolist()) if k]
        if not chosen:
            raise MechkitError(f"{subject.model_id} knows none of the {len(pool)} usable conflict facts "
                               f"({criterion}); use a larger model or pass known_only=False")
    else:
        chosen = pool
    if n is not None:
        if not 1 <= n <= len(chosen):
            raise MechkitError(f"asked for {n} conflict facts but {len(chosen)} are usable for {subject.model_id}"
                               f"{' and known' if known_only else ''}; pass n between 1 and {len(chosen)} or n=None")
        keep = np.sort(np.random.default_rng((seed, 0)).choice(len(chosen), n, replace=False))
        chosen = [chosen[i] for i in keep]
    return _build(subject, chosen, pool)


def conflict_examples(subject, n: int | None = None, seed: int = 0, **options) -> CircuitExamples:
    """The CircuitExamples of `conflict_set` (conflict positives, aligned negatives, answer memory, wrong context)."""
    return conflict_set(subject, n, seed, **options).examples
