"""`mechkit find-circuit` and `mechkit.circuits.find`: end to end on tracr and the planted circuit (known true
heads), the files it writes, bad input, and the dashboard in a browser."""

from __future__ import annotations

import csv
import json

import pytest
from cli_helpers import assert_one_line_error, assert_one_sentence, run

from mechkit.circuits.find import SCORE_KEYS, find_circuit, load_task_file, tracr_task, write_circuit_outputs
from mechkit.errors import MechkitError

pytest.importorskip("tracr")


@pytest.fixture(scope="module")
def sort_task():
    return tracr_task("sort")


@pytest.fixture(scope="module")
def sort_result(sort_task):
    return find_circuit(sort_task.subject, sort_task.examples(16), "patching", sort_task.true_heads, verbose=False)


def test_tracr_examples_are_exact_pairs(sort_task):
    examples = sort_task.examples(16, seed=1)
    assert len(examples) == 16 and examples.positives.attention_mask.all()  # one length, no padding
    assert (examples.answer_ids != examples.wrong_ids).all()
    assert (examples.positives.tokens != examples.negatives.tokens).sum(1).eq(1).all()  # one-token edits
    assert sort_task.examples(16, seed=1).positives.tokens.equal(examples.positives.tokens)


def test_patching_recovers_the_sort_heads_exactly(sort_result):
    # measured: L2H0 1.0, L1H0 0.67, padding head L0H0 ~3e-8 -> every ranking metric is exactly 1
    assert [h.label for h in sort_result.true_heads] == ["L1H0", "L2H0"]
    assert sort_result.accuracy == 1.0
    assert sort_result.metrics == {"roc_auc": 1.0, "best_f1": 1.0, "k": 2, "precision_at_k": 1.0,
                                   "recall_at_k": 1.0}
    assert sort_result.scores["L2H0"] == pytest.approx(1.0, abs=1e-4)


def test_eap_refuses_bidirectional_tracr_models(sort_task):
    with pytest.raises(MechkitError) as err:
        find_circuit(sort_task.subject, sort_task.examples(4), "eap", verbose=False)
    assert_one_sentence(err, "bidirectional", "--method atp")


