import rerun as rr
import rerun.blueprint as rrb

from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.viz.blueprint import compact_blueprint, default_blueprint, default_blueprint_for
from vggt_attn_rerun.viz.options import RecordingOptions
from vggt_attn_rerun.viz.paths import APPLICATION_ID, Paths

from .helpers import REPO_ROOT, blueprint_values, run_script
from .helpers import views as views_of


def _rules(view) -> list[str]:
    return [view.contents] if isinstance(view.contents, str) else list(view.contents)


BLUEPRINT_DIR = REPO_ROOT / "blueprints"
MAKE_BLUEPRINTS = REPO_ROOT / "tools" / "make_blueprints.py"


def _shipped_files() -> list:
    files = sorted(BLUEPRINT_DIR.glob("*.rbl"))
    assert files, f"no .rbl files in {BLUEPRINT_DIR}: run python tools/make_blueprints.py"
    return files


def test_shipped_rbl_files_are_fresh_and_all_there(tmp_path):
    # Regenerate with:  python tools/make_blueprints.py
    assert run_script(MAKE_BLUEPRINTS, "--check") == 0
    assert run_script(MAKE_BLUEPRINTS, "--dir", tmp_path) == 0
    assert [p.name for p in _shipped_files()] == sorted(p.name for p in tmp_path.iterdir())


def test_check_mode_fails_on_an_empty_folder(tmp_path):
    assert run_script(MAKE_BLUEPRINTS, "--check", "--dir", tmp_path) == 1


def test_generating_twice_gives_the_same_files_and_a_changed_file_is_stale(tmp_path):
    assert run_script(MAKE_BLUEPRINTS, "--dir", tmp_path) == 0
    assert run_script(MAKE_BLUEPRINTS, "--check", "--dir", tmp_path) == 0
    compact_blueprint(2).save(APPLICATION_ID, tmp_path / "default_tiny_s3.rbl")
    assert run_script(MAKE_BLUEPRINTS, "--check", "--dir", tmp_path) == 1


def test_rbl_app_id_is_the_recordings(tmp_path):
    for path in _shipped_files():
        assert [s.application_id for s in rr.chunk.RrdReader(path).blueprints()] == [APPLICATION_ID]


def test_default_blueprint_makes_block_the_active_timeline():
    timelines = blueprint_values(BLUEPRINT_DIR / "default_tiny_s3.rbl", "/time_panel", "TimePanelBlueprint:timeline")
    assert ["block"] in timelines


def test_default_blueprint_has_views_heads_mass_and_tensor():
    views = views_of(default_blueprint(4, ("global",), num_heads=16))
    origins = [str(v.origin) for v in views]
    assert [o for o in origins if o.startswith("world/frames/")] == [Paths.image(s) for s in range(4)]
    assert origins.count(Paths.heads_root(0)) == 16
    assert {"world", Paths.mass_root(0, "global"), Paths.maps(0, "global"), Paths.info(0)} <= set(origins)
    kinds = {type(v) for v in views}
    assert {rrb.Spatial3DView, rrb.Spatial2DView, rrb.TimeSeriesView, rrb.TensorView} <= kinds


def test_compact_blueprint_is_3d_its_legend_and_views_only():
    views = views_of(compact_blueprint(3))
    legend = [rrb.Spatial2DView, rrb.TextDocumentView, rrb.TextDocumentView]  # colour bar, legend, notes
    assert [type(v) for v in views] == [rrb.Spatial3DView, *legend] + [rrb.Spatial2DView] * 3


def _overrides(view) -> dict[str, str]:
    """Entity -> what overrides it (the visualizer type, or the blueprint archetype's name)."""
    return {
        str(path): getattr(value, "visualizer_type", type(value).__name__)
        for path, value in view.visualizer_overrides.items()
    }


def test_3d_view_shows_the_attention_and_hides_the_photo_cloud_by_default():
    scene = views_of(default_blueprint(3, ("global",), num_heads=4))[0]
    assert isinstance(scene, rrb.Spatial3DView)
    assert f"+ {Paths.patch_points(0, 'global')}/**" in _rules(scene)  # heat points and rays
    assert _overrides(scene) == {Paths.cloud: "EntityBehavior"}


def test_2d_views_dim_the_photo_under_the_overlay():
    views = [v for v in views_of(default_blueprint(3, ("global",), num_heads=4)) if str(v.origin) == Paths.image(1)]
    assert _overrides(views[0]) == {Paths.image(1): "EncodedImage"}


