"""`mechkit find-retrieval-heads`, `validate-heads`, `attention-influence`: one-line errors (exit 2) before heavy
work, the output files, resuming a killed scan, and the masking experiment, on tiny:llama."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from cli_helpers import assert_one_line_error, run
from mechkit.cli import retrieval as cli_retrieval
from mechkit.probes import retrieval_io
from mechkit.probes.retrieval import RetrievalConfig, TrialOutcome
from mechkit.results import PROVENANCE_KEYS
from mechkit.scores import RECORD_KEYS, HeadScores
from mechkit.subject import Subject

# Short needles: the built-in ones do not fit tiny:llama's 256-byte context next to the question.
NEEDLES = [
    {"needle": "The secret code is blue moon.", "question": "What is the secret code?", "answer": "blue moon"},
    {"needle": "Tom keeps a red kite.", "question": "What does Tom keep?", "answer": "a red kite"},
]


@pytest.fixture
def needles(tmp_path):
    path = tmp_path / "needles.jsonl"
    path.write_text("".join(json.dumps(n) + "\n" for n in NEEDLES))
    return path


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli_retrieval, "load", refuse)


@pytest.fixture
def no_decode(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trials ran before the input was checked")

    monkeypatch.setattr(retrieval_io, "run_trials", refuse)


@pytest.fixture
def decodes(monkeypatch):
    """Counts greedy-decode calls (one per trial at batch size 1)."""
    calls = []
    original = Subject.greedy_decode

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Subject, "greedy_decode", counting)
    return calls


def scan(out, needles, *extra: str):
    return run("find-retrieval-heads", "-m", "tiny:llama", "--lengths", "120", "--depths", "0,100",
               "--max-new-tokens", "4", "--needles", str(needles), "--out", str(out), "-q", *extra)


def trial_lines(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


# --- help ----------------------------------------------------------------------------------------------------------


def test_help_lists_the_commands_and_the_expected_time():
    top = run("--help").out
    for command in ("find-retrieval-heads", "validate-heads", "attention-influence"):
        assert command in top
    text = run("find-retrieval-heads", "--help").out
    assert "45 trials" in text and "minutes" in text
    for default in ("500:2000:3", "0:100:5", "builtin", "nnsight", "results/retrieval", "2,4,8", "32", "0.1"):
        assert f"[default: {default}]" in text


# --- bad input: exit 2 before any heavy work ---------------------------------------------------------------------


def test_length_beyond_the_model_context(tmp_path, needles, no_decode):
    assert_one_line_error(scan(tmp_path / "out", needles, "--lengths", "300"), "300", "context", "tiny:llama")
    assert not (tmp_path / "out" / "trials.jsonl").exists()


def test_length_beyond_a_registered_model_context_fails_before_loading(tmp_path, no_load):
    result = run("find-retrieval-heads", "--lengths", "40000", "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "40000", "32768", "gemma-3-270m")


def test_length_beyond_a_user_haystack_names_its_token_count(tmp_path, needles, no_decode):
    small = tmp_path / "small.txt"
    text = "A short haystack. It has only a few sentences. Nothing more."
    small.write_text(text)
    result = scan(tmp_path / "out", needles, "--haystack", str(small), "--lengths", "250")
    assert_one_line_error(result, f"has only {len(text)} tokens", "--haystack", "--lengths")  # byte tokenizer


def test_empty_haystack_file(tmp_path, needles, no_load):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    assert_one_line_error(scan(tmp_path / "out", needles, "--haystack", str(empty)), str(empty), "empty")


def test_needles_line_missing_a_field_names_the_line(tmp_path, no_load):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(NEEDLES[0]) + "\n" + json.dumps({"needle": "x y", "answer": "x"}) + "\n")
    assert_one_line_error(scan(tmp_path / "out", path), "line 2", "'question'")


@pytest.mark.parametrize("answer, message", [(" ", "missing field 'answer'"), ("green sun", "not a substring")],
                         ids=["blank", "not-in-needle"])
def test_needle_answer_without_tokens_to_retrieve(tmp_path, no_load, answer, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**NEEDLES[0], "answer": answer}) + "\n")
    assert_one_line_error(scan(tmp_path / "out", path), "line 1", message)


@pytest.mark.parametrize("args, fragment", [
    (["--lengths", "1000:banana"], "--lengths: cannot parse grid"), (["--depths", "0,150"], "--depths"),
    (["--backend", "jax"], "--backend 'jax'"), (["--dtype", "int8"], "'int8'"), (["--needles", "c"], "--needles 'c'"),
    (["--validate", "--ks", "2,x"], "--ks: cannot parse grid"),
], ids=["lengths", "depths", "backend", "dtype", "needles", "ks"])
def test_malformed_options_fail_before_loading(tmp_path, needles, no_load, args, fragment):
    assert_one_line_error(scan(tmp_path / "out", needles, *args), fragment)


def test_unwritable_out_fails_before_loading(tmp_path, needles, no_load):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(scan(blocker / "out", needles), str(blocker / "out"), "--out")


# --- a tiny scan: files, resume, refusal of another configuration --------------------------------------------------


def test_scan_writes_the_four_files_and_resumes(tmp_path, needles, decodes, monkeypatch):
    out = tmp_path / "out"
    result = scan(out, needles)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "counted trials: " in result.out and " / 4" in result.out and "heads > 0.1:" in result.out
    assert sorted(p.name for p in out.iterdir()) == ["dashboard.html", "scores.csv", "scores.json", "trials.jsonl"]
    assert len(decodes) == 4  # 2 needles x 1 length x 2 depths

    doc = json.loads((out / "scores.json").read_text())
    config = RetrievalConfig("tiny:llama", (120,), (0, 100), str(needles.resolve()), "builtin", 4, 0.1, 0).to_dict()
    assert set(PROVENANCE_KEYS) <= set(doc) and doc["model"] == "tiny:llama" and doc["metric"] == "retrieval"
    assert doc["config"] == {**config, "backend": "nnsight", "device": "cpu", "dtype": "float32"}
    assert doc["shape"] == [3, 4] and len(doc["records"]) == 12 and set(doc["records"][0]) == set(RECORD_KEYS)
    with (out / "scores.csv").open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == RECORD_KEYS
    header, *records = trial_lines(out)
    assert header["kind"] == "header" and header["config"] == config
    assert sorted(r["trial_id"] for r in records) == ["0-120-0", "0-120-100", "1-120-0", "1-120-100"]
    assert all(set(r) == set(TrialOutcome.__dataclass_fields__) for r in records)
    page = (out / "dashboard.html").read_text()
    assert page.count('class="plotly-graph-div"') == 3 and "counted trials: " in page

    before = (out / "trials.jsonl").read_bytes()
    again = scan(out, needles)  # resume: nothing left to run, no line added
    assert again.exit_code == 0, (again.output, again.exception)
    assert (out / "trials.jsonl").read_bytes() == before and len(decodes) == 4

    cut = before[:-20]  # a kill in the middle of appending the last trial
    (out / "trials.jsonl").write_bytes(cut)
    resumed = scan(out, needles)
    assert resumed.exit_code == 0, (resumed.output, resumed.exception)
    assert len(decodes) == 5, "only the trial whose line was cut off runs again"
    ids = [r["trial_id"] for r in trial_lines(out)[1:]]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert (out / "trials.jsonl").read_bytes().count(b"\n") == before.count(b"\n")

    other = scan(out, needles, "--max-new-tokens", "3")
    assert_one_line_error(other, "trials.jsonl", "max_new_tokens", "rerun with the same arguments to resume",
                          "fresh --out")
    assert len(decodes) == 5


def test_scan_validate_writes_masking_curves(tmp_path, needles):
    out = tmp_path / "out"
    result = scan(out, needles, "--validate", "--ks", "1,2", "--draws", "2")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "masking (NIAH recall): none" in result.out and "k=2: top" in result.out
    doc = json.loads((out / "masking.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(doc)
    kinds = [(r["kind"], r["k"], r["draw"]) for r in doc["records"]]
    assert {kind for kind, _, _ in kinds} == {"none", "top", "random"}
    assert kinds.count(("none", 0, 0)) == 1 and len([k for k in kinds if k[0] == "random"]) == 4
    assert all(set(r) == set(retrieval_io.MASKING_KEYS) and 0 <= r["recall"] <= 1 for r in doc["records"])
    assert (out / "masking.csv").read_text().startswith("k,kind,draw,heads,recall\n")
    assert (out / "dashboard.html").read_text().count('class="plotly-graph-div"') == 4


def test_validate_too_many_ks_for_the_model(tmp_path, needles, no_decode):
    assert_one_line_error(scan(tmp_path / "out", needles, "--validate", "--ks", "7"), "--ks 7", "12 heads")


# --- validate-heads -------------------------------------------------------------------------------------------------


def write_scores(path, needles, values=None) -> None:
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 12 if values is None else values
    config = RetrievalConfig("tiny:llama", (120,), (0,), str(needles), "builtin", 4, 0.1, 0).to_dict()
    HeadScores(scores, metric="retrieval", model="tiny:llama", n_items=2, seed=0, config=config).to_json(path)


def test_validate_heads_from_a_scores_file(tmp_path, needles):
    write_scores(tmp_path / "scores.json", needles)
    out = tmp_path / "val"
    result = run("validate-heads", "--scores", str(tmp_path / "scores.json"), "--ks", "1,2", "--draws", "1",
                 "--out", str(out), "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in out.iterdir()) == ["dashboard.html", "masking.csv", "masking.json"]
    doc = json.loads((out / "masking.json").read_text())
    assert doc["config"]["lengths"] == [120] and doc["config"]["depths"] == [0] and doc["config"]["ks"] == [1, 2]
    top = {r["k"]: r["heads"] for r in doc["records"] if r["kind"] == "top"}
    assert top == {1: ["L2H3"], 2: ["L2H3", "L2H2"]}
    randoms = [r["heads"] for r in doc["records"] if r["kind"] == "random"]
    assert randoms and not {"L2H3", "L2H2"} & {h for heads in randoms for h in heads}


def test_validate_heads_refuses_a_file_without_scores(tmp_path, needles, no_load):
    write_scores(tmp_path / "scores.json", needles, torch.full((3, 4), math.nan, dtype=torch.float64))
    result = run("validate-heads", "--scores", str(tmp_path / "scores.json"), "--out", str(tmp_path / "val"))
    assert_one_line_error(result, "no head", "has a score")
    (tmp_path / "notscores.json").write_text('{"hello": 1}')
    result = run("validate-heads", "--scores", str(tmp_path / "notscores.json"), "--out", str(tmp_path / "val"))
    assert_one_line_error(result, "notscores.json", "not a head-scores JSON")


# --- attention-influence ----------------------------------------------------------------------------------------------


@pytest.fixture
def texts(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("The cat sat on the mat.\n\nOne two three four five six.\nabcabcabcabcabc\n")
    return path


def test_attention_influence_with_a_head_list(tmp_path, texts):
    out = tmp_path / "infl"
    result = run("attention-influence", "-m", "tiny:llama", "--heads", "L0H1,L2H3", "--texts", str(texts),
                 "--out", str(out), "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "heads masked: L0H1,L2H3" in result.out
    rows = [json.loads(line) for line in (out / "influence.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and sorted(r["index"] for r in rows) == [0, 1, 2]
    assert all(tuple(r) == retrieval_io.INFLUENCE_KEYS for r in rows)
    assert [r["influence"] for r in rows] == sorted((r["influence"] for r in rows), reverse=True)
    for r in rows:
        assert r["influence"] == pytest.approx((r["masked_loss"] - r["clean_loss"]) / r["clean_loss"])
    with (out / "influence.csv").open() as f:
        assert tuple(csv.DictReader(f).fieldnames) == retrieval_io.INFLUENCE_KEYS
    doc = json.loads((out / "influence.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(doc) and doc["config"]["heads"] == "L0H1,L2H3" and len(doc["records"]) == 3


def test_attention_influence_with_a_scores_file_and_top(tmp_path, texts, needles):
    write_scores(tmp_path / "scores.json", needles)
    out = tmp_path / "infl"
    result = run("attention-influence", "--heads", str(tmp_path / "scores.json"), "--top", "2", "--texts",
                 str(texts), "--out", str(out), "-q")
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((out / "influence.json").read_text())["config"]["heads"] == "L2H3,L2H2"


@pytest.mark.parametrize("extra, fragment", [(["--heads", "banana"], "neither a head-scores JSON"),
                                             (["--heads", "L0H1", "--top", "2", "--threshold", "0.1"], "not both"),
                                             (["--heads", "L0H1", "--top", "2"], "not a file")])
def test_attention_influence_bad_heads_fail_before_loading(tmp_path, texts, no_load, extra, fragment):
    result = run("attention-influence", "-m", "tiny:llama", "--texts", str(texts), "--out", str(tmp_path / "o"),
                 *extra)
    assert_one_line_error(result, fragment)


def test_attention_influence_threshold_selecting_nothing(tmp_path, texts, needles, no_load):
    write_scores(tmp_path / "scores.json", needles)
    result = run("attention-influence", "--heads", str(tmp_path / "scores.json"), "--threshold", "5",
                 "--texts", str(texts), "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "above threshold 5", "--top K")


# --- the figures (mechkit.viz.retrieval) ---------------------------------------------------------------------------


def test_recall_grid_means_over_needles_and_names_the_cell():
    from mechkit.viz import recall_grid

    outcomes = [TrialOutcome(f"{n}-{length}-{depth}", n, length, depth, length, "r", recall, recall > 0.5)
                for n, recall in ((0, 1.0), (1, 0.5)) for length in (200, 100) for depth in (0, 100)]
    trace = recall_grid(outcomes).data[0]
    assert list(trace.y) == ["100", "200"] and list(trace.x) == ["0", "100"]
    assert [list(row) for row in trace.z] == [[0.75, 0.75], [0.75, 0.75]] and trace.customdata[0][0] == "1 of 2"
    for fragment in ("length %{y} tokens", "depth %{x}%", "recall %{z"):
        assert fragment in trace.hovertemplate
    as_dicts = recall_grid([o.__dict__ for o in outcomes]).data[0]  # trials.jsonl records work too
    assert as_dicts.z == trace.z


def test_masking_figure_top_random_and_baseline():
    from mechkit.viz import masking_figure

    records = [{"k": 0, "kind": "none", "draw": 0, "heads": [], "recall": 0.9},
               {"k": 2, "kind": "top", "draw": 0, "heads": ["L1H1", "L0H0"], "recall": 0.2},
               {"k": 2, "kind": "random", "draw": 0, "heads": ["L0H1", "L0H2"], "recall": 0.8},
               {"k": 2, "kind": "random", "draw": 1, "heads": ["L0H3", "L0H2"], "recall": 0.6}]
    top, random, baseline = masking_figure(records).data
    assert list(top.x) == [2] and list(top.y) == [0.2]
    assert list(random.y) == [pytest.approx(0.7)] and list(random.error_y.array) == [pytest.approx(0.1)]
    assert "2 draws" in random.name and list(baseline.y) == [0.9, 0.9] and baseline.line.dash == "dash"
