"""Figures (return `plotly.graph_objects.Figure`) and the offline HTML dashboard writer."""

from mechkit.viz.dashboard import dashboard_html, write_dashboard
from mechkit.viz.heatmap import head_heatmap, top_heads_table

__all__ = ["dashboard_html", "head_heatmap", "top_heads_table", "write_dashboard"]
