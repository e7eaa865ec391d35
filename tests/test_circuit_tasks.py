"""Real-model circuit tasks: IOI, greater-than, docstring, knowledge conflicts.

Structure is tested with a word-level stand-in tokenizer (the tiny models' byte tokenizer makes every name several
tokens, which the generators must refuse); solvability on the packaged models in tests marked `real`.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from mechkit.circuits.examples import check_solvable, task_accuracy

from mechkit.errors import MechkitError
from mechkit.tasks.circuit_tasks import (
    TASKS,
    docstring_examples,
    get_task,
    greater_than_examples,
    greater_than_set,
    ioi_examples,
    next_token_id,
    single_token_words,
    task_report,
    year_prob_diff,
    year_split,
)
from mechkit.tasks.conflicts import (
    ConflictFact,
    builtin_facts,
    conflict_examples,
    conflict_rates,
    conflict_set,
    knows,
    load_facts,
    usable_facts,
)


class WordTokenizer:
    """A stand-in tokenizer: " word" pieces (words over 6 letters split after 4), digits one by one (or in pairs
    with `pairs=True`), punctuation and whitespace runs; ids are given on first sight."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, pairs: bool = False):
        digits = r" ?\d\d|\d" if pairs else r" ?\d"
        self.pattern = re.compile(rf" ?[A-Za-z_]+|{digits}|\s+|[^\sA-Za-z_\d]")
        self.vocab: dict[str, int] = {}

    def pieces(self, text: str) -> list[str]:
        out = []
        for piece in self.pattern.findall(text):
            letters = piece.strip()
            out += [piece[:5], piece[5:]] if letters.isalpha() and len(letters) > 6 else [piece]
        return out

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab) + 3) for p in self.pieces(text)]}

    def decode(self, ids) -> str:
        words = {i: p for p, i in self.vocab.items()}
        return "".join(words.get(int(i), "") for i in ids)


def word_subject(pairs: bool = False):
    return SimpleNamespace(tokenizer=WordTokenizer(pairs), bos_prefix=[1], pad_id=0, model_id="word-level")


@pytest.fixture(scope="module")
def words():
    return word_subject()


def texts(subject, batch) -> list[str]:
    return [subject.tokenizer.decode(row[mask.bool()][1:]) for row, mask in zip(batch.tokens, batch.attention_mask)]


# --- tokenizer filters --------------------------------------------------------------------------------------------

def test_single_token_filter_and_next_token(words):
    tok = words.tokenizer
    assert single_token_words(tok, ["Mary", "Michael", "John", "Alexander"]) == ["Mary", "John"]
    assert next_token_id(tok, "When Mary and", " John") == tok(" John")["input_ids"][0]
    assert next_token_id(tok, "When Mary and", " Michael") is None  # two tokens
    assert next_token_id(tok, "the year 17", "32") is None  # two digits, one token each
    assert year_split(tok) == "digit" and year_split(WordTokenizer(pairs=True)) == "pair"


# --- every task: pairs, answers, seeds ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(TASKS))
def test_pairs_share_masks_and_answers_differ(words, name):
    ex = get_task(name)(words, 6, 3)
    assert len(ex) == 6
    assert torch.equal(ex.positives.attention_mask, ex.negatives.attention_mask)
    assert (ex.answer_ids != ex.wrong_ids).all()
    assert all(p != q for p, q in zip(texts(words, ex.positives), texts(words, ex.negatives)))
    assert (ex.positives.tokens[:, -1] != 0).all()  # left-padded: every prompt ends at the last position
    assert all(row[m.bool()][0] == 1 for row, m in zip(ex.positives.tokens, ex.positives.attention_mask))  # BOS


@pytest.mark.parametrize("name", ["ioi", "greater-than", "docstring"])
def test_seeds_are_deterministic_and_prompts_independent_of_n(words, name):
    make = get_task(name)
    a, b, c = make(words, 5, 7), make(words, 5, 7), make(words, 5, 8)
    assert texts(words, a.positives) == texts(words, b.positives) and torch.equal(a.answer_ids, b.answer_ids)
    assert texts(words, a.positives) != texts(words, c.positives)
    assert texts(words, make(words, 3, 7).positives) == texts(words, a.positives)[:3]


