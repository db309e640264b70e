"""New queries after a run (vggt_attn_rerun.interactive): rows from the q/k cache, no second forward pass."""

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import rerun as rr
import rerun.blueprint as rrb
import rerun.notebook  # noqa: F401  (the event dataclasses; works without the rerun-notebook widget)
import torch

from vggt_attn_rerun import api
from vggt_attn_rerun.analysis.scene import cameras
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.images import FrameTransform, LoadedImages, images_from_tensor
from vggt_attn_rerun.core.tokens import Query, TokenLayout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.interactive import (
    Click,
    QuerySession,
    SelectionHandler,
    attach_to_notebook_viewer,
    click_from_selection,
    origin_units,
    prompt_queries,
    start_session,
)
from vggt_attn_rerun.interactive import session as session_module
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import Paths

from .helpers import blueprint_strings, views

KINDS = ("frame", "global")
OPTIONS = dict(kinds=KINDS, max_points=300)
LAYOUT = TokenLayout(3, 4, 6)  # the scene_images fixture: 3 views of 56x84 pixels (4x6 patches)


@pytest.fixture(scope="module")
def run(tiny_model, scene_images):
    """One capture with the q/k cache (query: frame 0, patch (1, 1))."""
    return capture(tiny_model, scene_images, lambda lay: [Query.from_patch(lay, 0, 1, 1)], keep_qk=True)


@pytest.fixture
def fake_log(monkeypatch):
    """The session's log_added_queries replaced by a recorder of its calls (for tests of the plumbing only)."""
    calls = []

    def log_added_queries(rec, result, images, options, first_index):
        calls.append((first_index, result.rows.queries))

    monkeypatch.setattr(session_module, "log_added_queries", log_added_queries)
    return calls


def _session(run, scene_images, **kw) -> QuerySession:
    kw.setdefault("update_blueprint", False)
    return QuerySession(
        rr.RecordingStream("test_interactive"), run, images_from_tensor(scene_images), RecordingOptions(**OPTIONS), **kw
    )


# -- rows from the cache ----------------------------------------------------------------------


def test_click_gives_the_rows_of_a_fresh_capture(run, tiny_model, scene_images, fake_log):
    session = _session(run, scene_images)
    query = session.add_pixel(2, 47.5, 30.0)  # model pixels -> frame 2, patch (2, 3)
    assert (query.frame, query.patch(run.layout)) == (2, (2, 3))
    added = session.added[-1]
    assert added.index == 1 and fake_log == [(1, (query,))]
    fresh = capture(tiny_model, scene_images, [query])
    assert added.result.rows.blocks == fresh.rows.blocks and added.result.layout == fresh.layout
    for kind in KINDS:
        assert torch.equal(added.result.rows.probs[kind], fresh.rows.probs[kind]), kind
    assert added.result.predictions is run.predictions  # same run, nothing recomputed


def test_subset_of_blocks_and_original_pixels(tiny_model, scene_images, fake_log):
    # Frame 1 came from a 168x112 photo scaled by 1/2: photo pixel (100, 50) -> model (50, 25).
    transforms = [FrameTransform.identity(84, 56)] * 3
    transforms[1] = FrameTransform(168, 112, 0.5, 0.5, 0.0, 0.0, 84, 56)
    images = LoadedImages(scene_images, None, transforms)
    run = capture(tiny_model, scene_images, [Query(0, 5)], blocks=[1, 3], kinds=["global"], keep_qk=True)
    session = QuerySession(rr.RecordingStream("t"), run, images, RecordingOptions(), update_blueprint=False)
    query = session.add_pixel(1, 100.0, 50.0, space="original")
    assert query == Query.from_model_pixel(run.layout, 1, 50.0, 25.0)
    fresh = capture(tiny_model, scene_images, [query], blocks=[1, 3], kinds=["global"])
    assert session.added[-1].result.rows.blocks == (1, 3)
    assert torch.equal(session.added[-1].result.rows.probs["global"], fresh.rows.probs["global"])


