"""Entity-binding tasks (methods.md §4): n groups of bound entities in one context, a query about one group.

A `BindingSchema` names entity roles (each with a pool of entities), one clause template that states one group
("The {object} is in Box {box}."), and queries: a question naming some entities of the queried group, the role of
the answer, and the start of the reply that the answer completes ("Box " -> " C"). Built-in schemas live in
`mechkit/data/binding_tasks.jsonl`; `load_schemas` reads the same format from any JSON or JSONL file.

`make_prompts` draws n groups (distinct entities per role, one local generator per prompt, so a prompt does not
depend on how many were drawn before) and the queried group's position. `encode_prompts` renders them for a
model (the tokenizer's chat template when it has one, one user turn; else plain text) and finds each group's
answer token: the prompt is cut just before the answer entity, the whitespace between them goes with the answer,
and tokens shared by every candidate answer are appended to the prompt, so the candidates' next tokens differ.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from mechkit.batch import Batch
from mechkit.errors import MechkitError
from mechkit.jsonl import read_jsonl

if TYPE_CHECKING:
    from mechkit.subject import Subject

_FORMAT = ("fields name, description, roles (role -> list of entity strings), clause, queries (list of "
           "{name, question, answer_role, answer_prefix}), and optional prefix, separator, suffix")


@dataclass(frozen=True)
class BindingQuery:
    """A question about one group: `question` and `answer_prefix` may name the group's non-answer roles."""

    name: str
    question: str
    answer_role: str
    answer_prefix: str = ""  # the reply before the answer entity; its trailing whitespace goes with the answer


@dataclass(frozen=True)
class BindingSchema:
    """Roles with their entity pools, one clause template per group, and the queries (the first is the default).

    context = prefix + separator.join(clause of each group) + suffix. Pools are ordered tuples of distinct,
    stripped strings, disjoint across roles, so every entity names one group and one role.
    """

    name: str
    description: str
    roles: dict[str, tuple[str, ...]]
    clause: str
    queries: tuple[BindingQuery, ...]
    prefix: str = ""
    separator: str = " "
    suffix: str = ""

    def __post_init__(self) -> None:
        where = f"binding task {self.name!r}"
        if not self.name or not self.roles or not self.queries:
            raise MechkitError(f"{where} needs a name, at least one role and one query; write {_FORMAT}")
        owner: dict[str, str] = {}
        for role, pool in self.roles.items():
            if not role.isidentifier():
                raise MechkitError(f"{where}: role name {role!r} must be an identifier such as 'object'")
            if len(pool) < 2:
                raise MechkitError(f"{where}: field 'roles.{role}' needs at least 2 entities, got {len(pool)}")
            for entity in pool:
                if not entity or entity != entity.strip():
                    raise MechkitError(f"{where}: field 'roles.{role}' has entity {entity!r}; use non-empty "
                                       "entities without surrounding whitespace")
                if entity in owner:
                    raise MechkitError(f"{where}: entity {entity!r} appears twice (roles {owner[entity]!r} and "
                                       f"{role!r}); every entity must be unique across all roles")
                owner[entity] = role
        if _fields(self.clause, f"{where}: field 'clause'") != set(self.roles):
            raise MechkitError(f"{where}: field 'clause' must name every role ({', '.join(self.roles)}) "
                               f"and nothing else, got {self.clause!r}")
        names = [q.name for q in self.queries]
        if len(set(names)) != len(names):
            raise MechkitError(f"{where}: query names {names} repeat; give each query its own name")
        for i, query in enumerate(self.queries):
            self._check_query(query, where, f"queries[{i}]")

    def _check_query(self, query: BindingQuery, where: str, path: str) -> None:
        if query.answer_role not in self.roles:
            raise MechkitError(f"{where}: field '{path}.answer_role' names {query.answer_role!r}, which is not a "
                               f"role ({', '.join(self.roles)})")
        others = ", ".join(self._others(query))
        asked = _fields(query.question, f"{where}: field '{path}.question'")
        lead = _fields(query.answer_prefix, f"{where}: field '{path}.answer_prefix'")
        for field, used in (("question", asked), ("answer_prefix", lead)):
            unknown = sorted(used - set(self.roles))
            if unknown or query.answer_role in used:
                bad = unknown[0] if unknown else query.answer_role
                raise MechkitError(f"{where}: field '{path}.{field}' names {{{bad}}}; it may name only the roles "
                                   f"other than the answer role {query.answer_role!r}: {others}")
        if not asked:
            raise MechkitError(f"{where}: field '{path}.question' names no entity, so it cannot pick a group; "
                               f"name one of {others}")

    def _others(self, query: BindingQuery) -> list[str]:
        return [role for role in self.roles if role != query.answer_role]

    def query(self, name: str | None = None) -> BindingQuery:
        """The query called `name` (default: the first)."""
        if name is None:
            return self.queries[0]
        for query in self.queries:
            if query.name == name:
                return query
        raise MechkitError(f"binding task {self.name!r} has no query {name!r}; use one of "
                           f"{', '.join(q.name for q in self.queries)}")

    def max_groups(self) -> int:
        """The most groups a prompt can have: the size of the smallest entity pool."""
        return min(len(pool) for pool in self.roles.values())


