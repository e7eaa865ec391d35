"""One call from a task to a scored circuit: `find_circuit` runs a discovery method (discrete SAE, activation
patching, edge attribution patching or node attribution patching) on a task's positive / negative pairs, scores the
ranking against a ground truth when one is known, and `write_circuit_outputs` writes circuit.json, scores.csv and
dashboard.html. Also here: tracr programs as Subjects with their own examples (`tracr_task`) and task files
(`load_task_file`, `file_examples`).

tracr examples. Every input of the program's maximum length over its vocabulary is run through the compiled model;
the read position is the last one (the position `CircuitExamples` scores). A positive is an input with at least one
single-token edit that changes the output there; its negative is one such edit (drawn with the seed), so pairs have
one length and no padding. answer = the program's output at the read position on the positive, wrong = its output on
the negative; the metric is their logit difference. Numerical programs have one output logit: it is paired with a
constant-zero logit, so the "logit difference" is the program's output value itself; positives are inputs whose
value exceeds `NUMERIC_MARGIN` with an edit that brings it to at most 0.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mechkit.circuits.examples import CircuitExamples
from mechkit.errors import MechkitError
from mechkit.heads import HeadId, parse_heads
from mechkit.jsonl import read_jsonl
from mechkit.scores import HeadScores

METHODS = ("sae", "patching", "eap", "atp")
FILE_FIELDS = ("positive", "negative", "answer", "wrong")
NUMERIC_MARGIN = 0.05
N_EDGES = 50  # edges kept in the result (best first)
CIRCUIT_JSON, SCORES_CSV, DASHBOARD = "circuit.json", "scores.csv", "dashboard.html"
SCORE_KEYS = ("model", "task", "method", "layer", "head", "label", "metric", "score", "is_true", "n_items", "seed")


@dataclass
class CircuitResult:
    """What `find_circuit` found.

    scores: per-head scores of the method (sae: codes unique to positives; patching / atp / eap: normalized effect,
    1 = the head carries the whole clean - corrupt gap); edges: up to N_EDGES {"sender", "receiver", "score"}, best
    first (sae: head pairs; eap: "embed" / "L0H1" -> "L1H2.q|k|v" / "logits"; none for patching and atp);
    accuracy: the model's on the positives; wall_s: seconds of the method (solvability check included); metrics:
    with a ground truth, roc_auc / best_f1 / precision_at_k / recall_at_k (k = |true|) of the ranking by |score|,
    None without one or when it covers every head (`note` says so); extra: method numbers (clean / corrupt metric,
    SAE loss and dead fraction; with a ground truth, the SAE's edge-derived head score judged the same way as
    edge_metrics)."""

    task: str
    method: str
    scores: HeadScores
    edges: list[dict]
    accuracy: float
    wall_s: float
    n_examples: int
    true_heads: list[HeadId] | None = None
    metrics: dict | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """Headline numbers as lines."""
        top = ", ".join(f"{h.label} {s:.3g}" for h, s in ranking(self.scores).top(5))
        lines = [(f"{self.method} on {self.task} ({self.scores.model}, {self.n_examples} pairs): accuracy "
                  f"{self.accuracy:.3f}, {self.wall_s:.2f} s; top heads by |score|: {top}")]
        if self.metrics is not None:
            m = self.metrics
            lines.append(f"ground truth {', '.join(h.label for h in self.true_heads)}: ROC-AUC {m['roc_auc']:.3f}, "
                         f"best F1 {m['best_f1']:.3f}, precision@{m['k']} {m['precision_at_k']:.3f}, "
                         f"recall@{m['k']} {m['recall_at_k']:.3f}")
        if self.extra.get("edge_metrics"):
            lines.append(f"SAE edge-derived head score: ROC-AUC {self.extra['edge_metrics']['roc_auc']:.3f}")
        if self.note:
            lines.append(f"note: {self.note}")
        return lines


def ranking(scores: HeadScores) -> HeadScores:
    """|score|: a head that hurts the task is as much part of the circuit as one that helps."""
    return HeadScores(scores.scores.abs(), metric=f"|{scores.metric}|", model=scores.model, n_items=scores.n_items,
                      seed=scores.seed, config=scores.config)


def ground_truth_metrics(scores: HeadScores, true_heads) -> tuple[dict | None, str]:
    """ROC-AUC, best F1 and precision / recall at k = |true| of the |score| ranking; (None, why) when a ranking
    cannot be judged (the truth covers every scored head, or none)."""
    from mechkit.circuits.metrics import best_f1, precision_recall_at_k, roc_auc

    ranked = ranking(scores)
    truth = parse_heads(true_heads, scores.n_layers, scores.n_heads)
    try:
        auc = roc_auc(ranked, truth)
    except MechkitError as err:
        return None, str(err)
    precision, recall = precision_recall_at_k(ranked, truth, len(truth))
    return {"roc_auc": auc, "best_f1": best_f1(ranked, truth), "k": len(truth), "precision_at_k": precision,
            "recall_at_k": recall}, ""


def check_method(method: str) -> None:
    if method not in METHODS:
        raise MechkitError(f"unknown circuit method {method!r}; use one of {', '.join(METHODS)}")


def _bidirectional(subject) -> bool:
    model = getattr(subject, "model", None)
    return getattr(getattr(model, "cfg", None), "attention_dir", "causal") == "bidirectional"


def find_circuit(
    subject,
    examples: CircuitExamples,
    method: str = "patching",
    true_heads=None,
    sae_config=None,
    qk_fix: bool = True,
    batch_size: int = 32,
    min_accuracy: float = 0.5,
    on_unsolvable: str = "raise",
    verbose: bool = True,
) -> CircuitResult:
    """Score every head of `subject` on `examples` with `method` ("sae": `discover_circuit_sae` node scores and
    ranked head pairs; "patching": exhaustive `head_patching`; "eap": `edge_attribution_patching` node scores (AtP*
    with `qk_fix`) and its top edges; "atp": node `attribution_patching`), after checking the model solves the
    positives (`min_accuracy`, argmax; below it `on_unsolvable` "raise" or "warn"). With `true_heads`, the |score|
    ranking is judged by ROC-AUC, best F1 and precision / recall at k = |true|."""
    check_method(method)
    if method == "eap" and _bidirectional(subject):
        raise MechkitError(f"{subject.model_id} attends both ways (bidirectional attention) and EAP attributes edges "
                           "through causal softmax patterns only; use --method atp (node attribution patching)")
    truth = None if true_heads is None else sorted(parse_heads(true_heads, subject.n_layers, subject.n_heads))
    start = time.perf_counter()  # every method checks the model solves the positives first (`check_solvable`)
    edges, extra = [], {}
    if method == "sae":
        from mechkit.circuits.sae_discovery import SAEDiscoveryConfig, discover_circuit_sae

        config = replace(sae_config or SAEDiscoveryConfig(batch_size=batch_size), min_accuracy=min_accuracy,
                         on_unsolvable=on_unsolvable)
        found = discover_circuit_sae(subject, examples, config, verbose)
        scores = found.node
        edges = [{"sender": a.label, "receiver": b.label, "score": s} for a, b, s in found.edges[:N_EDGES]]
        extra = {"sae_loss": found.sae_loss, "dead_fraction": found.dead_fraction}
    elif method == "patching":
        from mechkit.circuits.patching import head_patching

        found = head_patching(subject, examples, batch_size, min_accuracy, "argmax", on_unsolvable, verbose)
        scores, extra = found.scores, {"clean": found.clean, "corrupt": found.corrupt}
    elif method == "eap":
        from mechkit.circuits.eap import edge_attribution_patching

        found = edge_attribution_patching(subject, examples, qk_fix, batch_size, min_accuracy, "argmax",
                                          on_unsolvable, verbose)
        scores, extra = found.nodes, {"clean": found.clean, "corrupt": found.corrupt, "qk_fix": qk_fix}
        edges = [{"sender": e.sender, "receiver": e.receiver, "score": e.score} for e in found.edges(N_EDGES)]
    else:
        from mechkit.circuits.eap import attribution_patching

        found = attribution_patching(subject, examples, batch_size, min_accuracy, "argmax", on_unsolvable, verbose)
        scores, extra = found.scores, {"clean": found.clean, "corrupt": found.corrupt}
    wall = time.perf_counter() - start
    metrics, note = (None, "") if truth is None else ground_truth_metrics(scores, truth)
    if method == "sae" and truth is not None:
        extra["edge_metrics"] = ground_truth_metrics(found.edge, truth)[0]  # the edge-derived head score's
    return CircuitResult(examples.name, method, scores, edges, found.accuracy, wall, len(examples), truth, metrics,
                         note, extra)


# -- task files ------------------------------------------------------------------------------------------------


def load_task_file(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL task file, one {"positive", "negative", "answer", "wrong"} object of strings per line (blank
    lines skipped); a bad line raises a MechkitError naming the file, the line and the field."""
    rows, hint = [], f"write one object with fields {', '.join(FILE_FIELDS)} per line"
    for number, where, row in read_jsonl(path, "task file", hint):
        if not isinstance(row, dict):
            raise MechkitError(f"{where} must be a JSON object with fields {', '.join(FILE_FIELDS)}")
        for name in FILE_FIELDS:
            if name not in row:
                raise MechkitError(f"{where} has no field {name!r}; give {', '.join(FILE_FIELDS)}")
            if not isinstance(row[name], str) or not row[name]:
                raise MechkitError(f"{where}: field {name!r} must be a non-empty string")
        unknown = sorted(set(row) - set(FILE_FIELDS))
        if unknown:
            raise MechkitError(f"{where} has unknown field(s) {unknown}; use only {', '.join(FILE_FIELDS)}")
        if row["answer"] == row["wrong"]:
            raise MechkitError(f"{where}: fields 'answer' and 'wrong' are both {row['answer']!r}; give a competing "
                               "wrong answer")
        rows.append({**{name: row[name] for name in FILE_FIELDS}, "line": number})
    if not rows:
        raise MechkitError(f"task file {path} has no examples; write one JSON object per line")
    return rows


