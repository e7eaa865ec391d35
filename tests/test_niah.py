"""Needle-in-a-haystack task data: needles, haystacks, exact-length trials with exact spans, grids, ROUGE-1."""

from __future__ import annotations

import json
import re

import pytest

from mechkit import niah
from mechkit.errors import ContextTooLongError, MechkitError, ModelNotFetchedError
from mechkit.models.tiny import byte_tokenizer
from mechkit.niah import Haystack, Needle

TAIL = "\n\nBased on the content of the book, Question: {q}\nAnswer:"


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def hay():
    return niah.builtin_haystack()


# --- needles ----------------------------------------------------------------------------------------------------


def test_builtin_needles_are_six_distinct_multi_word_answers():
    needles = niah.BUILTIN_NEEDLES
    assert len(needles) == 6 and len({n.answer for n in needles}) == 6
    for needle in needles:
        assert needle.answer in needle.needle and len(needle.answer.split()) >= 3
    a, b = niah.needle_set("a"), niah.needle_set("b")
    assert len(a) == len(b) == 3 and not set(a) & set(b)
    assert a + b == niah.needle_set("all") == list(needles)
    assert needles[0].answer == "smoked paprika and a spoon of honey"
    with pytest.raises(MechkitError, match="unknown needle set 'c'"):
        niah.needle_set("c")


def test_load_needles_round_trip(tmp_path):
    path = tmp_path / "n.jsonl"
    rows = [{"needle": "The cat is called Tom Bombadil.", "question": "What is the cat called?",
             "answer": "Tom Bombadil"}, {"needle": "X is 7.", "question": "What is X?", "answer": "7"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    assert niah.load_needles(path) == [Needle(**rows[0]), Needle(**rows[1])]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"needle": "A b.", "question": "q", "answer": "b"}\n{"needle": "C d.", "question": "q"}\n',
         r"n\.jsonl, line 2 is missing field 'answer'"),
        ('{"needle": "A b.", "question": "q", "answer": "b"}\nnot json\n', r"line 2 is not valid JSON"),
        ('{"needle": "A b.", "question": "q", "answer": "zebra"}\n', r"line 1: answer 'zebra' is not a substring"),
        ('["needle"]\n', r"line 1 is missing field 'needle'"),
        ("\n\n", r"n\.jsonl is empty"),
    ],
    ids=["missing-field", "not-json", "answer-not-in-needle", "not-object", "empty"],
)
def test_load_needles_errors(tmp_path, content, match):
    path = tmp_path / "n.jsonl"
    path.write_text(content)
    with pytest.raises(MechkitError, match=match):
        niah.load_needles(path)


def test_needle_validates_answer():
    with pytest.raises(MechkitError, match="not a substring"):
        Needle("The sky is green.", "What colour is the sky?", "blue")


def test_passkey_needle_deterministic_per_seed():
    first, again, other = niah.passkey_needle(0), niah.passkey_needle(0), niah.passkey_needle(1)
    assert first == again and first != other
    assert len(first.answer) == 5 and first.answer.isdigit()
    assert first.needle == f"The pass key is {first.answer}. Remember it. {first.answer} is the pass key."
    assert len({niah.passkey_needle(seed).answer for seed in range(20)}) > 15


# --- haystacks --------------------------------------------------------------------------------------------------


def test_builtin_haystack_is_long_deterministic_prose(hay):
    assert len(hay.text) > 150_000 and "PSF" in hay.license and not hay.repeats
    for code in (">>>", "::=", "def ", "+---", "|"):
        assert code not in hay.text
    paragraphs = hay.text.split("\n\n")
    assert all(p.rstrip("\"”’')")[-1] in ".!?" and len(p) >= 80 for p in paragraphs)
    niah.builtin_haystack.cache_clear()
    assert niah.builtin_haystack().text == hay.text
    for needle in niah.BUILTIN_NEEDLES:  # answers cannot be read off the haystack
        assert needle.answer.lower() not in hay.text.lower()


def test_read_haystack_file_and_directory(tmp_path):
    (tmp_path / "b.txt").write_text("Second part.\n")
    (tmp_path / "a.txt").write_text("First part.\n")
    (tmp_path / "skip.md").write_text("Not a text file.")
    assert niah.read_haystack(tmp_path).text == "First part.\n\nSecond part."
    assert niah.read_haystack(tmp_path / "b.txt").text == "Second part."


