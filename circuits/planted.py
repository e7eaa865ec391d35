"""A planted circuit: a native 2-layer attention-only model trained on associative recall, its induction circuit
read from its attention and verified by ablation, and positive / negative examples of its task.

The zoo model `native:induction-attn-only` (2 softmax layers of 8 heads, no MLP) is trained on MQAR (Zoology's
multi-query associative recall): `k1 v1 ... kK vK`, then filler with queries `k` labeled by their value `v`. A
2-layer attention-only model solves it by induction (Olsson et al. 2022): previous-token heads of layer 0 write
each key into the value position after it, and induction heads of layer 1 attend from a query key to the position
whose previous token matches it and copy the value there. `mechkit train --task induction` is no planted circuit:
its sequences always repeat at period seq_len / 2, which a positional head of layer 1 solves (measured after
`mechkit train --task induction --layers 2 --d-model 64 --heads 4 --seq-len 64 --vocab 128 --steps 1000 --lr 3e-3`:
test accuracy 1.0, every layer-1 head attends to offset 31 and scores <= 0.01 on induction at periods 10 and 20).

`planted_induction_circuit` reads the circuit from attention on held-out MQAR sequences (the share of attention on
the previous token at value positions, and on the induction target at query positions) and verifies it by mean
ablation: the circuit's heads knocked out must destroy recall, as many heads from outside it must not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.batch import Batch
from mechkit.circuits.examples import CircuitExamples
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, all_heads, random_heads
from mechkit.interventions import HeadAblation
from mechkit.probes.attention_patterns import context_match_targets, pattern_scores, previous_token_targets
from mechkit.scores import HeadScores
from mechkit.tasks import mqar

ZOO_MODEL = "native:induction-attn-only"


@dataclass
class PlantedCircuit:
    """The verified circuit of a 2-layer model.

    heads: previous-token heads of layer 0 and induction heads of layer 1 (layer-major). previous_token / induction
    `[n_layers, n_heads]`: share of each head's attention on the previous token at value positions / on the
    positions after earlier copies of the query key at query positions (1 = all of it). ablation: one record per
    mean-ablation run, {"kind": "none" | "circuit" | "others", "layer", "draw", "heads", "loss" (mean cross-entropy
    at the queries, nats), "accuracy" (argmax at the queries)}: layer None ablates the circuit / as many random heads
    from outside it (all of them when fewer remain); layer l ablates the circuit's / the other heads of layer l.
    """

    heads: list[HeadId]
    previous_token: HeadScores
    induction: HeadScores
    ablation: list[dict]
    thresholds: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [h.label for h in self.heads]

    def runs(self, kind: str, layer: int | None | str = "any") -> list[dict]:
        """The ablation records of one kind (and one layer, None for whole-model runs, unless "any")."""
        return [r for r in self.ablation if r["kind"] == kind and (layer == "any" or r["layer"] == layer)]


def mqar_batch(
    subject, n: int, seq_len: int | None = None, n_pairs: int = 8, seed: int = 0
) -> tuple[Batch, Int[Tensor, "n seq"]]:
    """`n` MQAR test sequences in the subject's vocabulary (`mechkit.tasks.mqar`, split "test" of `seed`: held out
    from a model trained with that seed) and their labels `[n, seq_len]` (-100 off the queries)."""
    seq_len = seq_len or subject.context_length
    config = mqar.MQARConfig(vocab_size=len(subject.tokenizer), seq_len=seq_len, n_kv_pairs=n_pairs, n_train=1,
                             n_test=n, seed=seed)
    pairs = [mqar.example(config, "test", i) for i in range(n)]
    tokens = torch.from_numpy(np.stack([t for t, _ in pairs]))
    labels = torch.from_numpy(np.stack([y for _, y in pairs]))
    batch = Batch(tokens, torch.ones_like(tokens))
    subject.check_length(batch)
    return batch, labels


def _attention_scores(subject, batch: Batch, labels: Tensor, n_pairs: int, verbose: bool) -> dict[str, Tensor]:
    queries = labels != mqar.IGNORE

    def previous_at_values(b: Batch, q: Tensor) -> Tensor:
        rows = (q % 2 == 1) & (q < 2 * n_pairs)
        return previous_token_targets(b, q) & rows[None, :, None]

    def induction_at_queries(b: Batch, q: Tensor) -> Tensor:
        return context_match_targets(1)(b, q) & queries[:, q, None]

    return pattern_scores(subject, batch, {"previous_token": previous_at_values, "induction": induction_at_queries},
                          verbose=verbose)


def _recall(subject, batch: Batch, labels: Tensor, heads: list[HeadId]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) at the query positions with `heads` mean-ablated."""
    interventions = [HeadAblation(heads, mode="mean")] if heads else []
    with torch.no_grad():
        logits = subject.run_with_hooks(batch, interventions=interventions).float().cpu()
    keep = labels != mqar.IGNORE
    loss = F.cross_entropy(logits[keep], labels[keep])
    return float(loss), float((logits[keep].argmax(-1) == labels[keep]).float().mean())


