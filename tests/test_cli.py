"""The `mechkit` command line: help, one-line errors with exit code 2 before any heavy work, and real runs."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mechkit
from mechkit.cli import analysis, app
from mechkit.cli import models as cli_models
from mechkit.evaluation import mean_losses
from mechkit.models import mechkit_home, write_manifest
from mechkit.results import PROVENANCE_KEYS

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GEMMA_LIKE_CONFIG = {
    "architectures": ["Gemma3ForCausalLM"], "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 1, "hidden_size": 16, "head_dim": 8, "intermediate_size": 32,
    "max_position_embeddings": 64, "vocab_size": 50, "sliding_window": 8,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
}


def run(*args: str, env: dict | None = None):
    """Invoke the app in-process with a wide terminal; output and stderr have ANSI codes stripped."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})
    result.out = ANSI.sub("", result.stdout)
    result.err = ANSI.sub("", result.stderr)
    return result


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.err.splitlines() if line.startswith("mechkit: error: ")]
    assert len(errors) == 1 and result.err.rstrip().endswith(errors[0]), result.err
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("The cat sat on the mat.\n\n   \nOne two three four five.\nHello world, again.\n")
    return path


@pytest.fixture
def no_load(monkeypatch):
    """Make loading a model fail loudly, to prove a check ran before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(analysis, "load", refuse)


# --- help ----------------------------------------------------------------------------------------------------------


def test_help_lists_commands_and_subcommands():
    top = run("--help")
    assert top.exit_code == 0
    for command in ("models", "loss", "dashboard"):
        assert command in top.out
    models = run("models", "--help")
    assert models.exit_code == 0
    for command in ("list", "fetch", "info", "path"):
        assert command in models.out


def test_no_arguments_shows_help():
    result = run()
    assert "Usage" in result.output and "loss" in result.output


def test_help_shows_defaults():
    out = run("loss", "--help").out
    for default in ("gemma-3-270m", "8", "cpu", "float32", "zero"):
        assert f"[default: {default}]" in out
    for option in ("--model", "--texts", "--ablate", "--ablate-mode", "--mask-uniform", "--batch-size", "--device",
                   "--dtype", "--out", "--quiet"):
        assert option in out
    assert "[default: 20]" in run("dashboard", "--help").out


# --- models ------------------------------------------------------------------------------------------------------


def test_models_list_shows_every_registered_model(home):
    result = run("models", "list")
    assert result.exit_code == 0
    header, *rows = result.out.strip().splitlines()
    assert header.split()[:2] == ["id", "fetched"]
    registered = [["gemma-3-270m", "no"], ["smollm2-135m-instruct", "no"], ["qwen2.5-coder-0.5b-instruct", "no"]]
    assert [row.split()[:2] for row in rows[:3]] == registered


def test_models_info_unknown_id_lists_known_ids(home):
    line = assert_one_line_error(run("models", "info", "gpt-17"), "'gpt-17'", "gemma-3-270m", "smollm2-135m-instruct")
    assert "Traceback" not in line


def test_models_info_not_fetched_says_how_to_fetch(home):
    assert_one_line_error(run("models", "info", "gemma-3-270m"), "`mechkit models fetch gemma-3-270m`")
    assert_one_line_error(run("models", "path", "gemma-3-270m"), "`mechkit models fetch gemma-3-270m`")
    assert not home.exists(), "looking a model up must not create or download anything"


def test_models_fetch_passes_force_and_quiet_and_prints_the_directory(monkeypatch, tmp_path):
    calls = []

    def fake_fetch(model_id, *, force=False, verbose=True):
        calls.append((model_id, force, verbose))
        return tmp_path / model_id

    monkeypatch.setattr(cli_models, "fetch", fake_fetch)
    result = run("models", "fetch", "gemma-3-270m", "--force", "--quiet")
    assert result.exit_code == 0 and result.out == f"{tmp_path / 'gemma-3-270m'}\n"
    assert run("models", "fetch", "smollm2-135m-instruct").exit_code == 0
    assert calls == [("gemma-3-270m", True, False), ("smollm2-135m-instruct", False, True)]


def _fake_cache(home: Path, model_id: str) -> Path:
    """A small but well-formed cache directory, as tests/test_models.py builds it."""
    directory = home / "models" / model_id
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(GEMMA_LIKE_CONFIG))
    (directory / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (directory / "tokenizer.json").write_text('{"fake": true}')
    write_manifest(directory, model_id=model_id)
    return directory


def test_models_info_and_path_on_a_valid_fake_cache(home):
    directory = _fake_cache(home, "gemma-3-270m")
    result = run("models", "info", "gemma-3-270m")
    assert result.exit_code == 0, result.output
    for line in ("layers: 3", "query heads: 4", "key/value heads: 1", "d_head: 8", "context length: 64",
                 "sliding window: 8", "sliding window layers: 0, 1", f"cache path: {directory}"):
        assert line in result.out.splitlines()
    assert re.search(r"^weights sha256: [0-9a-f]{64}$", result.out, re.MULTILINE)
    path = run("models", "path", "gemma-3-270m")
    assert path.exit_code == 0 and path.out == f"{directory}\n"


def test_models_info_on_a_truncated_cache_says_force(home):
    weights = _fake_cache(home, "gemma-3-270m") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert_one_line_error(run("models", "info", "gemma-3-270m"), "model.safetensors",
                          "mechkit models fetch gemma-3-270m --force")


def test_models_path_on_a_sha_mismatch_says_force(home):
    weights = _fake_cache(home, "gemma-3-270m") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF  # same size: only the full sha256 check (models path) sees it
    weights.write_bytes(bytes(data))
    assert_one_line_error(run("models", "path", "gemma-3-270m"), "sha256", "--force")


# --- loss: bad input fails before loading ------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--ablate", "--mask-uniform"])
@pytest.mark.parametrize("spec", ["banana", "L99", "L1H2,"])
def test_loss_malformed_head_spec_fails_before_loading(texts, no_load, option, spec):
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(texts), option, spec),
                          f"{option}: cannot read head spec", "L3H2")


def test_loss_head_outside_the_model_fails_after_loading(texts):
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(texts), "--ablate", "L99H0", "-q"),
                          "L99H0", "outside")


def test_loss_out_under_a_regular_file_fails_before_loading(texts, tmp_path, no_load):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(texts), "--out", str(blocker / "x")),
                          str(blocker / "x"), "--out")
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(texts), "--out", str(blocker)),
                          "not a directory")


def test_loss_unsupported_dtype_lists_supported_ones(texts, no_load):
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(texts), "--dtype", "int8"),
                          "'int8'", "float32", "float64", "float16", "bfloat16")


@pytest.mark.parametrize("content", ["", "\n  \n\n"], ids=["empty", "blank-lines"])
def test_loss_empty_texts_file_fails_before_loading(tmp_path, no_load, content):
    path = tmp_path / "empty.txt"
    path.write_text(content)
    assert_one_line_error(run("loss", "--model", "tiny:llama", "--texts", str(path)), str(path), "one text per line")


def test_loss_missing_texts_file_is_a_usage_error(tmp_path, no_load):
    result = run("loss", "--model", "tiny:llama", "--texts", str(tmp_path / "nope.txt"))
    assert result.exit_code == 2 and "nope.txt" in result.err


def test_a_bug_keeps_its_traceback(texts, monkeypatch):
    def bug(path):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(analysis, "read_texts", bug)
    result = run("loss", "--texts", str(texts))
    assert isinstance(result.exception, RuntimeError) and result.exit_code == 1
    assert "mechkit: error" not in result.err


def test_loss_unknown_model_is_a_one_line_error(texts):
    assert_one_line_error(run("loss", "--model", "gpt-17", "--texts", str(texts)), "'gpt-17'", "gemma-3-270m")


# --- loss: a real run on a tiny model ----------------------------------------------------------------------------


def test_loss_writes_losses_json_with_provenance(texts, tmp_path):
    out = tmp_path / "results" / "run1"
    result = run("loss", "--model", "tiny:llama", "--texts", str(texts), "--ablate", "L0H1,2-3",
                 "--mask-uniform", "L1H0", "--batch-size", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "batch" not in result.err and "mechkit:" not in result.err, "--quiet silences bars and info lines"
    assert "Moving model" not in result.output
    assert "texts: 3" in result.out and "clean loss:" in result.out and "change:" in result.out
    doc = json.loads((out / "losses.json").read_text())
    assert set(PROVENANCE_KEYS) <= set(doc)
    assert doc["model"] == "tiny:llama" and doc["mechkit_version"] == mechkit.__version__
    assert doc["config"]["ablate"] == "L0H1,L2H3" and doc["config"]["mask_uniform"] == "L1H0"
    assert doc["config"]["batch_size"] == 2 and doc["config"]["ablate_mode"] == "zero"
    records = doc["records"]
    assert [(r["line"], r["text"]) for r in records] == [
        (1, "The cat sat on the mat."), (4, "One two three four five."), (5, "Hello world, again."),
    ]
    for r in records:
        assert math.isfinite(r["clean_loss"]) and math.isfinite(r["loss"])
        assert r["delta"] == pytest.approx(r["loss"] - r["clean_loss"])
    assert any(abs(r["delta"]) > 1e-6 for r in records), "the interventions must change the loss"
    assert not [p.name for p in out.iterdir() if p.name != "losses.json"], "no temp files may remain"


def test_loss_without_interventions_shows_bars_unless_quiet(texts):
    result = run("loss", "--model", "tiny:llama", "--texts", str(texts))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "clean loss:" in result.out and "intervened" not in result.out
    assert "batch" in result.err and "mechkit: loading tiny:llama" in result.err


def test_mean_losses_do_not_depend_on_batch_size():
    subject = mechkit.load("tiny:llama")
    texts = ["a b", "The cat sat on the mat.", "xyz xyz xyz xyz xyz xyz", "Hello"]
    ablation = [mechkit.HeadAblation("L1H2")]
    alone = [mean_losses(subject, [t], ablation, verbose=False)[0] for t in texts]
    assert mean_losses(subject, texts, ablation, batch_size=3, verbose=False) == pytest.approx(alone, rel=1e-5)
    expected = torch.nanmean(subject.token_losses(texts[1:2], ablation), dim=-1).item()
    assert alone[1] == pytest.approx(expected, rel=1e-6)


# --- dashboard ---------------------------------------------------------------------------------------------------


def test_dashboard_is_self_contained(tmp_path):
    scores = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 10
    scores[0, 0] = math.nan
    path = tmp_path / "scores.json"
    mechkit.HeadScores(scores, metric="retrieval", model="tiny:llama", n_items=5, seed=0).to_json(path)
    html_path = tmp_path / "out" / "dash.html"
    result = run("dashboard", str(path), "--out", str(html_path), "--top", "5")
    assert result.exit_code == 0, (result.output, result.exception)
    page = html_path.read_text()
    from plotly.offline import get_plotlyjs

    assert get_plotlyjs()[:2000] in page, "plotly.js must be inlined"
    assert '<script src="http' not in page and not re.search(r"<script[^>]*\bsrc=", page)
    assert "L2H3" in page and "retrieval" in page and "Provenance" in page


def test_dashboard_on_a_file_that_is_not_head_scores(tmp_path):
    path = tmp_path / "nope.json"
    path.write_text('{"hello": 1}')
    assert_one_line_error(run("dashboard", str(path), "--out", str(tmp_path / "d.html")), "nope.json")
    assert not (tmp_path / "d.html").exists()


# --- the installed entry point -----------------------------------------------------------------------------------


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MECHKIT_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    ok = subprocess.run([sys.executable, "-m", "mechkit.cli", "--help"], capture_output=True, text=True, env=env,
                        timeout=120)
    assert ok.returncode == 0 and "loss" in ok.stdout and "models" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mechkit.cli", "models", "info", "gpt-17"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("mechkit: error: unknown model id 'gpt-17'") and bad.stderr.count("\n") == 1


# --- the real packaged models ------------------------------------------------------------------------------------


def _require_cached(model_id: str) -> None:
    if not (mechkit_home() / "models" / model_id / "manifest.json").is_file():
        pytest.skip(f"{model_id} is not in the cache {mechkit_home()}: run `mechkit models fetch {model_id}` first")


@pytest.mark.real
@pytest.mark.parametrize(("model_id", "expected"), [
    ("gemma-3-270m", ("layers: 18", "query heads: 4", "key/value heads: 1", "context length: 32768",
                      "sliding window: 512")),
    ("smollm2-135m-instruct", ("layers: 30", "query heads: 9", "key/value heads: 3", "context length: 8192",
                               "sliding window: none")),
])
def test_real_models_info(model_id, expected):
    _require_cached(model_id)
    result = run("models", "info", model_id)
    assert result.exit_code == 0, result.output
    lines = result.out.splitlines()
    for line in expected:
        assert line in lines
    assert re.search(r"^weights sha256: [0-9a-f]{64}$", result.out, re.MULTILINE)
