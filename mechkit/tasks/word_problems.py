"""Arithmetic word problems with integer answers: reasoning prompts for the preplan-and-anchor probe.

A small seeded generator (`numpy.random.default_rng(seed)`, never the global RNG) over a few templates: buying
(one product), buying with change (two steps), sharing equally (a division), add-then-subtract (two steps) and
multiply-then-add (two steps). Numbers stay small and every intermediate value is a non-negative integer, so the
problems read naturally and have one exact answer. Same seed, same problems.

`plain_prompt` formats a question for a model without a chat template, after `shots` hand-written worked examples
(a base model asked zero-shot tends to loop, e.g. Gemma 3 270M answers "1. 1. 1. ...").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechkit.errors import MechkitError

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kemal", "Lena")
ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "cards", "oranges")
KINDS = ("buy", "change", "share", "add_subtract", "multiply_add")
ANSWER_CUE = "Let's think step by step."
WORKED_EXAMPLES = (  # (question, worked answer) written by hand, outside the generator's templates
    ("Tom has 3 bags with 4 apples in each bag. He eats 2 apples. How many apples does Tom have left?",
     "Tom has 3 bags with 4 apples each, so he has 3 * 4 = 12 apples. He eats 2, so 12 - 2 = 10 apples are left. "
     "The answer is 10."),
    ("Mia reads 5 pages every day for 6 days, then 7 more pages. How many pages does Mia read?",
     "In 6 days Mia reads 6 * 5 = 30 pages. Then she reads 7 more, so 30 + 7 = 37 pages. The answer is 37."),
)


@dataclass(frozen=True)
class WordProblem:
    """One problem: the question text, its integer answer, and the template (`kind`, one of `KINDS`) it came from."""

    question: str
    answer: int
    kind: str


def _problem(kind: str, rng: np.random.Generator) -> WordProblem:
    name, other = (NAMES[i] for i in rng.choice(len(NAMES), size=2, replace=False))
    item = ITEMS[int(rng.integers(len(ITEMS)))]
    a, b, c = (int(v) for v in rng.integers(2, 10, size=3))
    if kind == "buy":
        question = f"{name} buys {a} {item} at {b} dollars each. How many dollars does {name} spend?"
        return WordProblem(question, a * b, kind)
    if kind == "change":
        money = a * b + c + int(rng.integers(0, 20))
        question = (f"{name} has {money} dollars and buys {a} {item} that cost {b} dollars each. "
                    f"How many dollars does {name} have left?")
        return WordProblem(question, money - a * b, kind)
    if kind == "share":
        question = (f"{name} has {a * b} {item} and shares them equally among {b} friends. "
                    f"How many {item} does each friend get?")
        return WordProblem(question, a, kind)
    if kind == "add_subtract":
        start = a + int(rng.integers(5, 20))
        question = (f"{name} has {start} {item}. {other} gives {name} {b} more, and then {name} gives away {a}. "
                    f"How many {item} does {name} have now?")
        return WordProblem(question, start + b - a, kind)
    question = (f"A box holds {a} {item}. {name} has {b} boxes and {c} loose {item}. "
                f"How many {item} does {name} have in total?")
    return WordProblem(question, a * b + c, kind)


def word_problems(n: int, seed: int = 0) -> list[WordProblem]:
    """`n` problems cycling through the templates in `KINDS` order, numbers and names drawn from `seed`."""
    if n < 1:
        raise MechkitError(f"the number of word problems must be at least 1, got {n}; pass n >= 1")
    rng = np.random.default_rng(seed)
    return [_problem(KINDS[i % len(KINDS)], rng) for i in range(n)]


def plain_prompt(question: str, shots: int = 0) -> str:
    """"Question: ...\nAnswer: Let's think step by step." after the first `shots` of `WORKED_EXAMPLES`."""
    if not 0 <= shots <= len(WORKED_EXAMPLES):
        raise MechkitError(f"shots {shots} is outside 0..{len(WORKED_EXAMPLES)} (the worked examples available); "
                           "pass fewer shots")
    examples = "".join(f"Question: {q}\nAnswer: {ANSWER_CUE} {a}\n\n" for q, a in WORKED_EXAMPLES[:shots])
    return f"{examples}Question: {question}\nAnswer: {ANSWER_CUE}"
