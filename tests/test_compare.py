"""Side-by-side recordings (comparison.py), read back from the .rrd with rr.chunk.RrdReader."""

import numpy as np
import pytest
import rerun.blueprint as rrb
import torch

from tests.helpers import Recording, blueprint_strings, blueprint_values
from tests.helpers import views as views_of
from vggt_attn_rerun.analysis.maps import masses
from vggt_attn_rerun.analysis.summaries import METRICS
from vggt_attn_rerun.api import comparison, record_attention
from vggt_attn_rerun.cli import main as cli
from vggt_attn_rerun.core.capture import capture
from vggt_attn_rerun.core.tokens import Query
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing import synthetic_scene, tiny_vggt
from vggt_attn_rerun.testing.tiny_pi3 import tiny_pi3
from vggt_attn_rerun.viz.paths import DEPTH_TIMELINE, Paths, mass_series, rooted

QUERY = "1:p1,2"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two 28x42 views (2x3 patches): ``[2, 3, 28, 42]`` in [0, 1]."""
    return torch.from_numpy(synthetic_scene(2, 28, 42, seed=3)).permute(0, 3, 1, 2).float() / 255


def _record(tmp_path, models, images, name="cmp.rrd"):
    compared, rec = comparison.record_comparison(models, images, [QUERY])
    path = tmp_path / name
    rec.save(path)  # the stream buffered everything so far: the file gets it all
    rec.flush()
    rec.disconnect()
    return compared, path


@pytest.fixture(scope="module")
def vggt_vs_pi3(tmp_path_factory, images):
    models = [("vggt", tiny_vggt(seed=0)), ("pi3", tiny_pi3(seed=0))]
    compared, path = _record(tmp_path_factory.mktemp("cmp"), models, images)
    return models, compared, path


def _single(tmp_path, model, images, name) -> Recording:
    """The model's own single-model recording, made apart from the comparison."""
    _, rec = record_attention(model, images, [QUERY])
    path = tmp_path / f"{name}.rrd"
    rec.save(path)  # the stream buffered everything so far: the file gets it all
    rec.flush()
    rec.disconnect()
    return Recording(path)


def _strip(entities, root) -> set[str]:
    return {e.removeprefix(f"{root}/") for e in entities if e.startswith(f"{root}/")}


def test_each_model_is_under_its_own_root_and_nothing_outside(vggt_vs_pi3):
    _, _, path = vggt_vs_pi3
    entities = Recording(path).entities()
    for name in ("vggt", "pi3"):
        with rooted(f"models/{name}"):
            assert {Paths.maps(0, "global"), Paths.cloud, Paths.world, Paths.matrix(0, "global", "entropy")} <= entities
    assert {e for e in entities if not e.startswith("models/")} <= {"__properties", ""}


@pytest.mark.parametrize("k", [0, 1], ids=["vggt", "pi3"])
def test_each_root_equals_the_models_own_single_model_recording(vggt_vs_pi3, images, tmp_path, k):
    models, _, path = vggt_vs_pi3
    name, model = models[k]
    single, both = _single(tmp_path, model, images, name), Recording(path)
    root = f"models/{name}"
    assert _strip(both.entities(), root) == single.entities() - {"__properties", ""}
    with rooted(root):
        rooted_maps = both.static(Paths.maps(0, "global"), "Tensor:data")[0]
    single_maps = single.static(Paths.maps(0, "global"), "Tensor:data")[0]
    assert rooted_maps["shape"] == single_maps["shape"]
    np.testing.assert_array_equal(np.asarray(rooted_maps["buffer"]), np.asarray(single_maps["buffer"]))


def test_pi3_masses_have_no_camera_series_and_sum_its_register_tokens(vggt_vs_pi3, images):
    models, compared, path = vggt_vs_pi3
    lay = compared[1].result.layout
    assert lay.num_cameras == 0
    # Independent capture: global rows [L, Q, H, S, P]; head mean, then the 5 special tokens of every frame.
    rows = capture(models[1][1], images, lambda layout: [Query.from_patch(layout, 1, 1, 2)]).rows
    probs = rows.probs["global"][:, 0].double().mean(dim=1).numpy()  # [L, S, P]
    expected = {"registers": probs[..., : lay.patch_start].sum((-1, -2))}
    expected |= {f"view_{s}": probs[:, s, lay.patch_start :].sum(-1) for s in range(lay.num_frames)}
    recording = Recording(path)
    with rooted("models/pi3"):
        logged = {n for n in mass_series(lay.num_frames, 1) if Paths.mass(0, "global", n) in recording.entities()}
        assert logged == set(expected)
        for series, values in expected.items():
            got = recording.temporal(Paths.mass(0, "global", series), "Scalars:scalars", "block")
            np.testing.assert_allclose([got[b][0] for b in rows.blocks], values, atol=1e-6)


def test_masses_count_the_camera_column_only_for_layouts_with_a_camera():
    probs = np.zeros((2, 7))  # [S, P]: 1 camera + 2 registers + 4 patches per frame
    probs[:, 0], probs[:, 1:3], probs[:, 3:] = 0.05, 0.1, 0.0625
    np.testing.assert_allclose(masses(probs, 3, 1), [0.25, 0.25, 0.1, 0.4])
    np.testing.assert_allclose(masses(probs, 3, 0), [0.25, 0.25, 0.5])


