"""--interactive in a real browser: Chromium (Debian's package) driven by Playwright clicks the page.

Skipped, with the reason, where Chromium, Playwright, Voila or the rerun-notebook widget is missing
(``.ci/run`` installs Chromium), or where VGGT_ATTN_SKIP_BROWSER_TESTS=1 (``tests/browser.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.browser import SKIPS, click, click_until_text, free_port, launch, wait_frames
from vggt_attn_rerun import api
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import expand_image_paths, load_images
from vggt_attn_rerun.core.loading import load_model
from vggt_attn_rerun.viz.options import RecordingOptions

pytestmark = SKIPS

# Points of the page at this viewport, in the default layout of a 3-view run (3D left, views in a
# 2x2 grid right, the fourth cell empty; the colour bar under the 3D view): views 0 and 2, the empty
# cell, and the colour bar (an image that is no view's photo, at the same place in every query's layout).
VIEW_0, VIEW_2, EMPTY, COLOUR_BAR = (770, 250), (770, 400), (1150, 420), (290, 565)
# The largest patch point of the 3D view once q2 (view 2's click) is shown.
PATCH_POINT_3D = (296, 289)
KINDS = ("frame", "global")


@dataclass
class Served:
    """A run served by --interactive's code, and a Chromium page showing it."""

    page: Any
    lines: list[str]
    session: Any
    scene: Path
    picks: list  # (entity_path, position, view_name, instance_id) of every item that became a click

    def added(self) -> list:
        return list(self.session.added)

    def click_and_wait_for_line(self, x: int, y: int, text: str, rest_frames: int = 3) -> int:
        """Click (x, y) until the status line under the viewer contains ``text``; returns the clicks it took."""
        try:
            return click_until_text(self.page, x, y, text, rest_frames=rest_frames)
        except AssertionError as e:
            raise AssertionError(f"{e}; run's lines: {self.lines}") from None


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    from playwright.sync_api import sync_playwright

    from vggt_attn_rerun.interactive.notebook import READY_LINE
    from vggt_attn_rerun.interactive.session import QuerySession
    from vggt_attn_rerun.interactive.web import serve_clicks

    scene = _scene(tmp_path_factory.mktemp("scene"))
    port, stop, out, holder = free_port(), threading.Event(), {}, {}
    lines: list[str] = []
    picks: list = []

    def serve(rec, result, images, options, relay, port):  # RunCallbacks.serve_clicks, keeping the session
        holder["session"] = session = QuerySession(rec, result, images, options)
        map_item = session.click_from_item

        def recorded(entity_path, position, view_name=None, units=None, instance_id=None):
            click = map_item(entity_path, position, view_name, units, instance_id)
            if click is not None:
                picks.append((entity_path, position, view_name, instance_id))
            return click

        session.click_from_item = recorded
        serve_clicks(session, relay, port=port, echo=lines.append, until=stop.is_set)
        return session.merged_result()

    options = api.RunOptions(images=(str(scene),), queries=(("0:10,10", "--query 0:10,10"),), model="tiny",
                             recording=RecordingOptions(kinds=KINDS, max_points=300), image_size=84,
                             interactive=True, port=port)  # fmt: skip

    def run() -> None:
        try:
            out["summary"] = api.run(options, api.RunCallbacks(echo=lines.append, serve_clicks=serve))
        except BaseException as e:  # noqa: BLE001 - reported by the fixture below
            out["error"] = e

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 120
        while not any(line.startswith("click-to-query") for line in lines) and "error" not in out:
            assert time.monotonic() < deadline, f"the page was not served within 120 s: {lines}"
            time.sleep(0.2)
        assert "error" not in out, out.get("error")
        with sync_playwright() as p:
            browser, page = launch(p)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="commit", timeout=120_000)
            # Ready: the viewer reported the run's recording open (the page's status line says so).
            page.get_by_text(READY_LINE).wait_for(timeout=180_000)
            wait_frames(page, 3)  # the layout in the recording applied and drawn
            yield Served(page=page, lines=lines, session=holder["session"], scene=scene, picks=picks)
            browser.close()
    finally:
        stop.set()
        runner.join(60)


def _scene(folder: Path) -> Path:
    from PIL import Image

    from vggt_attn_rerun.testing import synthetic_scene

    for i, img in enumerate(synthetic_scene(3, 56, 84)):
        Image.fromarray(img).save(folder / f"view_{i}.png")
    return folder


def _direct_capture(folder: Path, query) -> Any:
    images = load_images(expand_image_paths([str(folder)]), target_size=84)
    return capture(load_model("tiny"), images.tensor, [query], kinds=KINDS)


def test_a_click_on_a_view_in_chromium_adds_a_query_with_the_rows_of_a_direct_capture(served):
    before = len(served.added())
    clicks = served.click_and_wait_for_line(*VIEW_0, f"q{before + 1}: frame 0")
    added = served.added()
    assert len(added) == before + 1
    new = added[-1]
    assert new.query.frame == 0
    fresh = _direct_capture(served.scene, new.query)
    for kind in KINDS:
        assert torch.equal(new.result.rows.probs[kind], fresh.rows.probs[kind]), kind
    print(f"view 0: {clicks} click(s)")


def test_clicks_off_the_photos_add_nothing_and_the_page_keeps_working(served):
    from vggt_attn_rerun.interactive.notebook import NOTHING_ADDED_LINE

    before = len(served.added())
    click(served.page, *EMPTY)  # selects nothing: the run is not even asked
    clicks = served.click_and_wait_for_line(*COLOUR_BAR, NOTHING_ADDED_LINE)  # the run answered: nothing added
    assert len(served.added()) == before
    # The page sends its events in order: had either click added a query, view 2's would not be the next.
    clicks_2 = served.click_and_wait_for_line(*VIEW_2, f"q{before + 1}: frame 2")
    assert [a.query.frame for a in served.added()[before:]] == [2]
    print(f"colour bar: {clicks} click(s), view 2: {clicks_2} click(s)")


def test_a_click_on_a_3d_patch_point_in_chromium_adds_the_query_of_that_patch(served):
    from vggt_attn_rerun.analysis.scene import build_scene
    from vggt_attn_rerun.viz.paths import is_patch_points

    before = len(served.added())
    layout = served.session.layout
    shown = served.session.queries.get(served.session.shown)
    assert shown is not None and (shown.frame, *shown.patch(layout)) == (2, 2, 3), (
        "PATCH_POINT_3D is a point of the layout of frame 2's patch (2, 3), which view 2's click shows: "
        "run the module's tests in order"
    )
    clicks = served.click_and_wait_for_line(*PATCH_POINT_3D, f"q{before + 1}: frame", rest_frames=10)
    path, position, view, instance = served.picks[-1]
    assert is_patch_points(path) and view.startswith("3D") and instance is not None, served.picks[-1]
    # Instance k of a query's patch points is the k-th patch that has a 3D point, in (frame, row, col) order.
    centroids, valid = served.session.patch_points()
    new = served.added()[-1]
    patch = (new.query.frame, *new.query.patch(layout))
    assert patch == tuple(int(i) for i in np.argwhere(valid)[instance])
    # ...and the viewer picked a point on that patch's sphere (no sphere is larger than a peak box).
    sizes = build_scene(served.session.result, served.session.images, served.session.options).sizes
    assert np.linalg.norm(np.asarray(position, np.float64) - centroids[patch]) <= sizes.peak
    fresh = _direct_capture(served.scene, new.query)
    for kind in KINDS:
        assert torch.equal(new.result.rows.probs[kind], fresh.rows.probs[kind]), kind
    print(f"3D patch point: {clicks} click(s)")