def test_no_forward_pass_when_adding(run, tiny_model, scene_images, fake_log):
    session = _session(run, scene_images)
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in tiny_model.modules()]
    try:
        session.add_pixel(1, 10.0, 10.0)
        session.add_query(Query.from_special(run.layout, 2, "camera"))
    finally:
        for h in handles:
            h.remove()
    assert calls == [] and len(session.added) == 2


def test_dedupe_and_indices(run, scene_images, fake_log):
    session = _session(run, scene_images, next_index=5)
    assert session.add_query(Query.from_patch(run.layout, 0, 1, 1)) == 0  # the run's own query
    assert session.add_query(Query.from_patch(run.layout, 1, 0, 0)) == 5
    assert session.add_query(Query.from_patch(run.layout, 1, 0, 0)) == 5
    assert session.add_query(Query.from_patch(run.layout, 1, 0, 1)) == 6
    assert [i for i, _ in fake_log] == [5, 6]
    assert _session(run, scene_images, dedupe=False).add_query(Query.from_patch(run.layout, 0, 1, 1)) == 1


def test_layout_follows_the_last_query(run, scene_images, fake_log, monkeypatch):
    session = _session(run, scene_images, update_blueprint=True)
    sent = []
    monkeypatch.setattr(session.rec, "send_blueprint", lambda bp, **kw: sent.append((bp, kw)))
    session.add_pixel(1, 5.0, 5.0)
    session.add_pixel(1, 6.0, 6.0)  # same patch: already shown, nothing sent
    session.add_pixel(0, 20.0, 20.0)  # q0: its dashboards again
    assert len(sent) == 2 and all(kw == {"make_active": True, "make_default": True} for _, kw in sent)
    names = [[tab.name for tab in bp.root_container.contents] for bp, _ in sent]
    assert names[0][:2] == ["q1 frame", "q1 global"] and names[1][:2] == ["q0 frame", "q0 global"]
    assert all(bp.root_container.active_tab == 0 for bp, _ in sent)


def test_the_layout_sent_after_a_click_keeps_the_3d_views_model_title(run, scene_images, fake_log, monkeypatch):
    session = _session(run, scene_images, update_blueprint=True)
    sent = []
    monkeypatch.setattr(session.rec, "send_blueprint", lambda bp, **kw: sent.append(bp))
    session.add_pixel(1, 5.0, 5.0)
    session.show_all()
    title = run.model_label.title
    assert title and len(sent) == 2
    for bp in sent:
        assert {v.name for v in views(bp) if isinstance(v, rrb.Spatial3DView)} == {f"3D: {title}"}


def test_a_session_needs_the_q_k_cache(tiny_model, scene_images):
    plain = capture(tiny_model, scene_images, [Query(0, 5)])
    with pytest.raises(UserError, match="keep_qk=True"):
        _session(plain, scene_images)


def test_a_pixel_outside_the_model_image_is_refused(run, scene_images, fake_log):
    with pytest.raises(UserError, match="outside the model image"):
        _session(run, scene_images).add_pixel(0, 84.0, 1.0)
    assert fake_log == []


# -- selection payload -> pixel -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "position", "units", "expected"),
    [
        ("/world/frames/2/image", [40.5, 20.25, None], "pixel", (2, 40.5, 20.25)),
        ("world/frames/1/image", [3.0, 4.0], "pixel", (1, 3.0, 4.0)),
        # An overlay clicked in a view rooted at the image: the position is in that view's space.
        (Paths.overlay(2, 0, "global"), [40.5, 20.25, 1.0], "pixel", (2, 40.5, 20.25)),
        (Paths.overlay_root(0), [40.5, 20.25, None], "pixel", (0, 40.5, 20.25)),
        # A view rooted at an overlay: its space is the patch grid (Transform3D scale 14).
        (Paths.overlay(2, 0, "frame"), [2.5, 1.5, None], "patch", (2, 35.0, 21.0)),
        (Paths.marker(1, 3) + "/patch", [7.0, 8.0], "pixel", (1, 7.0, 8.0)),
        (Paths.head(0, "global", 3), [10.0, 11.0], "pixel", (2, 10.0, 11.0)),  # q0's grid shows frame 2
        ("/heads/q0/image", [10.0, 11.0], "pixel", (2, 10.0, 11.0)),
    ],
)
def test_click_from_selection(path, position, units, expected):
    click = click_from_selection(path, position, LAYOUT, units=units, grid_frames={0: 2})
    assert click is not None and (click.frame, click.x, click.y) == expected


