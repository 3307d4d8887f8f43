"""The synthetic dynamic scene: D-NeRF layout read by load_scene, split rule, motion, depth, points, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("open3d", reason="synth renders with open3d (pip install open3d-cpu)")
iio = pytest.importorskip("imageio.v3")

from omnifield.cli.main import main  # noqa: E402
from omnifield.datasets.load import load_scene  # noqa: E402
from omnifield.datasets.synth_dynamic import (  # noqa: E402
    OBJECTS,
    DynamicSynthConfig,
    object_pose,
    read_points_ply,
    write_dynamic_scene,
)

SMALL = DynamicSynthConfig(seed=3, n_cameras=6, holdout_camera_every=3, n_times=4, width=40, height=40, n_points=300)
HELD = [0, 3]
R_SPHERE = OBJECTS["sphere"][0].params["radius"]
# Icosphere facets (subdivision 4) lie inside the analytic sphere by up to ~2e-4 at radius 0.25;
# open3d casts float32 rays (~1e-6 at t ~ 4).
SPHERE_SURFACE_ATOL = 5e-4
BASE_TOP = -0.5


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    return write_dynamic_scene(tmp_path_factory.mktemp("dyn") / "scene", SMALL)


def _frames(root, split):
    return json.loads((root / f"transforms_{split}.json").read_text())["frames"]


def _read(root, frame):
    base = root / frame["file_path"]
    rgba = iio.imread(base.with_name(base.name + ".png"))
    depth = np.load(base.with_name(base.name + "_depth.npy"))
    return rgba, depth


def _centre_points(root, frame, depth):
    """World points of the centre rays ``[H, W, 3]`` from the written pose and depth only."""
    c2w = np.asarray(frame["transform_matrix"], np.float64)
    meta = json.loads((root / "transforms_train.json").read_text())
    h, w = depth.shape
    f = 0.5 * w / math.tan(0.5 * meta["camera_angle_x"])
    v, u = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    cam = np.stack([(u + 0.5 - 0.5 * w) / f, -(v + 0.5 - 0.5 * h) / f, -np.ones(u.shape)], -1)  # OpenGL
    d = cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return c2w[:3, 3] + depth[..., None] * d


def test_layout_and_load_scene(scene_dir):
    names = {p.name for p in scene_dir.iterdir()}
    assert names == {"train", "val", "test", "transforms_train.json", "transforms_val.json",
                     "transforms_test.json", "points3d.ply", "synth.json"}
    data = load_scene(scene_dir)
    assert data.format == "dnerf"
    sizes = {k: len(data.split(k)) for k in ("train", "val", "test")}
    assert sizes == {"train": (6 - len(HELD)) * 4, "val": 4, "test": 3}
    assert data.image_size("test") == (40, 40)
    times = data.cameras.times
    assert times is not None and float(times.min()) == 0.0 and float(times.max()) == 1.0
    assert data.time_range == (0.0, 1.0)
    written = [f["time"] for s in ("train", "val", "test") for f in _frames(scene_dir, s)]
    np.testing.assert_allclose(times.numpy(), written, atol=1e-7)
    rgba = iio.imread(scene_dir / "train" / "r_0.png")
    assert rgba.shape == (40, 40, 4) and rgba.dtype == np.uint8
    assert (rgba[rgba[..., 3] == 0, :3] == 255).all()  # white where nothing is hit
    assert data.images.alpha(0) is not None


def test_split_rule(scene_dir):
    train, val, test = (_frames(scene_dir, s) for s in ("train", "val", "test"))
    train_times = sorted({f["time"] for f in train})
    assert train_times == [k / 3 for k in range(4)]
    assert sorted({f["camera_id"] for f in train}) == [1, 2, 4, 5]
    assert [(f["camera_id"], f["time"]) for f in train[:4]] == [(j, 0.0) for j in (1, 2, 4, 5)]  # time-major
    assert [(f["camera_id"], f["time"]) for f in val] == [(HELD[k % 2], k / 3) for k in range(4)]
    assert [(f["camera_id"], f["time"]) for f in test] == [(HELD[k % 2], (k + 0.5) / 3) for k in range(3)]
    pairs = {(f["camera_id"], f["time"]) for f in train}
    assert not pairs & {(f["camera_id"], f["time"]) for f in test}
    assert not {f["camera_id"] for f in test} & {f["camera_id"] for f in train}
    assert not {f["time"] for f in test} & set(train_times)
    # a fixed rig: a camera has the same pose at every time and split
    poses: dict[int, list] = {}
    for f in train + val + test:
        poses.setdefault(f["camera_id"], []).append(np.asarray(f["transform_matrix"]))
    for mats in poses.values():
        for m in mats:
            np.testing.assert_array_equal(m, mats[0])


def test_objects_move_static_pixels_do_not(scene_dir):
    data = load_scene(scene_dir)
    frames = _frames(scene_dir, "train")
    a = next(i for i, f in enumerate(frames) if f["camera_id"] == 1 and f["time"] == 0.0)
    b = next(i for i, f in enumerate(frames) if f["camera_id"] == 1 and f["time"] == 1 / 3)
    (rgba_a, depth_a), (rgba_b, depth_b) = _read(scene_dir, frames[a]), _read(scene_dir, frames[b])
    # the pixel under the sphere's centre at t=0 changes once the sphere has moved on
    import torch

    centre = torch.tensor(object_pose("sphere", 0.0)[:3, 3], dtype=torch.float32)[None]
    uv, _ = data.cameras[[data.split("train")[a]]].project(centre)
    u, v = (int(x) for x in uv[0, 0])
    assert 0 <= u < 40 and 0 <= v < 40
    assert np.abs(rgba_a[v, u].astype(int) - rgba_b[v, u].astype(int)).max() > 20
    # background (alpha 0 at both times) and the static base, unoccluded around the pixel: bit-identical
    same_depth = (np.abs(depth_a - depth_b) < 1e-6) & (depth_a > 0)
    on_base = np.abs(_centre_points(scene_dir, frames[a], depth_a)[..., 2] - BASE_TOP) < 1e-4
    pad = np.pad(same_depth & on_base, 1)
    stable = np.ones_like(same_depth)
    for dy in range(3):  # the whole 3x3 neighbourhood: no jittered sub-ray grazes a moving object
        for dx in range(3):
            stable &= pad[dy: dy + 40, dx: dx + 40]
    assert stable.sum() > 50
    np.testing.assert_array_equal(rgba_a[stable], rgba_b[stable])
    empty = (rgba_a[..., 3] == 0) & (rgba_b[..., 3] == 0)
    assert empty.sum() > 100
    np.testing.assert_array_equal(rgba_a[empty], rgba_b[empty])
    assert (rgba_a != rgba_b).any(axis=-1).sum() > 20


@pytest.mark.parametrize("split", ["train", "test"])
def test_depth_unprojects_onto_the_sphere_at_its_time(scene_dir, split):
    checked = 0
    for frame in _frames(scene_dir, split):
        _, depth = _read(scene_dir, frame)
        points = _centre_points(scene_dir, frame, depth)[depth > 0]
        centre = object_pose("sphere", frame["time"])[:3, 3]
        dist = np.linalg.norm(points - centre, axis=-1)
        near = (dist < R_SPHERE + 0.01) & (points[:, 2] > BASE_TOP + 1e-3)  # other objects: >= 0.02 away
        checked += near.sum()
        assert (dist[near] <= R_SPHERE + 1e-5).all() and (dist[near] >= R_SPHERE - SPHERE_SURFACE_ATOL).all()
        # and not where the sphere was at another time
        other = object_pose("sphere", (frame["time"] + 0.5) % 1.0)[:3, 3]
        d_other = np.linalg.norm(points[near] - other, axis=-1)
        assert (np.abs(d_other - R_SPHERE) > 0.01).mean() > 0.9
    assert checked > 30 * len(_frames(scene_dir, split))


def test_points3d(scene_dir):
    xyz, rgb, time = read_points_ply(scene_dir / "points3d.ply")
    assert xyz.dtype == np.float32 and rgb.dtype == np.uint8 and time.dtype == np.float32
    assert sorted(set(time.tolist())) == pytest.approx([k / 3 for k in range(4)])
    assert len(xyz) == 4 * SMALL.n_points and (np.bincount(np.round(time * 3).astype(int)) == SMALL.n_points).all()
    assert (np.abs(xyz) <= 1.0).all() and rgb.max() > 100
    for t in (0.0, 1.0):
        pts = xyz[time == np.float32(t)]
        d = np.linalg.norm(pts - object_pose("sphere", t)[:3, 3], axis=-1)
        on = (d < R_SPHERE + 0.01) & (pts[:, 2] > BASE_TOP + 1e-3)
        assert on.sum() > 5
        assert (d[on] <= R_SPHERE + 1e-5).all() and (d[on] >= R_SPHERE - SPHERE_SURFACE_ATOL).all()
    o3d = pytest.importorskip("open3d")
    pcd = o3d.io.read_point_cloud(str(scene_dir / "points3d.ply"))
    np.testing.assert_allclose(np.asarray(pcd.points), xyz, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pcd.colors), rgb / 255.0, atol=1e-6)


def test_deterministic_for_a_seed(tmp_path):
    cfg = DynamicSynthConfig(seed=5, n_cameras=4, holdout_camera_every=2, n_times=2, width=16, height=16, n_points=50)
    a = write_dynamic_scene(tmp_path / "a", cfg)
    b = write_dynamic_scene(tmp_path / "b", cfg)
    c = write_dynamic_scene(tmp_path / "c", DynamicSynthConfig(**{**cfg.__dict__, "seed": 6}))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "points3d.ply").read_bytes() != (c / "points3d.ply").read_bytes()
    assert any((a / r).read_bytes() != (c / r).read_bytes() for r in files if r.suffix == ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


@pytest.mark.parametrize(
    "kwargs, name",
    [({"seed": -1}, "seed"), ({"n_cameras": 1}, "n_cameras"), ({"holdout_camera_every": 1}, "holdout_camera_every"),
     ({"n_times": 1}, "n_times"), ({"width": 0}, "width"), ({"radius": 1.0}, "radius"),
     ({"elevations_deg": (95.0,)}, "elevations_deg"), ({"n_points": -1}, "n_points")],
)
def test_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicSynthConfig(**kwargs)


def test_cli_data_synth_dynamic(tmp_path, capsys):
    out = tmp_path / "dyn"
    code = main(["data", "synth", "--dynamic", str(out), "--set", "n_cameras=4", "holdout_camera_every=2",
                 "n_times=2", "width=12", "height=12", "n_points=10"])
    assert code == 0 and f"wrote {out}" in capsys.readouterr().out
    assert len(_frames(out, "train")) == 4 and len(_frames(out, "test")) == 1
    assert main(["data", "info", str(out)]) == 0
    assert "dnerf" in capsys.readouterr().out
    code = main(["data", "synth", "--dynamic", str(out), "--set", "n_frames=3"])  # unknown option, non-empty out
    assert code == 2 and "n_frames" in capsys.readouterr().err
