"""Figures of a retrieval-head scan: NIAH recall over length x depth, and the masking curves.

Both read plain results (trial outcomes or their JSONL dicts, masking records), never a model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np
import plotly.graph_objects as go


def _get(item, key: str):
    return item[key] if isinstance(item, Mapping) else getattr(item, key)


def recall_grid(outcomes: Iterable) -> go.Figure:
    """Heatmap of mean ROUGE-1 recall over needles: context length (tokens) on y, needle depth (%) on x.

    `outcomes` are `TrialOutcome`s or their dicts (fields context_length, depth_percent, recall, counted). Hovering
    a cell names its length, depth, mean recall and how many of its trials were counted (recall > 0.5).
    """
    cells: dict[tuple[int, float], list] = defaultdict(list)
    for o in outcomes:
        cells[(int(_get(o, "context_length")), float(_get(o, "depth_percent")))].append(o)
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    z, counts = [], []
    for length in lengths:
        row_z, row_n = [], []
        for depth in depths:
            group = cells.get((length, depth), [])
            row_z.append(float(np.mean([_get(o, "recall") for o in group])) if group else None)
            row_n.append(f"{sum(bool(_get(o, 'counted')) for o in group)} of {len(group)}")
        z.append(row_z)
        counts.append(row_n)
    heatmap = go.Heatmap(
        z=z, x=[f"{d:g}" for d in depths], y=[str(length) for length in lengths], customdata=counts,
        zmin=0.0, zmax=1.0, colorscale="Viridis", hoverongaps=False,
        colorbar={"title": {"text": "recall"}},
        hovertemplate="length %{y} tokens<br>depth %{x}%<br>recall %{z:.3f}<br>counted %{customdata}"
                      "<extra></extra>",
    )
    fig = go.Figure(heatmap)
    fig.update_layout(
        title="Needle-in-a-haystack recall (ROUGE-1, mean over needles)",
        xaxis={"title": "needle depth (%)", "type": "category"},
        yaxis={"title": "context length (tokens)", "type": "category"},
        plot_bgcolor="white",
    )
    return fig


def masking_figure(records: Iterable[Mapping]) -> go.Figure:
    """NIAH recall vs k: top-k retrieval heads masked, k random heads masked (mean +- standard deviation over
    draws), and the unmasked baseline as a dashed line. Records as from `masking_curves`."""
    records = list(records)
    top = sorted((r["k"], r["recall"]) for r in records if r["kind"] == "top")
    draws: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r["kind"] == "random":
            draws[r["k"]].append(r["recall"])
    ks = sorted({r["k"] for r in records if r["kind"] != "none"})
    fig = go.Figure()
    if top:
        fig.add_trace(go.Scatter(
            x=[k for k, _ in top], y=[v for _, v in top], mode="lines+markers", name="top-k retrieval heads masked",
            hovertemplate="top %{x} heads masked<br>recall %{y:.3f}<extra></extra>",
        ))
    if draws:
        rk = sorted(draws)
        n = max(len(v) for v in draws.values())
        fig.add_trace(go.Scatter(
            x=rk, y=[float(np.mean(draws[k])) for k in rk], mode="lines+markers",
            error_y={"type": "data", "array": [float(np.std(draws[k])) for k in rk], "visible": True},
            name=f"random k heads masked (mean ± s.d., {n} draws)",
            hovertemplate="%{x} random heads masked<br>recall %{y:.3f}<extra></extra>",
        ))
    baseline = [r["recall"] for r in records if r["kind"] == "none"]
    if baseline:
        xs = [min(ks), max(ks)] if ks else [0, 1]
        fig.add_trace(go.Scatter(
            x=xs, y=[baseline[0]] * 2, mode="lines", line={"dash": "dash", "color": "gray"}, name="no masking",
            hovertemplate="no masking<br>recall %{y:.3f}<extra></extra>",
        ))
    fig.update_layout(
        title="Masking retrieval heads vs random heads (uniform attention)",
        xaxis={"title": "k (heads masked)", "tickvals": ks},
        yaxis={"title": "NIAH recall (ROUGE-1)", "range": [0, 1.05]},
        plot_bgcolor="white",
    )
    return fig