def test_ioi_structure(words):
    ex = ioi_examples(words, 8, 0)
    for i, (pos, neg) in enumerate(zip(texts(words, ex.positives), texts(words, ex.negatives))):
        answer, wrong = (words.tokenizer.decode([int(t)]).strip() for t in (ex.answer_ids[i], ex.wrong_ids[i]))
        first_two = re.findall(r"\b[A-Z][a-z]+\b", pos)
        assert pos.count(wrong) == 2 and pos.count(answer) == 1 and pos.endswith(" to")
        assert pos.index(answer) < pos.index(wrong) if i % 2 == 0 else pos.index(wrong) < pos.index(answer)
        assert answer in first_two and neg.count(wrong) == 1 and neg.count(answer) == 1
        assert pos.rsplit(",", 1)[-1] == neg.rsplit(",", 1)[-1] or pos.rsplit(".", 1)[-1] == neg.rsplit(".", 1)[-1]
    last = ioi_examples(words, 8, 0, replace="last")
    for pos, neg in zip(texts(words, last.positives), texts(words, last.negatives)):
        names = [w for w in re.findall(r"\b[A-Z][a-z]+\b", neg) if w not in ("When", "After", "While", "Then",
                                                                              "Friends", "The", "Afterwards")]
        assert len(set(names)) == 3 and pos[:20] == neg[:20]
    with pytest.raises(MechkitError, match="replace must be 'first' or 'last'"):
        ioi_examples(words, 2, 0, replace="middle")
    with pytest.raises(MechkitError, match=r"name \{A\}, \{B\} and \{S\}"):
        ioi_examples(words, 2, 0, templates=["{A} met {B}."])
    with pytest.raises(MechkitError, match=r"name \{A\}, \{B\} and \{S\}"):
        ioi_examples(words, 2, 0, templates=["{A} and {B} met. {S gave it to"])


def test_greater_than_digits_and_metric(words):
    task = greater_than_set(words, 10, 1)
    assert task.split == "digit" and len(task.years) == 10
    tok = words.tokenizer
    for i, (pos, neg) in enumerate(zip(texts(words, task.examples.positives), texts(words, task.examples.negatives))):
        year = task.years[i]
        assert 1210 <= year <= 1989 and 10 <= year % 100 <= 89
        assert pos.endswith(f"from the year {year} to the year {year // 100}")
        assert neg.endswith(f"from the year {year // 100}01 to the year {year // 100}")
        tens = year % 100 // 10
        assert tok.decode([int(task.examples.answer_ids[i])]) == str(tens + 1)
        assert tok.decode([int(task.examples.wrong_ids[i])]) == str(tens - 1)
        assert sorted(tok.decode([g]) for g in task.greater_ids[i]) == [str(d) for d in range(tens + 1, 10)]
        assert sorted(tok.decode([s]) for s in task.smaller_ids[i]) == [str(d) for d in range(tens)]
    logits = torch.full((10, 200), -30.0)
    for i, ids in enumerate(task.greater_ids):
        logits[i, list(ids)] = 10.0
    assert torch.allclose(task.prob_diff(logits), torch.ones(10), atol=1e-4)
    assert torch.allclose(task.prob_diff(torch.zeros(10, 200)),
                          torch.tensor([(len(g) - len(s)) / 200 for g, s in zip(task.greater_ids, task.smaller_ids)]))


def test_greater_than_two_digit_tokens():
    subject = word_subject(pairs=True)
    task = greater_than_set(subject, 4, 0)
    assert task.split == "pair"
    for i, year in enumerate(task.years):
        yy = year % 100
        assert subject.tokenizer.decode([int(task.examples.answer_ids[i])]) == f"{yy + 10:02d}"
        assert subject.tokenizer.decode([int(task.examples.wrong_ids[i])]) == f"{yy - 10:02d}"
        assert len(task.greater_ids[i]) == 99 - yy and len(task.smaller_ids[i]) == yy + 1


