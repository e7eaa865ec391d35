"""`mechkit conflict-heads` and its outputs: files written from the API result (hand-built conflict toy), one-line
refusals before any model is loaded, and a small end-to-end run on gemma-3-270m."""

from __future__ import annotations

import csv
import json

import pytest
from cli_helpers import assert_one_line_error, run
from test_conflict_heads import conflict_toy, toy_conflicts

from mechkit.circuits.conflict_heads import conflict_heads
from mechkit.circuits.conflict_io import summary_lines, write_conflict_outputs


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_outputs_hold_the_api_result(tmp_path):
    subject = conflict_toy(5.0, 3.0)
    result = conflict_heads(subject, k=1, ks=(1,), n_random=1, conflicts=toy_conflicts(), verbose=False)
    paths = write_conflict_outputs(tmp_path, result, subject, {"backend": "tl"})
    assert sorted(p.name for p in paths) == ["dashboard.html", "heads.csv", "pruning.csv", "summary.json"]
    heads = {row["label"]: row for row in _rows(tmp_path / "heads.csv")}
    assert heads["L0H0"]["kind"] == "memory" and heads["L0H1"]["kind"] == "context"
    assert float(heads["L0H0"]["score"]) == pytest.approx(float(result.scores.scores[0, 0]))
    pruning = _rows(tmp_path / "pruning.csv")
    assert {(r["kind"], r["k"]) for r in pruning} == {(r["kind"], str(r["k"])) for r in result.summary()}
    memory = next(r for r in pruning if r["kind"] == "memory")
    assert float(memory["follows_context"]) == 1.0  # pruning the only memory head leaves the context answer
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "toy:conflict" and summary["config"]["backend"] == "tl"
    assert [r["line"] for r in summary["records"]] == summary_lines(result)
    page = (tmp_path / "dashboard.html").read_text()
    assert "Memory vs context heads" in page and "follow the context after pruning" in page


@pytest.mark.parametrize("args,fragments", [
    (["--ks", "2,x"], ["--ks", "comma-separated integers"]),
    (["--ks", "0,2"], ["must be positive"]),
    (["--reference", "median"], ["--reference 'median'", "mean"]),
    (["--modes", "zero,half"], ["--modes", "zero, mean"]),
    (["--n", "0"], ["--n 0"]),
    (["--n-random", "-1"], ["--n-random -1"]),
])
def test_bad_options_are_refused_before_loading(tmp_path, args, fragments):
    out = tmp_path / "out"
    result = run("conflict-heads", "--model", "no-such-model", "--out", str(out), *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_malformed_facts_file_and_unwritable_out_are_refused(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"subject": "France"}\nnot json\n')
    out = tmp_path / "out"
    assert_one_line_error(run("conflict-heads", "--model", "no-such-model", "--facts", str(facts), "--out", str(out)),
                          str(facts), "line 2 is not valid JSON")
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run("conflict-heads", "--model", "no-such-model", "--out", str(blocker)), str(blocker))


@pytest.mark.real
def test_end_to_end_on_gemma(tmp_path):
    result = run("conflict-heads", "--model", "gemma-3-270m", "--backend", "nnsight", "--n", "8", "--k", "2",
                 "--ks", "2", "--n-random", "1", "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert "memory heads: " in result.out and "follows context" in result.out
    heads = _rows(tmp_path / "heads.csv")
    assert len(heads) == 18 * 4 and sum(row["kind"] == "memory" for row in heads) == 2
    pruning = {r["kind"]: float(r["follows_context"]) for r in _rows(tmp_path / "pruning.csv")}
    assert pruning["memory"] > pruning["context"]  # gemma: memory heads pruned -> more context-following
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["n"] == 8