@pytest.mark.parametrize("make", ["empty-file", "blank-file", "empty-dir"])
def test_read_haystack_empty(tmp_path, make):
    target = tmp_path / "hay.txt"
    if make == "empty-dir":
        target = tmp_path / "dir"
        target.mkdir()
    else:
        target.write_text("" if make == "empty-file" else "  \n\n ")
    with pytest.raises(MechkitError, match=r"haystack .* is empty; "):
        niah.read_haystack(target)


# --- trials on the byte tokenizer (one token per character) ------------------------------------------------------


@pytest.mark.parametrize("length", [300, 1000, 4000])
@pytest.mark.parametrize("depth", [0, 25, 50, 100])
def test_byte_trial_exact_length_and_spans(byte_tok, hay, length, depth):
    needle = niah.BUILTIN_NEEDLES[1]
    trial = niah.build_trial(byte_tok, hay, needle, length, depth, prepend_bos=True, chat=False, needle_index=1)
    ids = trial.input_ids
    assert length - 8 <= len(ids) <= length
    assert ids[0] == 1 and 1 not in ids[1:]  # one BOS, prepended
    assert byte_tok.decode(ids[1:]) == trial.prompt
    assert trial.prompt.endswith(TAIL.format(q=needle.question))
    assert byte_tok.decode(ids[slice(*trial.answer_span)]) == needle.answer
    assert byte_tok.decode(ids[slice(*trial.needle_span)]) == needle.needle
    assert trial.trial_id == f"1-{length}-{depth}" and trial.context_length == length


def test_byte_trial_depths(byte_tok, hay):
    needle = niah.BUILTIN_NEEDLES[0]
    trials = [niah.build_trial(byte_tok, hay, needle, 2000, d, prepend_bos=True, chat=False) for d in range(0, 101, 10)]
    first, last = trials[0], trials[-1]
    assert first.needle_span[0] == 1 and first.prompt.startswith(needle.needle + " ")
    assert byte_tok.decode(last.input_ids[last.needle_span[1]:]) == TAIL.format(q=needle.question)
    starts = [t.needle_span[0] for t in trials]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    for trial in trials[1:-1]:  # at the last sentence start at or before depth% of the haystack's characters
        at = trial.prompt.index(needle.needle)
        assert trial.prompt[at - 1].isspace() and trial.prompt[:at].rstrip()[-1] in ".!?\"”’')"
        haystack = trial.prompt[:at] + trial.prompt[at + len(needle.needle) + 1:-len(TAIL.format(q=needle.question))]
        target = round(trial.depth_percent / 100 * len(haystack))
        assert at <= target and not re.search(r"[.!?][\"”’')]?\s+", haystack[at:target])


def test_byte_trial_without_bos_and_passkey_repeats(byte_tok):
    needle = niah.passkey_needle(7)
    trial = niah.build_trial(byte_tok, niah.passkey_haystack(), needle, 3000, 50, prepend_bos=False, chat=False)
    assert 2992 <= len(trial.input_ids) <= 3000 and trial.input_ids[0] != 1
    assert trial.prompt.count(niah.PASSKEY_FILLER.split(".")[0]) > 20
    assert byte_tok.decode(trial.input_ids[slice(*trial.answer_span)]) == needle.answer


def test_byte_trial_chat_template(hay):
    tok = byte_tokenizer()
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    needle = niah.BUILTIN_NEEDLES[2]
    trial = niah.build_trial(tok, hay, needle, 1000, 0, prepend_bos=True, chat=True)
    assert trial.prompt.startswith("<u><book>" + needle.needle)
    assert trial.prompt.endswith("</book>\nBased on the content of the book, Question: "
                                 f"{needle.question}\nAnswer:</u><a>")
    assert 992 <= len(trial.input_ids) <= 1000 and trial.input_ids[0] != 1  # no BOS for chat
    assert trial.needle_span[0] == len("<u><book>")
    assert tok.decode(trial.input_ids[slice(*trial.answer_span)]) == needle.answer
    with pytest.raises(MechkitError, match="no chat template"):
        niah.build_trial(byte_tokenizer(), hay, needle, 1000, 0, prepend_bos=False, chat=True)


def test_trial_errors(byte_tok, hay):
    short = Haystack("tiny", "One sentence here. Another one there.", "test")
    with pytest.raises(MechkitError, match=r"haystack 'tiny' has only 37 tokens.*longer --haystack or smaller "):
        niah.build_trial(byte_tok, short, niah.BUILTIN_NEEDLES[0], 1000, 50, prepend_bos=True, chat=False)
    blank = Needle("Nothing to find here.", "What is there?", "")
    with pytest.raises(MechkitError, match=r"needle 'Nothing to find here\.' tokenizes to nothing"):
        niah.build_trial(byte_tok, hay, blank, 500, 50, prepend_bos=True, chat=False)
    with pytest.raises(MechkitError, match="leaves no room"):
        niah.build_trial(byte_tok, hay, niah.BUILTIN_NEEDLES[0], 100, 50, prepend_bos=True, chat=False)
    with pytest.raises(MechkitError, match="outside 0..100"):
        niah.build_trial(byte_tok, hay, niah.BUILTIN_NEEDLES[0], 500, 101, prepend_bos=True, chat=False)