def test_the_colour_bar_legend_and_notes_sit_under_the_3d_view():
    origins = [str(v.origin) for v in views_of(default_blueprint(3, ("global",), num_heads=4))]
    assert origins[:4] == ["world", Paths.colorbar, Paths.scale_note(0, "global"), Paths.notes]


def test_the_3d_view_title_carries_the_models_label():
    scene = views_of(default_blueprint(3, ("global",), num_heads=4, title="RANDOM weights"))[0]
    assert scene.name == "3D: RANDOM weights"
    assert views_of(default_blueprint(3, ("global",), num_heads=4))[0].name == "3D"


def test_frames_without_a_camera_are_left_out_of_the_3d_view():
    # 2D content with no pinhole above it cannot be placed in 3D: the viewer flags the view as an error.
    rules = _rules(views_of(default_blueprint(3, ("global",), num_heads=4, no_camera=(1,)))[0])
    assert f"- {Paths.frame(1)}/**" in rules
    assert not any(r.startswith("+") and Paths.frame(1) in r for r in rules)
    assert f"+ {Paths.overlay(0, 0, 'global')}" in rules


def test_2d_views_show_the_peak_outlines():
    view = [v for v in views_of(default_blueprint(3, ("global",), num_heads=4)) if str(v.origin) == Paths.image(2)][0]
    assert f"+ {Paths.peaks(2, 0, 'global')}" in _rules(view)


def test_content_rules_use_explicit_paths():
    # Globs in the middle of a path do not match in Rerun 0.41: only a trailing /** may appear.
    for view in views_of(default_blueprint(3, ("frame", "global"), num_heads=4, queries=2)):
        for rule in _rules(view):
            assert "*" not in rule.removesuffix("/**"), rule


def test_one_dashboard_per_query_and_kind_then_the_query_means():
    bp = default_blueprint(2, ("frame", "global"), num_heads=2, queries=2)
    assert isinstance(bp.root_container, rrb.Tabs)
    assert [c.name for c in bp.root_container.contents] == [
        "q0 frame", "q0 global", "q1 frame", "q1 global", "all queries frame", "all queries global",
    ]  # fmt: skip


def test_details_have_summaries_matrices_and_consistency_for_global():
    views = views_of(default_blueprint(3, ("frame", "global"), num_heads=4))
    origins = {str(v.origin) for v in views}
    for kind in ("frame", "global"):
        assert {Paths.summary(0, kind, "entropy"), Paths.matrix(0, kind, "top_k_mass")} <= origins
        assert Paths.matrix_legend(0, kind) in origins
    assert {Paths.consistency(0, "score"), Paths.consistency(0, "control_score")} <= origins
    assert Paths.consistency(0, "peak_dist") in origins
    frame_only = {str(v.origin) for v in views_of(default_blueprint(3, ("frame",), num_heads=4))}
    assert not any("/consistency/" in o for o in frame_only)


def test_many_queries_show_q0_the_means_and_a_query_picker():
    bp = default_blueprint(3, ("global",), num_heads=16, queries=64)
    assert [c.name for c in bp.root_container.contents] == ["q0 global", "all queries global", "queries"]
    views = views_of(bp)
    assert len(views) < 100  # one dashboard (about 60 views), not 64 of them
    picker = [v for v in views_of(bp.root_container.contents[2]) if isinstance(v, rrb.Spatial2DView)]
    assert [str(v.origin) for v in picker] == [Paths.image(s) for s in range(3)]
    assert f"+ {Paths.marker(1, 63)}" in _rules(picker[1])
    shown = default_blueprint(3, ("global",), num_heads=16, queries=64, shown_queries=[7])
    assert shown.root_container.contents[0].name == "q7 global"


def test_default_blueprint_for_is_sized_by_the_run(tiny_model, scene_images):
    result = capture(tiny_model, scene_images, lambda lay: [Query(0, 5), Query(1, 0)], blocks=[3], kinds=("global",))
    views = views_of(default_blueprint_for(result, RecordingOptions()))
    assert sum(str(v.origin) == Paths.heads_root(1) for v in views) == result.rows.num_heads
    assert sum(str(v.origin).startswith("world/frames/") for v in views) == 2 * result.layout.num_frames
