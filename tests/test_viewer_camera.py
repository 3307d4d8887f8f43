"""Viewer camera math against analytic expectations (no display)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.scenes.camera_paths import look_at, orbit as orbit_path
from omnifield.viewer.camera import (
    MAX_ELEVATION,
    ViewCamera,
    default_view,
    fly,
    from_cameras,
    frustum_corners,
    frustum_lines,
    frustum_segments,
    look,
    look_at_np,
    orbit,
    pan,
    project_points,
    project_segments,
    to_cameras,
    with_fov,
    zoom,
)

W, H = 64, 48


def _cam(eye=(3.0, -2.0, 1.5), target=(0.2, 0.1, -0.3), fov=50.0) -> ViewCamera:
    return ViewCamera(look_at_np(eye, target, (0, 0, 1)), target, fov, (0, 0, 1))


def _project(cam: ViewCamera, point) -> tuple[np.ndarray, float]:
    pix, z = to_cameras(cam, W, H).project(torch.tensor(np.asarray(point), dtype=torch.float32)[None])
    return pix[0, 0].numpy(), float(z[0, 0])


def _assert_target_centred(cam: ViewCamera, tol):
    pix, z = _project(cam, cam.target)
    assert z > 0
    np.testing.assert_allclose(pix, [W / 2, H / 2], **tol["camera_pixels"])


def _assert_level(cam: ViewCamera):
    # x axis orthogonal to up: no roll.
    assert abs(cam.c2w[:3, 0] @ cam.up) < 1e-9


def test_look_at_matches_camera_paths(tol):
    eye, target = (1.0, 2.0, 3.0), (0.0, -1.0, 0.5)
    np.testing.assert_allclose(look_at_np(eye, target, (0, 0, 1)), look_at(eye, target, (0, 0, 1)).double().numpy(), atol=tol["float32"]["atol"])


@pytest.mark.parametrize("d_az,d_el", [(0.3, 0.0), (-1.2, 0.4), (2.0, -0.7), (0.0, 0.2)])
def test_orbit_keeps_distance_and_target_centred(d_az, d_el, tol):
    cam = _cam()
    out = orbit(cam, d_az, d_el)
    assert out.distance == pytest.approx(cam.distance, rel=1e-12)
    np.testing.assert_array_equal(out.target, cam.target)
    _assert_target_centred(out, tol)
    _assert_level(out)
    # Azimuth and elevation change by the requested amounts.
    up = cam.up

    def el(c):
        v = c.eye - c.target
        return math.asin(v @ up / np.linalg.norm(v))

    def az(c):
        v = c.eye - c.target
        return math.atan2(v[1], v[0])

    assert el(out) == pytest.approx(el(cam) + d_el, abs=tol["float64"]["atol"])
    assert math.remainder(az(out) - az(cam) - d_az, 2 * math.pi) == pytest.approx(0, abs=tol["float64"]["atol"])


def test_orbit_full_turn_returns_to_start(tol):
    cam = _cam()
    out = cam
    for _ in range(8):
        out = orbit(out, 2 * math.pi / 8, 0.0)
    np.testing.assert_allclose(out.c2w, cam.c2w, atol=tol["float64"]["atol"])
    np.testing.assert_allclose(orbit(cam, 2 * math.pi, 0.0).c2w, cam.c2w, atol=tol["float64"]["atol"])


def test_orbit_elevation_is_clamped_short_of_the_pole(tol):
    cam = _cam()
    out = orbit(cam, 0.0, 10.0)
    v = out.eye - out.target
    assert math.asin(v @ out.up / np.linalg.norm(v)) == pytest.approx(MAX_ELEVATION, abs=tol["float64"]["atol"])
    assert out.distance == pytest.approx(cam.distance)
    _assert_target_centred(out, tol)
    assert np.isfinite(orbit(out, 0.5, 0.1).c2w).all()


def test_orbit_preserves_roll_of_a_snapped_camera(tol):
    rolled = look_at_np((2.0, 0.0, 0.5), (0, 0, 0), (0.3, 0.0, 1.0))  # a camera with some roll
    cam = ViewCamera(rolled, (0, 0, 0), 40.0, (0, 0, 1))
    out = orbit(cam, 0.7, 0.0)
    # Rotating about world up keeps the angle between the camera's x axis and up.
    assert out.c2w[:3, 0] @ out.up == pytest.approx(cam.c2w[:3, 0] @ cam.up, abs=tol["float64"]["atol"])
    _assert_target_centred(out, tol)


def test_zoom_scales_distance_and_clamps():
    cam = _cam()
    out = zoom(cam, 0.5)
    assert out.distance == pytest.approx(0.5 * cam.distance)
    np.testing.assert_allclose(out.c2w[:3, :3], cam.c2w[:3, :3])
    np.testing.assert_array_equal(out.target, cam.target)
    assert zoom(cam, 1e-12, min_distance=0.01).distance == pytest.approx(0.01)
    with pytest.raises(ValueError):
        zoom(cam, 0.0)


def test_pan_moves_eye_and_target_by_the_same_image_plane_vector(tol):
    cam = _cam()
    out = pan(cam, 0.1, -0.2)
    d_eye, d_target = out.eye - cam.eye, out.target - cam.target
    np.testing.assert_allclose(d_eye, d_target, atol=tol["float64"]["atol"])
    assert abs(d_eye @ cam.forward) < 1e-12  # in the image plane
    expected = (0.1 * cam.c2w[:3, 0] - 0.2 * cam.c2w[:3, 1]) * cam.distance
    np.testing.assert_allclose(d_eye, expected, atol=tol["float64"]["atol"])
    # The old target moves in the image opposite to the pan (right pan -> scene moves left).
    pix, _ = _project(out, cam.target)
    assert pix[0] < W / 2 and pix[1] > H / 2
    _assert_target_centred(out, tol)


def test_fly_moves_along_the_view_direction(tol):
    cam = _cam()
    out = fly(cam, 0.5, 0.0, 0.0)
    np.testing.assert_allclose(out.eye - cam.eye, 0.5 * cam.forward, atol=tol["float64"]["atol"])
    np.testing.assert_allclose(out.target - cam.target, 0.5 * cam.forward, atol=tol["float64"]["atol"])
    out = fly(cam, 0.0, 0.25, -0.5)
    np.testing.assert_allclose(out.eye - cam.eye, 0.25 * cam.c2w[:3, 0] - 0.5 * cam.up, atol=tol["float64"]["atol"])
    np.testing.assert_allclose(out.c2w[:3, :3], cam.c2w[:3, :3])


def test_look_rotates_in_place(tol):
    cam = _cam()
    right = look(cam, 0.2, 0.0)
    np.testing.assert_array_equal(right.eye, cam.eye)
    assert right.forward @ cam.c2w[:3, 0] > 0.1  # turned right
    assert right.distance == pytest.approx(cam.distance)
    _assert_target_centred(right, tol)
    _assert_level(right)
    upward = look(cam, 0.0, 0.2)
    assert upward.forward @ cam.up > cam.forward @ cam.up + 0.1  # tilted up
    assert math.asin(upward.forward @ cam.up) == pytest.approx(math.asin(cam.forward @ cam.up) + 0.2, abs=tol["float64"]["atol"])
    top = look(cam, 0.0, 10.0)
    assert math.asin(top.forward @ top.up) == pytest.approx(MAX_ELEVATION, abs=tol["float64"]["atol"])


def test_with_fov_clamps():
    cam = _cam()
    assert with_fov(cam, 70.0).fov_y_deg == 70.0
    assert with_fov(cam, 500.0).fov_y_deg < 180
    assert with_fov(cam, -3.0).fov_y_deg > 0


def test_to_cameras_intrinsics(tol):
    cam = _cam(fov=60.0)
    c = to_cameras(cam, W, H)
    assert (int(c.width[0]), int(c.height[0])) == (W, H)
    f = 0.5 * H / math.tan(math.radians(30.0))
    torch.testing.assert_close(c.fy, torch.tensor([f]), **tol["float32"])
    torch.testing.assert_close(c.fx, c.fy)
    assert float(c.cx[0]) == W / 2 and float(c.cy[0]) == H / 2
    # A point at the top edge of the vertical field of view lands on the image's top row.
    top = cam.eye + cam.forward + math.tan(math.radians(30.0)) * (-cam.c2w[:3, 1])
    pix, _ = _project(cam, top)
    assert pix[1] == pytest.approx(0.0, abs=tol["camera_pixels"]["atol"])


def test_to_from_cameras_round_trip(tol):
    cam = _cam(fov=45.0)
    back = from_cameras(to_cameras(cam, W, H), 0, target=cam.target, up=cam.up)
    np.testing.assert_allclose(back.c2w, cam.c2w, atol=tol["float32"]["atol"])
    np.testing.assert_allclose(back.target, cam.target, atol=tol["float32"]["atol"])
    assert back.fov_y_deg == pytest.approx(45.0, rel=tol["float32"]["rtol"])


def test_from_cameras_defaults_to_the_axis_point_nearest_the_origin(tol):
    cams = orbit_path(Cameras.create(look_at((3, 0, 1), (0, 0, 0))[None], 50, 50, 32, 24, 64, 48), 6, up=(0, 0, 1))
    cam = from_cameras(cams, 2)
    np.testing.assert_allclose(cam.target, [0, 0, 0], atol=tol["float32"]["atol"])
    _assert_target_centred(cam, tol)
    np.testing.assert_allclose(cam.up, [0, 0, 1], atol=tol["float32"]["atol"])
    with pytest.raises(IndexError):
        from_cameras(cams, 6)


def test_default_view_looks_at_the_box_centre(tol):
    box = torch.tensor([[-1.0, -1.0, 0.0], [1.0, 3.0, 2.0]])
    cam = default_view(box)
    np.testing.assert_allclose(cam.target, [0, 1, 1])
    _assert_target_centred(cam, tol)
    # The whole box projects inside the image.
    corners = torch.cartesian_prod(*[torch.tensor([box[0, i], box[1, i]]) for i in range(3)])
    pix, z = to_cameras(cam, W, H).project(corners)
    assert (z > 0).all() and (pix[..., 1] >= 0).all() and (pix[..., 1] <= H).all()
    # With dataset cameras: from where they are, at their distance, with their up.
    cams = orbit_path(Cameras.create(look_at((0, -3, 1), (0, 1, 1), (0, 0, 1))[None], 50, 50, 32, 24, 64, 48), 8,
                      center=(0, 1, 1), up=(0, 0, 1))
    cam = default_view(box, cams)
    _assert_target_centred(cam, tol)
    assert cam.distance == pytest.approx(float((cams.c2w[0, :3, 3] - torch.tensor([0, 1, 1.0])).norm()), rel=1e-5)


def test_frustum_lines_shape_and_geometry(tol):
    cams = Cameras.create(torch.stack([look_at((2, 0, 0), (0, 0, 0)), look_at((0, 2, 0), (0, 0, 0))]), 40, 40, 32, 24, 64, 48)
    lines = frustum_lines(cams, 0.5)
    assert lines.shape == (16, 2, 3) and lines.dtype == np.float32
    # Spokes start at the camera centre; the far corners lie at depth 0.5 along the view axis.
    np.testing.assert_allclose(lines[:4, 0], np.tile([2, 0, 0], (4, 1)), atol=tol["float32"]["atol"])
    fwd = np.array([-1.0, 0.0, 0.0])
    np.testing.assert_allclose((lines[:4, 1] - [2, 0, 0]) @ fwd, 0.5, atol=tol["float32"]["atol"])
    # Corners project to the image corners.
    pix, _ = cams[0].project(torch.from_numpy(lines[:4, 1]))
    np.testing.assert_allclose(pix[0].numpy(), [[0, 0], [64, 0], [64, 48], [0, 48]], atol=tol["camera_pixels"]["atol"])


def test_frustum_corners_and_the_overlay_polyline(tol):
    from omnifield.viewer.panels import FRUSTUM_PATH

    cams = Cameras.create(torch.stack([look_at((2, 0, 0), (0, 0, 0)), look_at((0, 2, 0), (0, 0, 0))]), 40, 40, 32, 24, 64, 48)
    pts = frustum_corners(cams, 0.5)
    assert pts.shape == (2, 5, 3)
    np.testing.assert_allclose(frustum_segments(pts), frustum_lines(cams, 0.5), atol=tol["float32"]["atol"])
    # The polyline passes every frustum edge but the top one (tl-tr, drawn highlighted) exactly once.
    edges = sorted(tuple(sorted(e)) for e in zip(FRUSTUM_PATH, FRUSTUM_PATH[1:]))
    assert edges == sorted([(0, 1), (0, 2), (0, 3), (0, 4), (2, 3), (3, 4), (1, 4)])


def test_project_points_matches_cameras_project(tol):
    cam = _cam()
    pts = np.random.default_rng(0).uniform(-1, 1, (20, 3))
    pix, z = project_points(cam, W, H, pts)
    ref, zr = to_cameras(cam, W, H).project(torch.from_numpy(pts).float())
    np.testing.assert_allclose(pix, ref[0].double().numpy(), atol=tol["camera_pixels"]["atol"])
    np.testing.assert_allclose(z, zr[0].double().numpy(), atol=tol["float32"]["atol"], rtol=tol["float32"]["rtol"])
    _, z_behind = project_points(cam, W, H, 2 * cam.eye - cam.target)
    assert z_behind[0] < 0


def test_project_segments_clips_behind_the_camera(tol):
    cam = _cam(eye=(0, -5, 0), target=(0, 0, 0))
    seg = np.array([[[0, 0, 0], [0, 0, 1]], [[0, -10, 0], [0, -8, 0]], [[0, 0, 0], [0, -10, 0]]], np.float64)
    pix, keep = project_segments(cam, W, H, seg)
    assert keep.tolist() == [True, False, True]
    np.testing.assert_allclose(pix[0, 0], [W / 2, H / 2], atol=tol["float64"]["atol"])
    assert pix[0, 1, 1] < H / 2  # +z is up, so above the centre
    assert np.isfinite(pix[2]).all()


def test_a_camera_above_the_pole_limit_can_move_back(tol):
    cam = ViewCamera(look_at_np((0.0, 0.001, 5.0), (0, 0, 0), (0, 0, 1)), (0, 0, 0), 50.0, (0, 0, 1))
    el = math.asin((cam.eye @ cam.up) / np.linalg.norm(cam.eye))
    assert el > MAX_ELEVATION
    assert np.allclose(orbit(cam, 0.0, 0.5).c2w, cam.c2w)  # cannot go further up
    lower = orbit(cam, 0.0, -0.5)
    assert math.asin((lower.eye @ lower.up) / lower.distance) == pytest.approx(el - 0.5, abs=tol["float64"]["atol"])