def test_check_lengths():
    niah.check_lengths([1000, 8192], 8192, "smollm2-135m-instruct")
    with pytest.raises(ContextTooLongError, match=r"length 9000 exceeds .* smollm2.*at most 8192"):
        niah.check_lengths([1000, 9000, 8500], 8192, "smollm2-135m-instruct")
    with pytest.raises(MechkitError, match="positive"):
        niah.check_lengths([0, 100], 8192, "m")


# --- grids and scoring -------------------------------------------------------------------------------------------


def test_trial_grid_order():
    assert niah.trial_grid([100, 200], [0, 50], ["n0", "n1"]) == [
        (0, 100, 0), (0, 100, 50), (0, 200, 0), (0, 200, 50),
        (1, 100, 0), (1, 100, 50), (1, 200, 0), (1, 200, 50),
    ]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:100:10", [0, 11, 22, 33, 44, 56, 67, 78, 89, 100]),
        ("1000:8000:8", [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]),
        ("0:2:5", [0, 1, 2]),  # 0, 0.5, 1, 1.5, 2 rounded half-to-even, deduplicated
        ("500:500:1", [500]),
        ("1000,2000", [1000, 2000]),
        (" 50 , 10,50", [50, 10]),
        ("4096", [4096]),
    ],
)
def test_parse_grid(spec, expected):
    assert niah.parse_grid(spec) == expected


@pytest.mark.parametrize("spec", ["", "1:2", "1:2:0", "a:b:c", "1,,2", "1.5", "1:2:3:4"])
def test_parse_grid_errors(spec):
    with pytest.raises(MechkitError, match=r'"start:stop:count".*comma list'):
        niah.parse_grid(spec)


@pytest.mark.parametrize(
    "reference, prediction, expected",
    [
        ("smoked paprika and honey", "It is smoked paprika.", 2 / 4),
        ("Smoked-Paprika!", "smoked paprika", 1.0),
        ("the the cat", "the", 1 / 3),  # clipped: one "the" matched
        ("the cat", "the the the", 1 / 2),
        ("86556", "The pass key is 86556.", 1.0),
        ("", "anything", 0.0),
        ("a b", "", 0.0),
    ],
)
def test_rouge1_recall(reference, prediction, expected):
    assert niah.rouge1_recall(reference, prediction) == pytest.approx(expected)


# --- the real tokenizers ----------------------------------------------------------------------------------------


def _real_tokenizer(model_id):
    from transformers import AutoTokenizer

    import mechkit.models

    try:
        return AutoTokenizer.from_pretrained(mechkit.models.model_dir(model_id))
    except ModelNotFetchedError:
        pytest.skip(f"{model_id} is not fetched: run `mechkit models fetch {model_id}`")


@pytest.mark.real
@pytest.mark.parametrize("model_id", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_real_tokenizer_trials(hay, model_id):
    from mechkit.models.registry import get_spec

    tok, spec = _real_tokenizer(model_id), get_spec(model_id)
    needles = [*niah.BUILTIN_NEEDLES, niah.passkey_needle(0)]
    for index, needle in enumerate(needles):
        for depth in (0, 50, 100):
            trial = niah.build_trial(tok, hay, needle, 2000, depth, prepend_bos=spec.prepend_bos, chat=spec.chat,
                                     needle_index=index)
            ids = trial.input_ids
            assert 1992 <= len(ids) <= 2000
            assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # BOS (or the template's) once
            assert needle.answer in tok.decode(ids[slice(*trial.answer_span)])
            assert tok.decode(ids[trial.answer_span[0] + 1:trial.answer_span[1]]).strip() in needle.answer
            assert needle.needle in tok.decode(ids[slice(*trial.needle_span)])
            before = tok.decode(ids[:trial.needle_span[0]])
            after = tok.decode(ids[trial.needle_span[1]:]).lstrip()
            if depth == 0:
                assert before.endswith("<book>") if spec.chat else before == tok.bos_token
            if depth == 100:
                assert after.startswith("</book>\nBased on" if spec.chat else "Based on the content")
    if spec.chat:
        assert trial.prompt.startswith(tok.bos_token) and trial.prompt.rstrip().endswith("assistant")