def test_blueprint_in_the_file_shows_both_models_side_by_side(vggt_vs_pi3):
    _, _, path = vggt_vs_pi3
    content = blueprint_strings(path)
    for name in ("vggt", "pi3"):
        with rooted(f"models/{name}"):
            shown = [Paths.world, Paths.image(0), Paths.image(1), Paths.matrix(0, "global", "entropy")]
        assert all(p in content for p in shown), name


def test_layout_columns_are_one_per_model_with_3d_views_and_matrices(vggt_vs_pi3):
    _, compared, _ = vggt_vs_pi3
    tab = comparison.comparison_blueprint(compared).root_container
    assert [c.name for c in tab.contents] == ["vggt", "pi3"]
    for column, name in zip(tab.contents, ("vggt", "pi3"), strict=True):
        views = views_of(column)
        assert {type(v) for v in views} == {rrb.Spatial3DView, rrb.Spatial2DView, rrb.TextDocumentView}
        assert all(str(v.origin).startswith(f"models/{name}/") for v in views)
        # Matrix views are titled by their metric alone (short enough to fit); their tab names the model.
        assert all(str(v.name).startswith(f"{name}: ") or str(v.name) in METRICS for v in views)
        assert f"{name}: block x head" in [c.name for c in _containers(column)]


def _containers(node) -> list:
    return [node] + [c for child in node.contents if isinstance(child, rrb.Container) for c in _containers(child)]


def _timeline_times(recording: Recording, entity: str, timeline: str) -> list[int]:
    return sorted(recording.temporal(entity, "Scalars:scalars", timeline))


def test_models_of_different_depth_line_up_on_the_depth_timeline(images, tmp_path):
    models = [("deep", tiny_vggt(seed=0, depth=4)), ("shallow", tiny_vggt(seed=1, depth=2))]
    compared, path = _record(tmp_path, models, images)
    recording = Recording(path)
    for name, blocks, steps in (("deep", [0, 1, 2, 3], [0, 33, 67, 100]), ("shallow", [0, 1], [0, 100])):
        with rooted(f"models/{name}"):
            entity = Paths.summary(0, "global", "entropy")
        assert _timeline_times(recording, entity, "block") == blocks
        assert _timeline_times(recording, entity, DEPTH_TIMELINE) == steps
    assert [DEPTH_TIMELINE] in blueprint_values(path, "/time_panel", "TimePanelBlueprint:timeline")


def test_models_of_equal_depth_keep_block_as_the_active_timeline(vggt_vs_pi3):
    _, _, path = vggt_vs_pi3
    assert ["block"] in blueprint_values(path, "/time_panel", "TimePanelBlueprint:timeline")


def test_rooted_paths_move_under_the_root_and_come_back_after():
    with rooted("models/a"):
        assert (Paths.cloud, Paths.image(2)) == ("models/a/world/points", "models/a/world/frames/2/image")
    assert (Paths.cloud, Paths.image(2)) == ("world/points", "world/frames/2/image")


def test_model_names_are_entity_safe_and_unique():
    assert comparison.model_names(["facebook/VGGT-1B", "tiny", "tiny", "m:make"], ["auto", "vggt", "pi3", "auto"]) == [
        "VGGT-1B", "tiny", "tiny-pi3", "make"]  # fmt: skip
    assert comparison.model_names(["tiny", "tiny"]) == ["tiny", "tiny_2"]


def test_one_model_is_refused_with_one_line():
    with pytest.raises(UserError, match="at least 2 models"):
        comparison.record_comparison([("a", tiny_vggt())], torch.zeros(1, 3, 28, 28), ["0:p0,0"])


def test_cli_compare_records_both_roots(scene, tmp_path):
    out = tmp_path / "cmp.rrd"
    args = ["compare", str(scene), "--model", "tiny", "--model", "tiny", "--arch", "vggt", "--arch", "pi3"]
    assert cli.run([*args, "-q", "1:p1,2", "--image-size", "56", "--headless", "--save", str(out)]) == 0
    found = Recording(out).entities()
    assert {"models/tiny/queries/q0/global/maps", "models/tiny-pi3/queries/q0/global/maps"} <= found


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "at least 2 models"), (["--model", "tiny", "--arch", "pi3"], "--arch given 1 times for 2 models")],
)
def test_cli_compare_bad_input_is_one_line_and_writes_nothing(scene, tmp_path, capsys, extra, message):
    out = tmp_path / "cmp.rrd"
    code = cli.run(["compare", str(scene), "--model", "tiny", *extra, "--headless", "--save", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_pi3_summaries_put_its_special_tokens_in_register_mass(vggt_vs_pi3):
    from vggt_attn_rerun.analysis.summaries import summarize

    _, compared, _ = vggt_vs_pi3
    rows = compared[1].result.rows
    probs = rows.probs["global"].double().numpy()  # [L, Q, H, S, P]
    summary = summarize(rows, "global")
    np.testing.assert_allclose(summary.register_mass, probs[..., : rows.layout.patch_start].sum((-1, -2)), atol=1e-9)
    np.testing.assert_array_equal(summary.camera_mass, 0.0)


def test_a_name_that_is_no_entity_name_is_refused():
    with pytest.raises(UserError, match="is not an entity name"):
        comparison.record_comparison([("..", tiny_vggt()), ("b", tiny_vggt())], torch.zeros(1, 3, 28, 28), ["0:p0,0"])
