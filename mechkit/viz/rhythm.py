"""Figures of the preplan-and-anchor rhythm: a WAAD / FAI token timeline per response, and the coupling table.

Both read results (objects with `index`, `tokens`, `waad`, `fai`, `preplan`, `anchor`; coupling records), never a
model. The span heatmap is `head_heatmap(result.spans)`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

TRACES_PER_RESPONSE = 4  # WAAD line, FAI line, preplan markers, anchor markers


def token_label(token: str) -> str:
    """A token as a quoted, escaped string readable in a hover label (newlines as \\n, spaces kept visible)."""
    return html.escape(json.dumps(token, ensure_ascii=False), quote=False)


def _response_traces(response, visible: bool) -> list[go.Scatter]:
    x = np.arange(len(response.tokens))
    labels = [token_label(t) for t in response.tokens]
    waad, fai = np.asarray(response.waad, dtype=float), np.asarray(response.fai, dtype=float)
    preplan, anchor = np.asarray(response.preplan, dtype=bool), np.asarray(response.anchor, dtype=bool)
    hover = "token %{x}: %{customdata}<br>"
    return [
        go.Scatter(x=x, y=waad, customdata=labels, mode="lines+markers", name="WAAD (local heads)",
                   marker={"size": 4, "color": "#1f77b4"}, line={"color": "#1f77b4"}, visible=visible,
                   hovertemplate=hover + "WAAD %{y:.3f}<extra></extra>"),
        go.Scatter(x=x, y=fai, customdata=labels, mode="lines+markers", name="FAI (global heads)", yaxis="y2",
                   marker={"size": 4, "color": "#ff7f0e"}, line={"color": "#ff7f0e"}, visible=visible,
                   hovertemplate=hover + "FAI %{y:.4f}<extra></extra>"),
        go.Scatter(x=x[preplan], y=waad[preplan], customdata=np.array(labels, dtype=object)[preplan],
                   mode="markers", name="preplan tokens (top-q WAAD jump)", visible=visible,
                   marker={"symbol": "triangle-up", "size": 10, "color": "#d62728"},
                   hovertemplate=hover + "preplan, WAAD %{y:.3f}<extra></extra>"),
        go.Scatter(x=x[anchor], y=fai[anchor], customdata=np.array(labels, dtype=object)[anchor], mode="markers",
                   name="anchor tokens (top-q FAI)", yaxis="y2", visible=visible,
                   marker={"symbol": "diamond", "size": 10, "color": "#2ca02c"},
                   hovertemplate=hover + "anchor, FAI %{y:.4f}<extra></extra>"),
    ]


def _title(title: str, response) -> str:
    problem = getattr(response, "problem", None)
    question = f": {html.escape(problem.question, quote=False)}" if problem is not None else ""
    return f"{title}<br><sup>problem {response.index}{question}</sup>"


def rhythm_timeline(responses: Sequence, title: str = "Attention rhythm over the response") -> go.Figure:
    """WAAD (left axis, tokens) and FAI (right axis) over each response's tokens, preplan tokens marked on the WAAD
    line and anchor tokens on the FAI line. With several responses a dropdown picks one (the first is shown); the
    subtitle names the problem (and its question when the response has a `problem`). Hovering a point shows the
    token index, the token text and the value."""
    fig = go.Figure()
    for i, response in enumerate(responses):
        fig.add_traces(_response_traces(response, visible=i == 0))
    if len(responses) > 1:
        buttons = []
        for i, response in enumerate(responses):
            visible = [j // TRACES_PER_RESPONSE == i for j in range(TRACES_PER_RESPONSE * len(responses))]
            buttons.append({"label": f"problem {response.index}", "method": "update",
                            "args": [{"visible": visible}, {"title.text": _title(title, response)}]})
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.2,
                                        "yanchor": "bottom"}])
    fig.update_layout(
        title=_title(title, responses[0]) if responses else title, hovermode="closest", plot_bgcolor="white",
        legend={"orientation": "h", "y": -0.2}, margin={"t": 110},
        xaxis={"title": "response token", "showgrid": True, "gridcolor": "#eee"},
        yaxis={"title": "WAAD (tokens)", "showgrid": True, "gridcolor": "#eee"},
        yaxis2={"title": "FAI (attention)", "overlaying": "y", "side": "right", "showgrid": False,
                "tickmode": "auto"},
    )
    return fig


def coupling_table(records: Sequence[Mapping]) -> go.Figure:
    """Table of the coupling statistics: observed, shuffled mean ± s.d., permutation p-value, tokens, shuffles."""
    columns = {
        "statistic": [r["statistic"] for r in records],
        "observed": [r["observed"] for r in records],
        "shuffled mean": [r["shuffled_mean"] for r in records],
        "shuffled s.d.": [r["shuffled_sd"] for r in records],
        "p (shuffled >= observed)": [r["p_value"] for r in records],
        "tokens": [r["n"] for r in records],
        "shuffles": [r["n_shuffles"] for r in records],
    }
    table = go.Table(header={"values": list(columns)},
                     cells={"values": list(columns.values()), "format": ["", ".4f", ".4f", ".4f", ".3f", "", ""]})
    return go.Figure(table).update_layout(title="Coupling statistics vs shuffled positions",
                                          height=190 + 30 * len(records))
