"""Figure of an ablation check: loss with the top heads ablated vs as many random heads vs none."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import plotly.graph_objects as go


def ablation_figure(records: Iterable[Mapping], title: str = "Ablation check") -> go.Figure:
    """Bars of mean loss for "none", "top" and "random" records (random: mean +- s.d. over draws); hovering a bar
    lists the heads ablated. Records as from `mechkit.probes.induction.ablation_check`."""
    records = list(records)
    bars = []
    for kind, name in (("none", "no ablation"), ("top", "top heads"), ("random", "random heads")):
        chosen = [r for r in records if r["kind"] == kind]
        if chosen:
            losses = [r["loss"] for r in chosen]
            heads = "<br>".join(" ".join(r["heads"]) or "(none)" for r in chosen)
            bars.append((name, float(np.mean(losses)), float(np.std(losses)), len(chosen), heads))
    fig = go.Figure(go.Bar(
        x=[b[0] for b in bars], y=[b[1] for b in bars],
        error_y={"type": "data", "array": [b[2] for b in bars], "visible": True},
        customdata=[[b[3], b[4]] for b in bars],
        hovertemplate="%{x}: loss %{y:.3f} (%{customdata[0]} run(s))<br>%{customdata[1]}<extra></extra>",
    ))
    return fig.update_layout(title=title, yaxis={"title": "loss on the repeated half (nats)"}, plot_bgcolor="white")
