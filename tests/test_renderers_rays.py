"""Pixel rays for every camera model, the slab test, and the occupancy grid."""

from __future__ import annotations

import math

import pytest
import torch

from omnifield.cuda import ops
from omnifield.datasets.cameras import CameraModel, Cameras
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.rays import camera_rays, image_rays
from omnifield.renderers.types import RayBundle


def _look_at(eye, target=(0.0, 0.0, 0.0)):
    eye, target = torch.tensor(eye), torch.tensor(target)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0]))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


@pytest.mark.parametrize("model,dist", [
    (CameraModel.PINHOLE, [0, 0, 0, 0, 0, 0]),
    (CameraModel.OPENCV, [-0.2, 0.05, 0.001, -0.002, 0.0, 0]),
    (CameraModel.OPENCV_FISHEYE, [0.05, -0.01, 0, 0, 0.002, 0.0]),
])
def test_ray_passes_through_projected_point(model, dist, tol):
    cams = Cameras.create(_look_at((3.0, 1.0, 1.0)), 120.0, 110.0, 64.0, 48.0, 128, 96,
                          distortion=torch.tensor(dist, dtype=torch.float32), model=model)
    pts = torch.rand(50, 3) - 0.5
    pix, depth = cams.project(pts)
    assert bool((depth > 0).all())
    rays = camera_rays(cams, torch.zeros(50, dtype=torch.long), pix[0])
    v = pts - rays.origins
    t = (v * rays.directions).sum(-1, keepdim=True)
    miss = (v - t * rays.directions).norm(dim=-1)
    assert float(miss.max()) < tol["undistort"]["atol"] * 10
    torch.testing.assert_close(rays.directions.norm(dim=-1), torch.ones(50))


def test_image_rays_row_major_and_cached_distortion():
    cams = Cameras.create(_look_at((3.0, 0.0, 0.0)), 50.0, 50.0, 8.0, 6.0, 16, 12,
                          distortion=torch.tensor([-0.1, 0.01, 0, 0, 0, 0]), model=CameraModel.OPENCV)
    rays = image_rays(cams, 0)
    assert len(rays) == 16 * 12
    v, u = 5, 7  # pixel (u, v) is ray v * W + u
    single = camera_rays(cams, torch.zeros(1, dtype=torch.long), torch.tensor([[u + 0.5, v + 0.5]]))
    torch.testing.assert_close(rays.directions[v * 16 + u], single.directions[0], atol=1e-6, rtol=0)
    again = image_rays(cams, 0)
    torch.testing.assert_close(again.directions, rays.directions)


def test_ray_aabb_slab():
    o = torch.tensor([[-2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-2.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t0, t1, hit = ops.ray_aabb_intersect(o, d, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    assert hit.tolist() == [True, True, False]
    torch.testing.assert_close(t0[:2], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(t1[:2], torch.tensor([3.0, 1.0]))


def test_occupancy_grid_skips_empty_space_of_a_sphere():
    radius = 0.5

    def density(x):  # analytic: a solid sphere of radius 0.5 at the origin
        return torch.where(x.norm(dim=-1) < radius, torch.full_like(x[:, 0], 100.0), torch.zeros_like(x[:, 0]))

    grid = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=32)
    for step in range(3):
        grid.update(step, density, step_size=0.01, warmup_steps=10)
    assert 0.03 < grid.occupied_fraction() < 0.15  # sphere volume fraction ~ 0.065 (+ boundary cells)
    n = 200
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    origins = -2.5 * dirs + 0.3 * torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    rays = RayBundle(origins, dirs)
    s = grid.sample(rays, 0.0, 10.0, 0.01)
    r = s.positions(rays).norm(dim=-1)
    cell_diag = math.sqrt(3) * 2 / 32
    assert float(r.max()) < radius + cell_diag  # nothing far outside the sphere
    # the same marching without skipping (all cells occupied): every sample in a cell fully inside the
    # sphere must survive (boundary cells are found by random probes, as in Instant-NGP)
    dense = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=32)
    full = dense.sample(rays, 0.0, 10.0, 0.01)
    r_full = full.positions(rays).norm(dim=-1)
    in_sphere = torch.zeros(n, dtype=torch.long).index_add_(0, full.ray_indices, (r_full < radius - cell_diag).long())
    kept_inside = torch.zeros(n, dtype=torch.long).index_add_(0, s.ray_indices, (r < radius - cell_diag).long())
    assert torch.equal(kept_inside, in_sphere) and int(in_sphere.sum()) > 500
    t0, t1, _ = ops.ray_aabb_intersect(origins, dirs, torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    assert len(s) < 0.6 * (t1 - t0).clamp_min(0).sum() / 0.01  # most of the box was skipped
