"""Needle-in-a-haystack task data for the retrieval-head probe (Wu et al. 2024 setup; pure data, no model runs).

Needles are sentences with a question and an answer span; haystacks are long offline texts; a `Trial` is one
prompt of an exact token length with the needle at a given depth and exact token spans of needle and answer.
Lengths are in tokens of the subject's tokenizer; depths are percentages of the haystack's characters.
"""

from __future__ import annotations

import bisect
import re
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from mechkit.errors import ContextTooLongError, MechkitError
from mechkit.jsonl import read_jsonl

QUESTION_TEMPLATE = "Based on the content of the book, Question: {question}\nAnswer:"
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_FIELDS = ("needle", "question", "answer")


@dataclass(frozen=True)
class Needle:
    """A sentence to hide, the question about it, and the answer (a substring of the sentence; its first
    occurrence is the span to retrieve)."""

    needle: str
    question: str
    answer: str

    def __post_init__(self):
        if not self.needle.strip() or not self.question.strip():
            raise MechkitError(f"needle {self.needle!r} needs a non-empty sentence and question")
        if self.answer not in self.needle:
            raise MechkitError(f"answer {self.answer!r} is not a substring of needle {self.needle!r}; "
                               "copy the answer verbatim from the needle sentence")


def load_needles(path) -> list[Needle]:
    """Needles from a UTF-8 JSONL file: one object per line with string fields needle, question, answer."""
    needles, need = [], "one JSON object per line with fields " + ", ".join(_FIELDS)
    for _, where, record in read_jsonl(path, "needles file", f"write {need}"):
        missing = [f for f in _FIELDS if not isinstance(record, dict) or not str(record.get(f) or "").strip()]
        if missing:
            raise MechkitError(f"{where} is missing field {missing[0]!r}; write {need} (non-empty strings)")
        try:
            needles.append(Needle(str(record["needle"]), str(record["question"]), str(record["answer"])))
        except MechkitError as err:
            raise MechkitError(f"{where}: {err}") from None
    if not needles:
        raise MechkitError(f"needles file {path} is empty; write {need}")
    return needles


BUILTIN_NEEDLES: tuple[Needle, ...] = tuple(load_needles(resources.files("mechkit") / "data" / "needles.jsonl"))
_NEEDLE_SETS = {"a": slice(0, 3), "b": slice(3, 6), "all": slice(None)}


def needle_set(name: str) -> list[Needle]:
    """Built-in needles: "a" (first three), "b" (last three, disjoint from "a") or "all" (six)."""
    if name not in _NEEDLE_SETS:
        raise MechkitError(f"unknown needle set {name!r}; use one of {', '.join(_NEEDLE_SETS)}")
    return list(BUILTIN_NEEDLES[_NEEDLE_SETS[name]])


def passkey_needle(seed: int) -> Needle:
    """The Landmark Attention pass-key needle with a 5-digit key drawn from `numpy.random.default_rng(seed)`."""
    key = int(np.random.default_rng(seed).integers(10_000, 100_000))
    return Needle(f"The pass key is {key}. Remember it. {key} is the pass key.", "What is the pass key?", str(key))


# --- haystacks ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Haystack:
    """A long text; `repeats=True` means it may be repeated to reach any length."""

    name: str
    text: str
    license: str
    repeats: bool = False


_CODE_CHARS = set("()[]{}=<>|\\#@$%^~`+")
_CODE_MARKS = (">>>", "::", "+--", "|")
_LABEL = re.compile(r"^(note|warning|see also|examples?|tip|important|caution):$", re.I)
_SENTENCE_END = re.compile(r"[.!?][\"”’')]?(?=\s|$)")


def _prose(text: str) -> list[str]:
    """Prose paragraphs of one rendered reST topic: literal blocks, grammar, tables and code-heavy text dropped."""
    out, literal_indent, previous = [], None, None
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        indent = min(len(line) - len(line.lstrip()) for line in lines)
        if literal_indent is not None and indent >= literal_indent:
            continue  # still inside a literal (code) block
        literal_indent = None
        joined = " ".join(" ".join(lines).split())
        if previous and previous[1].endswith(":") and not _LABEL.match(previous[1]) and indent > previous[0]:
            literal_indent = indent  # an indented block after "...:" is code or grammar
            continue
        previous = (indent, joined)
        para = re.sub(r"^(\* |\d{1,2}\. |\([a-z0-9]\) )", "", joined)  # list markers
        para = re.sub(r"\*\*?([^*\s][^*]*?)\*\*?", r"\1", para)  # *emphasis*, **strong**
        para = re.sub(r"\s*\[\d+\]", "", para)  # footnote references
        para = re.sub(r"(\w)- (\w)", r"\1-\2", para)  # hyphens split by line wrapping
        ends = list(_SENTENCE_END.finditer(para))
        para = para[:ends[-1].end()] if ends else ""  # drop a trailing clause that introduced code
        if (len(para) < 80 or len(para.split()) < 12 or para.startswith(("Changed in", "Added in", "Deprecated"))
                or any(mark in para for mark in _CODE_MARKS)
                or sum(c in _CODE_CHARS for c in para) > 0.04 * len(para)):
            continue
        out.append(para)
    return out


