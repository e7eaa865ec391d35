"""Figures of per-head scores: a layer x head heatmap and a table of the top heads."""

from __future__ import annotations

import plotly.graph_objects as go

from mechkit.scores import HeadScores


def _tick_step(n: int) -> int:
    """Integer tick spacing giving at most ~16 ticks on an axis of `n` cells."""
    return max(1, -(-n // 16))


def _head_axis_title(scores: HeadScores) -> str:
    return "KV head" if scores.head_kind == "kv" else "head"


def head_heatmap(scores: HeadScores, title: str | None = None) -> go.Figure:
    """Heatmap of `scores.scores`: layer on y (layer 0 at the top), head on x, unscored (NaN) heads left blank.

    Hovering a cell shows `L{l}H{h}` and `{metric}: {score}`; the colorbar is titled with the metric.
    """
    labels = scores.labels()
    grid_labels = [labels[layer * scores.n_heads:(layer + 1) * scores.n_heads] for layer in range(scores.n_layers)]
    heatmap = go.Heatmap(
        z=scores.scores.tolist(),
        x=list(range(scores.n_heads)),
        y=list(range(scores.n_layers)),
        customdata=grid_labels,
        hovertemplate=f"%{{customdata}}<br>{scores.metric}: %{{z:~.4g}}<extra></extra>",
        hoverongaps=False,
        colorscale="Viridis",
        colorbar={"title": {"text": scores.metric}},
    )
    fig = go.Figure(heatmap)
    fig.update_layout(
        title=title if title is not None else f"{scores.metric} per head: {scores.model}",
        xaxis={"title": _head_axis_title(scores), "dtick": _tick_step(scores.n_heads)},
        yaxis={"title": "layer", "dtick": _tick_step(scores.n_layers), "autorange": "reversed"},
        plot_bgcolor="white",
    )
    return fig


def top_heads_table(scores: HeadScores, k: int = 20) -> go.Figure:
    """Table of the `k` highest-scoring heads (rank, head label, layer, head, score), NaN heads skipped."""
    top = scores.top(k)
    columns = {
        "rank": list(range(1, len(top) + 1)),
        _head_axis_title(scores): [head.label for head, _ in top],
        "layer": [head.layer for head, _ in top],
        "index": [head.head for head, _ in top],
        scores.metric: [score for _, score in top],
    }
    table = go.Table(
        header={"values": list(columns)},
        cells={"values": list(columns.values()), "format": ["", "", "", "", ".4~g"]},
    )
    return go.Figure(table).update_layout(
        title=f"Top {len(top)} heads by {scores.metric}: {scores.model}", height=160 + 24 * len(top)
    )
