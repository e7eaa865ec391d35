"""The planted circuit of `native:induction-attn-only`: the model loads, its induction circuit is read from attention
and verified by ablation, its examples are minimal edits, and circuit-discovery methods are scored against it."""

from __future__ import annotations

import pytest
import torch

import mechkit
from mechkit.backends.native import NativeSubject
from mechkit.circuits.examples import task_accuracy
from mechkit.circuits.metrics import roc_auc
from mechkit.circuits.patching import circuit_faithfulness, head_patching
from mechkit.circuits.planted import ZOO_MODEL, induction_examples, planted_induction_circuit
from mechkit.circuits.sae_discovery import SAEDiscoveryConfig, discover_circuit_sae
from mechkit.errors import MechkitError
from mechkit.native import NativeConfig, NativeModel
from mechkit.native.zoo import zoo_dir

# Measured on the shipped weights (sha256 a682c44c...), default settings: previous-token share at value positions
# 0.953 (L0H0) and 0.970 (L0H7), every other layer-0 head <= 0.394; induction share at query positions 0.573-0.977
# in layer 1, <= 0.081 in layer 0.
TRUE_HEADS = ["L0H0", "L0H7"] + [f"L1H{h}" for h in range(8)]


@pytest.fixture(scope="module")
def subject():
    return mechkit.load(ZOO_MODEL)


@pytest.fixture(scope="module")
def circuit(subject):
    return planted_induction_circuit(subject, verbose=False)


@pytest.fixture(scope="module")
def examples(subject):
    return induction_examples(subject, 64, seed=0)


def test_zoo_model_is_a_tiny_two_layer_attention_only_model(subject):
    assert (subject.n_layers, subject.n_heads, subject.d_head) == (2, 8, 8)
    assert subject.config.mixers == ("softmax", "softmax") and subject.config.d_mlp == 0
    assert (zoo_dir("induction-attn-only") / "model.safetensors").stat().st_size < 1_000_000


def test_planted_circuit_is_read_from_attention_and_verified_by_ablation(circuit):
    """Measured: loss at the queries 0.012 nats (accuracy 0.998) intact, 5.605 (0.041, chance 1/32) with the
    circuit mean-ablated, 0.093 (0.978) with the six other heads ablated; layer 0's two heads alone 0.234, layer 1's
    eight heads alone 0.043."""
    assert circuit.labels == TRUE_HEADS
    previous, induction = circuit.previous_token.scores, circuit.induction.scores
    assert previous[0, [0, 7]].min() > 0.9 and previous[0, 1:7].max() < 0.45
    assert induction[1].min() > 0.5 and induction[0].max() < 0.1
    (full,), (ablated,), (kept,) = circuit.runs("none"), circuit.runs("circuit", None), circuit.runs("others", None)
    assert full["accuracy"] > 0.99 and full["loss"] < 0.05
    assert ablated["accuracy"] < 0.1 and ablated["loss"] > 4.0
    assert kept["heads"] == [f"L0H{h}" for h in range(1, 7)] and kept["accuracy"] > 0.95
    assert circuit.runs("circuit", 0)[0]["accuracy"] < 0.3 and circuit.runs("circuit", 1)[0]["accuracy"] < 0.1


def test_verification_refuses_circuits_that_are_not_the_planted_one(subject):
    with pytest.raises(MechkitError, match="layer-0 heads \\(L0H7\\)"):  # L0H0 still writes the previous token
        planted_induction_circuit(subject, previous_threshold=0.96, verbose=False)
    with pytest.raises(MechkitError, match="0 induction head"):
        planted_induction_circuit(subject, induction_threshold=0.99, verbose=False)
    untrained = NativeModel(NativeConfig(vocab_size=64, mixers=("softmax", "softmax"), n_heads=8, d_head=8,
                                         context_length=64), seed=0)
    with pytest.raises(MechkitError, match="recalls only"):
        planted_induction_circuit(NativeSubject(untrained, model_id="untrained"), previous_threshold=0.0,
                                  induction_threshold=0.0, verbose=False)


def test_examples_are_same_length_edits_that_break_recall(subject, examples):
    pos, neg = examples.positives, examples.negatives
    assert len(examples) == 64 and pos.attention_mask.min() == 0  # prompts end at different queries
    differ = (pos.tokens != neg.tokens).sum(-1)
    assert differ.tolist() == [1] * 64  # only the queried key's earlier copy is replaced
    half = len(subject.tokenizer) // 2
    assert (examples.answer_ids >= half).all() and (examples.wrong_ids >= half).all()  # both are values
    assert task_accuracy(subject, examples) == 1.0
    broken = type(examples)(examples.name, neg, neg, examples.answer_ids, examples.wrong_ids)
    assert task_accuracy(subject, broken) < 0.15  # measured 0.078


def test_patching_ranks_the_planted_heads_first(subject, examples, circuit):
    """Measured AUC 1.000: the circuit's lowest head (L1H3, 0.014) just above the best other head (L0H6, 0.012)."""
    result = head_patching(subject, examples, verbose=False)
    assert roc_auc(result.scores, circuit.heads) == 1.0
    assert {h.label for h, _ in result.scores.top(3)} == {"L0H0", "L0H7", "L1H2"}


def test_circuit_is_faithful(subject, examples, circuit):
    """Measured recovered share: 0.919 (mean ablation), 0.986 (resample)."""
    assert circuit_faithfulness(subject, examples, circuit.heads, verbose=False).recovered > 0.88
    assert circuit_faithfulness(subject, examples, circuit.heads, "resample", verbose=False).recovered > 0.95


def test_sae_discovery_against_the_planted_circuit(subject, examples, circuit):
    """Measured on seed 0: node AUC 0.850, edge-derived AUC 0.767 (seeds 0-9: node mean 0.853, edge mean 0.899),
    below the 0.95 target; ranking the heads by layer alone scores 0.900."""
    result = discover_circuit_sae(subject, examples, SAEDiscoveryConfig(seed=0), verbose=False)
    assert result.accuracy == 1.0
    assert roc_auc(result.node, circuit.heads) >= 0.80
    assert roc_auc(result.edge, circuit.heads) >= 0.72
    assert torch.isfinite(result.node.scores).all()


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_sae_with_last_token_pooling_meets_the_target_on_edges(subject, examples, circuit, seed):
    """Pooling at the read position: measured over SAE seeds 0-9 on these examples, edge-derived AUC 1.0 every time,
    node AUC 0.875-1.0 (mean 0.949; seed 7 is the lowest)."""
    result = discover_circuit_sae(subject, examples, SAEDiscoveryConfig(seed=seed, pooling="last"), verbose=False)
    assert roc_auc(result.edge, circuit.heads) >= 0.95
    assert roc_auc(result.node, circuit.heads) >= 0.85


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_sae_with_fewer_epochs_meets_the_target_on_edges_with_mean_pooling(subject, examples, circuit, seed):
    """The paper's pooling with 100 SAE epochs instead of 500: measured over SAE seeds 0-9 on these examples,
    edge-derived AUC 1.0 every time, node AUC 0.775-1.0 (mean 0.908; seed 9 is the lowest). With 500 epochs the
    same examples give edge 0.767 at seed 0 (the test above)."""
    config = SAEDiscoveryConfig(seed=seed, n_epochs=100)
    result = discover_circuit_sae(subject, examples, config, verbose=False)
    assert roc_auc(result.edge, circuit.heads) >= 0.95
    assert roc_auc(result.node, circuit.heads) >= 0.75
