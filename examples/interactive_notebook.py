#!/usr/bin/env python3
"""Click a pixel in the notebook viewer: it becomes a new query, with no second forward pass.

Needs the notebook viewer: ``pip install "rerun-sdk[notebook]==0.41.*"`` (package rerun-notebook).
In a Jupyter cell, ``%run examples/interactive_notebook.py`` (or pasting this file) already
runs ``main()`` on the tiny random-weight model, offline, and leaves ``viewer`` and ``session``
defined: do not call ``main()`` again for that (a second call opens a second viewer). For your
photos, run this file with ``%run -n`` (defines ``main`` without running it), then::

    viewer, session = main(["photos/*.jpg"], model="facebook/VGGT-1B")

Then click a pixel of any view (the image or its overlay): the patch under it becomes ``q1``,
``q2``, ... and the layout switches to its dashboards. Lines under the viewer say when it is ready
and how long each query took.
``session.add_pixel(frame, x, y)`` does the same from code (``space="original"`` for photo pixels).

Importing this file does nothing; the work starts in ``main()``. The q/k cache this needs is
printed (per frame: ``2 * P * C * 4 bytes * blocks * kinds``; VGGT-1B at 518x518: 540 MB):
pass ``blocks=[...]`` to keep fewer blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def main(photos: Sequence[str] | None = None, model: str | None = None, queries: Sequence[str] | None = None,
         blocks: Sequence[int] | None = None, height: int = 700) -> tuple[Any, Any]:  # fmt: skip
    """Run once with the q/k cache, show the notebook viewer, and turn its clicks into queries."""
    import rerun.notebook
    import torch

    from vggt_attn_rerun import RecordingOptions, load_images, load_model
    from vggt_attn_rerun.core.images import expand_image_paths
    from vggt_attn_rerun.interactive import show_in_notebook, start_session

    if not rerun.notebook.HAS_NOTEBOOK:
        raise SystemExit('the notebook viewer is missing: pip install "rerun-sdk[notebook]==0.41.*"')
    if photos:
        net = load_model(model or "facebook/VGGT-1B", device="cuda" if torch.cuda.is_available() else "cpu")
        images = load_images(expand_image_paths(photos), mode="crop")
        t = images.transforms[0]
        queries = queries or [f"0:{t.orig_w / 2:.0f},{t.orig_h / 2:.0f}"]  # centre of the first photo
    else:
        net, images = tiny_inputs()
        queries = queries or ["0:p2,4"]  # frame 0, patch row 2, col 4

    session = start_session(net, images, list(queries), blocks=blocks,
                            options=RecordingOptions(kinds=("global", "frame")))  # fmt: skip
    print(f"q/k cache: {session.cache_bytes / 1e6:.1f} MB ({session.cache_bytes / 1e6 / session.layout.num_frames:.1f}"
          " MB per frame); click a pixel of a view to add a query")  # fmt: skip
    viewer = show_in_notebook(session, height=height)  # the viewer, a status line, a log of added queries
    return viewer, session


def tiny_inputs() -> tuple[Any, Any]:
    """The offline default: the tiny random-weight model and four synthetic 168x112 views."""
    import torch

    from vggt_attn_rerun.core.images import images_from_tensor
    from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt

    scene = synthetic_scene(4, height=112, width=168, seed=0)  # [S, H, W, 3] uint8
    return tiny_vggt(), images_from_tensor(torch.from_numpy(scene).permute(0, 3, 1, 2).float() / 255)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None and hasattr(get_ipython(), "kernel")


if __name__ == "__main__":  # a pasted cell and %run both run as __main__
    if _in_notebook():
        viewer, session = main()
    else:
        print(__doc__)
