"""Files of an attention-pattern scan (induction family, n-gram heads): one JSON per metric, one long CSV of
every metric, summary.json, ablation.json / .csv when checked, and dashboard.html with a heatmap per metric.

`run_induction_scan` and `run_ngram_scan` are what `mechkit find-induction-heads` / `find-ngram-heads` call.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mechkit.errors import MechkitError
from mechkit.probes.induction import InductionConfig, ablation_check, find_induction_heads
from mechkit.probes.ngram import NgramConfig, find_ngram_heads
from mechkit.results import ensure_writable_dir, provenance, write_records_csv, write_records_json
from mechkit.scores import RECORD_KEYS, HeadScores
from mechkit.subject import Subject
from mechkit.viz import ablation_figure, dashboard_html, head_heatmap, top_heads_table, write_dashboard

SCORES_CSV, SUMMARY_JSON, DASHBOARD = "scores.csv", "summary.json", "dashboard.html"
ABLATION_JSON, ABLATION_CSV = "ablation.json", "ablation.csv"
ABLATION_KEYS = ("kind", "draw", "heads", "loss", "loss_first_half")


def summary_lines(scores: dict[str, HeadScores], baselines: dict[str, float], threshold: float | None = None,
                  top: int = 5) -> list[str]:
    """Per metric: the uniform-attention baseline and the `top` best heads; heads above `threshold` if given."""
    lines = []
    for name, values in scores.items():
        base = f" (uniform attention {baselines[name]:.3f})" if name in baselines else ""
        best = ", ".join(f"{head.label} {score:.3f}" for head, score in values.top(top))
        lines.append(f"{name}{base}: {best}")
        if threshold is not None and name == "induction":
            above = values.above(threshold)
            lines.append(f"induction heads (> {threshold:g}): {' '.join(h.label for h in above) or 'none'}")
    return lines


def ablation_lines(records: list[dict]) -> list[str]:
    """Loss with no ablation, the top heads ablated, and random heads ablated (mean +- s.d.)."""
    pick = {kind: [r["loss"] for r in records if r["kind"] == kind] for kind in ("none", "top", "random")}
    top = next(r for r in records if r["kind"] == "top")
    return [f"ablation (loss on the repeated half, nats): none {pick['none'][0]:.3f}, top {len(top['heads'])} "
            f"heads {pick['top'][0]:.3f}, random {np.mean(pick['random']):.3f} ± {np.std(pick['random']):.3f} "
            f"({len(pick['random'])} draws); first (unrepeated) half, no ablation "
            f"{records[0]['loss_first_half']:.3f}"]


def write_score_set(out_dir: str | os.PathLike, title: str, scores: dict[str, HeadScores],
                    baselines: dict[str, float], subject: Subject, config: dict, seed: int,
                    ablation: list[dict] | None = None, notes: Sequence[str] = ()) -> list[Path]:
    """`{metric}.json` per metric, scores.csv (all metrics), summary.json, ablation files, dashboard.html."""
    out = ensure_writable_dir(out_dir)
    header = provenance(subject.model_id, subject.weights_sha256, config, seed)
    scores = {name: dataclasses.replace(values, config=config, provenance=header) for name, values in scores.items()}
    paths = [values.to_json(out / f"{name}.json") for name, values in scores.items()]
    records = [record for values in scores.values() for record in values.to_records()]
    paths.append(write_records_csv(out / SCORES_CSV, records, RECORD_KEYS))
    summary = [{"metric": name, "uniform_baseline": baselines.get(name),
                "top": [{"head": h.label, "score": s} for h, s in values.top(10)]} for name, values in scores.items()]
    paths.append(write_records_json(out / SUMMARY_JSON, header, summary))
    figures = []
    for name, values in scores.items():
        base = f" (uniform attention: {baselines[name]:.3f})" if name in baselines else ""
        figures.append(head_heatmap(values, f"{name} per head{base}: {subject.model_id}"))
    first = next(iter(scores.values()))
    figures.append(top_heads_table(first))
    if ablation:
        paths.append(write_records_json(out / ABLATION_JSON, header, ablation))
        rows = [{**r, "heads": " ".join(r["heads"])} for r in ablation]
        paths.append(write_records_csv(out / ABLATION_CSV, rows, ABLATION_KEYS))
        figures.append(ablation_figure(ablation, "Mean-ablating the top heads vs as many random heads"))
    page = dashboard_html(title, figures, notes="\n".join(notes), provenance=header)
    paths.append(write_dashboard(out / DASHBOARD, page))
    return paths


def run_induction_scan(subject: Subject, config: InductionConfig, out_dir: str | os.PathLike, *,
                       ablate_k: int | None = None, n_draws: int = 5, run_info: dict | None = None,
                       verbose: bool = True) -> tuple[dict[str, HeadScores], dict[str, float], list[dict]]:
    """Score every head, optionally mean-ablate the top `ablate_k` induction heads vs random ones (0: as many as
    score above the threshold), and write every file. Returns (scores, baselines, ablation records)."""
    out = ensure_writable_dir(out_dir)
    result = find_induction_heads(subject, config, verbose)
    ablation = []
    if ablate_k is not None:
        k = ablate_k or len(result.induction_heads(config.threshold))
        if k == 0:
            raise MechkitError(f"no head scores above the induction threshold {config.threshold}; pass --ablate K")
        ablation = ablation_check(subject, result.scores["induction"], k, n_draws, config.seq_len,
                                  config.n_sequences, config.seed, verbose)
    recorded = {**config.to_dict(), **(run_info or {"backend": subject.backend})}
    notes = summary_lines(result.scores, result.baselines, config.threshold)
    notes += ablation_lines(ablation) if ablation else []
    write_score_set(out, f"Induction-family heads: {subject.model_id}", result.scores, result.baselines, subject,
                    recorded, config.seed, ablation, notes)
    return result.scores, result.baselines, ablation


def run_ngram_scan(subject: Subject, config: NgramConfig, out_dir: str | os.PathLike, *,
                   texts: Sequence[str] | None = None, run_info: dict | None = None, verbose: bool = True
                   ) -> tuple[dict[str, HeadScores], dict[str, float]]:
    """Order-n scores of every head and every file. Returns (scores, baselines)."""
    out = ensure_writable_dir(out_dir)
    result = find_ngram_heads(subject, config, texts, verbose)
    recorded = {**config.to_dict(), **(run_info or {"backend": subject.backend})}
    notes = summary_lines(result.scores, result.baselines)
    write_score_set(out, f"n-gram heads: {subject.model_id}", result.scores, result.baselines, subject, recorded,
                    config.seed, notes=notes)
    return result.scores, result.baselines
