"""Figures of memory vs context heads (`mechkit.circuits.conflict_heads.ConflictHeadsResult`): the signed head scores
and the share of conflict prompts that follow the context after pruning k heads of each kind."""

from __future__ import annotations

import os
from pathlib import Path

import plotly.graph_objects as go

from mechkit.viz.dashboard import dashboard_html, write_dashboard
from mechkit.viz.heatmap import head_heatmap

COLORS = {"memory": "#d62728", "context": "#1f77b4", "random": "#7f7f7f"}


def pruning_figure(result) -> go.Figure:
    """Share of conflict prompts following the context vs k, one line per pruned kind and ablation mode (random:
    mean over draws); the unpruned share as a dashed line."""
    fig = go.Figure()
    for row_mode in sorted({row["mode"] for row in result.summary()}):
        for kind, color in COLORS.items():
            rows = sorted((r for r in result.summary() if r["mode"] == row_mode and r["kind"] == kind),
                          key=lambda r: r["k"])
            if rows:
                fig.add_trace(go.Scatter(x=[r["k"] for r in rows], y=[r["follows_context"] for r in rows],
                                         mode="lines+markers", name=f"{kind} heads pruned ({row_mode})",
                                         line={"color": color, "dash": "solid" if row_mode == "zero" else "dot"}))
    fig.add_hline(y=result.follows_context, line_dash="dash", annotation_text="unpruned")
    fig.update_layout(title="Conflict prompts that follow the context after pruning k heads",
                      xaxis_title="k (heads pruned)", yaxis_title="follows context", yaxis_range=[0, 1])
    return fig


def conflict_dashboard(path: str | os.PathLike, result, header: dict, notes: str = "") -> Path:
    """Write the self-contained page of `result`: the signed score heatmap (> 0 memory, < 0 context heads) and, when
    pruning ran, the pruning curves."""
    figures = [head_heatmap(result.scores, "Path-patching score on LD = logit(memory) - logit(context)")]
    if result.records:
        figures.append(pruning_figure(result))
    page = dashboard_html(f"Memory vs context heads: {result.scores.model}", figures, notes=notes, provenance=header)
    return write_dashboard(path, page)
