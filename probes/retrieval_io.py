"""Files of a retrieval-head scan: resumable trials log, scores, masking curves, AttentionInfluence, dashboard.

`run_retrieval_scan` and `run_validation` are what `mechkit find-retrieval-heads` / `validate-heads` call; the
`write_*` functions also serve notebooks that ran `find_retrieval_heads` themselves. Every file is written
atomically; `trials.jsonl` is appended one trial at a time so a killed scan resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mechkit.errors import ContextTooLongError, MechkitError
from mechkit.heads import HeadId, parse_heads
from mechkit.probes.attention_influence import Influence
from mechkit.probes.retrieval import (
    CORRECT_RECALL,
    RetrievalConfig,
    RetrievalResult,
    build_trials,
    masking_curves,
    retrieval_scores,
    run_trials,
)
from mechkit.results import (
    TrialLog,
    atomic_write_text,
    ensure_writable_dir,
    provenance,
    write_records_csv,
    write_records_json,
)
from mechkit.scores import HeadScores
from mechkit.subject import Subject
from mechkit.viz import dashboard_html, head_heatmap, masking_figure, recall_grid, top_heads_table, write_dashboard

TRIALS, SCORES_JSON, SCORES_CSV, DASHBOARD = "trials.jsonl", "scores.json", "scores.csv", "dashboard.html"
MASKING_JSON, MASKING_CSV = "masking.json", "masking.csv"
MASKING_KEYS = ("k", "kind", "draw", "heads", "recall")
INFLUENCE_KEYS = ("rank", "index", "clean_loss", "masked_loss", "influence", "text")


def check_trial_log(out_dir: str | os.PathLike, config: RetrievalConfig) -> None:
    """Refuse an existing trials log in `out_dir` written for another configuration (call before loading)."""
    path = Path(out_dir) / TRIALS
    if path.exists():
        TrialLog(path, config.to_dict())


def check_context(context_length: int, config: RetrievalConfig) -> None:
    """The longest prompt plus its decode steps must fit the model's context window."""
    room = context_length - config.max_new_tokens
    if max(config.lengths) > room:
        raise ContextTooLongError(
            f"length {max(config.lengths)} plus {config.max_new_tokens} new tokens exceeds the {context_length}-token "
            f"context of {config.model}; pass --lengths of at most {room} (or fewer --max-new-tokens)")


def check_ks(subject: Subject, ks: Sequence[int]) -> None:
    """Each k must be >= 1 and leave at least k heads outside the top-max(ks) list for the random draws."""
    total = subject.n_layers * subject.n_heads
    if not ks or min(ks) < 1:
        raise MechkitError(f"--ks {list(ks)} must be positive head counts; pass e.g. --ks 2,4,8")
    if 2 * max(ks) > total:
        raise MechkitError(f"--ks {max(ks)} is too large for {subject.model_id}'s {total} heads: random heads are "
                           f"drawn from outside the top {max(ks)}; pass --ks of at most {total // 2}")


def config_fields(config: dict) -> dict:
    """The `RetrievalConfig` fields of a stored config dict (lists back to tuples)."""
    names = {f.name for f in dataclasses.fields(RetrievalConfig)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names}


def load_scores(path: str | os.PathLike) -> HeadScores:
    """`HeadScores.from_json` with a one-line error for a file that is not a head-scores JSON."""
    advice = "pass the scores.json written by `mechkit find-retrieval-heads`"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or not {"records", "shape", "metric"} <= set(doc):
            raise MechkitError(f"{path} is not a head-scores JSON (no records, shape and metric); {advice}")
        return HeadScores.from_json(path)
    except MechkitError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MechkitError(f"{path} is not a head-scores JSON ({type(err).__name__}: {err}); {advice}") from None


