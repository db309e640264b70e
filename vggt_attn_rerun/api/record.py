"""The Python API of notebooks and scripts: one forward pass, then one recording.

``record_attention`` = ``core.capture.capture`` (the model once, every query's rows) + the
default blueprint + ``viz.log_run.log_run``. Images may be LoadedImages, a tensor or image paths;
queries may be Query objects, query strings (core.tokens.QUERY_SYNTAX) or a function of the layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import rerun as rr
import torch
from torch import nn

from vggt_attn_rerun.analysis.maps import analyze_run
from vggt_attn_rerun.analysis.reference import cameras_geometry
from vggt_attn_rerun.core.adapters import ModelAdapter
from vggt_attn_rerun.core.capture import CaptureResult, QueriesLike, capture
from vggt_attn_rerun.core.images import ImagesLike, as_loaded_images
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.viz.blueprint import default_blueprint_for
from vggt_attn_rerun.viz.log_run import log_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID


def query_grid(layout: TokenLayout, frame: int, rows: int, cols: int) -> list[Query]:
    """``rows x cols`` patch queries evenly spread over the patch grid of one frame, row-major.

    Grid row k (of R) is patch row ``floor((k + 0.5) * grid_h / R)``, the centre of the k-th of
    R equal bands; the same for columns. UserError when the grid has more rows or columns than
    the frame has patches (queries would repeat).
    """
    layout.check_frame(frame)
    if rows < 1 or cols < 1:
        raise UserError(f"a query grid needs at least 1 row and 1 column, got {rows}x{cols}")
    if rows > layout.grid_h or cols > layout.grid_w:
        raise UserError(
            f"a {rows}x{cols} grid does not fit the {layout.grid_h}x{layout.grid_w} patches of frame {frame} "
            f"(rows x columns): use at most {layout.grid_h}x{layout.grid_w}"
        )
    rr_ = [int((k + 0.5) * layout.grid_h / rows) for k in range(rows)]
    cc = [int((k + 0.5) * layout.grid_w / cols) for k in range(cols)]
    return [Query.from_patch(layout, frame, r, c) for r in rr_ for c in cc]


def record_attention(
    model: nn.Module,
    images: ImagesLike,
    queries: QueriesLike,
    *,
    blocks: Sequence[int] | None = None,
    options: RecordingOptions | None = None,
    recording: rr.RecordingStream | None = None,
    autocast_dtype: torch.dtype | None = None,
    application_id: str = APPLICATION_ID,
    send_blueprint: bool = True,
    keep_qk: bool = False,
    on_block: Callable[[str, int], None] | None = None,
    arch: str | ModelAdapter | None = None,
) -> tuple[CaptureResult, rr.RecordingStream]:
    """Run the model once, capture the queries' attention, and log it all into a recording.

    Args:
        model: VGGT (or ``testing.tiny_vggt()``) in eval mode.
        images: LoadedImages, a tensor ``[S, 3, H, W]`` in [0, 1], or image files/folders/globs.
        queries: Query objects or query strings (``"0:120,80"``, ``"1:p3,4"``, ``"0:camera"``;
            pixels refer to the original photos), or a function of the TokenLayout.
        blocks: block indices to capture (default all); options: RecordingOptions().
        recording: log into this stream; None creates ``rr.RecordingStream(application_id)``
            with no sink: data is buffered until the caller sets one, e.g. ``rec.save(path)``,
            ``rec.spawn()`` or ``rec.connect_grpc(url)``, which then receives everything.
        send_blueprint: send ``blueprint.default_blueprint_for(result, options)`` into the stream
            (active and default), so that every sink and saved .rrd carries the layout. With
            False, pass it yourself: ``rec.save(path, default_blueprint=default_blueprint_for(...))``.
        keep_qk: keep the q/k cache in the result (see ``core.capture.capture``) for later queries.
        on_block: progress callback, see ``core.capture.capture``.
        arch: the model's adapter, by name or already resolved (default: from the model).

    Returns:
        (CaptureResult, the RecordingStream).
    """
    options = options if options is not None else RecordingOptions()
    loaded = as_loaded_images(images)
    result = capture(model, loaded, queries, blocks=blocks, kinds=options.kinds, autocast_dtype=autocast_dtype,
                     keep_qk=keep_qk, on_block=on_block, arch=arch)  # fmt: skip
    rec = recording if recording is not None else rr.RecordingStream(application_id)
    if send_blueprint:
        rec.send_blueprint(default_blueprint_for(result, options), make_active=True, make_default=True)
    geometry = cameras_geometry(options.cameras, loaded) if options.cameras else None
    analysis = analyze_run(result, options.kinds, options.top_k, options.consistency_radius, loaded.transforms,
                           geometry)  # fmt: skip
    log_run(rec, result, loaded, options, analysis=analysis)
    return result, rec