def planted_induction_circuit(
    subject,
    n_sequences: int = 200,
    n_pairs: int = 8,
    seq_len: int | None = None,
    previous_threshold: float = 0.5,
    induction_threshold: float = 0.2,
    n_draws: int = 5,
    min_accuracy: float = 0.9,
    max_ablated_accuracy: float = 0.25,
    max_layer_fraction: float = 0.5,
    min_kept_fraction: float = 0.9,
    seed: int = 0,
    verbose: bool = True,
) -> PlantedCircuit:
    """Read the induction circuit of a 2-layer model trained on MQAR from its attention and verify it by ablation.

    Circuit: layer-0 heads with a previous-token share above `previous_threshold` and layer-1 heads with an induction
    share above `induction_threshold`, on `n_sequences` held-out MQAR sequences (`mqar_batch`). Verified by mean
    ablation when the model solves them (accuracy >= `min_accuracy`), ablating the circuit leaves accuracy <=
    `max_ablated_accuracy`, ablating its heads of one layer leaves <= `max_layer_fraction` of the full accuracy (each
    layer's part is needed, not covered by another head of that layer), and ablating as many other heads (`n_draws`
    random draws; all of them when fewer remain) or the other heads of one layer keeps >= `min_kept_fraction` of it;
    otherwise a MechkitError says which check failed.
    """
    if subject.n_layers != 2:
        raise MechkitError(f"the planted induction circuit spans 2 layers but {subject.model_id} has "
                           f"{subject.n_layers}; use a 2-layer model such as {ZOO_MODEL}")
    batch, labels = mqar_batch(subject, n_sequences, seq_len, n_pairs, seed)
    raw = _attention_scores(subject, batch, labels, n_pairs, verbose)
    common = {"model": subject.model_id, "n_items": n_sequences, "seed": seed,
              "config": {"n_pairs": n_pairs, "seq_len": batch.tokens.shape[1]}}
    scores = {name: HeadScores(values.float(), metric=f"planted_{name}", **common) for name, values in raw.items()}
    previous = [HeadId(0, h) for h in range(subject.n_heads) if raw["previous_token"][0, h] > previous_threshold]
    induction = [HeadId(1, h) for h in range(subject.n_heads) if raw["induction"][1, h] > induction_threshold]
    if not previous or not induction:
        raise MechkitError(
            f"{subject.model_id} has {len(previous)} previous-token head(s) in layer 0 above {previous_threshold} and "
            f"{len(induction)} induction head(s) in layer 1 above {induction_threshold}, so no induction circuit was "
            "planted; train it to convergence on MQAR or lower the thresholds"
        )
    circuit = previous + induction
    rng = np.random.default_rng(seed)
    others = [h for h in all_heads(subject.n_layers, subject.n_heads) if h not in set(circuit)]
    draws = 1 if len(others) <= len(circuit) else n_draws
    settings = [("none", None, 0, []), ("circuit", None, 0, circuit)]
    settings += [("others", None, d, random_heads(subject.n_layers, subject.n_heads, len(circuit), circuit, rng))
                 for d in range(draws)]
    for layer in range(subject.n_layers):
        settings.append(("circuit", layer, 0, [h for h in circuit if h.layer == layer]))
        rest = [h for h in others if h.layer == layer]
        if rest:
            settings.append(("others", layer, 0, rest))
    records = []
    for kind, layer, draw, heads in tqdm(settings, desc="ablation", disable=not verbose):
        loss, accuracy = _recall(subject, batch, labels, heads)
        records.append({"kind": kind, "layer": layer, "draw": draw, "heads": [h.label for h in heads], "loss": loss,
                        "accuracy": accuracy})
    thresholds = {"previous_token": previous_threshold, "induction": induction_threshold}
    result = PlantedCircuit(circuit, scores["previous_token"], scores["induction"], records, thresholds)
    _verify(subject, result, min_accuracy, max_ablated_accuracy, max_layer_fraction, min_kept_fraction)
    return result