def file_examples(subject, rows: list[dict], path: str | os.PathLike) -> CircuitExamples:
    """CircuitExamples of `load_task_file` rows, tokenized by `subject`; errors name the file line."""
    def ids(text: str) -> list[int]:
        return list(subject.tokenizer(text, add_special_tokens=False)["input_ids"])

    positives, negatives, answers, wrongs = [], [], [], []
    for row in rows:
        where = f"task file {path} line {row['line']}"
        pos, neg = ids(row["positive"]), ids(row["negative"])
        if len(pos) != len(neg):
            raise MechkitError(f"{where}: field 'negative' is {len(neg)} tokens but 'positive' is {len(pos)} for "
                               f"{subject.model_id}; make the negative a same-length edit")
        for name, store in (("answer", answers), ("wrong", wrongs)):
            token = ids(row[name])
            if len(token) != 1:
                raise MechkitError(f"{where}: field {name!r} ({row[name]!r}) is {len(token)} tokens for "
                                   f"{subject.model_id}; use a single-token answer (often with a leading space)")
            store.append(token[0])
        positives.append(subject.bos_prefix + pos)
        negatives.append(subject.bos_prefix + neg)
    return CircuitExamples.from_token_ids(Path(path).stem, positives, negatives, answers, wrongs, subject.pad_id)


