"""Outputs of `mechkit conflict-heads`: heads.csv (signed scores, kind and rank), pruning.csv (the pruning table
averaged over random draws), summary.json (provenance and headline lines) and dashboard.html."""

from __future__ import annotations

import os
from pathlib import Path

from mechkit.results import ensure_writable_dir, provenance, write_records_csv, write_records_json

HEADS_CSV, PRUNING_CSV, SUMMARY_JSON, DASHBOARD = "heads.csv", "pruning.csv", "summary.json", "dashboard.html"
HEAD_KEYS = ("model", "layer", "head", "label", "metric", "score", "kind", "rank", "n_items", "seed")
PRUNING_KEYS = ("model", "mode", "kind", "k", "n_draws", "follows_context", "follows_memory", "mean_ld", "knows",
                "no_context_ld")


def summary_lines(result) -> list[str]:
    """Headline lines: the top heads of each kind and the follows-context share before and after pruning."""
    def listed(heads) -> str:
        return ", ".join(f"{h.label} {float(result.scores.scores[h.layer, h.head]):+.3f}" for h in heads)

    lines = [f"{result.scores.model}: {result.config.get('n')} conflict prompts, follows context "
             f"{result.follows_context:.3f} unpruned (mean LD {result.clean_ld:+.2f})",
             f"memory heads: {listed(result.memory_heads)}", f"context heads: {listed(result.context_heads)}"]
    for row in sorted(result.summary(), key=lambda r: (r["mode"], r["k"], r["kind"])):
        lines.append(f"{row['mode']} ablation, k={row['k']}, {row['kind']} heads pruned: follows context "
                     f"{row['follows_context']:.3f}")
    return lines


def write_conflict_outputs(out_dir: str | os.PathLike, result, subject, run_info: dict | None = None) -> list[Path]:
    """heads.csv, pruning.csv (when pruning ran), summary.json and dashboard.html in `out_dir`."""
    from mechkit.viz.conflicts import conflict_dashboard

    out = ensure_writable_dir(out_dir)
    header = provenance(subject.model_id, subject.weights_sha256, {**result.config, **(run_info or {})},
                        result.config.get("seed"))
    lines = summary_lines(result)
    paths = [write_records_csv(out / HEADS_CSV, result.head_records(), HEAD_KEYS)]
    if result.records:
        paths.append(write_records_csv(out / PRUNING_CSV, result.summary(), PRUNING_KEYS))
    paths.append(write_records_json(out / SUMMARY_JSON, header, [{"line": line} for line in lines]))
    paths.append(conflict_dashboard(out / DASHBOARD, result, header, notes="\n".join(lines)))
    return paths