@lru_cache(maxsize=1)
def builtin_haystack() -> Haystack:
    """Prose from the Python Language Reference shipped in CPython's `pydoc_data.topics` (sorted topics)."""
    from pydoc_data.topics import topics

    seen, paragraphs = set(), []
    for key in sorted(topics):
        for para in _prose(topics[key]):
            if para not in seen:
                seen.add(para)
                paragraphs.append(para)
    version = ".".join(map(str, sys.version_info[:3]))
    return Haystack(f"python-reference-{version}", "\n\n".join(paragraphs),
                    f"PSF-2.0 (Python Language Reference text from pydoc_data.topics, Python {version})")


def passkey_haystack() -> Haystack:
    """Landmark Attention's pass-key filler sentences, repeated to any length."""
    return Haystack("passkey-filler", PASSKEY_FILLER, "filler of the Landmark Attention pass-key task", True)


def read_haystack(path) -> Haystack:
    """A UTF-8 text file, or a directory whose `*.txt` files are joined in sorted name order."""
    path = Path(path)
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    try:
        text = "\n\n".join(file.read_text(encoding="utf-8").strip() for file in files)
    except (OSError, UnicodeDecodeError) as err:
        raise MechkitError(f"cannot read haystack {path} ({err}); pass a UTF-8 .txt file or a directory of them")
    if not text.strip():
        raise MechkitError(f"haystack {path} is empty; pass a UTF-8 text file or a directory of .txt files of prose")
    return Haystack(path.name, text.strip(), "user-supplied")


# --- trials ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One prompt; spans are [start, end) token indices into `input_ids` (BOS included when prepended)."""

    trial_id: str
    needle_index: int
    context_length: int  # requested, in tokens; len(input_ids) is at most this
    depth_percent: float
    needle: Needle
    prompt: str
    input_ids: list[int]
    answer_span: tuple[int, int]
    needle_span: tuple[int, int]


_PREPARED: dict = {}


def _prepared(tokenizer, haystack: Haystack, n_tokens: int) -> tuple[str, list[int]]:
    """(text, token end offsets in characters) of the haystack, tokenized once per (tokenizer, haystack)."""
    key = (id(tokenizer), haystack)
    _, text, ends = _PREPARED.get(key, (None, "", []))
    if not ends or (len(ends) < n_tokens and haystack.repeats):
        copies = 1
        while True:
            text = " ".join([haystack.text.strip()] * copies)
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            ends = [end for _, end in offsets]
            if not haystack.repeats or len(ends) >= n_tokens:
                break
            copies = max(2 * copies, int(copies * 1.1 * n_tokens / max(len(ends), 1)) + 1)
        if len(_PREPARED) >= 8:
            _PREPARED.pop(next(iter(_PREPARED)))
        _PREPARED[key] = (tokenizer, text, ends)  # the tokenizer reference keeps its id from being reused
    return text, ends


def _render(tokenizer, context: str, question: str, chat: bool) -> tuple[str, int]:
    """(prompt, character offset of the context inside it)."""
    if not chat:
        return context + "\n\n" + QUESTION_TEMPLATE.format(question=question), 0
    content = "<book>" + context + "</book>\n" + QUESTION_TEMPLATE.format(question=question)
    if not getattr(tokenizer, "chat_template", None):
        raise MechkitError("the tokenizer has no chat template; build trials with chat=False for a base model")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                           add_generation_prompt=True)
    return prompt, prompt.index(content) + len("<book>")


def _insert(hay: str, needle: str, depth_percent: float) -> tuple[str, int]:
    """(context, character offset of the needle): the needle goes to the last sentence start at or before depth."""
    if depth_percent >= 100:
        position = len(hay)
    else:
        starts = [0] + [m.end() for m in re.finditer(r"[.!?][\"”’')]?\s+", hay)]
        position = starts[bisect.bisect_right(starts, round(depth_percent / 100 * len(hay))) - 1]
    before, after = hay[:position], hay[position:]
    before += " " if before and not before[-1].isspace() else ""
    after = (" " if after and not after[0].isspace() else "") + after
    return before + needle + after, len(before)


