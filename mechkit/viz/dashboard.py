"""One self-contained HTML dashboard page: plotly.js inlined once, no network needed to open it."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from mechkit.results import atomic_write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
.notes { white-space: pre-wrap; }
table.provenance { border-collapse: collapse; font-size: 0.8em; margin-top: 2em; }
table.provenance td { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; }
table.provenance pre { margin: 0; white-space: pre-wrap; }
"""


def _provenance_table(provenance: dict) -> str:
    """Small key/value HTML table; non-string values shown as JSON."""
    rows = []
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True)
        rows.append(f"<tr><td>{html.escape(str(key))}</td><td><pre>{html.escape(text)}</pre></td></tr>")
    return f'<table class="provenance"><caption>Provenance</caption>{"".join(rows)}</table>'


def dashboard_html(title: str, figures: list[go.Figure], notes: str = "", provenance: dict | None = None) -> str:
    """HTML page with `title`, `notes` (plain text), each figure in order, then a provenance table if given."""
    plots = [fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}) for fig in figures]
    notes_html = f'<p class="notes">{html.escape(notes)}</p>' if notes else ""
    provenance_html = _provenance_table(provenance) if provenance else ""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        notes_html,
        *plots,
        provenance_html,
        "</body></html>",
    ])


def write_dashboard(path: str | os.PathLike, html_text: str) -> Path:
    """Write the page atomically (temp file + rename)."""
    return atomic_write_text(path, html_text)