def _verify(subject, result: PlantedCircuit, min_accuracy: float, max_ablated: float, max_layer: float,
            min_kept: float) -> None:
    full = result.runs("none")[0]["accuracy"]
    if full < min_accuracy:
        raise MechkitError(f"{subject.model_id} recalls only {full:.1%} of the MQAR queries (needs {min_accuracy:.0%}), "
                           "so it holds no planted circuit; train it to convergence first")
    for record in result.runs("circuit"):
        whole = record["layer"] is None
        limit = max_ablated if whole else max_layer * full
        if record["accuracy"] > limit:
            part = "the heads read from attention" if whole else f"the circuit's layer-{record['layer']} heads"
            raise MechkitError(f"ablating {part} ({', '.join(record['heads'])}) leaves {record['accuracy']:.1%} recall "
                               f"(needs <= {limit:.1%}), so other heads do their job too; lower the thresholds")
    for record in result.runs("others"):
        if record["accuracy"] < min_kept * full:
            raise MechkitError(f"ablating heads outside the circuit ({', '.join(record['heads'])}) drops recall to "
                               f"{record['accuracy']:.1%} of {full:.1%}, so the circuit misses heads the task needs; "
                               "lower the thresholds")


def induction_examples(
    subject, n: int = 64, seq_len: int | None = None, seed: int = 0, n_pairs: int = 8
) -> CircuitExamples:
    """`n` positive / negative pairs of associative recall by induction, cut from MQAR test sequences.

    Positive: `k1 v1 ... kK vK` + filler up to one query key `k` (the prompt ends at it); answer: its value `v`
    (the token after `k`'s earlier copy), wrong: another value of the prompt. Negative: the same prompt with that
    earlier `k` replaced by a key found nowhere in it, so nothing precedes `v` that matches the query (same length).
    Prompts end at different queries, so their lengths differ (left padding).
    """
    if n < 1:
        raise MechkitError(f"induction_examples needs n >= 1, got {n}")
    batch, labels = mqar_batch(subject, n, seq_len, n_pairs, seed)
    half = len(subject.tokenizer) // 2
    positives, negatives, answers, wrongs = [], [], [], []
    for i in range(n):
        tokens, rng = batch.tokens[i].tolist(), np.random.default_rng((seed, 2, i))
        slots = tokens[0:2 * n_pairs:2]
        usable = [q for q in (labels[i] != mqar.IGNORE).nonzero().flatten().tolist() if tokens[:q].count(tokens[q]) == 1]
        if not usable:
            raise MechkitError(f"MQAR sequence {i} of seed {seed} has no query whose key occurs once before it; use "
                               "another seed")
        q = int(rng.choice(usable))
        prompt, key = tokens[:q + 1], tokens[q]
        j = slots.index(key)
        unused = sorted(set(range(1, half)) - set(prompt))
        if not unused:
            raise MechkitError(f"every key token occurs in MQAR sequence {i}; use a larger vocabulary or fewer pairs")
        negative = list(prompt)
        negative[2 * j] = int(rng.choice(unused))
        values = tokens[1:2 * n_pairs:2]
        positives.append(prompt)
        negatives.append(negative)
        answers.append(int(labels[i, q]))
        wrongs.append(int(rng.choice([v for k, v in enumerate(values) if k != j])))
    return CircuitExamples.from_token_ids("planted-induction", positives, negatives, answers, wrongs)
