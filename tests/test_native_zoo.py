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
from mechkit.probes.retrieval import retrieval_scores, run_trials
from mechkit.tasks import mqar


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


@pytest.mark.parametrize("name", ["mqar-softmax", "mqar-delta-net"])
def test_retrieval_probe_runs_on_the_zoo_through_implied_attention(name):
    """The retrieval-head probe, unchanged, on MQAR cut at a query: every counted trial copies the queried key's
    value, so some head's argmax lands on that value's slot in most trials."""
    subject = mechkit.load(f"native:{name}")
    config = mqar.MQARConfig(vocab_size=256, seq_len=128, n_kv_pairs=8, n_train=1, n_test=16, seed=0)
    trials = mqar.retrieval_trials(config, subject.tokenizer)
    for trial in trials:
        start, _ = trial.answer_span
        assert trial.input_ids[start - 1] == trial.input_ids[-1]  # the slot follows the queried key
        assert subject.tokenizer.decode([trial.input_ids[start]]) == trial.needle.answer
    outcomes = run_trials(subject, trials, max_new_tokens=1, batch_size=8, verbose=False, stops=())
    assert sum(o.counted for o in outcomes) >= 0.9 * len(trials)  # both models are >= 0.99 accurate on MQAR
    scores = retrieval_scores(subject, outcomes, {})
    assert scores.top(1)[0][1] >= 0.5
