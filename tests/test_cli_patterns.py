"""`mechkit find-induction-heads` and `find-ngram-heads` on tiny:llama: files, summary lines, one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from cli_helpers import assert_one_line_error, run
from mechkit.cli import retrieval as cli_retrieval
from mechkit.scores import HeadScores

INDUCTION_METRICS = ("previous_token", "duplicate_token", "induction", "prefix_matching", "copying")


@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli_retrieval, "load", refuse)


def test_find_induction_heads_writes_every_file(tmp_path):
    out = tmp_path / "ind"
    result = run("find-induction-heads", "--model", "tiny:llama", "--seq-len", "10", "--sequences", "2",
                 "--prefix-len", "8", "--ablate", "2", "--draws", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "induction (uniform attention" in result.out and "ablation (loss on the repeated half" in result.out
    for metric in INDUCTION_METRICS:
        scores = HeadScores.from_json(out / f"{metric}.json")
        assert not scores.scores.isnan().any()
        assert scores.metric == metric and scores.config["seq_len"] == 10 and scores.config["backend"] == "nnsight"
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["metric"] for r in rows} == set(INDUCTION_METRICS) and len(rows) == 5 * scores.n_layers * scores.n_heads
    ablation = json.loads((out / "ablation.json").read_text())
    assert [r["kind"] for r in ablation["records"]] == ["none", "top", "random", "random"]
    summary = json.loads((out / "summary.json").read_text())
    assert {r["metric"] for r in summary["records"]} == set(INDUCTION_METRICS)
    page = (out / "dashboard.html").read_text()
    assert "<script src=" not in page and page.count("plotly-graph-div") >= 6


def test_find_ngram_heads_on_a_text_file(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("abcabdabcabd xyz abcab\nthe cat sat. the cat ran. the cat sat.\n")
    out = tmp_path / "ng"
    result = run("find-ngram-heads", "--model", "tiny:llama", "--order", "1,2", "--data", str(texts),
                 "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert result.out.startswith("ngram_1 (uniform attention")
    assert HeadScores.from_json(out / "ngram_2.json").config["data_file"] == str(texts.resolve())


@pytest.mark.parametrize("args, fragments", [
    (("find-ngram-heads", "--order", "0,1"), ("orders",)),
    (("find-ngram-heads", "--data", "missing.txt"), ("neither regbench nor a text file",)),
    (("find-ngram-heads", "--sequences", "0"), ("--sequences",)),
    (("find-induction-heads", "--seq-len", "1"), ("seq_len",)),
    (("find-induction-heads", "--exclude-fraction", "0.6"), ("exclude_fraction",)),
    (("find-induction-heads", "--dtype", "int8"), ("int8",)),
])
def test_bad_options_fail_before_loading(no_load, tmp_path, args, fragments):
    assert_one_line_error(run(*args, "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_regbench_on_a_byte_tokenizer_is_refused(tmp_path):
    assert_one_line_error(run("find-ngram-heads", "--model", "tiny:llama", "--out", str(tmp_path / "o"), "--quiet"),
                          "one token per symbol")


@pytest.mark.browser
def test_induction_dashboard_renders_and_hovers(tmp_path, browser_page):
    out = tmp_path / "ind"
    result = run("find-induction-heads", "--model", "tiny:llama", "--seq-len", "10", "--sequences", "2",
                 "--prefix-len", "8", "--ablate", "1", "--draws", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    browser_page.open(out / "dashboard.html")
    # figure 2 is the induction heatmap (previous_token, duplicate_token, induction, ...): hover layer 1, head 2
    assert "L1H2" in browser_page.hover_text(2, 1, 2) and "induction" in browser_page.hover_text(2, 1, 2)
    assert not browser_page.errors and not browser_page.failed
    assert all(url.startswith("file://") for url in browser_page.requested)


def test_native_models_load_whatever_the_backend_default(tmp_path):
    """The command's default --backend (nnsight) does not apply to a native model: it loads on its own backend."""
    out = tmp_path / "native"
    result = run("find-induction-heads", "--model", "native:mqar-softmax", "--seq-len", "10", "--sequences", "2",
                 "--prefix-len", "8", "--ablate", "1", "--draws", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "native backend" in result.output
    assert HeadScores.from_json(out / "induction.json").config["backend"] == "native"
