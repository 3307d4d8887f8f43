"""Parsers against the real datasets in ../shared/data (skipped when absent). Decodes few images: they are big."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from omnifield.datasets import CameraModel, describe, format_info, load_scene


def _in_image(data, index: int, points: torch.Tensor) -> torch.Tensor:
    uv, z = data.cameras[index].project(points)
    w, h = int(data.cameras.width[index]), int(data.cameras.height[index])
    return (z[0] > 0) & (uv[0, :, 0] >= 0) & (uv[0, :, 0] < w) & (uv[0, :, 1] >= 0) & (uv[0, :, 1] < h)


def test_lego_blender(shared_data):
    data = load_scene(shared_data / "lego")
    assert data.format == "blender" and len(data) == 100
    assert (len(data.splits["train"]), len(data.splits["test"]), len(data.splits["val"])) == (87, 13, 13)
    assert data.splits["test"][:3] == [0, 8, 16]
    assert data.near == 2 and data.far == 6 and data.scene_box.tolist() == [[-1.5] * 3, [1.5] * 3]
    torch.testing.assert_close(data.world_from_dataset, torch.eye(4))
    meta = json.loads((shared_data / "lego" / "transforms_train.json").read_text())
    focal = 0.5 * 800 / np.tan(0.5 * meta["camera_angle_x"])
    assert abs(float(data.cameras.fx[0]) - focal) < 1e-3 and data.cameras.cx[0] == 400
    # OpenCV axes: every camera looks at the object at the origin (+z forward), up is world +z.
    uv, z = data.cameras.project(torch.zeros(1, 3))
    assert bool((z > 0).all())
    torch.testing.assert_close(uv[:, 0], torch.full((100, 2), 400.0), atol=1.0, rtol=0)
    # RGBA composited on white, alpha kept.
    rgb, alpha = data.images.rgb(0), data.images.alpha(0)
    assert rgb.shape == (800, 800, 3) and alpha.shape == (800, 800, 1)
    assert rgb[0, 0].tolist() == [255, 255, 255] and int(alpha[0, 0]) == 0 and int(alpha[400, 400]) == 255


def test_fox_ngp_skips_missing_frames(shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_scene(shared_data / "fox")
    assert len(caught) == 1 and "17 of 67" in str(caught[0].message)
    assert data.format == "ngp" and len(data) == 50
    assert len(data.metadata["skipped_frames"]) == 17 and "images/0005.jpg" in data.metadata["skipped_frames"]
    assert data.metadata["aabb_scale"] == 4 and data.scene_box.tolist() == [[-2.0] * 3, [2.0] * 3]
    torch.testing.assert_close(data.world_from_dataset, torch.diag(torch.tensor([0.33, 0.33, 0.33, 1.0])))
    meta = json.loads((shared_data / "fox" / "transforms.json").read_text())
    cams = data.cameras
    assert set(cams.model.tolist()) == {int(CameraModel.OPENCV)}
    expected = torch.tensor([meta["k1"], meta["k2"], meta["p1"], meta["p2"], 0.0, 0.0])
    torch.testing.assert_close(cams.distortion, expected.expand(50, 6))
    assert (int(cams.width[0]), int(cams.height[0])) == (1080, 1920) and abs(float(cams.fx[0]) - 1375.52) < 1e-3
    # The fox sits at the centre of ngp's cube: the world origin is in view of every camera.
    assert bool(_in_image(data, 0, torch.zeros(1, 3)).all())
    uv, z = cams.project(torch.zeros(1, 3))
    assert bool((z > 0).all()) and bool((uv[:, 0, 0] > 0).all()) and bool((uv[:, 0, 0] < 1080).all())
    img = data.images.rgb(0)
    assert img.shape == (1920, 1080, 3) and data.images.alpha(0) is None
    info = describe(data)
    assert info["num_cameras"] == 50 and len(info["skipped_frames"]) == 17
    assert "skipped:       17 frames" in format_info(info)


def test_fern_llff_with_points(shared_data, tol):
    data = load_scene(shared_data / "fern", downscale=8)
    assert data.format == "llff" and len(data) == 20 and data.metadata["image_folder"] == "images_8"
    cams = data.cameras
    assert (int(cams.width[0]), int(cams.height[0])) == (504, 378)
    raw = np.load(shared_data / "fern" / "poses_bounds.npy")
    assert abs(float(cams.fx[0]) - raw[0, 14] / 8) < 1e-3
    assert data.points.shape == (10091, 3) and data.point_colors.dtype == torch.uint8
    # Normalisation: smallest bound -> 1/0.75, cameras centred on the mean camera.
    assert abs(data.near - 0.9 / 0.75) < 1e-4
    torch.testing.assert_close(cams.c2w[:, :3, 3].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    # COLMAP's points share the poses' world: nearly all project into the forward-facing views.
    for i in (0, 19):
        assert float(_in_image(data, i, data.points).float().mean()) > 0.95
    assert data.images.rgb(3).shape == (378, 504, 3)
    # a coarser downscale block-averages images_8
    coarse = load_scene(shared_data / "fern", downscale=16)
    assert (int(coarse.cameras.width[0]), int(coarse.cameras.height[0])) == (252, 189)
    assert coarse.metadata["downscale"] == 16


def test_fern_full_resolution_falls_back_with_warning(shared_data):
    with pytest.warns(UserWarning, match="images_8"):
        data = load_scene(shared_data / "fern")
    assert data.metadata["downscale"] == 8 and int(data.cameras.width[0]) == 504


def test_dtu_scan24_monosdf(shared_data, tol):
    root = shared_data / "dtu_scan24"
    data = load_scene(root)
    assert data.format == "dtu" and len(data) == 49
    assert (int(data.cameras.width[0]), int(data.cameras.height[0])) == (384, 384)
    assert data.metadata["calibrated_size"] == [1600, 1200]
    npz = np.load(root / "cameras.npz")
    # A point of the object, in dataset coordinates, projected by the original 1600x1200 matrix then
    # mapped to the 384x384 crop (README: cx -= 200, scale 384/1200) must match our cameras.
    scale_mat = npz["scale_mat_0"].astype(np.float64)
    x = scale_mat @ np.array([0.1, -0.2, 0.15, 1.0])
    for i in (0, 30):
        p = npz[f"world_mat_{i}"].astype(np.float64) @ x
        u, v = p[0] / p[2], p[1] / p[2]
        expected = np.array([(u - 200) * 384 / 1200, v * 384 / 1200])
        uv, z = data.cameras[i].project(data.to_world(torch.tensor(x[:3], dtype=torch.float32)[None]))
        np.testing.assert_allclose(uv[0, 0].double().numpy(), expected, **tol["dtu_pixels"])
    torch.testing.assert_close(data.world_from_dataset, torch.tensor(np.linalg.inv(scale_mat), dtype=torch.float32))
    # The object is in the unit sphere, in view of every camera.
    uv, z = data.cameras.project(torch.zeros(1, 3))
    assert bool((z > 0).all()) and float((uv - 192).abs().max()) < 100
    assert data.images.rgb(0).shape == (384, 384, 3)
