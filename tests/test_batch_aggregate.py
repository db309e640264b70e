"""The dataset table (means and 95% intervals over scenes) and the dataset recording."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import rerun as rr

from tests.helpers import STUDY_OPTIONS as OPTIONS
from tests.helpers import make_scenes
from vggt_attn_rerun.batch.aggregate import HEAD_MEAN, aggregate, mean_interval, t_quantile
from vggt_attn_rerun.batch.job import METRIC_COLUMNS, SCHEMA
from vggt_attn_rerun.batch.study import run_study

# Student's t, 0.975 quantile, from printed tables
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize("df, want", sorted(T_975.items()))
def test_t_quantile_matches_printed_tables(df, want):
    assert t_quantile(0.975, df) == pytest.approx(want, abs=6e-4)


def test_t_quantile_approaches_the_normal_quantile_smoothly_across_its_large_df_formula():
    assert t_quantile(0.975, 100_000) == pytest.approx(1.95996, abs=1e-4)
    a, b, c = (t_quantile(0.975, df) for df in (1000, 1001, 1002))  # series, then expansion
    assert a > b > c and a - b == pytest.approx(b - c, rel=1e-2)


def test_mean_interval_is_students_t_interval_of_the_finite_values():
    values = np.array([[1.0, 2.0, 4.0, np.nan], [5.0, np.nan, np.nan, np.nan]])
    mean, low, high, n = mean_interval(values)
    half = T_975[2] * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert n.tolist() == [3, 1] and mean.tolist() == pytest.approx([7 / 3, 5.0])
    assert (low[0], high[0]) == pytest.approx((7 / 3 - half, 7 / 3 + half), rel=1e-3)
    assert np.isnan(low[1]) and np.isnan(high[1])


def _scene_table(name, blocks=2, heads=3, seed=0):
    rng = np.random.default_rng(seed)
    n = blocks * heads
    data = {
        "scene": [name] * n,
        "kind": ["global"] * n,
        "block": np.repeat(np.arange(blocks), heads),
        "head": np.tile(np.arange(heads), blocks),
        "reference": ["model"] * n,
        **{c: np.full(n, 4) for c in ("frames", "queries", "correspondence_pairs", "epipolar_pairs")},
        **{m: rng.uniform(0, 1, n) for m in METRIC_COLUMNS},
    }
    return pa.Table.from_pydict(data, schema=SCHEMA)


def _np(table, name):
    return table[name].to_numpy(zero_copy_only=False)


def test_aggregate_gives_per_head_means_and_per_block_curves_of_the_head_means():
    tables = [_scene_table(s, seed=i) for i, s in enumerate("abcd")]
    summary = aggregate(tables)
    block, head = _np(summary, "block"), _np(summary, "head")
    stack = np.stack([t["entropy"].to_numpy().reshape(2, 3) for t in tables])  # [scene, block, head]
    i = np.flatnonzero((block == 1) & (head == 2))[0]
    assert _np(summary, "entropy_mean")[i] == pytest.approx(stack[:, 1, 2].mean())
    assert _np(summary, "entropy_n")[i] == 4
    j = np.flatnonzero((block == 0) & (head == HEAD_MEAN))[0]
    per_scene = stack[:, 0, :].mean(axis=1)
    half = T_975[3] * per_scene.std(ddof=1) / 2
    assert _np(summary, "entropy_mean")[j] == pytest.approx(per_scene.mean())
    low, high = _np(summary, "entropy_low")[j], _np(summary, "entropy_high")[j]
    assert (low, high) == pytest.approx((per_scene.mean() - half, per_scene.mean() + half), rel=1e-3)
    assert summary.num_rows == 2 * 3 + 2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("agg")
    run_study(make_scenes(root / "scenes", ["a", "b", "c"]), root / "out", OPTIONS, progress=False)
    return root / "out"


def _matrix_values(path, entity):
    """The [L, H] values logged beside a block x head matrix image, and the image's shape."""
    chunks = list(rr.chunk.RrdReader(path).stream().filter(content=entity))
    batch = next(c.to_record_batch() for c in chunks if "values" in c.to_record_batch().schema.names)
    values = np.asarray(batch["values"][0].as_py())
    fmt = batch["Image:format"][0].as_py()[0]
    return values, (fmt["height"], fmt["width"])


def test_the_dataset_rrd_holds_the_mean_matrices_of_the_scene_tables(study):
    rows = pq.read_table(study / "scenes.parquet")
    glob = rows.filter(pc.equal(rows["kind"], "global"))
    for metric in ("correspondence_gain", "epipolar_gain", "entropy"):
        per_scene = np.stack(
            [glob.filter(pc.equal(glob["scene"], s))[metric].to_numpy().reshape(4, 4) for s in "abc"]
        )  # [scene, block, head], rows in block-major order
        values, (h, w) = _matrix_values(study / "summary.rrd", f"/dataset/global/matrix/{metric}")
        np.testing.assert_allclose(values.reshape(4, 4), per_scene.mean(axis=0), rtol=1e-12)
        assert (h, w) == (4 * 12, 4 * 12)  # 4 blocks x 4 heads, 12-pixel cells