def select_heads(spec: str, top: int | None = None, threshold: float | None = None) -> list[HeadId]:
    """Heads from a head-scores JSON (its `top` best, else those above `threshold`, default 0.1) or a head list
    such as "L5H1,L11H2"."""
    if not Path(spec).is_file():
        try:
            return parse_heads(spec)
        except MechkitError:
            raise MechkitError(f"--heads {spec!r} is neither a head-scores JSON file nor a head list such as "
                               "'L5H1,L11H2'; pass one of them") from None
    scores = load_scores(spec)
    if top is not None:
        heads = [head for head, _ in scores.top(top)]
    else:
        threshold = 0.1 if threshold is None else threshold
        heads = scores.above(threshold)
    if not heads:
        raise MechkitError(f"no head in {spec} is {'scored' if top else f'above threshold {threshold}'}; "
                           "pass a lower --threshold or --top K")
    return heads


def _header(subject: Subject, config: dict, seed: int | None) -> dict:
    return provenance(subject.model_id, subject.weights_sha256, config, seed)


def summary_lines(result: RetrievalResult, top: int = 10) -> list[str]:
    """Counted trials, heads above the threshold, and the `top` best heads, as lines of text."""
    scores, threshold = result.scores, result.scores.config.get("threshold", 0.1)
    counted, total = sum(o.counted for o in result.outcomes), len(result.outcomes)
    n_heads, above = scores.n_layers * scores.n_heads, len(result.retrieval_heads)
    best = ", ".join(f"{head.label} {score:.3f}" for head, score in scores.top(top)) or "none (no trial counted)"
    return [
        f"counted trials: {counted} / {total} (answer ROUGE-1 recall > {CORRECT_RECALL})",
        f"heads > {threshold:g}: {above} of {n_heads} {scores.head_kind} heads ({above / n_heads:.1%})",
        f"top {top}: {best}",
    ]


def masking_lines(records: list[dict]) -> list[str]:
    """One line per k: recall with the top-k heads masked vs k random heads (mean +- s.d.), and the baseline."""
    base = next((r["recall"] for r in records if r["kind"] == "none"), float("nan"))
    lines = [f"masking (NIAH recall): none {base:.3f}"]
    for k in sorted({r["k"] for r in records if r["kind"] != "none"}):
        top = [r["recall"] for r in records if r["kind"] == "top" and r["k"] == k]
        rand = [r["recall"] for r in records if r["kind"] == "random" and r["k"] == k]
        lines.append(f"  k={k}: top {np.mean(top):.3f}, random {np.mean(rand):.3f} ± {np.std(rand):.3f} "
                     f"({len(rand)} draw{'s' if len(rand) != 1 else ''})")
    if not any(r["heads"] for r in records if r["kind"] == "top"):
        lines.append("  (no head has a score, so top-k masking masked nothing)")
    return lines


def retrieval_dashboard(result: RetrievalResult, header: dict | None = None) -> str:
    """The scan's dashboard page: head heatmap, top heads, recall over length x depth, masking curves if any."""
    figures = [head_heatmap(result.scores, f"Retrieval score per head: {result.scores.model}"),
               top_heads_table(result.scores)]
    if result.outcomes:
        figures.append(recall_grid(result.outcomes))
    if result.masking:
        figures.append(masking_figure(result.masking))
    lines = summary_lines(result) if result.outcomes else []
    return dashboard_html(f"Retrieval heads: {result.scores.model}", figures, notes="\n".join(lines),
                          provenance=header or result.scores.provenance)


def _masking_rows(records: list[dict]) -> list[dict]:
    return [{**r, "heads": " ".join(r["heads"])} for r in records]


def write_masking(out_dir: str | os.PathLike, records: list[dict], header: dict) -> list[Path]:
    """masking.json (provenance header + records) and masking.csv (heads space-separated)."""
    out = Path(out_dir)
    return [write_records_json(out / MASKING_JSON, header, records),
            write_records_csv(out / MASKING_CSV, _masking_rows(records), MASKING_KEYS)]


