"""What the real-browser tests share: Chromium (Debian's package) driven by Playwright, and clicks
the Rerun viewer takes for clicks.

The viewer draws with SwiftShader (WebGL on the CPU): on two busy cores one frame can take seconds,
so the tests wait for what the page reports (a status line under the viewer) and for frames the
browser has drawn, never for a fixed time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from typing import Any

import pytest

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # the tests are skipped by SKIPS
    PlaywrightTimeout = TimeoutError

CHROMIUM = shutil.which(os.environ.get("VGGT_ATTN_CHROMIUM", "chromium")) or "/usr/bin/chromium"
MISSING = [name for name in ("playwright", "voila", "rerun_notebook") if importlib.util.find_spec(name) is None]
if not os.path.exists(CHROMIUM):
    MISSING.append("chromium (apt-get install chromium; .ci/run installs it)")
# The marks of every real-browser test module (``pytestmark = SKIPS``).
SKIPS = [
    pytest.mark.skipif(bool(MISSING), reason=f"no real browser here: missing {', '.join(MISSING)}"),
    pytest.mark.skipif(os.environ.get("VGGT_ATTN_SKIP_BROWSER_TESTS") == "1", reason="VGGT_ATTN_SKIP_BROWSER_TESTS=1"),
]

VIEWPORT = {"width": 1400, "height": 900}
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
# Resolves after the browser has drawn n more frames: the viewer (egui) reads input and paints once
# per animation frame, and it picks what is under the pointer in the frame after a move.
FRAMES_JS = (
    "n => new Promise(done => { const step = k => (k ? requestAnimationFrame(() => step(k - 1)) : done()); step(n); })"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(playwright: Any) -> tuple[Any, Any]:
    """(browser, page): headless Chromium with a page of ``VIEWPORT``."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    return browser, browser.new_page(viewport=VIEWPORT)


def wait_frames(page: Any, n: int) -> None:
    page.evaluate(FRAMES_JS, n)


def click(page: Any, x: int, y: int, rest_frames: int = 3) -> None:
    """Rest the pointer on (x, y) for frames (the viewer picks what is under it; a 3D view reads
    its picking back from the GPU a few frames later), then press and release at once: egui takes
    a press for a click only when the release comes within 0.8 s of frame time, and a frame can
    take seconds here, so the two must not be frames apart."""
    page.mouse.move(x, y)
    wait_frames(page, rest_frames)
    page.mouse.down()
    page.mouse.up()


def click_until_text(page: Any, x: int, y: int, text: str, tries: int = 3, each_s: float = 20, rest_frames: int = 3
                     ) -> int:  # fmt: skip
    """Click (x, y) until the page shows ``text``; returns the clicks it took.

    Another try only when the page said nothing: a press and a release that still fell frames
    apart make no click (clicking the same pixel again never adds a second query)."""
    for attempt in range(1, tries + 1):
        click(page, x, y, rest_frames)
        try:
            page.get_by_text(text).first.wait_for(timeout=each_s * 1000)
            return attempt
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"{tries} clicks at {(x, y)}: the page never showed {text!r}")