def test_docstring_structure(words):
    ex = docstring_examples(words, 6, 2)
    for i, (pos, neg) in enumerate(zip(texts(words, ex.positives), texts(words, ex.negatives))):
        answer, wrong = (words.tokenizer.decode([int(t)]).strip() for t in (ex.answer_ids[i], ex.wrong_ids[i]))
        def_args = re.search(r"\(self, (.*)\):", pos).group(1).split(", ")
        documented = re.findall(r":param (\w+):", pos)
        assert len(def_args) == 6 and documented == def_args[2:4] and def_args[4:] == [answer, wrong]
        assert pos.endswith("    :param") and neg.endswith("    :param")
        neg_args = re.search(r"\(self, (.*)\):", neg).group(1).split(", ")
        assert neg_args[:2] == def_args[:2] and neg_args[5] == wrong and answer not in neg
        assert not set(re.findall(r":param (\w+):", neg)) & set(neg_args)


def test_byte_tokenizer_is_refused_where_words_are_needed(tiny_nnsight):
    for make, what in ((ioi_examples, "IOI names"), (docstring_examples, "argument names")):
        with pytest.raises(MechkitError, match=f"of the .* {what} are single tokens for tiny:llama"):
            make(tiny_nnsight, 4, 0)
    with pytest.raises(MechkitError, match="none of the conflict facts has single-token objects"):
        conflict_examples(tiny_nnsight)
    ex = greater_than_examples(tiny_nnsight, 4, 0)  # bytes are digits: the task builds and runs
    assert 0.0 <= task_accuracy(tiny_nnsight, ex, "beats_wrong") <= 1.0


def test_unknown_task_and_bad_n(words):
    with pytest.raises(MechkitError, match="unknown circuit task 'ioi2'; use one of ioi, greater-than, docstring, "
                                           "conflict"):
        get_task("ioi2")
    with pytest.raises(MechkitError, match="n must be a positive number"):
        ioi_examples(words, 0, 0)


# --- conflicts --------------------------------------------------------------------------------------------------

def test_builtin_facts():
    facts = builtin_facts()
    assert len(facts) >= 60 and len({f.relation for f in facts}) >= 6
    assert all(f.memory != f.context for f in facts)
    fact = facts[0]
    assert fact.conflict_prompt == "The capital of France is London. The capital of France is"
    assert fact.aligned_prompt == "The capital of France is Paris. The capital of France is"


def test_conflict_set_structure(words):
    conflicts = conflict_set(words)
    pool = usable_facts(words)
    assert len(conflicts.facts) == len(pool) and conflicts.examples.name == "conflict"
    assert texts(words, conflicts.examples.positives)[0] == pool[0].conflict_prompt
    assert texts(words, conflicts.examples.negatives)[0] == pool[0].aligned_prompt
    assert texts(words, conflicts.no_context)[0] == pool[0].query
    for i, fact in enumerate(conflicts.facts):
        assert words.tokenizer.decode([int(conflicts.memory_ids[i])]) == " " + fact.memory
        assert words.tokenizer.decode([int(conflicts.context_ids[i])]) == " " + fact.context
        assert {int(conflicts.memory_ids[i]), int(conflicts.context_ids[i])} <= set(conflicts.candidate_ids[i])
    assert all(len(f.memory) <= 6 and len(f.context) <= 6 for f in pool)  # the stand-in splits longer words
    some = conflict_set(words, 5, seed=4)
    assert some.facts == conflict_set(words, 5, seed=4).facts != conflict_set(words, 5, seed=5).facts
    with pytest.raises(MechkitError, match=f"asked for 500 conflict facts but {len(pool)} are usable"):
        conflict_set(words, 500)


def test_statement_template(words):
    fact = ConflictFact("France", "capital", "The capital of {subject} is", "Paris", "Rome",
                        statement="{subject}'s capital is {object}")
    assert fact.conflict_prompt == "France's capital is Rome. The capital of France is"
    assert conflict_set(words, facts=[fact]).examples.answer_ids.tolist() == [words.tokenizer(" Paris")["input_ids"][0]]


GOOD = {"subject": "France", "relation": "capital", "prompt": "The capital of {subject} is", "memory": "Paris",
        "context": "London"}


