"""--interactive's run side (vggt_attn_rerun.interactive.web): a page's selection events become queries.

A page talks to the run over a local socket; these tests play the page with a plain
``multiprocessing.connection.Client`` sending the events the rerun-notebook widget reports.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rerun as rr
import torch

from vggt_attn_rerun import api
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import images_from_tensor
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.interactive import web
from vggt_attn_rerun.interactive.notebook import NOTHING_ADDED_LINE
from vggt_attn_rerun.interactive.session import QuerySession
from vggt_attn_rerun.io.runfile import load_run
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID

KINDS = ("frame", "global")


def _event(path: str, x: float, y: float, view: str = "view 1") -> dict:
    """A selection event as the widget sends it: a click on ``path`` at pixel (x, y) of ``view``."""
    item = {"type": "entity", "entity_path": path, "instance_id": None, "view_name": view, "position": [x, y, None]}
    return {"type": "selection_change", "application_id": APPLICATION_ID, "recording_id": None, "items": [item]}


@pytest.fixture
def relay(tiny_model, scene_images):
    """A Relay over a fresh session of the tiny model (query q0: frame 0, patch (1, 1)), and a page connected to it."""
    rec = rr.RecordingStream(APPLICATION_ID)
    stream = rec.binary_stream()
    run = capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 1)], kinds=KINDS, keep_qk=True)
    options = RecordingOptions(kinds=KINDS, max_points=300)
    session = QuerySession(rec, run, images_from_tensor(scene_images), options)
    lines: list[str] = []
    relay = web.Relay(session, stream, on_line=lines.append)
    threading.Thread(target=relay.accept_forever, daemon=True).start()
    from multiprocessing.connection import Client

    page = Client(relay.address, authkey=relay.authkey)
    yield relay, page, lines
    page.close()
    relay.close()


def _ask(page, *request) -> list[tuple]:
    """What the run answers a page's request, up to its ("done",)."""
    page.send(request)
    answers = []
    while True:
        answer = page.recv()
        if answer[0] == "done":
            return answers
        answers.append(answer)


def test_a_click_on_an_image_adds_its_pixel_with_the_rows_of_a_direct_capture(relay, tiny_model, scene_images):
    relay_, page, lines = relay
    _ask(page, "history")
    answers = _ask(page, "event", _event("/world/frames/1/image", 47.5, 30.0))
    added = relay_.session.added
    assert len(added) == 1 and added[0].index == 1
    query = added[0].query
    assert query == Query.from_model_pixel(relay_.session.layout, 1, 47.5, 30.0)  # frame 1, patch (2, 3)
    fresh = capture(tiny_model, scene_images, [query], kinds=KINDS)
    for kind in KINDS:
        assert torch.equal(added[0].result.rows.probs[kind], fresh.rows.probs[kind]), kind
    kinds = [a[0] for a in answers]
    assert "rrd" in kinds and "status" in kinds  # the new query's entities and its line reach the page
    assert lines[-1].startswith("q1: frame 1 patch (row 2, col 3)")


def test_a_picked_3d_point_adds_its_patch_with_the_rows_of_a_direct_capture(relay, tiny_model, scene_images):
    relay_, page, _ = relay
    _ask(page, "history")
    centroids, valid = relay_.session.patch_points()
    frame, row, col = (int(i) for i in np.argwhere(valid[1:])[0] + [1, 0, 0])  # a patch of frame 1 or later
    item = {"type": "entity", "entity_path": "/world/points", "instance_id": 0, "view_name": "3D",
            "position": centroids[frame, row, col].tolist()}  # fmt: skip
    _ask(page, "event", {"type": "selection_change", "application_id": APPLICATION_ID, "recording_id": None,
                         "items": [item]})  # fmt: skip
    (added,) = relay_.session.added
    assert (added.query.frame, added.query.patch(relay_.session.layout)) == (frame, (row, col))
    fresh = capture(tiny_model, scene_images, [added.query], kinds=KINDS)
    for kind in KINDS:
        assert torch.equal(added.result.rows.probs[kind], fresh.rows.probs[kind]), kind


def test_a_click_outside_every_image_adds_nothing_and_the_page_still_works(relay):
    relay_, page, _ = relay
    _ask(page, "history")
    nothing = [("status", NOTHING_ADDED_LINE)]  # the page that clicked is told, no recording data
    assert _ask(page, "event", _event("/world/frames/1/image", 500.0, 30.0)) == nothing  # right of the image
    assert _ask(page, "event", _event("/world/frames/1", 1.0, 2.0, view="3D")) == nothing  # a camera in 3D
    assert relay_.session.added == []
    empty = {"type": "selection_change", "application_id": APPLICATION_ID, "recording_id": None, "items": []}
    assert _ask(page, "event", empty) == []  # an empty selection (the viewer's first event, Esc) is not answered
    _ask(page, "event", _event("/world/frames/2/image", 10.0, 10.0))
    assert [a.query.frame for a in relay_.session.added] == [2]


def test_a_page_opened_later_gets_the_whole_recording(relay):
    relay_, page, _ = relay
    _ask(page, "history")
    _ask(page, "event", _event("/world/frames/1/image", 47.5, 30.0))
    from multiprocessing.connection import Client

    late = Client(relay_.address, authkey=relay_.authkey)
    try:
        assert [a[1] for a in _ask(late, "history")] == relay_.history and len(relay_.history) == 2
    finally:
        late.close()


def test_a_page_with_the_wrong_key_is_refused(relay):
    relay_, _, _ = relay
    from multiprocessing.connection import AuthenticationError, Client

    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(relay_.address, authkey=b"not the key")


def _click_then_stop(rec, result, images, options, relay_stream, port):
    """RunCallbacks.serve_clicks without a browser: one click on frame 2, then the end of the session."""
    session = QuerySession(rec, result, images, options)
    relay = web.Relay(session, relay_stream, on_line=lambda line: None)
    relay.handle(_event("/world/frames/2/image", 20.0, 40.0))
    relay.close()
    session.show_all()
    return session.merged_result()


def test_save_and_export_hold_every_clicked_query(scene, tmp_path):
    out, run_file = tmp_path / "run.rrd", tmp_path / "run.npz"
    options = api.RunOptions(images=(str(scene),), queries=(("0:40,20", "--query 0:40,20"),), model="tiny",
                             recording=RecordingOptions(kinds=KINDS), image_size=84, outputs=api.Outputs(save=out),
                             export=run_file, interactive=True, port=0)  # fmt: skip
    summary = api.run(options, api.RunCallbacks(serve_clicks=_click_then_stop))
    assert summary.queries == 2
    result, _ = load_run(run_file)
    assert [(q.frame, q.patch(result.layout)) for q in result.rows.queries] == [(0, (1, 2)), (2, (2, 1))]
    entities = {str(c.entity_path) for c in rr.chunk.RrdReader(out).stream()}
    assert any(e.startswith("/world/frames/2/image/attention/q1") for e in entities)


def test_ask_and_interactive_together_are_refused_before_the_model(scene):
    options = api.RunOptions(images=(str(scene),), model="tiny", ask=True, interactive=True, port=0)
    with pytest.raises(api.BadInput, match="--ask and --interactive"):
        api.run(options)
