"""Figures of a binding analysis: task accuracy, mechanism shares by layer and by query position, the mixing-model
fit and linear-probe accuracy per layer. Each takes plain results and returns a `plotly.graph_objects.Figure`."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

from mechkit.probes.binding_mechanisms import MECHANISMS

COLORS = {"positional": "#1f77b4", "lexical": "#2ca02c", "reflexive": "#d62728", "no_effect": "#7f7f7f",
          "other": "#bcbd22"}


def accuracy_figure(accuracy, title: str = "Task accuracy") -> go.Figure:
    """Accuracy per queried position, one line per number of groups, with chance as dotted lines
    (`accuracy` a `mechkit.probes.binding.TaskAccuracy`)."""
    fig = go.Figure()
    for n, run in accuracy.runs.items():
        fig.add_scatter(x=list(range(n)), y=run.by_position(), mode="lines+markers",
                        name=f"{n} groups: {run.accuracy:.2f} (chance {run.chance:.2f})",
                        hovertemplate=f"{n} groups, position %{{x}}: accuracy %{{y:.2f}}<extra></extra>")
        fig.add_scatter(x=[0, n - 1], y=[run.chance] * 2, mode="lines", line={"dash": "dot", "width": 1},
                        showlegend=False, hoverinfo="skip")
    return fig.update_layout(title=title, xaxis={"title": "queried group position", "dtick": 1},
                             yaxis={"title": "accuracy", "range": [0, 1.05]}, plot_bgcolor="white")


def mechanism_layers_figure(result, title: str = "Mechanism shares by layer", only_correct: bool = True) -> go.Figure:
    """Share of each outcome (positional, lexical, reflexive, no effect, other) against the patched layer
    (`result` a `mechkit.probes.binding_mechanisms.InterchangeResult`). only_correct: as in `InterchangeResult.shares`."""
    shares = result.shares(only_correct)
    fig = go.Figure()
    for m, name in enumerate(MECHANISMS):
        fig.add_scatter(x=result.layers, y=shares[:, m].tolist(), mode="lines+markers", name=name,
                        line={"color": COLORS[name]},
                        hovertemplate=f"layer %{{x}}: {name} %{{y:.2f}}<extra></extra>")
    return fig.update_layout(title=title, xaxis={"title": "layer patched (last-token resid_pre)"},
                             yaxis={"title": "share of pairs", "range": [0, 1.02]}, plot_bgcolor="white")


def mechanism_grid(result, mechanism: str = "positional", title: str | None = None,
                   only_correct: bool = True) -> go.Figure:
    """Heatmap of one mechanism's share: layer (rows) x counterfactual query position (columns); hovering a cell
    shows `L{layer} position {q}` and the share."""
    m = MECHANISMS.index(mechanism)
    z = torch.stack([result.shares_by_position(layer, only_correct)[:, m] for layer in result.layers])
    labels = [[f"L{layer} position {q}" for q in range(result.n_groups)] for layer in result.layers]
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=list(range(result.n_groups)), y=result.layers, customdata=labels,
                               hovertemplate=f"%{{customdata}}<br>{mechanism}: %{{z:.2f}}<extra></extra>",
                               hoverongaps=False, zmin=0, zmax=1, colorscale="Viridis",
                               colorbar={"title": {"text": mechanism}}))
    return fig.update_layout(title=title or f"{mechanism} share by layer and query position",
                             xaxis={"title": "counterfactual query position", "dtick": 1},
                             yaxis={"title": "layer", "autorange": "reversed"}, plot_bgcolor="white")


def mechanism_positions_figure(result, layer: int, title: str | None = None, only_correct: bool = True) -> go.Figure:
    """Stacked outcome shares per counterfactual query position at `layer` (the lost-in-the-middle picture)."""
    shares = result.shares_by_position(layer, only_correct)
    fig = go.Figure()
    for m, name in enumerate(MECHANISMS):
        fig.add_bar(x=list(range(result.n_groups)), y=shares[:, m].tolist(), name=name, marker_color=COLORS[name],
                    hovertemplate=f"position %{{x}}: {name} %{{y:.2f}}<extra></extra>")
    return fig.update_layout(barmode="stack", title=title or f"Mechanism shares by query position, layer {layer}",
                             xaxis={"title": "counterfactual query position", "dtick": 1},
                             yaxis={"title": "share of pairs", "range": [0, 1.02]}, plot_bgcolor="white")


def mixing_fit_figure(observed, predicted, agreement: float, title: str | None = None) -> go.Figure:
    """Observed vs fitted probability of every answer position in the held-out cells ([cells, n] each)."""
    observed, predicted = torch.as_tensor(observed).flatten(), torch.as_tensor(predicted).flatten()
    fig = go.Figure(go.Scatter(x=observed.tolist(), y=predicted.tolist(), mode="markers", marker={"size": 5},
                               hovertemplate="observed %{x:.3f}<br>mixing model %{y:.3f}<extra></extra>",
                               name="held-out cells"))
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999"}, showlegend=False,
                    hoverinfo="skip")
    return fig.update_layout(title=title or f"Mixing model on held-out cells: agreement {agreement:.3f} (1 - JSD)",
                             xaxis={"title": "model's answer probability", "range": [0, 1]},
                             yaxis={"title": "mixing model's probability", "range": [0, 1]}, plot_bgcolor="white")


def probe_figure(layers: Sequence, accuracy: Sequence[float], control: Sequence[float], chance: float,
                 title: str = "Linear probe accuracy by layer") -> go.Figure:
    """Cross-validated probe accuracy and its shuffled-label control per layer, with the chance level."""
    fig = go.Figure()
    fig.add_scatter(x=list(layers), y=list(accuracy), mode="lines+markers", name="probe",
                    hovertemplate="layer %{x}: accuracy %{y:.3f}<extra></extra>")
    fig.add_scatter(x=list(layers), y=list(control), mode="lines+markers", name="shuffled-label control",
                    hovertemplate="layer %{x}: control %{y:.3f}<extra></extra>")
    fig.add_scatter(x=[layers[0], layers[-1]], y=[chance] * 2, mode="lines", name=f"chance {chance:.2f}",
                    line={"dash": "dot", "color": "#999"}, hoverinfo="skip")
    return fig.update_layout(title=title, xaxis={"title": "layer"}, yaxis={"title": "accuracy", "range": [0, 1.02]},
                             plot_bgcolor="white")
