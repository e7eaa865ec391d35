"""Training native models: task data, checkpoints with metrics, exact resume after a kill, refusals, the CLI."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run

import mechkit
from mechkit.errors import MechkitError, OutputPathError
from mechkit.native.checkpoint import load_checkpoint
from mechkit.native.data import task_data
from mechkit.native.train import STATE, TrainConfig, train

train_module = importlib.import_module("mechkit.native.train")

SMALL = dict(mixers=("delta_net",), d_model=16, d_head=16, chunk_size=8, seq_len=16, kv_pairs=2, vocab_size=16,
             n_train=64, n_test=16, steps=6, eval_every=3, batch_size=8, warmup_steps=2)


@pytest.mark.parametrize("task", ["mqar", "induction", "regbench"])
def test_task_data_labels_score_perfectly(task):
    data = task_data(TrainConfig(out="unused", task=task, **{**SMALL, "seq_len": 40, "n_train": 8, "n_test": 8}))
    assert data.train_tokens.shape == (8, 40) and data.test_labels.shape == (8, 40)
    assert data.accuracy(data.test_labels.clamp(min=0)) == 1.0
    assert int(data.train_tokens.max()) < data.vocab_size


def test_induction_data_repeats_and_labels_the_second_half():
    data = task_data(TrainConfig(out="unused", task="induction", **{**SMALL, "seq_len": 12}))
    tokens, labels = data.train_tokens, data.train_labels
    assert torch.equal(tokens[:, :6], tokens[:, 6:])
    assert (labels[:, :6] == -100).all() and (labels[:, -1] == -100).all()
    assert torch.equal(labels[:, 6:-1], tokens[:, 7:])


def test_train_writes_a_checkpoint_with_metrics(tmp_path):
    out = train(TrainConfig(out=str(tmp_path / "run"), task="induction", **SMALL), verbose=False)
    saved = json.loads((out / "config.json").read_text())
    assert saved["finished"] and saved["train"]["task"] == "induction" and not (out / STATE).exists()
    metrics = saved["metrics"]
    assert [h["step"] for h in metrics["history"]] == [3, 6] and 0 <= metrics["test_accuracy"] <= 1
    assert metrics["tokens_per_second"] > 0 and saved["state_sizes"] == [16 * 16]
    subject = mechkit.load(f"native:{out}")
    assert subject.n_layers == 1 and subject.tokenizer.decode([3]) == "3"
    modified = (out / "model.safetensors").stat().st_mtime_ns
    train(TrainConfig(out=str(out), task="induction", **SMALL), verbose=False)  # finished: returned as is
    assert (out / "model.safetensors").stat().st_mtime_ns == modified


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = TrainConfig(out=str(tmp_path / "killed"), **SMALL)
    save = train_module._save

    def save_then_die(*args, finished, **kwargs):
        save(*args, finished=finished, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, verbose=False)
    assert (tmp_path / "killed" / STATE).is_file()
    monkeypatch.setattr(train_module, "_save", save)
    resumed = load_checkpoint(train(config, verbose=False))
    straight = load_checkpoint(train(TrainConfig(**{**config.__dict__, "out": str(tmp_path / "straight")}),
                                     verbose=False))
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), name
    history = json.loads((tmp_path / "killed" / "config.json").read_text())["metrics"]["history"]
    assert [h["step"] for h in history] == [3, 6]


def test_runs_that_cannot_be_resumed_are_refused(tmp_path):
    out = train(TrainConfig(out=str(tmp_path / "run"), **SMALL), verbose=False)
    with pytest.raises(OutputPathError, match="other settings"):
        train(TrainConfig(out=str(out), **{**SMALL, "lr": 0.1}), verbose=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(OutputPathError, match="non-empty directory"):
        train(TrainConfig(out=str(tmp_path / "other"), **SMALL), verbose=False)
    with pytest.raises(OutputPathError, match="is a file"):
        train(TrainConfig(out=str(tmp_path / "other" / "notes.txt"), **SMALL), verbose=False)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        pytest.param({"task": "copying"}, "unknown task", id="unknown-task"),
        pytest.param({"mixers": ("mamba",)}, "mamba", id="unknown-mixer"),
        pytest.param({"steps": 0}, "steps must be at least 1", id="no-steps"),
        pytest.param({"kv_pairs": 5}, "need seq_len >= 20", id="mqar-too-many-pairs"),
    ],
)
def test_bad_settings_are_refused_before_any_data(tmp_path, kwargs, fragment):
    with pytest.raises(MechkitError, match=fragment):
        train(TrainConfig(out=str(tmp_path / "run"), **{**SMALL, **kwargs}), verbose=False)
    assert not (tmp_path / "run").exists()


def test_cli_train(tmp_path):
    args = ["train", "--task", "mqar", "--mixer", "linear,softmax", "--d-model", "16", "--seq-len", "16",
            "--kv-pairs", "2", "--vocab", "16", "--n-train", "16", "--n-test", "8", "--steps", "2",
            "--eval-every", "1", "--batch-size", "4", "--quiet", "--out"]
    result = run(*args, str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.out
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["mixers"] == ["linear", "softmax"]
    assert_one_line_error(run(*args, str(tmp_path / "bad"), "--layers", "3"), "--mixer lists 2 layers")
    assert_one_line_error(run(*args[:4], "mamba", *args[5:], str(tmp_path / "bad")), "mamba")
