"""Camera paths: look_at, orbits and spirals aimed at the centre, interpolation, JSON files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.errors import ConfigError, DataError
from omnifield.scenes.camera_paths import (
    interpolate_path,
    load_camera_path,
    look_at,
    orbit,
    quaternion_to_rotation,
    read_camera_path_file,
    rotation_to_quaternion,
    save_camera_path,
    spiral,
)


def similarity(scale=2.0, angle=0.9, axis=(0.3, -1.0, 0.5), t=(1.0, 0.5, -2.0)) -> torch.Tensor:
    a = torch.tensor(axis) / torch.tensor(axis).norm()
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m = torch.eye(4)
    m[:3, :3], m[:3, 3] = scale * r, torch.tensor(t)
    return m


def ring_cameras(n=8, radius=3.0, height=1.0, center=(0.0, 0.0, 0.0)) -> Cameras:
    c = torch.tensor(center)
    c2w = [look_at(c + torch.tensor([radius * math.cos(a), radius * math.sin(a), height]), c) for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    return Cameras.create(torch.stack(c2w), 50.0, 52.0, 32.0, 24.0, 64, 48)


@dataclass
class FakeRun:
    world_from_dataset: torch.Tensor = field(default_factory=similarity)
    scene_box: torch.Tensor = field(default_factory=lambda: torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))

    def load_data(self, path=None, downscale=None, split=None) -> SceneData:
        cams = ring_cameras()
        return SceneData(root=Path("."), format="fake", cameras=cams, images=ImageStore([], lambda i: None),
                         splits={"train": list(range(0, 8, 2)) + [1, 3], "test": [5, 7]}, scene_box=self.scene_box,
                         world_from_dataset=self.world_from_dataset)


def assert_cameras_close(a: Cameras, b: Cameras, atol=1e-4):
    assert len(a) == len(b)
    torch.testing.assert_close(a.c2w, b.c2w, atol=atol, rtol=0)
    for name in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=atol, rtol=0)
    assert torch.equal(a.width, b.width) and torch.equal(a.height, b.height)


def test_look_at_is_opencv_and_projects_the_target_to_the_image_centre():
    c2w = look_at((3.0, 0.0, 0.0), (0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0))
    torch.testing.assert_close(c2w[:3, 2], torch.tensor([-1.0, 0, 0]))  # z forward
    torch.testing.assert_close(c2w[:3, 1], torch.tensor([0.0, 0, -1]))  # y down = -up
    torch.testing.assert_close(c2w[:3, 0], torch.tensor([0.0, 1, 0]))  # x right
    assert torch.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
    straight_down = look_at((0.0, 0.0, 3.0), (0.0, 0.0, 0.0))  # degenerate up: still a rotation
    assert torch.linalg.det(straight_down[:3, :3]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("center", [(0.0, 0.0, 0.0), (0.5, -0.3, 0.2)])
def test_orbit_cameras_look_at_the_centre(center):
    cams = ring_cameras(center=center)
    path = orbit(cams, 24, center=center)
    assert len(path) == 24
    uv, z = path.project(torch.tensor([center]))
    torch.testing.assert_close(uv[:, 0], torch.stack([path.cx, path.cy], -1), atol=1e-3, rtol=0)
    assert (z > 0).all()
    # Radius and elevation follow the dataset cameras; intrinsics come from the reference camera.
    d = path.c2w[:, :3, 3] - torch.tensor(center)
    torch.testing.assert_close(d.norm(dim=-1), torch.full((24,), math.sqrt(10.0)), atol=1e-4, rtol=0)
    torch.testing.assert_close(d[:, 2], torch.full((24,), 1.0), atol=1e-4, rtol=0)
    assert float(path.fx[0]) == 50.0 and int(path.width[0]) == 64
    # One full turn: azimuths are evenly spread.
    az = torch.atan2(d[:, 1], d[:, 0])
    steps = torch.remainder(az.roll(-1) - az, 2 * math.pi)
    torch.testing.assert_close(steps, torch.full((24,), 2 * math.pi / 24), atol=1e-4, rtol=0)


def test_spiral_cameras_look_at_the_centre_and_move():
    cams = ring_cameras(n=5, radius=3.0)[[0, 1]]  # a narrow, forward-facing-like cluster
    path = spiral(cams, 30)
    uv, z = path.project(torch.zeros(1, 3))
    torch.testing.assert_close(uv[:, 0], torch.stack([path.cx, path.cy], -1), atol=1e-3, rtol=0)
    assert (z > 0).all()
    assert path.c2w[:, :3, 3].std(0).max() > 0.1


def test_quaternions_round_trip_and_interpolation_hits_keyframes():
    keys = ring_cameras(n=4)
    q = rotation_to_quaternion(keys.c2w[:, :3, :3])
    torch.testing.assert_close(quaternion_to_rotation(q).float(), keys.c2w[:, :3, :3], atol=1e-5, rtol=0)
    for method in ("catmull-rom", "linear"):
        path = interpolate_path(keys, 10, method=method)  # u = 0, 1/3, ..., 3: keyframes at 0, 3, 6, 9
        assert_cameras_close(path[[0, 3, 6, 9]], keys, atol=1e-4)
        r = path.c2w[:, :3, :3]
        torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
    # Halfway between two keyframes the rotation is halfway (slerp): the angle to each is equal.
    mid = interpolate_path(keys[[0, 1]], 3).c2w[1, :3, :3]

    def angle(a, b):
        return torch.arccos(((torch.trace(a.T @ b) - 1) / 2).clamp(-1, 1))

    assert float(angle(mid, keys.c2w[0, :3, :3])) == pytest.approx(float(angle(mid, keys.c2w[1, :3, :3])), abs=1e-4)
    looped = interpolate_path(keys, 8, loop=True)
    assert_cameras_close(looped[[0, 2, 4, 6]], keys)
    with pytest.raises(ConfigError):
        interpolate_path(keys, 5, method="cubic")


def test_json_round_trip_through_a_non_identity_world_from_dataset(tmp_path):
    run = FakeRun()
    world = ring_cameras().transformed(run.world_from_dataset)
    world = Cameras.create(world.c2w, world.fx, world.fy, world.cx, world.cy, world.width, world.height,
                           times=torch.linspace(0, 1, len(world)))
    path = save_camera_path(world, tmp_path / "path.json", run.world_from_dataset)
    doc = json.loads(path.read_text())
    assert doc["format"] == "omnifield-camera-path" and doc["coordinates"] == "dataset" and doc["convention"] == "opencv"
    # The file holds dataset coordinates: the original ring.
    stored = torch.tensor([c["c2w"] for c in doc["cameras"]])
    torch.testing.assert_close(stored, ring_cameras().c2w, atol=1e-4, rtol=0)
    loaded = load_camera_path(path, run)
    assert_cameras_close(loaded, world)
    torch.testing.assert_close(loaded.times, world.times)
    r = loaded.c2w[:, :3, :3]
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(len(r), 3, 3), atol=1e-5, rtol=0)


def test_nerfstudio_camera_path_is_converted_from_opengl(tmp_path):
    c2w_cv = look_at((0.0, -4.0, 1.0), (0.0, 0.0, 0.0))
    c2w_gl = c2w_cv.clone()
    c2w_gl[:3, 1:3] *= -1
    doc = {"camera_type": "perspective", "render_width": 80, "render_height": 60, "fps": 24, "seconds": 1,
           "camera_path": [{"camera_to_world": c2w_gl.reshape(-1).tolist(), "fov": 60.0, "aspect": 4 / 3}]}
    (tmp_path / "camera_path.json").write_text(json.dumps(doc))
    cams, fps = read_camera_path_file(tmp_path / "camera_path.json")
    assert fps == 24
    torch.testing.assert_close(cams.c2w[0], c2w_cv, atol=1e-6, rtol=0)
    fy = 30 / math.tan(math.radians(30))
    assert float(cams.fy[0]) == pytest.approx(fy) and float(cams.fx[0]) == pytest.approx(fy)
    assert (float(cams.cx[0]), float(cams.cy[0]), int(cams.width[0]), int(cams.height[0])) == (40, 30, 80, 60)
    uv, _ = cams.project(torch.zeros(1, 3))
    torch.testing.assert_close(uv[0, 0], torch.tensor([40.0, 30.0]), atol=1e-3, rtol=0)
    run = FakeRun()
    world = load_camera_path(tmp_path / "camera_path.json", run)
    torch.testing.assert_close(world.c2w, cams.transformed(run.world_from_dataset).c2w)


@pytest.mark.parametrize(
    "text",
    ["{not json", "[1, 2]", '{"format": "omnifield-camera-path", "cameras": [{"c2w": [[1, 0], [0, 1]]}]}',
     '{"camera_path": [{"fov": 50}], "render_width": 10, "render_height": 10}', '{"something": 1}'],
)
def test_bad_camera_path_files_raise_data_error_naming_the_file(tmp_path, text):
    p = tmp_path / "bad_path.json"
    p.write_text(text)
    with pytest.raises(DataError, match="bad_path.json"):
        read_camera_path_file(p)
    with pytest.raises(DataError, match="missing.json"):
        read_camera_path_file(tmp_path / "missing.json")


def test_named_paths_use_the_run_data():
    run = FakeRun()
    test = load_camera_path("test", run)
    assert len(test) == 2
    torch.testing.assert_close(test.c2w, run.load_data().cameras[[5, 7]].c2w)
    assert len(load_camera_path("dataset", run)) == 6
    assert len(load_camera_path("orbit", run, num_frames=12)) == 12
    with pytest.raises(ConfigError, match="unknown camera path"):
        load_camera_path("zigzag", run)
