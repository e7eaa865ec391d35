"""The shipped native zoo: every registered model loads, records its training, and scores what it recorded."""

from __future__ import annotations

import json

import pytest
import torch

import mechkit
from mechkit.native.data import task_data
from mechkit.native.train import TrainConfig
from mechkit.native.zoo import ZOO, list_zoo, zoo_dir
from mechkit.probes.induction import InductionConfig, find_induction_heads


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_loads_and_reproduces_its_recorded_accuracy(name):
    saved = json.loads((zoo_dir(name) / "config.json").read_text())
    assert saved["finished"] and saved["train"]["out"].endswith(name)
    assert f"--out mechkit/native/zoo/{name}" in ZOO[name].command
    subject = mechkit.load(f"native:{name}")
    smaller = {} if saved["train"]["task"] == "regbench" else {"n_train": 1, "n_test": 200}  # per-example seeds
    config = TrainConfig(**{**saved["train"], **smaller})
    data = task_data(config)
    with torch.no_grad():
        pred = subject.run_with_hooks(data.test_tokens).argmax(-1)
    recorded = saved["metrics"]["test_accuracy"]
    assert abs(data.accuracy(pred) - recorded) < 0.05, (data.accuracy(pred), recorded)


def test_zoo_is_listed_and_softmax_solves_mqar():
    assert all(m["shipped"] for m in list_zoo())
    saved = json.loads((zoo_dir("mqar-softmax") / "config.json").read_text())
    assert saved["metrics"]["test_accuracy"] >= 0.99


def test_probes_run_on_a_trained_recurrent_model():
    subject = mechkit.load("native:mqar-delta-net")
    result = find_induction_heads(subject, InductionConfig(seq_len=20, n_sequences=4, copying=False), verbose=False)
    assert torch.isfinite(result.scores["induction"].scores).all()