@pytest.mark.parametrize(
    ("path", "position", "grid_frames"),
    [
        (Paths.cloud, [1.0, 2.0, 3.0], None),
        ("queries/q0/info", [1.0, 2.0], None),
        (Paths.maps(0, "global"), [1.0, 2.0], None),
        (Paths.query_point(0), [1.0, 2.0, 3.0], None),
        ("world/frames/2", [1.0, 2.0], None),
        ("world/frames/7/image", [1.0, 2.0], None),  # no such frame
        (Paths.image(0), None, None),  # selected in the streams tree: no position
        (Paths.image(0), [None, None, None], None),
        (Paths.image(0), [84.0, 2.0], None),  # outside the 84x56 image
        (Paths.image(0), [-0.5, 2.0], None),
        (Paths.head(1, "global", 0), [1.0, 2.0], {0: 2}),  # unknown query
        (Paths.head(0, "global", 0), [1.0, 2.0], None),
    ],
)
def test_click_from_selection_ignores(path, position, grid_frames):
    assert click_from_selection(path, position, LAYOUT, grid_frames=grid_frames) is None


def test_origin_units():
    assert origin_units("/world/frames/0/image") == "pixel"
    assert origin_units(Paths.overlay_root(3)) == "patch"
    assert origin_units(Paths.overlay(3, 0, "global")) == "patch"
    assert origin_units(Paths.heads_root(2)) == "pixel"
    assert origin_units(Paths.heads_root(2) + "/image") == "pixel"
    assert origin_units(f"{Paths.heads_root(2)}/global") == "patch"
    assert origin_units(Paths.head(2, "global", 1)) == "patch"
    assert origin_units("world") == "pixel"


def test_click_in_3d_is_projected_into_the_frame(run):
    extr, intr = cameras(run)
    frame, x, y, depth = 1, 30.25, 17.5, 0.8
    cam = depth * np.linalg.solve(intr[frame], [x - 0.5, y - 0.5, 1.0])  # VGGT samples pixel j at u = j
    world = extr[frame, :, :3].T @ (cam - extr[frame, :, 3])
    click = click_from_selection(
        Paths.overlay(frame, 0, "global"), list(world), run.layout, units="world", world_cameras=(extr, intr)
    )
    assert click.frame == frame and np.allclose([click.x, click.y], [x, y], atol=1e-6)
    assert click_from_selection(Paths.image(frame), list(world), run.layout, units="world") is None  # no cameras
    behind = extr[frame, :, :3].T @ (-cam - extr[frame, :, 3])
    assert (
        click_from_selection(Paths.image(frame), list(behind), run.layout, units="world", world_cameras=(extr, intr))
        is None
    )


# -- event sources ------------------------------------------------------------------------------


def _event(session, *items, recording_id=None):
    return rr.notebook.SelectionChangeEvent(
        application_id="vggt_attn_rerun",
        recording_id=recording_id or session.rec.get_recording_id(),
        segment_id=None,
        items=list(items),
    )


