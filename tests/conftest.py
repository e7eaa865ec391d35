"""Shared fixtures: tiny random subjects on every backend, packaged real models when fetched."""

from __future__ import annotations

import os
import shutil

import pytest

# Triton kernels run on CPU only under its interpreter, which must be chosen before anything imports triton
# (torch itself does when triton is installed): decide once, here, before the tests import mechkit.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mechkit  # noqa: E402
from mechkit.errors import ModelNotFetchedError  # noqa: E402

REAL_MODELS = ("gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")  # scripts/setup.sh fetches


@pytest.fixture(scope="session")
def tiny_tl():
    return mechkit.load("tiny:llama", backend="tl")


@pytest.fixture(scope="session")
def tiny_nnsight():
    return mechkit.load("tiny:llama", backend="nnsight")


@pytest.fixture(scope="session")
def tiny_gemma():
    return mechkit.load("tiny:gemma3", backend="nnsight")


def _real(model_id: str, backend: str):
    try:
        return mechkit.load(model_id, backend=backend)
    except ModelNotFetchedError:
        pytest.skip(f"{model_id} is not fetched: run `mechkit models fetch {model_id}` (scripts/setup.sh does)")


@pytest.fixture(scope="session")
def gemma_tl():
    return _real("gemma-3-270m", "tl")


@pytest.fixture(scope="session")
def smollm_tl():
    return _real("smollm2-135m-instruct", "tl")


@pytest.fixture(scope="session")
def gemma_nnsight():
    return _real("gemma-3-270m", "nnsight")


@pytest.fixture(scope="session")
def qwen_nnsight():
    return _real("qwen2.5-coder-0.5b-instruct", "nnsight")


CHROMIUM = "/usr/bin/chromium"
# Viewport-pixel centre of cell (row, column) of the index-th plotly figure's heatmap (scrolled into view first).
CELL_CENTRE_JS = """([index, row, column]) => {
    const gd = document.querySelectorAll('.plotly-graph-div')[index];
    gd.scrollIntoView({block: 'center'});
    const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, box = gd.getBoundingClientRect();
    return [box.left + xa._offset + xa.l2p(column), box.top + ya._offset + ya.l2p(row)];
}"""


class BrowserPage:
    """A headless-Chromium page recording console errors, failed requests and every requested URL."""

    def __init__(self, page):
        self.page, self.errors, self.failed, self.requested = page, [], [], []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("requestfailed", lambda r: self.failed.append(r.url))
        page.on("request", lambda r: self.requested.append(r.url))

    def open(self, path) -> None:
        self.page.goto(path.as_uri(), wait_until="load")
        self.page.wait_for_selector(".plotly-graph-div .main-svg", state="attached", timeout=15000)

    def hover_text(self, index: int, row: int, column: int) -> str:
        """Move the real mouse onto a heatmap cell; the hover label's text ('' if none)."""
        x, y = self.page.evaluate(CELL_CENTRE_JS, [index, row, column])
        self.page.mouse.move(x - 3, y - 3)
        self.page.mouse.move(x, y, steps=3)
        self.page.wait_for_timeout(300)
        return " ".join(self.page.locator(".hoverlayer .hovertext").all_text_contents())


@pytest.fixture
def browser_page():
    """Debian's chromium driven by Playwright, offline flags as this machine needs them."""
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed; the browser tests need Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield BrowserPage(browser.new_page(viewport={"width": 1200, "height": 900}))
        finally:
            browser.close()