def _span(offsets, start: int, end: int) -> tuple[int, int]:
    """Token indices [first, last + 1) of the tokens overlapping characters [start, end)."""
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def build_trial(tokenizer, haystack: Haystack, needle: Needle, context_length: int, depth_percent: float, *,
                prepend_bos: bool, chat: bool, needle_index: int = 0) -> Trial:
    """One trial whose prompt has at most `context_length` tokens (a few below at most), needle at the depth."""
    if not 0 <= depth_percent <= 100:
        raise MechkitError(f"depth {depth_percent} is outside 0..100; pass depths as percentages")
    bos = [tokenizer.bos_token_id] if prepend_bos and not chat else []  # chat templates carry their own
    if None in bos:
        raise MechkitError("the tokenizer has no BOS token; build trials with prepend_bos=False")

    def encode(hay: str):
        context, needle_at = _insert(hay, needle.needle, depth_percent)
        prompt, context_at = _render(tokenizer, context, needle.question, chat)
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        return prompt, context_at + needle_at, enc["input_ids"], enc["offset_mapping"]

    overhead = len(bos) + len(encode("")[2])
    if overhead >= context_length:
        raise MechkitError(f"context length {context_length} leaves no room for a haystack: the prompt without "
                           f"it already has {overhead} tokens; pass larger --lengths")
    text, ends = _prepared(tokenizer, haystack, context_length - overhead + 8)
    if len(ends) < context_length - overhead:
        raise MechkitError(f"haystack {haystack.name!r} has only {len(ends)} tokens, too short for a "
                           f"{context_length}-token prompt; pass a longer --haystack or smaller --lengths")
    n_hay, best, tried = context_length - overhead, None, set()
    while n_hay not in tried and len(tried) < 10:  # seams can merge or split a token or two: adjust, retry
        tried.add(n_hay)
        built = encode(text[:ends[n_hay - 1]].rstrip() if n_hay else "")
        total = len(bos) + len(built[2])
        if total <= context_length and (best is None or total > best[0]):
            best = (total, built)
        n_hay = max(0, min(len(ends), n_hay + context_length - total))
    if best is None:
        raise MechkitError(f"could not fit a prompt into {context_length} tokens; pass larger --lengths")
    prompt, needle_at, ids, offsets = best[1]
    shift = len(bos)
    answer_at = needle_at + needle.needle.index(needle.answer)
    a0, a1 = _span(offsets, answer_at, answer_at + len(needle.answer))
    n0, n1 = _span(offsets, needle_at, needle_at + len(needle.needle))
    if a1 == a0 or not needle.answer.strip():
        raise MechkitError(f"the answer of needle {needle.needle!r} tokenizes to nothing; give it a non-empty answer")
    decoded = tokenizer.decode(ids[a0:a1])
    if "".join(needle.answer.split()) not in "".join(decoded.split()):
        raise MechkitError(f"answer tokens decode to {decoded!r}, not {needle.answer!r}; the tokenizer's "
                           "offset mapping is unusable, use a fast tokenizer")
    return Trial(f"{needle_index}-{context_length}-{depth_percent:g}", needle_index, context_length, depth_percent,
                 needle, prompt, bos + list(ids), (a0 + shift, a1 + shift), (n0 + shift, n1 + shift))


def check_lengths(lengths: Sequence[int], context_length: int, model_id: str) -> None:
    """Raise ContextTooLongError when a requested length (tokens) exceeds the model's context window."""
    if max(lengths) > context_length:
        raise ContextTooLongError(f"length {max(lengths)} exceeds the {context_length}-token context of "
                                  f"{model_id}; pass --lengths of at most {context_length}")
    if min(lengths) <= 0:
        raise MechkitError(f"lengths {list(lengths)} must be positive token counts; pass e.g. --lengths 1000:8000:8")


def trial_grid(lengths: Sequence[int], depths: Sequence[float], needles: Sequence) -> list[tuple[int, int, float]]:
    """(needle_index, length, depth) for every combination, ordered by needle, then length, then depth."""
    return [(i, length, depth) for i in range(len(needles)) for length in lengths for depth in depths]


def parse_grid(spec: str) -> list[int]:
    """"start:stop:count" (inclusive, evenly spaced, rounded, deduplicated) or "a,b,c" as a list of ints."""
    forms = 'use "start:stop:count" (e.g. "1000:8000:8", "0:100:10") or a comma list (e.g. "1000,2000")'
    try:
        if ":" in spec:
            start, stop, count = (int(part) for part in spec.split(":"))
            if count < 1:
                raise ValueError
            values = [int(v) for v in np.round(np.linspace(start, stop, count))]
        else:
            values = [int(part) for part in spec.split(",")]
    except ValueError:
        raise MechkitError(f"cannot parse grid {spec!r}; {forms}") from None
    return list(dict.fromkeys(values))


def rouge1_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall: clipped unigram overlap / reference unigrams, over lowercase alphanumeric words.

    The same tokenization and recall as the `rouge_score` package (no stemming) used by the paper.
    """
    ref, pred = (Counter(re.findall(r"[a-z0-9]+", text.lower())) for text in (reference, prediction))
    return sum((ref & pred).values()) / sum(ref.values()) if ref else 0.0
