"""The synthetic lidar sequence (omnifield.datasets.synth_lidar): layout, analytic ground-truth flow checked
against ray-cast surfaces, the accumulation oracle, atomic writes and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omnifield.datasets.pointclouds import load_point_clouds
from omnifield.datasets.synth_lidar import (
    LidarSynthConfig,
    scene_mesh,
    synthesize_lidar,
    true_positions,
    unicycle_pose,
)
from omnifield.errors import DataError

o3d = pytest.importorskip("open3d")

# Tolerances of this file (loose entries say why).
TOL = {
    # open3d casts float32 rays; world coordinates up to ~70 m carry ~1e-5 relative error (measured 7e-5 m).
    "surface_distance": 5e-4,
    # true_positions (float64 from float32 points) vs points + flow (float32): measured 2e-6 m.
    "oracle_vs_flow": 1e-4,
}

SMALL = LidarSynthConfig(frames=4, azimuths=512, beams=24, cars=5, seed=3)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return synthesize_lidar(tmp_path_factory.mktemp("lidar") / "seq", SMALL)


def _distance_to(vertices, faces, query):
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(faces.astype(np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(np.asarray(query, np.float32))).numpy()


def _world(frame, points=None):
    p = frame.points if points is None else points
    return p.astype(np.float64) @ frame.ego_pose[:3, :3].T + frame.ego_pose[:3, 3]


def test_layout_and_loading(synth_dir):
    names = sorted(p.name for p in synth_dir.iterdir())
    assert names == ["frame_0000.npz", "frame_0001.npz", "frame_0002.npz", "frame_0003.npz", "objects.npz",
                     "synth_lidar.json"]
    meta = json.loads((synth_dir / "synth_lidar.json").read_text())
    assert meta["format"] == "omnifield-synth-lidar" and len(meta["cars"]) == 5
    with np.load(synth_dir / "frame_0003.npz") as last:
        assert "flow" not in last.files
    with np.load(synth_dir / "frame_0000.npz") as first:
        assert {"points", "time", "ego_pose", "flow", "object_id", "is_ground", "dynamic"} <= set(first.files)
        assert first["object_id"].dtype == np.int32
    seq = load_point_clouds(synth_dir)
    assert seq.format == "synth_lidar" and len(seq) == 4
    assert seq.metadata["world_from_object"].shape == (4, 5, 4, 4)
    assert [f.time for f in seq] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert seq[3].flow is None and all(f.flow is not None for f in seq.frames[:3])
    for f in seq:
        oid = f.labels["object_id"]
        assert len(f) > 5000 and (oid > 0).any() and f.is_ground.any()
        assert not f.dynamic[oid == 0].any() and not (f.is_ground & (oid > 0)).any()
        sensor = f.ego_pose[:3, :3] @ [0, 0, SMALL.sensor_height] + f.ego_pose[:3, 3]
        assert np.linalg.norm(_world(f) - sensor, axis=1).max() <= SMALL.max_range + 1e-3
        assert np.abs(_world(f)[f.is_ground, 2]).max() < 1e-4  # ground plane z = 0
    # the fifth car (index 4) is parked: on a car, yet not dynamic
    parked = seq[0].labels["object_id"] == 5
    assert parked.any() and not seq[0].dynamic[parked].any()
    assert seq[0].dynamic.any()


def test_flow_lands_on_the_next_frames_surfaces(synth_dir):
    seq = load_point_clouds(synth_dir)
    for k in range(len(seq) - 1):
        f, nxt = seq.pair(k)
        v, faces, face_object, _ = scene_mesh(synth_dir, k + 1)
        moved = _world(nxt, f.points + f.flow)  # points + flow are in frame k+1's ego coordinates
        oid = f.labels["object_id"]
        for j in np.unique(oid):
            surface = face_object == j  # each point must land on its own object's surface
            d = _distance_to(v, faces[surface], moved[oid == j])
            assert d.max() < TOL["surface_distance"], (k, j, d.max())
        # sensitivity: ignoring the cars' own motion leaves their points off the surfaces
        dyn = f.dynamic
        still = _world(f)[dyn]
        assert _distance_to(v, faces[face_object > 0], still).max() > 0.1
        # and ignoring the ego motion leaves static points off the static surfaces
        wrong = _world(f, f.points + f.flow)[oid == 0]
        assert _distance_to(v, faces[face_object == 0], wrong).max() > 0.1


def test_true_positions_agree_with_flow(synth_dir):
    seq = load_point_clouds(synth_dir)
    for k in range(len(seq) - 1):
        f, nxt = seq.pair(k)
        np.testing.assert_allclose(true_positions(seq, k, k + 1), _world(nxt, f.points + f.flow),
                                   atol=TOL["oracle_vs_flow"])
        np.testing.assert_allclose(true_positions(seq, k, k), _world(f), atol=1e-9)
    # two steps compose; the points of frame 0 land on the surfaces of frame 3
    v, faces, face_object, _ = scene_mesh(synth_dir, 3)
    oid = seq[0].labels["object_id"]
    pos = true_positions(synth_dir, 0, 3)
    for j in np.unique(oid):
        assert _distance_to(v, faces[face_object == j], pos[oid == j]).max() < TOL["surface_distance"]
    with pytest.raises(IndexError):
        true_positions(seq, 0, 4)


def test_unicycle_motion():
    t = np.linspace(0, 2, 201)
    for w in (0.0, 0.4, -1.0):
        m = unicycle_pose(1.0, -2.0, 0.3, 5.0, w, t)
        np.testing.assert_allclose(m[0, :2, 3], [1.0, -2.0])
        speed = np.linalg.norm(np.diff(m[:, :2, 3], axis=0), axis=1) / np.diff(t)
        np.testing.assert_allclose(speed, 5.0, rtol=1e-3)
        heading = np.arctan2(m[:, 1, 0], m[:, 0, 0])
        np.testing.assert_allclose(np.unwrap(heading), 0.3 + w * t, atol=1e-12)
        vel = np.diff(m[:, :2, 3], axis=0) / np.diff(t)[:, None]
        mid = 0.3 + w * (t[:-1] + t[1:]) / 2  # moves along its heading
        np.testing.assert_allclose(vel, 5.0 * np.stack([np.cos(mid), np.sin(mid)], 1), atol=1e-3)


def test_deterministic_overwrite_and_atomic(tmp_path):
    cfg = LidarSynthConfig(frames=2, azimuths=128, beams=8, cars=2, buildings=2, poles=2)
    a = synthesize_lidar(tmp_path / "a", cfg)
    b = synthesize_lidar(tmp_path / "b", cfg)
    with np.load(a / "frame_0001.npz") as x, np.load(b / "frame_0001.npz") as y:
        np.testing.assert_array_equal(x["points"], y["points"])
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize_lidar(a, cfg)
    synthesize_lidar(a, LidarSynthConfig(frames=3, azimuths=128, beams=8), overwrite=True)
    assert len(load_point_clouds(a)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folders left
    with pytest.raises(ValueError, match="frames=1"):
        LidarSynthConfig(frames=1)
    with pytest.raises(ValueError, match="elevation_min_deg"):
        LidarSynthConfig(elevation_min_deg=20, elevation_max_deg=10)


def test_range_noise_moves_points_off_the_surfaces(tmp_path):
    cfg = LidarSynthConfig(frames=2, azimuths=256, beams=8, range_noise=0.05)
    seq = load_point_clouds(synthesize_lidar(tmp_path / "n", cfg))
    v, faces, _, _ = scene_mesh(tmp_path / "n", 0)
    d = _distance_to(v, faces, _world(seq[0]))
    assert 0.01 < np.median(d) < 0.1


def test_bad_folders(tmp_path, synth_dir):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth_dir, bad)
    (bad / "synth_lidar.json").write_text("{not json")
    with pytest.raises(DataError, match="malformed synth_lidar.json"):
        load_point_clouds(bad)
    shutil.copy(synth_dir / "synth_lidar.json", bad / "synth_lidar.json")
    np.savez(bad / "frame_0001.npz", points=np.zeros((3, 3)))
    with pytest.raises(DataError, match=r"lacks \['ego_pose', 'object_id', 'time'\]") as err:
        load_point_clouds(bad)
    assert err.value.path.name == "frame_0001.npz"
    (bad / "objects.npz").unlink()
    with pytest.raises(DataError, match="file not found"):
        load_point_clouds(bad)