def test_selection_handler(run, scene_images, fake_log, monkeypatch):
    session = _session(run, scene_images, update_blueprint=True)
    assert session.view_units["view 1"] == "pixel" and session.view_units[f"3D: {run.model_label.title}"] == "world"
    added, errors = [], []
    handler = SelectionHandler(session, on_added=added.append, on_error=errors.append)
    image = rr.notebook.EntitySelectionItem("/world/frames/1/image", view_name="view 1", position=[20.0, 30.0, None])
    overlay = rr.notebook.EntitySelectionItem(
        "/" + Paths.overlay(2, 0, "global"), view_name="view 2", position=[70.0, 50.0, None]
    )
    assert handler(_event(session, image)) == [1]
    assert handler(_event(session, image, overlay)) == [2]  # multi-selection: only the new item
    assert [(a.query.frame, a.query.patch(run.layout)) for a in added] == [(1, (2, 1)), (2, (3, 5))]
    view = rr.notebook.ViewSelectionItem(view_id="x", view_name="view 0")
    camera = rr.notebook.EntitySelectionItem("/world/frames/0", view_name="3D", position=[0.1, 0.2, 1.0])
    assert handler(_event(session, view, camera)) == []
    assert handler(_event(session, image, recording_id="another")) == []
    assert handler(rr.notebook.TimeUpdateEvent("vggt_attn_rerun", "r", None, time=3.0)) == []
    # A click on an existing query's marker adds nothing new; a JSON dict payload works too.
    marker = {"type": "entity", "entity_path": "/" + Paths.marker(1, 1), "view_name": "view 1", "position": [21, 31]}
    payload = {"type": "selection_change", "recording_id": session.rec.get_recording_id(), "items": [marker]}
    assert handler(payload) == [1] and len(added) == 2 and errors == []
    assert [i for i, _ in fake_log] == [1, 2]

    # Failures are reported through on_error, not raised into the viewer's event loop.
    def failing_log(*args, **kwargs):
        raise UserError("the recording is closed")

    monkeypatch.setattr(session_module, "log_added_queries", failing_log)
    assert handler(_event(session, rr.notebook.EntitySelectionItem(Paths.image(0), position=[5.0, 1.0]))) == []
    assert len(errors) == 1 and "the recording is closed" in errors[0]


def test_unknown_view_units(run, scene_images):
    session = _session(run, scene_images)
    assert session.click_from_item(Paths.image(1), [30.0, 20.0, None], "my view") == Click(
        1, 30.0, 20.0, Paths.image(1)
    )
    extr, intr = cameras(run)
    cam = 0.5 * np.linalg.solve(intr[1], [29.5, 19.5, 1.0])  # continuous (30, 20) is VGGT's u, v = 29.5, 19.5
    world = extr[1, :, :3].T @ (cam - extr[1, :, 3])
    for view in ("my 3D view", "3D"):
        click = session.click_from_item(Paths.image(1), list(world), view)
        assert np.allclose([click.x, click.y], [30.0, 20.0], atol=1e-6)
    click = session.click_from_item(Paths.overlay(1, 0, "global"), [2.0, 1.0, None], "mine", units="patch")
    assert (click.x, click.y) == (28.0, 14.0)


def test_notebook_viewer_widget(run, scene_images, fake_log):
    pytest.importorskip("rerun_notebook")
    session = _session(run, scene_images, update_blueprint=True)
    viewer = rr.notebook.Viewer(recording=session.rec)
    attach_to_notebook_viewer(viewer, session, on_added=lambda a: None)
    item = {
        "type": "entity",
        "entity_path": "/world/frames/0/image/attention/q0/global",
        "view_name": "view 0",
        "position": [80.0, 50.0, None],
    }
    message = {
        "type": "selection_change",
        "application_id": "vggt_attn_rerun",
        "recording_id": session.rec.get_recording_id(),
        "items": [item],
    }
    viewer._viewer._handle_custom_msg(json.dumps(message), [])  # what the widget's frontend sends
    assert session.queries[1] == Query.from_patch(run.layout, 0, 3, 5) and [i for i, _ in fake_log] == [1]
    with pytest.raises(UserError, match="on_event"):
        attach_to_notebook_viewer(object(), session)


@dataclass
class NotebookPage:
    """``show_in_notebook`` of a session, with what it displayed under the viewer."""

    session: QuerySession
    viewer: Any
    status: Any  # ipywidgets.Label
    log: Any  # ipywidgets.Output

    def send(self, message: dict) -> None:
        """What the widget's frontend sends for one viewer event."""
        rid = self.session.rec.get_recording_id()
        payload = {"application_id": "vggt_attn_rerun", "recording_id": rid, **message}
        self.viewer._viewer._handle_custom_msg(json.dumps(payload), [])

    def click(self, frame: int, x: float, y: float) -> None:
        item = {"type": "entity", "entity_path": f"/world/frames/{frame}/image", "view_name": f"view {frame}",
                "position": [x, y, None]}  # fmt: skip
        self.send({"type": "selection_change", "items": [item]})


