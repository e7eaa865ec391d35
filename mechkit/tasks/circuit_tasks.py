"""Real-model circuit tasks written for this project (methods.md §6.1, §7): IOI, greater-than, docstring, conflict.

Every generator takes `(subject, n, seed, ...)` and returns `CircuitExamples` built with the subject's tokenizer:
names, years and argument names that are not one token in context for THIS tokenizer are filtered at build time,
and a draw whose negative would tokenize to a different length than its positive is redrawn, so each pair shares
one attention mask. Prompt i draws from `numpy.random.default_rng((seed, i))` alone.

- ioi: BABA / ABBA sentences ("When Mary and John went to the store, John gave a drink to"); answer = the indirect
  object (" Mary"), wrong = the subject (" John"); negative = ABC: a third name replaces the first occurrence of
  the subject, so no name repeats (§6.1). The final subject still makes " John" unlikely there, so the negatives
  keep much of the logit difference; `replace="last"` puts the third name at the end instead, and the negatives'
  logit difference falls to about 0 on the packaged models.
- greater-than: "The {noun} lasted from the year {XX}{YY} to the year {XX}"; the answer is the next token of the
  end year XX{YY+10}, the wrong token that of XX{YY-10} (YY in 10..89). Gemma 3, SmolLM2 and Qwen2.5 split years
  into single digits (" 1732" -> " ", "1", "7", "3", "2"), so there the next token is the tens digit: answer
  str(Y1 + 1), wrong str(Y1 - 1) for YY = Y1 Y0; a tokenizer with two-digit tokens ("32") gets "YY+10" / "YY-10".
  Negative = the "01" corruption (start year XX01). `greater_than_set` also returns the token sets for the
  probability-mass metric (`year_prob_diff`).
- docstring: a def with six single-token arguments (2 prefix, 3 matching, 1 suffix) and a reST docstring listing
  the first two matching ones; after the last "    :param" the answer is the third matching argument, the wrong
  token the suffix argument. Negative = Heimersheim & Janiak's "random_random": the matching arguments in the def
  and the documented ones replaced by unrelated names.
- conflict: knowledge-conflict pairs from `mechkit.tasks.conflicts`.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechkit.circuits.examples import CircuitExamples, last_logits, logit_diff
from mechkit.errors import MechkitError
from mechkit.tasks.conflicts import conflict_examples, conflict_rates, conflict_set

_TRIES = 200  # redraws per prompt before giving up

NAMES = ("Mary", "John", "James", "Michael", "David", "Sarah", "Emma", "Anna", "Paul", "Peter", "Mark", "Lisa",
         "Laura", "Kevin", "Jessica", "Daniel", "Thomas", "Robert", "William", "Richard", "Susan", "Karen", "Nancy",
         "Helen", "Sandra", "Carol", "Ruth", "Michelle", "Kelly", "Amy", "Rachel", "Rose", "Alice", "George",
         "Edward", "Brian", "Steven", "Jason", "Frank", "Andrew", "Eric", "Scott")
IOI_TEMPLATES = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} handed a ball to",
    "After {A} and {B} arrived at the party, {S} offered a cake to",
    "While {A} and {B} were working at the office, {S} sent an email to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "Friends {A} and {B} found a ring at the beach. {S} gave it to",
    "When {A} and {B} got a letter at the house, {S} decided to give it to",
    "The night {A} and {B} went to the restaurant, {S} passed the salt to",
)
YEAR_NOUNS = ("war", "expedition", "contract", "drought", "famine", "reign", "siege", "truce", "alliance",
              "occupation", "rebellion", "plague", "voyage", "journey", "campaign", "construction", "dynasty",
              "embargo", "festival", "pilgrimage", "partnership", "marriage", "exile", "strike", "tour", "project",
              "treaty", "crisis", "revolt", "investigation")
ARG_NAMES = ("data", "name", "file", "value", "key", "path", "size", "mode", "user", "item", "node", "line", "text",
             "port", "host", "index", "count", "order", "label", "model", "query", "token", "state", "source",
             "target", "config", "shape", "field", "image", "event", "group", "level", "limit", "offset", "scale",
             "score", "color", "style", "width", "height", "depth", "start", "stop", "step", "speed", "weight",
             "price", "title", "content", "message", "parent", "child", "result", "output", "input", "filter",
             "format", "header", "prefix", "option")
DOC_WORDS = ("price", "control", "action", "cost", "issue", "process", "position", "course", "type", "research",
             "subject", "force", "order", "value", "health", "street", "class", "church", "paper", "bank", "section",
             "table", "building", "sense", "team", "student", "language", "town", "plan", "product", "letter",
             "game", "food", "role", "event", "land", "support", "range", "stage", "trade", "voice", "field")


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def next_token_id(tokenizer, prompt: str, continuation: str) -> int | None:
    """The single token `continuation` adds after `prompt` (prompt's tokens unchanged), else None."""
    base, full = _ids(tokenizer, prompt), _ids(tokenizer, prompt + continuation)
    return full[-1] if len(full) == len(base) + 1 and full[:-1] == base else None


def single_token_words(tokenizer, words: Sequence[str], prefix: str = " ") -> list[str]:
    """The words that `prefix + word` tokenizes to one token (in order)."""
    return [word for word in words if len(_ids(tokenizer, prefix + word)) == 1]


def _pool(subject, words: Sequence[str], need: int, what: str) -> list[str]:
    pool = single_token_words(subject.tokenizer, words)
    if len(pool) < need:
        raise MechkitError(f"only {len(pool)} of the {len(words)} {what} are single tokens for "
                           f"{subject.model_id}'s tokenizer and the task needs {need}; use a model with a "
                           "word-level (BPE / SentencePiece) vocabulary")
    return pool


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise MechkitError(f"n must be a positive number of examples, got {n!r}")


def _examples(subject, name: str, n: int, seed: int, draw: Callable) -> CircuitExamples:
    """Pairs from `draw(rng, i) -> (positive, negative, answer, wrong)` texts; a draw whose answer / wrong is not
    one token after the positive, or whose negative has another length, is redrawn from the same generator."""
    _check_n(n)
    tok, bos = subject.tokenizer, list(subject.bos_prefix)
    rows = []
    for i in range(n):
        rng = np.random.default_rng((seed, i))
        for _ in range(_TRIES):
            pos, neg, answer, wrong = draw(rng, i)
            answer_id, wrong_id = next_token_id(tok, pos, answer), next_token_id(tok, pos, wrong)
            pos_ids, neg_ids = _ids(tok, pos), _ids(tok, neg)
            if None not in (answer_id, wrong_id) and answer_id != wrong_id and len(pos_ids) == len(neg_ids):
                rows.append((bos + pos_ids, bos + neg_ids, answer_id, wrong_id))
                break
        else:
            raise MechkitError(f"task {name!r}: no draw of prompt {i} fits {subject.model_id}'s tokenizer in "
                               f"{_TRIES} tries (answers must be one token, negatives as long as positives); "
                               "use another model")
    pos, neg, answers, wrongs = zip(*rows)
    return CircuitExamples.from_token_ids(name, pos, neg, answers, wrongs, pad_id=subject.pad_id)


def ioi_examples(subject, n: int = 64, seed: int = 0, templates: Sequence[str] = IOI_TEMPLATES,
                 replace: str = "first") -> CircuitExamples:
    """IOI pairs: even i ABBA, odd i BABA; answer = indirect object, wrong = subject. Negative: a third name replaces
    the first occurrence of the subject (`replace="first"`, §6.1) or the last one (`"last"`: both names of the
    first clause stay and the final subject is new, so nothing tells the indirect object from the subject)."""
    if replace not in ("first", "last"):
        raise MechkitError(f"replace must be 'first' or 'last' (which subject occurrence the third name replaces), "
                           f"got {replace!r}")
    if not templates or any(set(_fields(t) or ()) != {"A", "B", "S"} for t in templates):
        raise MechkitError("IOI templates must each name {A}, {B} and {S} (the subject, repeated) and nothing else")
    names = _pool(subject, NAMES, 3, "IOI names")

    def draw(rng, i):
        template = templates[int(rng.integers(len(templates)))]
        io, s, c = (names[j] for j in rng.choice(len(names), 3, replace=False))
        first = (io, s) if i % 2 == 0 else (s, io)  # ABBA: the indirect object first; BABA: the subject first
        pos = template.format(A=first[0], B=first[1], S=s)
        if replace == "last":
            neg = template.format(A=first[0], B=first[1], S=c)
        else:
            neg = template.format(A=c if first[0] == s else io, B=c if first[1] == s else io, S=s)
        return pos, neg, " " + io, " " + s

    return _examples(subject, "ioi", n, seed, draw)


def _fields(template: str) -> list[str] | None:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return None


def year_split(tokenizer) -> str:
    """How the tokenizer continues "... to the year 17": "pair" (one token per two-digit year, as GPT-2) or
    "digit" (one token per digit, as Gemma 3, SmolLM2 and Qwen2.5)."""
    prompt = "The war lasted from the year 1732 to the year 17"
    if all(next_token_id(tokenizer, prompt, f"{v:02d}") is not None for v in range(100)):
        return "pair"
    if all(next_token_id(tokenizer, prompt, str(d)) is not None for d in range(10)):
        return "digit"
    raise MechkitError("this tokenizer continues a year with neither one-digit nor two-digit tokens; the "
                       "greater-than task cannot score it")


@dataclass(frozen=True)
class GreaterThanSet:
    """Greater-than pairs, the start year of each, the tokenizer's year split, and per pair the next-token ids
    that mean an end year later than the start (`greater_ids`) or not later (`smaller_ids`); in "digit" mode the
    tens digit equal to the start's is in neither (it depends on the units digit)."""

    examples: CircuitExamples
    years: tuple[int, ...]
    split: str
    greater_ids: tuple[tuple[int, ...], ...]
    smaller_ids: tuple[tuple[int, ...], ...]

    def prob_diff(self, logits: Float[Tensor, "n vocab"]) -> Float[Tensor, " n"]:
        """P(later end year) - P(not later) from last-position logits of the positives (Hanna et al.'s metric)."""
        probs = logits.float().softmax(-1).cpu()
        return torch.stack([probs[i, list(g)].sum() - probs[i, list(s)].sum()
                            for i, (g, s) in enumerate(zip(self.greater_ids, self.smaller_ids))])


def greater_than_set(subject, n: int = 64, seed: int = 0, nouns: Sequence[str] = YEAR_NOUNS) -> GreaterThanSet:
    """Greater-than pairs with what `year_prob_diff` needs; see the module docstring for the design."""
    if not nouns:
        raise MechkitError("greater-than needs at least one noun")
    tok = subject.tokenizer
    split = year_split(tok)
    drawn: dict[int, tuple[str, int]] = {}  # prompt index -> (positive, start year) of its latest (accepted) draw

    def prompt(noun: str, start: str, century: int) -> str:
        return f"The {noun} lasted from the year {start} to the year {century}"

    def draw(rng, i):
        noun, century, yy = nouns[int(rng.integers(len(nouns)))], int(rng.integers(12, 20)), int(rng.integers(10, 90))
        nxt = (lambda v: f"{v:02d}") if split == "pair" else (lambda v: str(v // 10))
        pos = prompt(noun, f"{century}{yy:02d}", century)
        drawn[i] = (pos, century * 100 + yy)
        return pos, prompt(noun, f"{century}01", century), nxt(yy + 10), nxt(yy - 10)

    examples = _examples(subject, "greater-than", n, seed, draw)
    greater, smaller = [], []
    for i in range(n):
        pos, yy = drawn[i][0], drawn[i][1] % 100
        if split == "pair":
            later, earlier = [f"{v:02d}" for v in range(yy + 1, 100)], [f"{v:02d}" for v in range(yy + 1)]
        else:
            later, earlier = [str(d) for d in range(yy // 10 + 1, 10)], [str(d) for d in range(yy // 10)]
        greater.append(tuple(next_token_id(tok, pos, t) for t in later))
        smaller.append(tuple(next_token_id(tok, pos, t) for t in earlier))
    return GreaterThanSet(examples, tuple(drawn[i][1] for i in range(n)), split, tuple(greater), tuple(smaller))


def greater_than_examples(subject, n: int = 64, seed: int = 0, **options) -> CircuitExamples:
    """The CircuitExamples of `greater_than_set`."""
    return greater_than_set(subject, n, seed, **options).examples


def year_prob_diff(subject, task: GreaterThanSet, batch_size: int = 32) -> Float[Tensor, " n"]:
    """Per positive, P(later end year) - P(not later) under `subject` (one forward pass per chunk)."""
    logits = torch.cat([last_logits(subject, chunk.positives).float().cpu()
                        for chunk in task.examples.chunks(batch_size)])
    return task.prob_diff(logits)


def docstring_prompt(method: str, def_args: Sequence[str], doc_args: Sequence[str], summary: Sequence[str],
                     descriptions: Sequence[Sequence[str]]) -> str:
    """A def with `def_args`, a reST docstring documenting `doc_args`, ending in an open "    :param"."""
    lines = [f"def {method}(self, {', '.join(def_args)}):", f'    """{" ".join(summary)}', ""]
    lines += [f"    :param {arg}: {' '.join(words)}" for arg, words in zip(doc_args, descriptions)]
    return "\n".join([*lines, "    :param"])


def docstring_examples(subject, n: int = 64, seed: int = 0) -> CircuitExamples:
    """Docstring pairs (2 prefix, 3 matching, 1 suffix def arguments; 3-word summary, 2-word descriptions);
    answer = the third matching argument, wrong = the suffix argument; negative = random_random."""
    args = _pool(subject, ARG_NAMES, 12, "argument names")

    def draw(rng, i):
        method, p1, p2, m1, m2, m3, s1, r1, r2, r3, d1, d2 = (args[j] for j in rng.choice(len(args), 12,
                                                                                          replace=False))
        summary = [DOC_WORDS[j] for j in rng.choice(len(DOC_WORDS), 3, replace=False)]
        words = [[DOC_WORDS[j] for j in rng.choice(len(DOC_WORDS), 2, replace=False)] for _ in range(2)]
        pos = docstring_prompt(method, [p1, p2, m1, m2, m3, s1], [m1, m2], summary, words)
        neg = docstring_prompt(method, [p1, p2, r1, r2, r3, s1], [d1, d2], summary, words)
        return pos, neg, " " + m3, " " + s1

    return _examples(subject, "docstring", n, seed, draw)


TASKS: dict[str, Callable[..., CircuitExamples]] = {
    "ioi": ioi_examples,
    "greater-than": greater_than_examples,
    "docstring": docstring_examples,
    "conflict": conflict_examples,
}


def get_task(name: str) -> Callable[..., CircuitExamples]:
    """The generator `(subject, n, seed, **options) -> CircuitExamples` of a task by name."""
    if name not in TASKS:
        raise MechkitError(f"unknown circuit task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]


def task_report(subject, n: int = 64, seed: int = 0, batch_size: int = 32) -> list[dict]:
    """One row per task: accuracy of the positives ("argmax", "beats_wrong", as `task_accuracy`), the share of
    negatives whose answer still beats the wrong token, mean logit differences of positives and negatives; for
    greater-than the mean probability-mass difference; for conflict (all usable facts) `conflict_rates`."""
    rows = []
    for name, make in TASKS.items():
        if name == "greater-than":
            task = greater_than_set(subject, n, seed)
            examples, extra = task.examples, {"prob_diff": float(year_prob_diff(subject, task, batch_size).mean())}
        elif name == "conflict":
            conflicts = conflict_set(subject, None, seed)
            examples, extra = conflicts.examples, conflict_rates(subject, conflicts, batch_size)
        else:
            examples, extra = make(subject, n, seed), {}
        pos, neg = (torch.cat([last_logits(subject, getattr(c, side)).float().cpu()
                               for c in examples.chunks(batch_size)]) for side in ("positives", "negatives"))
        ld_pos, ld_neg = (logit_diff(x, examples.answer_ids, examples.wrong_ids) for x in (pos, neg))
        rows.append({"model": subject.model_id, "task": name, "n": len(examples),
                     "acc_argmax": float((pos.argmax(-1) == examples.answer_ids).float().mean()),
                     "acc_beats_wrong": float((ld_pos > 0).float().mean()),
                     "neg_beats_wrong": float((ld_neg > 0).float().mean()),
                     "ld_pos": float(ld_pos.mean()), "ld_neg": float(ld_neg.mean()), **extra})
    return rows