def write_retrieval_outputs(out_dir: str | os.PathLike, result: RetrievalResult, subject: Subject,
                            config: RetrievalConfig, run_info: dict | None = None) -> list[Path]:
    """scores.json / scores.csv / dashboard.html (+ masking.json / .csv when validated) in `out_dir`.

    `run_info` (e.g. backend, device, dtype) is added to the config recorded with the scores.
    """
    out = ensure_writable_dir(out_dir)
    recorded = {**config.to_dict(), **(run_info or {"backend": subject.backend})}
    scores = dataclasses.replace(result.scores, config=recorded)
    scores.provenance = _header(subject, recorded, config.seed)
    result = dataclasses.replace(result, scores=scores)
    paths = [scores.to_json(out / SCORES_JSON), scores.to_csv(out / SCORES_CSV)]
    if result.masking:
        paths += write_masking(out, result.masking, scores.provenance)
    paths.append(write_dashboard(out / DASHBOARD, retrieval_dashboard(result, scores.provenance)))
    return paths


def run_retrieval_scan(subject: Subject, config: RetrievalConfig, out_dir: str | os.PathLike, *,
                       batch_size: int = 1, validate: bool = False, ks: Sequence[int] = (2, 4, 8), n_draws: int = 3,
                       run_info: dict | None = None, verbose: bool = True) -> RetrievalResult:
    """Build the trials (all input checks), run them resuming `out_dir/trials.jsonl`, score, mask when
    `validate`, and write every output file."""
    check_context(subject.context_length, config)
    trials = build_trials(subject, config)
    if validate:
        check_ks(subject, ks)
    log = TrialLog(Path(ensure_writable_dir(out_dir)) / TRIALS, config.to_dict())
    outcomes = run_trials(subject, trials, config.max_new_tokens, batch_size, log=log, verbose=verbose)
    scores = retrieval_scores(subject, outcomes, config.to_dict(), config.seed)
    masking = (masking_curves(subject, scores, trials, ks, n_draws, config.seed, config.max_new_tokens, batch_size,
                              verbose) if validate else [])
    result = RetrievalResult(scores, outcomes, masking)
    write_retrieval_outputs(out_dir, result, subject, config, run_info)
    return result


def run_validation(subject: Subject, scores: HeadScores, config: RetrievalConfig, out_dir: str | os.PathLike, *,
                   ks: Sequence[int] = (2, 4, 8), n_draws: int = 3, batch_size: int = 1, run_info: dict | None = None,
                   verbose: bool = True) -> list[dict]:
    """The masking experiment alone for existing scores: masking.json, masking.csv and a dashboard."""
    if (scores.n_layers, scores.n_heads) != (subject.n_layers, subject.n_heads):
        raise MechkitError(f"the scores cover {scores.n_layers} x {scores.n_heads} heads but {subject.model_id} has "
                           f"{subject.n_layers} x {subject.n_heads}; pass the scores of this model")
    check_context(subject.context_length, config)
    trials = build_trials(subject, config)
    check_ks(subject, ks)
    out = ensure_writable_dir(out_dir)
    records = masking_curves(subject, scores, trials, ks, n_draws, config.seed, config.max_new_tokens, batch_size,
                             verbose)
    recorded = {**config.to_dict(), "ks": list(ks), "draws": n_draws, **(run_info or {"backend": subject.backend})}
    header = _header(subject, recorded, config.seed)
    write_masking(out, records, header)
    page = dashboard_html(f"Retrieval-head masking: {subject.model_id}",
                          [masking_figure(records), head_heatmap(scores), top_heads_table(scores)],
                          notes=f"{len(trials)} trials; heads masked to uniform attention", provenance=header)
    write_dashboard(out / DASHBOARD, page)
    return records


def write_influence_outputs(out_dir: str | os.PathLike, influences: Sequence[Influence], subject: Subject,
                            config: dict) -> list[Path]:
    """influence.jsonl and influence.csv (ranked rows `INFLUENCE_KEYS`) and influence.json (provenance + rows)."""
    out = ensure_writable_dir(out_dir)
    rows = [{key: getattr(item, key) for key in INFLUENCE_KEYS} for item in sorted(influences, key=lambda i: i.rank)]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    return [atomic_write_text(out / "influence.jsonl", lines),
            write_records_csv(out / "influence.csv", rows, INFLUENCE_KEYS),
            write_records_json(out / "influence.json", _header(subject, config, config.get("seed")), rows)]