@pytest.fixture
def notebook_page(run, scene_images, fake_log, monkeypatch) -> NotebookPage:
    pytest.importorskip("rerun_notebook")
    import ipywidgets
    from IPython import display as ipython_display

    from vggt_attn_rerun.interactive import show_in_notebook

    shown = []
    monkeypatch.setattr(ipython_display, "display", lambda *objs: shown.extend(objs))
    session = _session(run, scene_images)
    viewer = show_in_notebook(session, height=300)
    (status,) = [w for w in shown if isinstance(w, ipywidgets.Label)]
    (log,) = [w for w in shown if isinstance(w, ipywidgets.Output)]
    return NotebookPage(session, viewer, status, log)


def test_the_notebook_status_line_says_ready_once_the_viewer_opened_the_recording(notebook_page):
    from vggt_attn_rerun.interactive.notebook import LOADING_LINE, READY_LINE

    assert notebook_page.status.value == LOADING_LINE
    notebook_page.send({"type": "recording_open", "source": "notebook"})
    assert notebook_page.status.value == READY_LINE


def test_the_notebook_status_line_says_when_a_click_selected_nothing_that_maps_to_a_patch(notebook_page):
    from vggt_attn_rerun.interactive.notebook import NOTHING_ADDED_LINE

    notebook_page.send({"type": "selection_change", "items": [{"type": "view", "view_id": "v", "view_name": "view 2"}]})
    assert notebook_page.status.value == NOTHING_ADDED_LINE and len(notebook_page.session.queries) == 1


def test_a_click_in_the_notebook_adds_a_query_named_in_the_status_line_and_listed_below(notebook_page, run):
    notebook_page.click(2, 47.5, 30.0)
    assert notebook_page.session.queries[1] == Query.from_patch(run.layout, 2, 2, 3)
    assert notebook_page.status.value.startswith("q1 added")
    assert [o["text"].split(": rows")[0] for o in notebook_page.log.outputs] == ["q1: frame 2 patch (row 2, col 3)"]


def test_a_click_on_a_query_already_there_says_so_in_the_notebook(notebook_page):
    notebook_page.click(0, 20.0, 20.0)  # q0's patch (1, 1)
    assert notebook_page.status.value.startswith("q0 is already a query") and notebook_page.log.outputs == ()


def test_a_refused_click_keeps_its_reason_in_the_notebook_status_line(notebook_page, monkeypatch):
    def failing_log(*args, **kwargs):
        raise UserError("the recording is closed")

    monkeypatch.setattr(session_module, "log_added_queries", failing_log)
    notebook_page.click(1, 47.5, 30.0)
    assert "the recording is closed" in notebook_page.status.value


def test_prompt_queries(run, scene_images, fake_log):
    session = _session(run, scene_images)
    out = []
    lines = ["1:p2,3", "", "nonsense", "1:50,35", "2:camera", "quit", "0:p0,0"]
    assert prompt_queries(session, lines, write=out.append) == [1, 1, 2]
    assert "not added" in out[1] and "already" in out[2] and out[0].startswith("q1: frame 1 patch (row 2, col 3)")
    assert session.queries[2] == Query.from_special(run.layout, 2, "camera")


# -- the real logging ---------------------------------------------------------------------------


def test_start_session_passes_record_attention_keywords_through(tiny_model, scene_images):
    options = RecordingOptions(kinds=("global",), max_points=300)
    session = start_session(tiny_model, scene_images, ["0:p1,1"], blocks=[1, 3], options=options)
    assert session.options is options and session.result.rows.blocks == (1, 3)
    assert set(session.result.qk_cache.qk) == {("global", 1), ("global", 3)}


