"""The retrieval dashboard in real headless Chromium: every figure renders offline, no console errors, and hovering
the head heatmap shows the head label (the pattern of tests/test_dashboard_browser.py)."""

import re

import pytest
import torch

from mechkit.probes.retrieval import RetrievalResult, TrialOutcome
from mechkit.probes.retrieval_io import retrieval_dashboard
from mechkit.scores import HeadScores
from mechkit.viz import write_dashboard

def synthetic_result() -> RetrievalResult:
    grid = torch.tensor([[0.0, 0.05, 0.0, 0.2], [0.3, 0.0, 0.0, 0.0], [0.0, 0.875, 0.1, 0.0]])
    config = {"model": "tiny", "lengths": [1000, 2000], "depths": [0, 50, 100], "threshold": 0.1}
    scores = HeadScores(grid, metric="retrieval", model="tiny", n_items=9, seed=0, config=config,
                        provenance={"schema_version": 1, "model": "tiny", "config": config, "seed": 0})
    outcomes = [
        TrialOutcome(f"{n}-{length}-{depth}", n, length, depth, length, "blue moon", recall, recall > 0.5)
        for n in range(2) for length in (1000, 2000) for depth in (0, 50, 100)
        for recall in [1.0 if (n + depth // 50) % 3 else 0.5]
    ]
    masking = [{"k": 0, "kind": "none", "draw": 0, "heads": [], "recall": 0.9}]
    for k in (1, 2):
        masking.append({"k": k, "kind": "top", "draw": 0, "heads": ["L2H1", "L1H0"][:k], "recall": 0.6 / k})
        masking += [{"k": k, "kind": "random", "draw": d, "heads": ["L0H0"] * k, "recall": 0.85 + 0.02 * d}
                    for d in range(3)]
    return RetrievalResult(scores, outcomes, masking)


@pytest.mark.browser
def test_retrieval_dashboard_renders_and_hover_shows_head(tmp_path, browser_page):
    path = write_dashboard(tmp_path / "dashboard.html", retrieval_dashboard(synthetic_result()))
    browser_page.open(path)
    page = browser_page.page
    assert page.locator(".plotly-graph-div").count() == 4  # heads, top table, recall grid, masking
    assert page.locator(".plotly-graph-div .heatmaplayer image").count() == 2
    assert page.locator(".plotly-graph-div .table").count() == 1
    assert page.locator(".plotly-graph-div .scatterlayer .trace").count() == 3  # top, random, baseline
    assert page.locator(".plotly-graph-div .errorbars path").count() >= 2  # random: mean +- s.d.
    assert "counted trials: 8 / 12" in page.inner_text("p.notes")

    page.locator(".plotly-graph-div").nth(0).scroll_into_view_if_needed()
    assert re.fullmatch(r"L2H1\s*retrieval: 0\.875", browser_page.hover_text(0, 2, 1))
    page.locator(".plotly-graph-div").nth(2).scroll_into_view_if_needed()
    recall = browser_page.hover_text(2, 1, 1)  # length 2000, depth 50 (category axes: row 1, column 1)
    assert "length 2000 tokens" in recall and "depth 50%" in recall and "recall" in recall
    assert browser_page.errors == [] and browser_page.failed == []
    assert browser_page.requested == [path.as_uri()]
