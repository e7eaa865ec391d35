"""Figures of a found circuit (`mechkit.circuits.find.CircuitResult`): the per-head heatmap, a head graph (heads at
(layer, head), top edges as lines) and the ROC curve against a ground truth; `circuit_dashboard` writes the page."""

from __future__ import annotations

import math
import os
from pathlib import Path

import plotly.graph_objects as go

from mechkit.heads import HeadId
from mechkit.viz.dashboard import dashboard_html, write_dashboard
from mechkit.viz.heatmap import head_heatmap

EMBED, LOGITS = "embed", "logits"
N_GRAPH_EDGES = 20


def _position(node: str, n_layers: int, n_heads: int) -> tuple[float, float]:
    """(x, y) of a graph node: heads at (layer, head); "embed" left of layer 0, "logits" right of the last layer."""
    if node == EMBED:
        return -1.0, (n_heads - 1) / 2
    if node == LOGITS:
        return float(n_layers), (n_heads - 1) / 2
    layer, head = node.split(".")[0][1:].split("H")
    return float(layer), float(head)


def head_graph(result, k: int = N_GRAPH_EDGES, title: str | None = None) -> go.Figure:
    """Heads as markers at (layer, head), coloured by score (hover: label and score; true heads ringed in red when
    known); the `k` best edges as lines (width by |score|, hover on the line's midpoint: sender -> receiver and
    score)."""
    scores = result.scores
    L, H = scores.n_layers, scores.n_heads
    truth = set(result.true_heads or ())
    fig = go.Figure()
    edges = result.edges[:k]
    top = max((abs(e["score"]) for e in edges), default=1.0) or 1.0
    mids_x, mids_y, mids_text = [], [], []
    for edge in edges:
        (x0, y0), (x1, y1) = (_position(edge[end], L, H) for end in ("sender", "receiver"))
        fig.add_scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                        line={"width": 1 + 5 * abs(edge["score"]) / top,
                              "color": "#d62728" if edge["score"] < 0 else "#1f77b4"}, opacity=0.6)
        mids_x.append((x0 + x1) / 2)
        mids_y.append((y0 + y1) / 2)
        mids_text.append(f"{edge['sender']} -> {edge['receiver']}<br>edge score: {edge['score']:.4g}")
    if edges:
        fig.add_scatter(x=mids_x, y=mids_y, mode="markers", marker={"size": 6, "color": "#999"}, text=mids_text,
                        hovertemplate="%{text}<extra></extra>", name=f"top {len(edges)} edges")
    labels, xs, ys, values, lines = [], [], [], [], []
    for layer in range(L):
        for head in range(H):
            value = float(scores.scores[layer, head])
            hid = HeadId(layer, head)
            labels.append(hid.label + (" (true)" if hid in truth else ""))
            xs.append(layer)
            ys.append(head)
            values.append(None if math.isnan(value) else value)
            lines.append(2 if hid in truth else 0)
    fig.add_scatter(x=xs, y=ys, mode="markers", text=labels, name="heads",
                    marker={"size": 16, "color": values, "colorscale": "Viridis", "showscale": True,
                            "colorbar": {"title": {"text": scores.metric}},
                            "line": {"width": lines, "color": "#d62728"}},
                    hovertemplate=f"%{{text}}<br>{scores.metric}: %{{marker.color:.4g}}<extra></extra>")
    if any(e["sender"] == EMBED or e["receiver"] == LOGITS for e in edges):
        fig.add_scatter(x=[-1, L], y=[(H - 1) / 2] * 2, mode="markers+text", text=[EMBED, LOGITS],
                        textposition="top center", marker={"size": 12, "color": "#444", "symbol": "square"},
                        hoverinfo="text", name="embed / logits")
    return fig.update_layout(title=title or f"Head graph ({result.method}): {scores.model}",
                             xaxis={"title": "layer", "dtick": 1}, yaxis={"title": "head", "dtick": 1},
                             legend={"orientation": "h", "y": -0.2}, plot_bgcolor="white")


def roc_figure(result, title: str | None = None) -> go.Figure:
    """ROC curve of the |score| ranking against `result.true_heads` (needs a ground truth with metrics)."""
    from sklearn.metrics import roc_curve

    from mechkit.circuits.find import ranking
    from mechkit.circuits.metrics import labelled

    fpr, tpr, thresholds = roc_curve(*labelled(ranking(result.scores), result.true_heads))
    auc = result.metrics["roc_auc"]
    fig = go.Figure(go.Scatter(x=fpr.tolist(), y=tpr.tolist(), mode="lines+markers", name=f"ROC-AUC {auc:.3f}",
                               customdata=[float(t) for t in thresholds],
                               hovertemplate="FPR %{x:.3f}, TPR %{y:.3f}<br>|score| >= %{customdata:.4g}"
                                             "<extra></extra>"))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, name="chance",
                    hoverinfo="skip")
    return fig.update_layout(title=title or f"ROC of {result.method} against the true heads: AUC {auc:.3f}",
                             xaxis={"title": "false positive rate", "range": [0, 1]},
                             yaxis={"title": "true positive rate", "range": [0, 1.02]}, plot_bgcolor="white")


def circuit_figures(result) -> list[go.Figure]:
    """Heatmap, head graph, and the ROC curve when ground-truth metrics exist."""
    figures = [head_heatmap(result.scores, f"{result.scores.metric} per head ({result.task}): {result.scores.model}"),
               head_graph(result)]
    if result.metrics is not None:
        figures.append(roc_figure(result))
    return figures


def circuit_dashboard(path: str | os.PathLike, result, header: dict) -> Path:
    """Write the self-contained page of `result` (notes: its summary lines) to `path`."""
    page = dashboard_html(f"Circuit ({result.method}, {result.task}): {result.scores.model}", circuit_figures(result),
                          notes="\n".join(result.summary_lines()), provenance=header)
    return write_dashboard(path, page)