def test_added_query_in_the_rrd(tiny_model, scene_images, tmp_path):
    options = RecordingOptions(**OPTIONS)
    session = start_session(tiny_model, scene_images, ["0:p1,1"], options=options)
    t0 = time.perf_counter()
    query = session.add_pixel(2, 47.5, 30.0)
    print(f"added q1 in {time.perf_counter() - t0:.3f} s")
    path = tmp_path / "session.rrd"
    session.rec.save(path)
    session.rec.disconnect()  # closes the file (with its footer)
    reader = rr.chunk.RrdReader(path)
    entities = {ch.entity_path.lstrip("/") for ch in reader.stream()}
    assert Paths.marker(2, 1) in entities and Paths.marker(2, 0) not in entities
    for kind in KINDS:
        assert {Paths.overlay(s, 1, kind) for s in range(3)} <= entities
        assert Paths.maps(1, kind) in entities
    assert not any("/q2" in e or e.startswith(("heads/q2", "queries/q2")) for e in entities)
    # The layout sent after the click shows q1's dashboards.
    assert any(text.startswith("q1 global") for text in blueprint_strings(path))

    # The logged maps equal those of a fresh run of that query alone.
    fresh_result, fresh = api.record_attention(tiny_model, scene_images, [query], options=options)
    fresh_path = tmp_path / "fresh.rrd"
    fresh.save(fresh_path)
    fresh.disconnect()

    def maps(p, i):
        vals = [
            v
            for ch in rr.chunk.RrdReader(p).stream().filter(content=Paths.maps(i, "global"))
            for v in ch.to_record_batch().column("Tensor:data").to_pylist()
            if v is not None
        ]
        return vals[-1]

    assert maps(path, 1) == maps(fresh_path, 0)


def test_a_picked_cloud_point_adds_the_query_of_the_patch_whose_3d_point_is_nearest(run, scene_images, fake_log):
    session = _session(run, scene_images, update_blueprint=True)
    added = []
    handler = SelectionHandler(session, on_added=added.append, on_error=pytest.fail)
    centroids, valid = session.patch_points()
    cells = np.argwhere(valid)
    frame, row, col = (int(i) for i in cells[len(cells) // 3])
    picked = (centroids[frame, row, col] + 1e-4).tolist()  # the viewer reports the picked point, not the patch
    # The cloud's instance is a point of the subsampled cloud, not a patch: the position decides.
    item = rr.notebook.EntitySelectionItem("/world/points", instance_id=0, view_name="3D", position=picked)
    handler(_event(session, item))
    assert [(a.query.frame, *a.query.patch(run.layout)) for a in added] == [(frame, row, col)]


def test_instance_k_of_the_logged_patch_points_is_the_patch_picked_patch_names(tiny_model, scene_images, tmp_path):
    from vggt_attn_rerun.interactive.clicks import picked_patch

    from .helpers import Recording

    session = start_session(tiny_model, scene_images, ["0:p1,1"], options=RecordingOptions(**OPTIONS))
    path = tmp_path / "session.rrd"
    session.rec.save(path)
    session.rec.disconnect()
    centroids, valid = session.patch_points()
    for kind in KINDS:
        logged = np.asarray(Recording(path).static(Paths.patch_points(0, kind), "Points3D:positions"))
        assert len(logged) == int(valid.sum()) > 1
        named = np.array([centroids[picked_patch(k, valid)] for k in range(len(logged))])
        assert np.array_equal(logged, named), kind


def test_a_picked_patch_point_adds_the_query_of_its_own_patch_even_where_another_is_nearer(run, scene_images, fake_log):
    session = _session(run, scene_images, update_blueprint=True)
    added = []
    handler = SelectionHandler(session, on_added=added.append, on_error=pytest.fail)
    centroids, valid = session.patch_points()
    cells = [tuple(int(i) for i in c) for c in np.argwhere(valid)]  # instance k of the patch points = cells[k]
    k = 2 * len(cells) // 3
    other = cells[len(cells) // 3]
    # A large hot sphere picked on its surface: the picked point lies on another patch's centroid.
    item = rr.notebook.EntitySelectionItem(
        "/" + Paths.patch_points(0, "global"), instance_id=k, view_name="3D", position=centroids[other].tolist()
    )
    handler(_event(session, item))
    assert [(a.query.frame, *a.query.patch(run.layout)) for a in added] == [cells[k]]
