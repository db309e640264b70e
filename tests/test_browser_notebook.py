"""examples/interactive_notebook.py opened in a real browser: a notebook cell runs the example as its
docstring tells users to (``%run``), Voila serves the notebook, Chromium shows it and clicks a view.

Skipped where no real browser is available (``tests/browser.py``).
"""

from __future__ import annotations

import runpy
import time
from pathlib import Path
from typing import Any

import torch

from tests.browser import SKIPS, click, free_port, launch, wait_frames
from tests.helpers import REPO_ROOT
from vggt_attn_rerun.core.capture import capture

pytestmark = SKIPS

EXAMPLE = REPO_ROOT / "examples" / "interactive_notebook.py"
# View 3 at tests.browser.VIEWPORT, in the example's default layout (3D left, four views in a 2x2 grid right).
VIEW_3 = (1224, 440)
# After the example, the same cell saves, at each selection, how many there were and the rows of every
# clicked query, where the test reads them: a click the viewer took for no pixel is retried at once.
SAVE_CLICKED = """
import os, torch
_answers = 0
def _save_clicked(event, path={path!r}):
    global _answers
    if event.type == "selection_change" and event.items:
        _answers += 1
        added = [(a.query, a.result.rows.probs) for a in session.added]
        torch.save((_answers, added, session.options.kinds), path + ".part")
        os.replace(path + ".part", path)
viewer.on_event(_save_clicked)
"""


def _saved(path: Path) -> tuple[int, list, tuple]:
    """(selections so far, (query, rows) of every clicked query, the kinds captured)."""
    return torch.load(path, weights_only=False) if path.exists() else (0, [], ())


def _click_until_added(page: Any, saved: Path, x: int, y: int, tries: int = 3, each_s: float = 30) -> tuple[int, tuple]:
    """Click (x, y) until the notebook has added a query; returns (clicks, what it saved)."""
    state = _saved(saved)
    for attempt in range(1, tries + 1):
        answers = state[0]
        click(page, x, y)
        deadline = time.monotonic() + each_s
        # No selection at all: a press and a release that fell frames apart make no click. Try again.
        while state[0] == answers and time.monotonic() < deadline:
            time.sleep(0.2)
            state = _saved(saved)
        if state[1]:
            return attempt, state
    raise AssertionError(f"{tries} clicks at {(x, y)} added no query")


def test_a_click_in_the_notebook_example_adds_a_query_with_the_rows_of_a_direct_capture(tmp_path):
    from playwright.sync_api import sync_playwright

    from vggt_attn_rerun.interactive import web
    from vggt_attn_rerun.interactive.notebook import READY_LINE

    saved = tmp_path / "clicked.pt"
    folder = tmp_path / "page"
    folder.mkdir()
    notebook = web.write_notebook(folder, f'%run "{EXAMPLE}"\n' + SAVE_CLICKED.format(path=str(saved)))
    web.link_widget_assets(folder)  # the widget's files, served by Voila: no internet
    port = free_port()
    proc = web.start_voila(notebook, port, folder / "voila.log")
    try:
        with sync_playwright() as p:
            browser, page = launch(p)
            # localhost, the host of the widget's URL: the viewer's module loads from the page's origin.
            page.goto(f"http://localhost:{port}/", wait_until="commit", timeout=120_000)
            page.get_by_text(READY_LINE).wait_for(timeout=180_000)
            wait_frames(page, 3)
            clicks, (_, clicked, kinds) = _click_until_added(page, saved, *VIEW_3)
            page.get_by_text("q1: frame 3").first.wait_for(timeout=30_000)  # the line under the viewer
            browser.close()
    finally:
        web.stop_voila(proc)
    assert [q.frame for q, _ in clicked] == [3]
    query, rows = clicked[0]
    net, images = runpy.run_path(str(EXAMPLE))["tiny_inputs"]()
    fresh = capture(net, images.tensor, [query], kinds=kinds)
    assert kinds
    for kind in kinds:
        assert torch.equal(rows[kind], fresh.rows.probs[kind]), kind
    print(f"view 3: {clicks} click(s)")