# -- tracr programs ----------------------------------------------------------------------------------------------


@dataclass
class TracrTask:
    """A compiled tracr program as a Subject, its true heads and a generator of its examples."""

    name: str
    subject: object
    compiled: object
    true_heads: list[HeadId]

    def examples(self, n: int, seed: int = 0) -> CircuitExamples:
        return tracr_examples(self, n, seed)


def tracr_task(program: str) -> TracrTask:
    """Compile registered tracr program `program` (`tracr_models.PROGRAMS`) and wrap it in a TLSubject over its own
    token vocabulary (a WordTokenizer of str(token) in id order; BOS id first in every example)."""
    from transformers import GPT2Config

    from mechkit.backends.tl import TLSubject
    from mechkit.circuits.tracr_models import compile_program, to_hooked_transformer, true_heads
    from mechkit.native.tokenizer import WordTokenizer

    compiled = compile_program(program)
    model = to_hooked_transformer(compiled)
    if not compiled.categorical:  # one value logit + a constant-zero logit: their difference is the value
        W_U = model.unembed.W_U.data
        model.unembed.W_U = torch.nn.Parameter(torch.cat([W_U, torch.zeros_like(W_U)], dim=1))
        model.unembed.b_U = torch.nn.Parameter(torch.zeros(2, dtype=W_U.dtype))
        model.cfg.d_vocab_out = 2
    encoding = compiled.assembled.input_encoder.encoding_map
    words = [str(token) for token, _ in sorted(encoding.items(), key=lambda item: item[1])]
    cfg = model.cfg
    config = GPT2Config(n_layer=cfg.n_layers, n_head=cfg.n_heads, n_embd=cfg.d_model, n_positions=cfg.n_ctx,
                        vocab_size=cfg.d_vocab)
    config.head_dim = cfg.d_head
    subject = TLSubject(model, model_id=f"tracr:{program}", config=config, tokenizer=WordTokenizer(words),
                        prepend_bos=False, weights_sha256=None)
    return TracrTask(program, subject, compiled, true_heads(compiled))


