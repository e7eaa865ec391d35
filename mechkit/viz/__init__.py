"""Figures (return `plotly.graph_objects.Figure`) and the offline HTML dashboard writer."""

from mechkit.viz.ablation import ablation_figure
from mechkit.viz.dashboard import dashboard_html, write_dashboard
from mechkit.viz.heatmap import head_heatmap, top_heads_table
from mechkit.viz.retrieval import masking_figure, recall_grid

__all__ = [
    "ablation_figure", "dashboard_html", "head_heatmap", "masking_figure", "recall_grid", "top_heads_table",
    "write_dashboard",
]