def test_the_dataset_rrd_has_per_block_curves_and_a_blueprint(study):
    reader = rr.chunk.RrdReader(study / "summary.rrd")
    assert len(list(reader.blueprints())) == 1
    chunks = list(reader.stream().filter(content="/dataset/frame/curve/entropy", is_static=False))
    batch = pa.Table.from_batches([c.to_record_batch() for c in chunks])
    assert batch["block"].to_pylist() == [0, 1, 2, 3]
    rows = pq.read_table(study / "scenes.parquet")
    frame = rows.filter(pc.equal(rows["kind"], "frame"))
    per_scene = np.stack([_np(frame.filter(pc.equal(frame["scene"], s)), "entropy").reshape(4, 4) for s in "abc"])
    got = [v[0] for v in batch["Scalars:scalars"].to_pylist()]  # series 0: the mean
    np.testing.assert_allclose(got, per_scene.mean(axis=2).mean(axis=0), rtol=1e-12)
    entities = {c.entity_path for c in reader.stream()}
    assert "/dataset/frame/matrix/correspondence_gain" not in entities  # no geometry for frame attention


@pytest.mark.parametrize("gain", ["correspondence_gain", "peak_dist_gain", "epipolar_gain"])
def test_summary_md_ranks_heads_by_every_gain_with_its_q_value(study, gain):
    text = (study / "summary.md").read_text()
    summary = pq.read_table(study / "summary.parquet")
    cells = np.flatnonzero((_np(summary, "kind") == "global") & (_np(summary, "head") >= 0))
    best = cells[np.argmax(_np(summary, f"{gain}_mean")[cells])]
    table = text.split(f"heads by `{gain}`")[1]
    first_row = [ln for ln in table.splitlines() if ln.startswith("| 1 |")][0]
    q = _np(summary, f"{gain}_q")[best]
    assert first_row.startswith(f"| 1 | {_np(summary, 'block')[best]} | {_np(summary, 'head')[best]} |")
    assert f"| {q:.2g}" in first_row
    assert "# Dataset study: 3 scenes" in text and "Geometry reference: **model**" in text


def test_q_values_are_benjamini_hochberg_over_the_block_head_cells():
    tables = [_scene_table(s, seed=i) for i, s in enumerate("abcde")]
    summary = aggregate(tables)
    cells = _np(summary, "head") >= 0
    p = _np(summary, "epipolar_gain_p")[cells]
    q = _np(summary, "epipolar_gain_q")[cells]
    order = np.argsort(p)
    m = len(p)
    want = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    np.testing.assert_allclose(q[order], np.minimum(want, 1))


def test_the_dataset_blueprint_has_the_same_ids_every_time():
    import rerun.blueprint as rrb

    from vggt_attn_rerun.viz.log_dataset import DatasetCurve, DatasetMatrix, dataset_blueprint

    matrices = [DatasetMatrix("global", "entropy", np.zeros((2, 3)), 0.0, 1.0)]
    curves = [DatasetCurve("global", "entropy", *np.zeros((3, 2)))]

    def ids(node):
        children = node.contents if isinstance(node, rrb.Container) else []
        return [str(node.id)] + [i for child in children for i in ids(child)]

    a, b = (dataset_blueprint(["global"], matrices, curves).root_container for _ in range(2))
    assert ids(a) == ids(b) and len(set(ids(a))) == len(ids(a)) > 3


def test_gain_matrices_are_symmetric_around_zero_and_mute_the_cells_that_are_not_significant():
    from vggt_attn_rerun.batch.aggregate import dataset_views

    tables = [_scene_table(s, seed=i) for i, s in enumerate("abcde")]
    summary = aggregate(tables)
    _, _, matrices, _ = dataset_views(summary)
    gain = next(m for m in matrices if m.metric == "correspondence_gain")
    assert gain.diverging and gain.vmin == -gain.vmax == -np.abs(gain.values).max()
    cells = _np(summary, "head") >= 0
    want = (_np(summary, "correspondence_gain_q")[cells] <= 0.05).reshape(2, 3)
    np.testing.assert_array_equal(gain.significant, want)
    assert {m.metric for m in matrices} >= {"entropy", "correspondence_gain", "peak_dist_gain", "epipolar_gain"}
    assert "correspondence_score" not in {m.metric for m in matrices}


def test_block_head_matrix_mutes_only_the_given_cells():
    from vggt_attn_rerun.analysis.summaries import MUTE_RGB, MUTE_WEIGHT, block_head_matrix
    from vggt_attn_rerun.viz.colormap import diverging_lut

    lut = diverging_lut()
    rgb = block_head_matrix(np.array([[1.0, -1.0]]), lut, 1, -1.0, 1.0, muted=np.array([[False, True]]))
    assert tuple(rgb[0, 0]) == tuple(lut[255])
    want = np.round(MUTE_WEIGHT * lut[0].astype(float) + (1 - MUTE_WEIGHT) * np.array(MUTE_RGB)).astype(np.uint8)
    assert tuple(rgb[0, 1]) == tuple(want)
