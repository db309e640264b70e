"""api.ablate and api.record_ablation on the tiny models: effects, batching, refusals, the recording read back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import Recording
from vggt_attn_rerun.analysis.effects import EFFECTS, baseline, effect, geometry
from vggt_attn_rerun.analysis.summaries import block_head_matrix
from vggt_attn_rerun.api.ablation import ablate, record_ablation
from vggt_attn_rerun.core.adapters import adapter_for
from vggt_attn_rerun.core.interventions import BlockAblation, CrossViewKnockout, HeadAblation, intervene, sweep
from vggt_attn_rerun.core.introspect import model_layout
from vggt_attn_rerun.errors import UserError
from vggt_attn_rerun.testing.tiny_pi3 import tiny_pi3
from vggt_attn_rerun.testing.tiny_streamvggt import tiny_streamvggt
from vggt_attn_rerun.testing.tiny_vggt_omega import tiny_vggt_omega
from vggt_attn_rerun.viz import colormap
from vggt_attn_rerun.viz.log_effects import POINTS_PATH, TIMELINE, matrix_path
from vggt_attn_rerun.viz.options import RecordingOptions


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 28, 42, generator=torch.Generator().manual_seed(0))


def test_each_effect_equals_the_effect_of_its_own_forward(tiny_model, images):
    ivs = [HeadAblation("global", 1, 2), BlockAblation("frame", 0, "mean"), CrossViewKnockout(2)]
    effects = ablate(tiny_model, images, ivs, queries=["1:p1,1"], batch_size=2)
    adapter = adapter_for(tiny_model)
    layout = model_layout(tiny_model, 2, 28, 42)
    with torch.no_grad():
        base = baseline(geometry(adapter.run(tiny_model, images[None]), layout), layout, effects.queries)
    for i, iv in enumerate(ivs):
        with torch.no_grad(), intervene(tiny_model, [iv], layout):
            e = effect(base, geometry(adapter.run(tiny_model, images[None]), layout), layout, effects.queries)
        for name in EFFECTS:
            assert effects.values[name][i] == pytest.approx(getattr(e, name), rel=1e-3, abs=1e-6), (iv.label, name)
        assert effects.query[i, 0] == pytest.approx(e.query[0], rel=1e-3, abs=1e-6)


def test_batch_size_does_not_change_the_effects(tiny_model, images):
    ivs = sweep(tiny_model, "blocks", kinds=("frame", "global"), blocks=[0, 3])
    one = ablate(tiny_model, images, ivs, batch_size=1)
    many = ablate(tiny_model, images, ivs, batch_size=3)
    for name in EFFECTS:
        np.testing.assert_allclose(many.values[name], one.values[name], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_pi3, tiny_streamvggt, tiny_vggt_omega])
def test_ablate_measures_every_supported_model(make):
    model = make(seed=0)
    size = 32 if make is tiny_vggt_omega else 28
    effects = ablate(model, torch.rand(2, 3, size, size), sweep(model, "knockout", blocks=[0]))
    assert effects.values["points"][0] > 0 and np.isfinite(effects.values["rotation_deg"][0])


def test_sweep_of_heads_covers_every_head_of_every_block(tiny_model):
    ivs = sweep(tiny_model, "heads", kinds=("frame", "global"))
    assert len(ivs) == 2 * 4 * 4 and len(set(ivs)) == len(ivs)


def test_an_impossible_intervention_is_refused_before_any_forward(tiny_model, images):
    calls = []
    handle = tiny_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(UserError, match="head 9 does not exist"):
            ablate(tiny_model, images, [HeadAblation("global", 0, 1), HeadAblation("global", 0, 9)])
    finally:
        handle.remove()
    assert calls == []


def test_progress_reports_each_forward(tiny_model, images):
    seen = []
    ablate(tiny_model, images, sweep(tiny_model, "blocks", blocks=[0, 1, 2]), batch_size=2,
           on_forward=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(2, 3), (3, 3)]


def test_matrix_places_each_head_at_its_block_row_and_head_column(tiny_model, images):
    effects = ablate(tiny_model, images, sweep(tiny_model, "heads", blocks=[1, 3]))
    blocks, cols, m = effects.matrix("points", "global")
    assert blocks == (1, 3) and cols == 4
    assert m[1, 2] == effects.values["points"][[iv.head == 2 and iv.block == 3 for iv in effects.interventions]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, tiny_model, images):
    options = RecordingOptions(max_points=300)
    effects, rec = record_ablation(tiny_model, images, sweep(tiny_model, "heads", blocks=[0, 2]),
                                   queries=["0:p1,1"], options=options)  # fmt: skip
    path = tmp_path_factory.mktemp("abl") / "ablate.rrd"
    rec.save(path)
    rec.flush()
    rec.disconnect()
    return effects, Recording(path), options


def test_recorded_matrix_is_the_colormapped_effect(recorded):
    effects, recording, options = recorded
    _, _, values = effects.matrix("depth", "global")
    top = float(np.nanmax(values))
    want = block_head_matrix(values, colormap.lut(options.colormap), options.matrix_cell, 0.0, top)
    data = recording.static(matrix_path("global", "depth"), "Image:buffer")
    fmt = recording.static(matrix_path("global", "depth"), "Image:format")[0]
    got = np.asarray(data[0] if isinstance(data[0], list) else data, np.uint8).reshape(fmt["height"], fmt["width"], 3)
    np.testing.assert_array_equal(got, want)
    labels = recording.static(matrix_path("global", "depth") + "/axes", "Points2D:labels")
    assert labels[:2] == ["block 0", "b2"] and labels[2:] == ["h0", "h1", "h2", "h3", ""]


def test_recorded_points_are_coloured_by_how_far_they_moved(recorded):
    effects, recording, options = recorded
    ((i, moved),) = effects.moved.items()  # noqa: RUF100 (one kept map: the largest point effect)
    assert effects.values["points"][i] == np.nanmax(effects.values["points"])
    colors = recording.temporal(POINTS_PATH, "Points3D:colors", TIMELINE)
    assert list(colors) == [i]
    got = np.asarray(colors[i], np.uint32)
    positions = np.asarray(recording.static(POINTS_PATH, "Points3D:positions"), np.float32)
    base = effects.baseline
    pts = base.geometry.points.reshape(-1, 3).astype(np.float32)
    flat = moved.reshape(-1)
    # each logged point found in the point map: its colour is the documented one for its shift
    index = [int(np.flatnonzero((pts == p).all(1))[0]) for p in positions]
    top = float(np.percentile(flat[index], 99))
    u8 = np.rint(255 * np.clip(flat[index] / top, 0, 1)).astype(np.uint8)
    rgb = colormap.visible_colors(u8, options.colormap).astype(np.uint32)
    want = (rgb[:, 0] << 24) | (rgb[:, 1] << 16) | (rgb[:, 2] << 8) | 255
    np.testing.assert_array_equal(got, want)
