"""Heatmap/table figures and the offline dashboard: HTML checks, then a real headless-Chromium render and hover."""

import math
import re

import pytest
import torch

from mechkit.scores import HeadScores
from mechkit.viz import dashboard_html, head_heatmap, top_heads_table, write_dashboard

NAN = math.nan
# 3 layers x 4 heads. Target cell for the hover: layer 2, head 1 = 0.875. L0H1 is unscored.
GRID = [
    [0.25, NAN, 0.5, 0.0625],
    [0.125, 0.375, 0.625, 0.75],
    [0.0, 0.875, 0.1875, 0.3125],
]
PROVENANCE = {"schema_version": 1, "model": "tiny-<gpt>", "weights_sha256": "ab" * 32, "config": {"seed": 5},
              "seed": 5, "git_commit": None, "created": "2025-01-02T03:04:05+00:00"}


def make_scores():
    return HeadScores(torch.tensor(GRID), metric="retrieval", model="tiny-<gpt>", n_items=8, seed=5,
                      provenance=PROVENANCE)


def make_page():
    s = make_scores()
    return dashboard_html("Retrieval <heads>", [head_heatmap(s), top_heads_table(s, k=3)], notes="a < b\nline 2",
                          provenance=s.provenance)


def test_heatmap_figure_data():
    fig = head_heatmap(make_scores())
    trace = fig.data[0]
    assert trace.type == "heatmap"
    assert list(trace.x) == [0, 1, 2, 3] and list(trace.y) == [0, 1, 2]
    assert trace.z[2][1] == 0.875 and math.isnan(trace.z[0][1])
    assert trace.customdata[2][1] == "L2H1" and trace.customdata[0][3] == "L0H3"
    assert "%{customdata}" in trace.hovertemplate and "retrieval: %{z" in trace.hovertemplate
    assert trace.hoverongaps is False
    assert trace.colorbar.title.text == "retrieval"
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"


def test_heatmap_kv_axis_title():
    s = make_scores()
    s.head_kind = "kv"
    assert head_heatmap(s).layout.xaxis.title.text == "KV head"


def test_top_heads_table():
    table = top_heads_table(make_scores(), k=3).data[0]
    assert table.type == "table"
    assert list(table.cells.values[1]) == ["L2H1", "L1H3", "L1H2"]
    assert list(table.cells.values[4]) == [0.875, 0.75, 0.625]


def test_dashboard_html_self_contained():
    page = make_page()
    assert page.count("* plotly.js v") == 1  # library inlined exactly once
    assert page.count('class="plotly-graph-div"') == 2
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "cdn.plot.ly/plotly" not in page.split("</head>")[1]  # no CDN reference in the body
    assert "<title>Retrieval &lt;heads&gt;</title>" in page
    assert "a &lt; b\nline 2" in page
    assert '<table class="provenance">' in page and "<td>weights_sha256</td><td><pre>" + "ab" * 32 in page
    assert "tiny-&lt;gpt&gt;" in page and "tiny-<gpt>" not in page  # escaped in HTML and in the figure JSON


def test_dashboard_without_provenance_or_notes():
    page = dashboard_html("t", [])
    assert page.count("* plotly.js v") == 1
    assert '<table class="provenance">' not in page and '<p class="notes">' not in page


def test_write_dashboard_atomic(tmp_path):
    path = write_dashboard(tmp_path / "dash.html", "<html></html>")
    assert path.read_text() == "<html></html>" and [p.name for p in tmp_path.iterdir()] == ["dash.html"]


@pytest.mark.browser
def test_dashboard_renders_offline_and_hover_shows_head(tmp_path, browser_page):
    path = write_dashboard(tmp_path / "dashboard.html", make_page())
    browser_page.open(path)
    page = browser_page.page
    assert page.locator(".plotly-graph-div").count() == 2
    assert page.locator(".plotly-graph-div .heatmaplayer image").count() == 1  # the heatmap was drawn

    assert browser_page.hover_text(0, 0, 1) == ""  # the unscored cell is a gap: no hover label
    # The label's two lines are separate <tspan>s, so their text runs together.
    assert re.fullmatch(r"L2H1\s*retrieval: 0\.875", browser_page.hover_text(0, 2, 1))
    assert re.fullmatch(r"L1H3\s*retrieval: 0\.75", browser_page.hover_text(0, 1, 3))
    assert re.fullmatch(r"L0H3\s*retrieval: 0\.0625", browser_page.hover_text(0, 0, 3))
    assert browser_page.errors == [] and browser_page.failed == []
    assert browser_page.requested == [path.as_uri()]  # nothing but the page itself: no CDN, no network
