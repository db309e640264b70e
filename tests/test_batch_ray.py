"""The Ray Data engine gives the same tables as the local engine (runs when Ray Data is installed).

Ray starts here with 2 CPUs and 2 workers (one tiny model each); scenes: 4 synthetic ones, one of
them corrupt, so failures travel back from the workers too. Both engines run that study once, with a
knockout sweep, and the tests compare what they wrote.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import STUDY_OPTIONS as OPTIONS
from tests.helpers import make_scenes
from vggt_attn_rerun.batch.engines import RaySettings
from vggt_attn_rerun.batch.job import StudyOptions
from vggt_attn_rerun.batch.study import run_study

ray = pytest.importorskip("ray", reason="the ray engine needs the [ray] extra")
pytest.importorskip("ray.data", reason="the ray engine needs Ray Data (the [ray] extra)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _assert_same_table(a, b):
    assert a.schema == b.schema and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_numpy(zero_copy_only=False), b[name].to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=name)
        else:
            assert (x == y).all(), name


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory, local_ray):
    """One study of 4 scenes (c corrupt) with a knockout sweep, run by each engine: its folders."""
    import dataclasses

    root = tmp_path_factory.mktemp("engines")
    options = dataclasses.replace(OPTIONS, ablate="knockout")
    scenes = make_scenes(root / "scenes", ["a", "b", "d"])
    make_scenes(scenes, ["c"])
    (scenes / "c" / "00.png").write_bytes(b"corrupt")
    local = run_study(scenes, root / "local", options, progress=False)
    remote = run_study(scenes, root / "ray", options, engine="ray", ray=RaySettings(workers=2), progress=False)
    return root, local, remote


def test_local_and_ray_engines_give_equal_tables(both_engines):
    root, local, remote = both_engines
    assert (remote.done, remote.failed) == (local.done, local.failed) == (3, ["c"])
    for name in ("scenes.parquet", "summary.parquet"):
        _assert_same_table(pq.read_table(root / "local" / name), pq.read_table(root / "ray" / name))
    failure = json.loads((root / "ray" / "failures.jsonl").read_text())
    assert failure["scene"] == "c" and "cannot read image" in failure["reason"]


def test_more_gpus_per_worker_than_the_cluster_has_is_refused(tmp_path, local_ray):
    from vggt_attn_rerun.errors import UserError

    scenes = make_scenes(tmp_path / "scenes", ["a"])
    with pytest.raises(UserError, match="has 0 GPUs"):
        run_study(scenes, tmp_path / "out", OPTIONS, engine="ray", ray=RaySettings(gpus_per_worker=1), progress=False)


def test_a_model_that_does_not_load_on_the_workers_ends_the_study_in_one_line(tmp_path, local_ray):
    from vggt_attn_rerun.errors import UserError

    scenes = make_scenes(tmp_path / "scenes", ["a"])
    broken = StudyOptions(model="json:loads", grid=(2, 2), image_size=84)  # a callable that raises TypeError
    with pytest.raises(UserError, match=r"a Ray worker failed \(TypeError: .*run the same command again"):
        run_study(scenes, tmp_path / "out", broken, engine="ray", ray=RaySettings(workers=1), progress=False)


def test_blocks_the_model_lacks_are_one_line_before_any_scene(tmp_path, local_ray):
    from vggt_attn_rerun.api import BadInput

    scenes = make_scenes(tmp_path / "scenes", ["a", "b"])
    bad = StudyOptions(model="tiny", grid=(2, 2), image_size=84, blocks="99")
    with pytest.raises(BadInput, match=r"^--blocks 99: .*valid") as caught:
        run_study(scenes, tmp_path / "out", bad, engine="ray", ray=RaySettings(workers=2), progress=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "scenes").exists() or not any((tmp_path / "out" / "scenes").iterdir())


def test_local_and_ray_engines_give_equal_effect_tables_with_ablate(both_engines):
    root, _, _ = both_engines
    names = [f"scenes/{scene}.effects.parquet" for scene in ("a", "b", "d")] + ["effects_summary.parquet"]
    for name in names:
        _assert_same_table(pq.read_table(root / "local" / name), pq.read_table(root / "ray" / name))
    # a cross-view knockout per global block of the tiny model (4), of no single head
    assert pq.read_table(root / "ray" / "scenes/a.effects.parquet")["head"].to_pylist() == [-1] * 4