@pytest.mark.parametrize("line, match", [
    ('{"subject": "France",', "is not valid JSON"),
    ('["France"]', "is not a JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "memory"}), "field 'memory' is missing"),
    (json.dumps({**GOOD, "context": 3}), "field 'context' must be a string, got int"),
    (json.dumps({**GOOD, "memory": " Paris"}), "field 'memory' is ' Paris'; give a non-empty string"),
    (json.dumps({**GOOD, "relation": ""}), "field 'relation' is ''"),
    (json.dumps({**GOOD, "prompt": "The capital is"}), r"field 'prompt' must name \{subject\}"),
    (json.dumps({**GOOD, "prompt": "The {what} of {subject} is"}), r"field 'prompt' must name \{subject\}"),
    (json.dumps({**GOOD, "prompt": "The capital of {subject is"}), r"field 'prompt' must name \{subject\}"),
    (json.dumps({**GOOD, "statement": "{subject} has a capital"}), r"field 'statement' must name \{subject\} and"),
    (json.dumps({**GOOD, "context": "Paris"}), "field 'context' equals 'memory'"),
    (json.dumps({**GOOD, "answer": "Paris"}), "unknown field 'answer'"),
    (json.dumps(GOOD), "line 2 repeats the query of line 1"),
])
def test_malformed_fact_lines_name_file_line_and_field(tmp_path, line, match):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n\n", encoding="utf-8")
    with pytest.raises(MechkitError, match=match) as err:
        load_facts(path)
    assert f"conflict fact file {path}, line 2" in str(err.value)


def test_fact_files_that_cannot_be_used(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(MechkitError, match="holds no fact"):
        load_facts(empty)
    with pytest.raises(MechkitError, match="cannot read conflict fact file"):
        load_facts(tmp_path / "missing.jsonl")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "subject": "Italy", "memory": "Rome"}) + "\n")
    assert [f.subject for f in load_facts(good)] == ["France", "Italy"]


# --- packaged models --------------------------------------------------------------------------------------------

@pytest.mark.real
def test_gemma_solves_the_tasks(gemma_nnsight):
    for name in ("ioi", "greater-than", "docstring"):
        ex = get_task(name)(gemma_nnsight, 16, 0)
        assert check_solvable(gemma_nnsight, ex, min_accuracy=0.9, criterion="beats_wrong") >= 0.9
    task = greater_than_set(gemma_nnsight, 16, 0)
    assert task.split == "digit"
    assert float(year_prob_diff(gemma_nnsight, task).mean()) > 0.3
    row = task_report(gemma_nnsight, n=8)[0]
    assert row["task"] == "ioi" and row["acc_argmax"] == task_accuracy(gemma_nnsight, ioi_examples(gemma_nnsight, 8),
                                                                        "argmax")


@pytest.mark.real
def test_gemma_conflicts_known_only(gemma_nnsight):
    conflicts = conflict_set(gemma_nnsight, known_only=True)
    assert len(conflicts.facts) >= 50 and knows(gemma_nnsight, conflicts).all()
    rates = conflict_rates(gemma_nnsight, conflicts)
    assert all(0.0 <= v <= 1.0 for v in rates.values()) and rates["knows_candidates"] == 1.0
    # the aligned negatives answer memory: the context object there is the memory object
    assert task_accuracy(gemma_nnsight, conflicts.examples, "beats_wrong") < 0.9


@pytest.mark.real
def test_qwen_docstring_and_conflict(qwen_nnsight):
    ex = docstring_examples(qwen_nnsight, 16, 0)
    assert task_accuracy(qwen_nnsight, ex, "argmax") >= 0.9
    conflicts = conflict_set(qwen_nnsight, 24, 0, known_only=True)
    assert conflict_rates(qwen_nnsight, conflicts)["follows_context"] >= 0.7
    # answer = memory under a contradicting context is a task qwen does not "solve": refused, not scored
    with pytest.raises(MechkitError, match="solves only"):
        check_solvable(qwen_nnsight, conflicts.examples, min_accuracy=0.5, criterion="beats_wrong")