def _fields(template: str, where: str) -> set[str]:
    """The placeholder names of a str.format template; anything but plain {name} fields is refused."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise MechkitError(f"{where} is not a valid template ({err}); write literal braces as {{{{ and }}}}") from None
    names = set()
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise MechkitError(f"{where} has placeholder {{{name}}}; use plain role names such as {{object}}")
        names.add(name)
    return names


def schema_from_dict(record: Any, where: str = "binding task") -> BindingSchema:
    """A BindingSchema from a parsed JSON object; errors name `where` and the field."""
    if not isinstance(record, dict):
        raise MechkitError(f"{where} is not a JSON object; write {_FORMAT}")
    unknown = sorted(set(record) - {"name", "description", "roles", "clause", "queries", "prefix", "separator",
                                    "suffix"})
    if unknown:
        raise MechkitError(f"{where}: unknown field {unknown[0]!r}; write {_FORMAT}")

    def text(obj: dict, key: str, path: str, default: str | None = None) -> str:
        value = obj.get(key, default)
        if not isinstance(value, str):
            problem = "is missing" if value is None else f"must be a string, got {type(value).__name__}"
            raise MechkitError(f"{where}: field {path!r} {problem}; write {_FORMAT}")
        return value

    roles = record.get("roles")
    if not isinstance(roles, dict) or not all(
        isinstance(pool, list) and all(isinstance(e, str) for e in pool) for pool in roles.values()
    ):
        raise MechkitError(f"{where}: field 'roles' must map role names to lists of entity strings")
    queries = record.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, dict) for q in queries):
        raise MechkitError(f"{where}: field 'queries' must be a list of objects; write {_FORMAT}")
    try:
        return BindingSchema(
            name=text(record, "name", "name"),
            description=text(record, "description", "description", ""),
            roles={role: tuple(pool) for role, pool in roles.items()},
            clause=text(record, "clause", "clause"),
            queries=tuple(
                BindingQuery(*(text(q, key, f"queries[{i}].{key}", None if key != "answer_prefix" else "")
                               for key in ("name", "question", "answer_role", "answer_prefix")))
                for i, q in enumerate(queries)
            ),
            prefix=text(record, "prefix", "prefix", ""),
            separator=text(record, "separator", "separator", " "),
            suffix=text(record, "suffix", "suffix", ""),
        )
    except MechkitError as err:
        raise MechkitError(f"{where}: {err}") from None


def load_schemas(path: str | Path) -> list[BindingSchema]:
    """Schemas from a UTF-8 file: `.jsonl` (one schema object per line) or `.json` (one object or a list)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        schemas = [schema_from_dict(record, where)
                   for _, where, record in read_jsonl(path, "binding task file", f"write {_FORMAT}")]
    else:
        try:
            content = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise MechkitError(f"cannot read binding task file {path} ({err}); pass a UTF-8 JSON or JSONL "
                               "file") from None
        data = _parse(content, f"binding task file {path}")
        records = data if isinstance(data, list) else [data]
        schemas = [schema_from_dict(r, f"binding task file {path}, schema {i}") for i, r in enumerate(records)]
    if not schemas:
        raise MechkitError(f"binding task file {path} holds no schema; write {_FORMAT}")
    return schemas


