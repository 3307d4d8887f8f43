"""The z-buffered point renderer against Cameras.project."""

from __future__ import annotations

import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.renderers.points import render_points, splat_offsets
from omnifield.scenes.camera_paths import look_at

W, H = 40, 30


def _camera() -> Cameras:
    return Cameras.create(look_at((0.3, -4.0, 0.5), (0.0, 0.0, 0.0))[None], 35.0, 37.0, 19.3, 16.1, W, H)


def test_single_point_lands_where_project_says(tol):
    cam = _camera()
    p = torch.tensor([[0.2, 0.1, -0.15]])
    out = render_points(p, torch.tensor([[0.1, 0.7, 0.3]]), cam, background=(0.0, 0.0, 1.0))
    assert out.rgb.shape == (H, W, 3) and out.alpha.shape == (H, W, 1) and out.depth.shape == (H, W, 1)
    pix, z = cam.project(p)
    u, v = (int(x) for x in torch.floor(pix[0, 0]).tolist())
    assert float(z[0, 0]) > 0
    hit = out.alpha[..., 0].nonzero().tolist()
    assert hit == [[v, u]]
    torch.testing.assert_close(out.rgb[v, u], torch.tensor([0.1, 0.7, 0.3]))
    dist = (p[0] - cam.c2w[0, :3, 3]).norm()
    torch.testing.assert_close(out.depth[v, u, 0], dist, **tol["float32"])
    # Everything else is background, with zero alpha and depth.
    mask = out.alpha[..., 0] == 0
    assert (out.rgb[mask] == torch.tensor([0.0, 0.0, 1.0])).all()
    assert (out.depth[mask] == 0).all()


def test_nearer_point_occludes_farther_one():
    cam = _camera()
    eye = cam.c2w[0, :3, 3]
    direction = torch.tensor([0.0, 0.0, 0.0]) - eye
    near_p, far_p = eye + 0.4 * direction, eye + 0.9 * direction  # on one ray: same pixel
    for order in ([0, 1], [1, 0]):  # independent of the input order
        pts = torch.stack([near_p, far_p])[order]
        cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[order]
        out = render_points(pts, cols, cam)
        hit = out.alpha[..., 0].nonzero()
        assert len(hit) == 1
        v, u = hit[0].tolist()
        torch.testing.assert_close(out.rgb[v, u], torch.tensor([1.0, 0.0, 0.0]))
        torch.testing.assert_close(out.depth[v, u, 0], (near_p - eye).norm())


def test_points_behind_the_camera_are_dropped():
    cam = _camera()
    eye = cam.c2w[0, :3, 3]
    behind = eye - 2.0 * cam.c2w[0, :3, 2]  # straight behind: would project onto the centre if not culled
    out = render_points(behind[None], torch.ones(1, 3), cam)
    assert float(out.alpha.sum()) == 0
    empty = render_points(torch.zeros(0, 3), torch.zeros(0, 3), cam)
    assert float(empty.alpha.sum()) == 0 and empty.rgb.shape == (H, W, 3)


def test_splat_covers_its_offsets_and_colours_are_differentiable():
    cam = _camera()
    p = torch.tensor([[0.0, 0.0, 0.0]])
    colors = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    out = render_points(p, colors, cam, point_size_px=3, normals=torch.tensor([[0.0, 0.0, 1.0]]))
    assert int(out.alpha.sum()) == 9
    assert out.normals is not None and out.normals.shape == (H, W, 3)
    out.rgb.sum().backward()
    torch.testing.assert_close(colors.grad, torch.full((1, 3), 9.0))
    assert len(splat_offsets(1)) == 1 and len(splat_offsets(2)) == 5 and len(splat_offsets(3)) == 9
    assert splat_offsets(5)[0].tolist() == [0, 0]


def test_rejects_bad_shapes():
    cam = _camera()
    with pytest.raises(ValueError, match="colors"):
        render_points(torch.zeros(2, 3), torch.zeros(3, 3), cam)
    with pytest.raises(ValueError, match="one camera"):
        render_points(torch.zeros(2, 3), torch.zeros(2, 3), Cameras.create(torch.eye(4).repeat(2, 1, 1), 1, 1, 1, 1, 2, 2))