def _read_outputs(task: TracrTask, seqs: list[tuple]) -> np.ndarray:
    """The model's output at the last position of each sequence: an output id (categorical) or the value."""
    from mechkit.circuits.tracr_models import encode_inputs

    ids = torch.from_numpy(encode_inputs(task.compiled, seqs))
    with torch.no_grad():
        logits = task.subject.model(ids)[:, -1].float()
    return logits.argmax(-1).numpy() if task.compiled.categorical else logits[:, 0].numpy()


def tracr_examples(task: TracrTask, n: int, seed: int = 0) -> CircuitExamples:
    """`n` pairs of a tracr program (see the module docstring); inputs are drawn without replacement while there
    are enough, pair i's edit from `numpy.random.default_rng((seed, i))`."""
    from mechkit.circuits.tracr_models import encode_inputs

    if n < 1:
        raise MechkitError(f"n must be a positive number of examples, got {n}")
    spec = task.compiled.spec
    vocab = sorted(spec.vocab, key=str)
    seqs = list(itertools.product(vocab, repeat=spec.max_seq_len))
    edits = [(i, p, v) for i, s in enumerate(seqs) for p in range(len(s)) for v in vocab if v != s[p]]
    edited = [seqs[i][:p] + (v,) + seqs[i][p + 1:] for i, p, v in edits]
    clean, changed = _read_outputs(task, seqs), _read_outputs(task, edited)
    options: dict[int, list[int]] = {}
    for k, (i, _, _) in enumerate(edits):
        if task.compiled.categorical:
            ok = changed[k] != clean[i]
        else:
            ok = clean[i] > NUMERIC_MARGIN and changed[k] <= 0
        if ok:
            options.setdefault(i, []).append(k)
    if not options:
        raise MechkitError(f"tracr program {task.name!r} has no input whose output at the last position changes "
                           "under a one-token edit, so it has no positive / negative pairs")
    usable = sorted(options)
    order = np.random.default_rng(seed).permutation(len(usable))
    positives, negatives, answers, wrongs = [], [], [], []
    for i in range(n):
        seq = usable[int(order[i % len(usable)])]
        k = options[seq][int(np.random.default_rng((seed, i)).integers(len(options[seq])))]
        pos, neg = encode_inputs(task.compiled, [seqs[seq], edited[k]])
        positives.append(pos.tolist())
        negatives.append(neg.tolist())
        answers.append(int(clean[seq]) if task.compiled.categorical else 0)
        wrongs.append(int(changed[k]) if task.compiled.categorical else 1)
    pad = task.compiled.assembled.input_encoder.encoding_map["compiler_pad"]
    return CircuitExamples.from_token_ids(f"tracr:{task.name}", positives, negatives, answers, wrongs, pad)


# -- outputs -----------------------------------------------------------------------------------------------------


def score_records(result: CircuitResult, seed: int | None = None) -> list[dict]:
    """Tidy per-head records (SCORE_KEYS); is_true is None without a ground truth."""
    truth = None if result.true_heads is None else set(result.true_heads)
    rows = []
    for record in result.scores.to_records():
        head = HeadId(record["layer"], record["head"])
        rows.append({"model": result.scores.model, "task": result.task, "method": result.method,
                     "layer": head.layer, "head": head.head, "label": head.label, "metric": result.scores.metric,
                     "score": record["score"], "is_true": None if truth is None else head in truth,
                     "n_items": result.n_examples, "seed": seed})
    return rows


def write_circuit_outputs(out_dir: str | os.PathLike, result: CircuitResult, subject, config: dict | None = None,
                          seed: int | None = None) -> list[Path]:
    """circuit.json (provenance header + method, accuracy, wall time, metrics, true heads; records: per-head scores,
    then an "edges" list), scores.csv and dashboard.html, each written atomically."""
    from mechkit.results import ensure_writable_dir, provenance, write_records_csv, write_records_json
    from mechkit.viz.circuits import circuit_dashboard

    out = ensure_writable_dir(out_dir)
    header = provenance(subject.model_id, subject.weights_sha256, config or {}, seed)
    body = {"task": result.task, "method": result.method, "metric": result.scores.metric,
            "accuracy": result.accuracy, "wall_s": result.wall_s, "n_examples": result.n_examples,
            "true_heads": None if result.true_heads is None else [h.label for h in result.true_heads],
            "ground_truth_metrics": result.metrics, "note": result.note,
            "extra": {k: v for k, v in result.extra.items() if not (isinstance(v, float) and math.isnan(v))},
            "edges": result.edges}
    records = score_records(result, seed)
    paths = [write_records_json(out / CIRCUIT_JSON, {**header, **body}, records),
             write_records_csv(out / SCORES_CSV, records, SCORE_KEYS)]
    paths.append(circuit_dashboard(out / DASHBOARD, result, header))
    return paths