def _parse(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MechkitError(f"{where} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                           f"write {_FORMAT}") from None


@cache
def builtin_tasks() -> dict[str, BindingSchema]:
    """The built-in schemas by name, read once from mechkit/data/binding_tasks.jsonl."""
    schemas = load_schemas(Path(str(resources.files("mechkit") / "data" / "binding_tasks.jsonl")))
    return {schema.name: schema for schema in schemas}


def get_task(task: str | BindingSchema) -> BindingSchema:
    """A built-in schema by name (a BindingSchema is returned as is)."""
    if isinstance(task, BindingSchema):
        return task
    tasks = builtin_tasks()
    if task not in tasks:
        raise MechkitError(f"unknown binding task {task!r}: use one of {', '.join(tasks)}, or a BindingSchema "
                           "from load_schemas")
    return tasks[task]


@dataclass(frozen=True)
class BindingPrompt:
    """One prompt: its groups (role -> entity, in context order), the queried group's position and the query."""

    task: BindingSchema
    query: BindingQuery
    groups: tuple[dict[str, str], ...]
    query_position: int

    @property
    def answer(self) -> str:
        return self.groups[self.query_position][self.query.answer_role]

    @property
    def candidates(self) -> tuple[str, ...]:
        """The answer-role entity of every group, in context order (the answer is at `query_position`)."""
        return tuple(group[self.query.answer_role] for group in self.groups)

    @property
    def context(self) -> str:
        clauses = [self.task.clause.format(**group) for group in self.groups]
        return self.task.prefix + self.task.separator.join(clauses) + self.task.suffix

    def render(self, tokenizer=None, chat: bool = False) -> tuple[str, tuple[str, ...]]:
        """(text ending just before the answer, continuation of each candidate).

        Plain: "{context}\\n{question} {answer_prefix}"; chat: one user turn "{context}\\n{question}" through the
        tokenizer's chat template, then the answer prefix. The prefix's trailing whitespace starts each
        continuation ("Box " -> text "...Box", continuation " C").
        """
        group = self.groups[self.query_position]
        user = self.context + "\n" + self.query.question.format(**group)
        lead = self.query.answer_prefix.format(**group)
        if chat:
            head = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                 add_generation_prompt=True)
        else:
            head, lead = user, " " + lead
        stripped = lead.rstrip()
        space = lead[len(stripped):]
        return head + stripped, tuple(space + entity for entity in self.candidates)


def make_prompts(
    task: str | BindingSchema,
    n_groups: int,
    n_prompts: int,
    seed: int = 0,
    query: str | None = None,
    query_position: int | None = None,
) -> list[BindingPrompt]:
    """`n_prompts` prompts of `n_groups` groups; prompt i queries group `query_position`, or i % n_groups when
    None (every position equally often). Prompt i uses `numpy.random.default_rng((seed, n_groups, i))`."""
    schema = get_task(task)
    chosen = schema.query(query)
    if not 2 <= n_groups <= schema.max_groups():
        small = min(schema.roles, key=lambda r: len(schema.roles[r]))
        raise MechkitError(f"n_groups={n_groups} is outside 2..{schema.max_groups()} for binding task "
                           f"{schema.name!r} (role {small!r} has {len(schema.roles[small])} entities and each "
                           "group needs its own); use fewer groups or add entities")
    if n_prompts < 1:
        raise MechkitError(f"n_prompts must be at least 1, got {n_prompts}")
    if query_position is not None and not -n_groups <= query_position < n_groups:
        raise MechkitError(f"query_position {query_position} is outside 0..{n_groups - 1} for {n_groups} groups")
    prompts = []
    for i in range(n_prompts):
        rng = np.random.default_rng((seed, n_groups, i))
        drawn = {role: rng.choice(len(pool), size=n_groups, replace=False) for role, pool in schema.roles.items()}
        groups = tuple({role: schema.roles[role][drawn[role][g]] for role in schema.roles} for g in range(n_groups))
        position = i % n_groups if query_position is None else query_position % n_groups
        prompts.append(BindingPrompt(schema, chosen, groups, position))
    return prompts


@dataclass
class EncodedPrompts:
    """Prompts as a model sees them: batch [batch, pos] (left-padded), candidate_ids [batch, n_groups] (each
    group's answer token, to be read from the last position's logits), answer_index [batch] (the queried group)."""

    batch: Batch
    candidate_ids: Int[Tensor, "batch n_groups"]
    answer_index: Int[Tensor, " batch"]
    chat: bool


def encode_prompts(subject: Subject, prompts: Sequence[BindingPrompt], chat: bool | None = None,
                   single_token: bool = False) -> EncodedPrompts:
    """Tokenize prompts for `subject` and find each candidate's answer token (see the module docstring).

    chat None: the tokenizer's chat template when it has one (then no extra BOS), else plain text with the
    model's BOS choice. `single_token=True` (for methods that read one answer token) refuses an entity whose
    continuation is more than one token. Raises MechkitError when two candidates share their next token.
    """
    if len({len(p.groups) for p in prompts}) != 1:
        raise MechkitError("encode_prompts needs a non-empty list of prompts with one number of groups; "
                           "encode each n_groups separately")
    tokenizer = subject.tokenizer
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat = has_template if chat is None else chat
    if chat and not has_template:
        raise MechkitError(f"{subject.model_id}'s tokenizer has no chat template; encode with chat=False")
    bos = [] if chat else subject.bos_prefix
    sequences, candidates = [], []
    for prompt in prompts:
        text, continuations = prompt.render(tokenizer, chat)
        head = tokenizer(text, add_special_tokens=False)["input_ids"]
        tails = []
        for entity, continuation in zip(prompt.candidates, continuations):
            ids = tokenizer(text + continuation, add_special_tokens=False)["input_ids"]
            if ids[:len(head)] != head:
                raise MechkitError(f"on {subject.model_id}, answer {entity!r} of binding task {prompt.task.name!r} "
                                   "merges with the token before it; end the query's answer_prefix with a space "
                                   "or punctuation")
            tails.append(ids[len(head):])
        shared = _common_prefix(tails)
        for entity, tail in zip(prompt.candidates, tails):
            if single_token and len(tail) != shared + 1:
                raise MechkitError(f"entity {entity!r} of binding task {prompt.task.name!r} is "
                                   f"{len(tail) - shared} tokens on {subject.model_id}, and this method needs "
                                   "single-token entities; remove it from its role's pool")
        firsts = [tail[shared] if len(tail) > shared else -1 for tail in tails]  # -1: nothing after the shared
        for a, b in combinations(range(len(firsts)), 2):
            if firsts[a] == firsts[b] or min(firsts[a], firsts[b]) < 0:
                raise MechkitError(f"answers {prompt.candidates[a]!r} and {prompt.candidates[b]!r} of binding task "
                                   f"{prompt.task.name!r} start with the same token on {subject.model_id}, so "
                                   "first-token logits cannot tell them apart; use entities that differ in their "
                                   "first token")
        sequences.append(bos + head + tails[0][:shared])
        candidates.append(firsts)
    batch = Batch.from_sequences(sequences, pad_id=subject.pad_id)
    subject.check_length(batch)
    answer = torch.tensor([p.query_position for p in prompts], dtype=torch.long)
    return EncodedPrompts(batch, torch.tensor(candidates, dtype=torch.long), answer, chat)


def _common_prefix(sequences: list[list[int]]) -> int:
    """Length of the longest prefix shared by all sequences."""
    length = 0
    while all(len(s) > length for s in sequences) and len({s[length] for s in sequences}) == 1:
        length += 1
    return length