def test_outputs_carry_provenance_and_tidy_records(sort_task, sort_result, tmp_path):
    paths = write_circuit_outputs(tmp_path, sort_result, sort_task.subject, {"task": "tracr:sort"}, seed=0)
    assert sorted(p.name for p in paths) == ["circuit.json", "dashboard.html", "scores.csv"]
    doc = json.loads((tmp_path / "circuit.json").read_text())
    assert doc["model"] == "tracr:sort" and doc["config"] == {"task": "tracr:sort"} and "schema_version" in doc
    assert doc["true_heads"] == ["L1H0", "L2H0"] and doc["ground_truth_metrics"]["roc_auc"] == 1.0
    assert [r["label"] for r in doc["records"]] == ["L0H0", "L1H0", "L2H0"]
    with open(tmp_path / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SCORE_KEYS and [r["is_true"] for r in rows] == ["False", "True", "True"]


@pytest.mark.parametrize("method, auc", [
    ("patching", 1.0),  # measured 1.000 (n 32, seed 0): the 10 circuit heads outscore the 6 others
    ("atp", 0.95),  # measured 0.967 / 0.983 (eap): margin 0.02-0.03
    ("eap", 0.95),
    ("sae", 0.6),  # measured 0.692: node codes are noisy with 32 pairs
])
def test_find_circuit_cli_on_the_planted_circuit(tmp_path, method, auc):
    out = tmp_path / method
    result = run("find-circuit", "--task", "planted", "--method", method, "--n", "32", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["model"] == "native:induction-attn-only" and doc["accuracy"] == 1.0
    assert doc["ground_truth_metrics"]["roc_auc"] >= auc, doc["ground_truth_metrics"]
    assert len(doc["true_heads"]) == 10
    assert (method in ("sae", "eap")) == bool(doc["edges"])
    assert "ROC-AUC" in result.out


def test_last_token_pooling_and_the_edge_score_on_the_planted_circuit(tmp_path):
    result = run("find-circuit", "--task", "planted", "--method", "sae", "--sae-pooling", "last", "--n", "32",
                 "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "circuit.json").read_text())
    assert doc["config"]["sae"]["pooling"] == "last"
    # measured (seed 0): node 0.950, edge-derived 1.000 (last pooling, 32 pairs; mean pooling: 0.692 / 0.892)
    assert doc["ground_truth_metrics"]["roc_auc"] >= 0.9
    assert doc["extra"]["edge_metrics"]["roc_auc"] >= 0.95
    assert "SAE edge-derived head score: ROC-AUC" in result.out


def test_reference_patching_scores_a_method_against_exhaustive_patching(tmp_path):
    """A task file on the planted model (no known circuit for a file task): the reference is the heads whose
    exhaustive-patching effect is at least the threshold, exactly as the API computes it."""
    from mechkit import load
    from mechkit.circuits.metrics import reference_heads
    from mechkit.circuits.planted import ZOO_MODEL, induction_examples

    subject = load(ZOO_MODEL)
    examples = induction_examples(subject, 16, seed=0)
    words = subject.tokenizer.decode
    task = tmp_path / "task.jsonl"
    lines = [json.dumps({"positive": words(p[m.bool()].tolist()), "negative": words(q[m.bool()].tolist()),
                         "answer": words([int(a)]), "wrong": words([int(w)])})
             for p, q, m, a, w in zip(examples.positives.tokens, examples.negatives.tokens,
                                      examples.positives.attention_mask, examples.answer_ids, examples.wrong_ids)]
    task.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run("find-circuit", "--task", str(task), "--model", ZOO_MODEL, "--method", "atp", "--reference",
                 "patching", "--n", "16", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "circuit.json").read_text())
    expected = reference_heads(find_circuit(subject, examples, "patching", verbose=False).scores, 0.05)
    assert doc["extra"]["reference"]["heads"] == doc["true_heads"] == [h.label for h in expected]
    assert doc["ground_truth_metrics"]["roc_auc"] >= 0.9  # AtP estimates patching closely on this model


def test_find_circuit_cli_on_tracr(tmp_path):
    result = run("find-circuit", "--task", "tracr:reverse", "--method", "atp", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    # reverse at the last position reads the first token (L3H0); the length head L0H0 is constant under
    # one-token edits, so scores 0: measured ROC-AUC 0.75 (L0H0 ties with the two padding heads)
    assert "ROC-AUC 0.750" in result.out and "top heads by |score|: L3H0 1" in result.out


def test_a_single_head_truth_is_noted_not_scored(tmp_path):
    result = run("find-circuit", "--task", "tracr:hist", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "circuit.json").read_text())
    assert doc["ground_truth_metrics"] is None and "covers 1 of the 1 scored heads" in doc["note"]


def _jsonl(path, *rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


ROW = {"positive": "the cat sat on the", "negative": "the dog sat on the", "answer": "m", "wrong": "h"}


def test_an_unsolvable_task_is_refused_with_its_accuracy(tmp_path):
    path = _jsonl(tmp_path / "task.jsonl", *[ROW] * 6)  # a random tiny model (byte tokens) never answers "m"
    out = tmp_path / "never"
    assert_one_line_error(run("find-circuit", "--task", str(path), "--model", "tiny:llama", "--out", str(out),
                              "--quiet"), "tiny:llama solves only 0.0% of the 6 positives", "min_accuracy 50%")
    assert not any(out.iterdir())
    warned = run("find-circuit", "--task", str(path), "--model", "tiny:llama", "--method", "atp",
                 "--allow-unsolvable", "--out", str(out), "--quiet")
    assert warned.exit_code == 0, warned.output
    assert "note: tiny:llama solves only 0.0%" in warned.out
    doc = json.loads((out / "circuit.json").read_text())
    assert doc["task"] == "task" and doc["accuracy"] == 0.0 and "solves only" in doc["note"]


def test_ioi_on_a_byte_level_model_is_refused_in_one_line(tmp_path):
    assert_one_line_error(run("find-circuit", "--task", "ioi", "--model", "tiny:llama", "--out", str(tmp_path),
                              "--quiet"), "IOI names are single tokens for tiny:llama")


@pytest.mark.parametrize("line, fragments", [
    ("{not json", ["line 2 is not valid JSON"]),
    (json.dumps({**ROW, "answer": 3}), ["line 2: field 'answer' must be a non-empty string"]),
    (json.dumps({k: v for k, v in ROW.items() if k != "wrong"}), ["line 2 has no field 'wrong'"]),
    (json.dumps({**ROW, "extra": "x"}), ["line 2 has unknown field(s) ['extra']"]),
    (json.dumps({**ROW, "wrong": "m"}), ["line 2: fields 'answer' and 'wrong' are both"]),
])
def test_a_malformed_task_file_line_is_named(tmp_path, line, fragments):
    path = _jsonl(tmp_path / "task.jsonl", ROW, line)
    with pytest.raises(MechkitError) as err:
        load_task_file(path)
    assert_one_sentence(err, str(path), *fragments)
    assert_one_line_error(run("find-circuit", "--task", str(path), "--model", "tiny:llama", "--out",
                              str(tmp_path / "o")), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (("--task", "tracr:nope"), ["unknown tracr program 'nope'", "reverse"]),
    (("--task", "tracr:sort", "--method", "sae", "--n", "4"), ["8 prompts", "--sae-examples 10"]),
    (("--task", "planted", "--method", "magic"), ["unknown circuit method 'magic'"]),
    (("--task", "planted", "--model", "gemma-3-270m"), ["brings its own model"]),
    (("--task", "no-such-task"), ["neither a built-in task"]),
    (("--task", "ioi", "--n", "0"), ["--n 0"]),
    (("--task", "ioi", "--min-accuracy", "2"), ["--min-accuracy 2.0"]),
    (("--task", "ioi", "--dtype", "float8"), ["float8"]),
    (("--task", "planted", "--sae-pooling", "max"), ["--sae-pooling 'max'", "mean, last"]),
    (("--task", "planted", "--reference", "patching"), ["--reference patching", "tracr / planted"]),
    (("--task", "ioi", "--method", "patching", "--reference", "patching"), ["--method patching"]),
    (("--task", "ioi", "--reference", "acdc"), ["--reference 'acdc'"]),
    (("--task", "ioi", "--method", "atp", "--reference", "patching", "--reference-threshold", "0"),
     ["--reference-threshold 0"]),
])
def test_bad_input_is_one_line_before_any_model_loads(tmp_path, args, fragments):
    out = tmp_path / "never"
    assert_one_line_error(run("find-circuit", *args, "--out", str(out)), *fragments)
    assert not out.exists()


def test_help_names_the_choices_and_defaults():
    result = run("find-circuit", "--help")
    assert result.exit_code == 0
    for fragment in ("tracr:<program>", "planted", "patching", "--sae-examples", "results/circuit"):
        assert fragment in result.out


@pytest.mark.browser
def test_circuit_dashboard_renders_and_hovers(tmp_path, browser_page):
    out = tmp_path / "eap"
    assert run("find-circuit", "--task", "planted", "--method", "eap", "--n", "16", "--out", str(out),
               "--quiet").exit_code == 0
    browser_page.open(out / "dashboard.html")
    assert browser_page.page.locator(".plotly-graph-div").count() == 3  # heatmap, head graph, ROC curve
    text = browser_page.hover_text(0, 1, 2)
    assert "L1H2" in text and "attribution_patching_qk" in text, text
    assert not browser_page.errors and not browser_page.failed
    assert all(url.startswith("file://") for url in browser_page.requested)
