"""The whole binding analysis (`analyse_binding`), its files, `mechkit find-binding` and its dashboard."""

from __future__ import annotations

import csv
import json

import pytest
from binding_toys import TOY_TASK, toy_subject
from cli_helpers import assert_one_line_error, run

from mechkit.errors import MechkitError
from mechkit.probes.binding_io import (
    ACCURACY_KEYS,
    MECHANISM_KEYS,
    PROBE_KEYS,
    BindingConfig,
    analyse_binding,
    summary_lines,
    write_binding_outputs,
)
from mechkit.probes.binding_mechanisms import MECHANISMS

TINY = ("--model", "tiny:llama", "--task", "boxes", "--groups", "4", "--pairs", "12", "--accuracy-prompts", "8",
        "--probe-prompts", "10", "--all-pairs", "--quiet")


@pytest.fixture(scope="module")
def toy_analysis():
    subject = toy_subject("positional")
    config = BindingConfig(task=TOY_TASK, n_groups=6, n_pairs=60, accuracy_groups=(4, 6), accuracy_prompts=12,
                           probe_prompts=10)
    return subject, config, analyse_binding(subject, config, verbose=False)


def test_analysis_of_the_positional_toy(toy_analysis):
    _, _, analysis = toy_analysis
    assert [run.accuracy for run in analysis.accuracy.runs.values()] == [1.0, 1.0]
    assert analysis.mixing_layer == 2  # the layer carrying the pointer: every outcome there is positional
    assert analysis.interchange.shares()[2, MECHANISMS.index("positional")] == 1.0
    # a purely positional rule is a sharp Gaussian in the mixing model: held-out agreement near 1
    assert analysis.mixing is not None and analysis.mixing.fit.agreement > 0.99
    observed, predicted = analysis.mixing.held_out()
    assert observed.shape == predicted.shape == (len(analysis.mixing.fit.test_idx), 6)
    assert analysis.probe is not None and analysis.probe.accuracy.shape == (3,)
    lines = summary_lines(analysis)
    assert lines[1].startswith("interchange (6 groups, 60 of 60 pairs") and "positional 1.00" in lines[1]
    assert not analysis.warnings


def test_outputs_are_written_with_provenance(toy_analysis, tmp_path):
    subject, config, analysis = toy_analysis
    paths = write_binding_outputs(tmp_path, analysis, subject, config)
    assert sorted(p.name for p in paths) == sorted(p.name for p in tmp_path.iterdir()) == [
        "accuracy.csv", "dashboard.html", "mechanisms.csv", "mixing.json", "probe.csv", "summary.json"]
    for name, keys in (("accuracy.csv", ACCURACY_KEYS), ("mechanisms.csv", MECHANISM_KEYS),
                       ("probe.csv", PROBE_KEYS)):
        with open(tmp_path / name) as handle:
            assert tuple(csv.DictReader(handle).fieldnames) == keys
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "toy:positional" and summary["config"]["mixing_layer"] == 2
    assert summary["config"]["task"]["name"] == "toy" and summary["probe_role"] == "key"
    assert [r["line"] for r in summary["records"]] == summary_lines(analysis)
    mixing = json.loads((tmp_path / "mixing.json").read_text())
    assert {r["metric"] for r in mixing["records"]} >= {"w_pos", "agreement", "gate_k", "gate_i"}


def test_config_is_checked_before_any_model_runs():
    for config, fragment in [
        (BindingConfig(task="nope"), "unknown binding task"),
        (BindingConfig(n_groups=3), "outside 4..21"),
        (BindingConfig(query="nope"), "has no query 'nope'"),
        (BindingConfig(accuracy_groups=(1, 3)), "accuracy group count 1"),
        (BindingConfig(probe_role="colour"), "probe role 'colour'"),
        (BindingConfig(layers=(1, 2), mixing_layer=5), "mixing layer 5"),
        (BindingConfig(n_pairs=0), "at least 1"),
        (BindingConfig(probe_prompts=3), "fewer than the probe's 5 folds"),
    ]:
        with pytest.raises(MechkitError, match=fragment):
            config.check()


def test_find_binding_cli_writes_everything(tmp_path):
    out = tmp_path / "bind"
    result = run("find-binding", *TINY, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.out.splitlines()[0].startswith("task accuracy (boxes, box_of_object): 2 groups")
    assert "warning: tiny:llama answers" in result.out  # a random model cannot bind, and is told so
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.csv", "dashboard.html", "mechanisms.csv", "mixing.json", "probe.csv", "summary.json"]


def test_find_binding_help_names_the_defaults():
    result = run("find-binding", "--help")
    assert result.exit_code == 0
    for fragment in ("qwen2.5-coder-0.5b-instruct", "--groups", "--pairs", "--mixing-layer", "--all-pairs"):
        assert fragment in result.out


@pytest.mark.parametrize("args, fragments", [
    (("--task", "nope"), ["unknown binding task 'nope'"]),
    (("--groups", "3"), ["--groups 3 is outside 4..21"]),
    (("--accuracy-groups", "2,x"), ["--accuracy-groups '2,x' must be comma-separated integers"]),
    (("--layers", "0,99"), ["layers [0, 99]"]),
    (("--probe-role", "colour"), ["probe role 'colour'"]),
    (("--mixing-layer", "7"), ["mixing layer 7 is not among the patched layers of tiny:llama"]),
])
def test_find_binding_bad_input_is_one_line_and_writes_nothing(tmp_path, args, fragments):
    out = tmp_path / "never"
    result = run("find-binding", "--model", "tiny:llama", *args, "--out", str(out), "--quiet")
    assert_one_line_error(result, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_find_binding_reads_a_task_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"name": "x", "roles": {"a": ["p", "q"]}}\n')
    assert_one_line_error(run("find-binding", "--task-file", str(bad), "--out", str(tmp_path / "o")),
                          "line 1", "'queries' must be a list")
    good = tmp_path / "toy.json"
    good.write_text(json.dumps({"name": "toy", "roles": {"key": list("ABCDEF"), "value": list("123456")},
                                "clause": "{key}{value}", "separator": "",
                                "queries": [{"name": "v", "question": "{key}", "answer_role": "value"}]}))
    assert_one_line_error(run("find-binding", "--task-file", str(good), "--task", "other", "--out",
                              str(tmp_path / "o")), "--task 'other' is not in")
    result = run("find-binding", "--model", "tiny:llama", "--task-file", str(good), "--groups", "4", "--pairs", "8",
                 "--accuracy-prompts", "4", "--probe-prompts", "0", "--all-pairs", "--quiet", "--out",
                 str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["config"]["task"]["name"] == "toy"
    assert not (tmp_path / "o" / "probe.csv").exists()


@pytest.mark.browser
def test_binding_dashboard_renders_and_hovers(toy_analysis, tmp_path, browser_page):
    subject, config, analysis = toy_analysis
    write_binding_outputs(tmp_path, analysis, subject, config)
    browser_page.open(tmp_path / "dashboard.html")
    assert browser_page.page.locator(".plotly-graph-div").count() == 6
    # figure 2 is the positional share per layer (rows) and query position (columns): all 1.0 at layer 2
    text = browser_page.hover_text(2, 2, 3)
    assert "L2 position 3" in text and "positional: 1.00" in text, text
    assert not browser_page.errors and not browser_page.failed
    assert all(url.startswith("file://") for url in browser_page.requested)
