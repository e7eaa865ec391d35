"""Files of an attention-rhythm run: spans.json / spans.csv (per-head spans), tokens.csv (per response token),
coupling.json (statistics with a provenance header) and dashboard.html; `mechkit attention-rhythm` writes them
with `write_rhythm_outputs`, which also serves notebooks. Every file is written atomically."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mechkit.probes.preplan_anchor import RhythmConfig, RhythmResult, waad_delta
from mechkit.probes.rhythm_coupling import COUPLING_KEYS
from mechkit.results import ensure_writable_dir, provenance, write_records_csv, write_records_json
from mechkit.subject import Subject
from mechkit.viz import dashboard_html, head_heatmap, write_dashboard
from mechkit.viz.rhythm import coupling_table, rhythm_timeline

SPANS_JSON, SPANS_CSV, TOKENS_CSV, COUPLING_JSON, DASHBOARD = (
    "spans.json", "spans.csv", "tokens.csv", "coupling.json", "dashboard.html")
TOKEN_KEYS = ("problem", "index", "token_id", "token", "waad", "waad_delta", "fai", "entropy", "is_preplan",
              "is_anchor")


def token_records(result: RhythmResult) -> list[dict]:
    """One record per response token (keys `TOKEN_KEYS`; FAI NaN for the last h_lo tokens, Δ NaN for the last)."""
    rows = []
    for r in result.responses:
        delta = waad_delta(r.waad)
        for i, (token_id, token) in enumerate(zip(r.response_ids, r.tokens)):
            rows.append({"problem": r.index, "index": i, "token_id": token_id, "token": token,
                         "waad": float(r.waad[i]), "waad_delta": float(delta[i]), "fai": float(r.fai[i]),
                         "entropy": float(r.entropy[i]), "is_preplan": int(r.preplan[i]),
                         "is_anchor": int(r.anchor[i])})
    return rows


def _span_range(result: RhythmResult, heads) -> str:
    values = [result.spans[head] for head in heads]
    return f"{min(values):.1f}-{max(values):.1f} tokens"


def summary_lines(result: RhythmResult) -> list[str]:
    """Responses measured, the head split, and each coupling statistic (observed vs shuffled, p) as lines."""
    lengths = [len(r.tokens) for r in result.responses]
    n_heads = result.spans.n_layers * result.spans.n_heads
    lines = [
        f"responses: {len(lengths)} measured ({sum(lengths)} tokens, {min(lengths)}-{max(lengths)} each)"
        + (f", {len(result.skipped)} skipped as too short (problems {result.skipped})" if result.skipped else ""),
        f"local heads: {len(result.local_heads)} of {n_heads} (span {_span_range(result, result.local_heads)}); "
        f"global heads: {len(result.global_heads)} (span {_span_range(result, result.global_heads)})",
    ]
    for r in result.coupling:
        lines.append(f"{r['statistic']}: {r['observed']:.4f} vs shuffled {r['shuffled_mean']:.4f} "
                     f"± {r['shuffled_sd']:.4f} (p = {r['p_value']:.3f}, {r['n']} tokens, {r['n_shuffles']} shuffles)")
    return lines


def rhythm_dashboard(result: RhythmResult, header: dict | None = None) -> str:
    """The run's page: token timeline (a dropdown over the problems), span heatmap, coupling table, provenance."""
    model = result.spans.model
    figures = [
        rhythm_timeline(result.responses, f"WAAD and FAI over the response tokens: {model}"),
        head_heatmap(result.spans, f"Attention span per head (mean distance, tokens): {model}"),
        coupling_table(result.coupling),
    ]
    return dashboard_html(f"Preplan-and-anchor rhythm: {model}", figures, notes="\n".join(summary_lines(result)),
                          provenance=header or result.spans.provenance)


def _problems(result: RhythmResult) -> list[dict]:
    return [{"problem": r.index, "question": r.problem.question if r.problem else None,
             "answer": r.problem.answer if r.problem else None, "n_tokens": len(r.tokens), "response": r.text}
            for r in result.responses]


def write_rhythm_outputs(out_dir: str | os.PathLike, result: RhythmResult, subject: Subject, config: RhythmConfig,
                         run_info: dict | None = None) -> list[Path]:
    """spans.json, spans.csv, tokens.csv, coupling.json and dashboard.html in `out_dir`.

    `run_info` (e.g. backend, device, dtype) is added to the recorded config. coupling.json's header also lists the
    local and global heads, the skipped problems and each measured problem with its response.
    """
    out = ensure_writable_dir(out_dir)
    recorded = {**config.to_dict(), **(run_info or {"backend": subject.backend})}
    header = provenance(subject.model_id, subject.weights_sha256, recorded, config.seed)
    spans = dataclasses.replace(result.spans, config=recorded, provenance=header)
    result = dataclasses.replace(result, spans=spans)
    coupling_header = {**header, "local_heads": [h.label for h in result.local_heads],
                       "global_heads": [h.label for h in result.global_heads], "skipped": result.skipped,
                       "problems": _problems(result)}
    records = [{key: r[key] for key in COUPLING_KEYS} for r in result.coupling]
    return [
        spans.to_json(out / SPANS_JSON),
        spans.to_csv(out / SPANS_CSV),
        write_records_csv(out / TOKENS_CSV, token_records(result), TOKEN_KEYS),
        write_records_json(out / COUPLING_JSON, coupling_header, records),
        write_dashboard(out / DASHBOARD, rhythm_dashboard(result, header)),
    ]
