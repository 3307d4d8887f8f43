"""distill/poses.py: new views around the dataset cameras (angle bound, look-at, determinism) and perturbations."""

from __future__ import annotations

import math

import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.distill.poses import look_at_centre, perturb_poses, random_rotations, sample_poses

CENTRE = torch.tensor([0.3, -0.2, 0.1])


def _look_at(eye: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world looking from ``eye`` at ``target`` (z forward, y down, world z up)."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    y = torch.linalg.cross(z, x)
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def _ring(n: int = 8, radius: float = 3.0) -> Cameras:
    """Cameras on a tilted ring around CENTRE, all looking at it; sizes and focal lengths vary."""
    c2w = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = CENTRE + radius * torch.tensor([math.cos(a), math.sin(a), 0.4 + 0.1 * (k % 3)])
        c2w.append(_look_at(eye, CENTRE))
    widths = [16 + 2 * k for k in range(n)]
    return Cameras.create(torch.stack(c2w), fx=[10.0 + k for k in range(n)], fy=[11.0 + k for k in range(n)],
                          cx=[w / 2 for w in widths], cy=6.0, width=widths, height=12, times=torch.linspace(0, 1, n))


def _axis_distance(c2w: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``[C]`` distance from ``point`` to each camera's optical axis."""
    o, z = c2w[:, :3, 3], c2w[:, :3, 2]
    v = point - o
    return (v - (v * z).sum(-1, keepdim=True) * z).norm(dim=-1)


def _angle_deg(r: torch.Tensor) -> torch.Tensor:
    """Rotation angle of ``[N, 3, 3]`` rotations in degrees."""
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def test_look_at_centre_is_the_point_the_cameras_look_at():
    torch.testing.assert_close(look_at_centre(_ring()), CENTRE, atol=1e-5, rtol=0)
    # Parallel optical axes (forward-facing capture): no finite solution, the box centre instead.
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 0, 3] = torch.tensor([0.0, 1.0, 2.0])
    cams = Cameras.create(c2w, fx=10.0, fy=10.0, cx=8.0, cy=8.0, width=16, height=16)
    box = torch.tensor([[0.0, 0.0, 1.0], [2.0, 2.0, 3.0]])
    torch.testing.assert_close(look_at_centre(cams, box), torch.tensor([1.0, 1.0, 2.0]))
    assert torch.equal(look_at_centre(cams), torch.zeros(3))


def test_random_rotations_are_rotations_within_the_angle():
    r = random_rotations(500, 20.0, torch.Generator().manual_seed(0)).float()
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(500, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(500), atol=1e-5, rtol=0)
    angles = _angle_deg(r)
    assert float(angles.max()) <= 20.0 + 1e-3 and float(angles.max()) > 15.0  # the bound is used, not exceeded


def test_sample_poses_orbit_the_centre_within_bounds():
    cams = _ring()
    train = [0, 2, 3, 5, 6]
    out = sample_poses(cams, train, 300, torch.Generator().manual_seed(1), max_angle_deg=20.0, radius_jitter=0.1)
    assert len(out) == 300 and int(out.model.max()) == 0 and float(out.distortion.abs().sum()) == 0
    # every new camera still looks at the centre (the dataset cameras did)
    assert float(_axis_distance(out.c2w, CENTRE).max()) < 1e-4
    # intrinsics, size and time come from a training camera; find it by the (unique) focal length
    src = (out.fx - 10.0).round().long()
    assert set(src.tolist()) <= set(train) and len(set(src.tolist())) == len(train)
    for name in ("fy", "cx", "cy", "width", "height", "times"):
        assert torch.equal(getattr(out, name), getattr(cams, name)[src]), name
    # the rotation from the source pose is at most 20 degrees, and so is the angle about the centre
    rel = out.c2w[:, :3, :3] @ cams.c2w[src, :3, :3].transpose(1, 2)
    assert float(_angle_deg(rel.double()).max()) <= 20.0 + 1e-2
    a, b = out.c2w[:, :3, 3] - CENTRE, cams.c2w[src, :3, 3] - CENTRE
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert float(torch.rad2deg(torch.acos(cos.clamp(-1, 1))).max()) <= 20.0 + 1e-2
    ratio = a.norm(dim=-1) / b.norm(dim=-1)
    assert float(ratio.min()) >= 0.9 - 1e-5 and float(ratio.max()) <= 1.1 + 1e-5 and float(ratio.std()) > 0.02


def test_sample_poses_is_deterministic_for_a_generator():
    cams = _ring()
    a = sample_poses(cams, [1, 4], 20, torch.Generator().manual_seed(3))
    b = sample_poses(cams, [1, 4], 20, torch.Generator().manual_seed(3))
    c = sample_poses(cams, [1, 4], 20, torch.Generator().manual_seed(4))
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.fx, b.fx)
    assert not torch.equal(a.c2w, c.c2w)
    zero = sample_poses(cams, [4], 5, torch.Generator().manual_seed(0), max_angle_deg=0.0, radius_jitter=0.0)
    torch.testing.assert_close(zero.c2w, cams.c2w[[4] * 5], atol=1e-5, rtol=0)  # no rotation, no jitter: the camera
    with pytest.raises(ValueError, match="indices"):
        sample_poses(cams, [], 3, torch.Generator())


def test_perturb_poses_small_rotations():
    cams = _ring()[[0, 1, 2]]
    g = torch.Generator().manual_seed(5)
    about_centre = perturb_poses(cams, g, 5.0, center=CENTRE)
    assert float(_axis_distance(about_centre.c2w, CENTRE).max()) < 1e-4  # orbiting keeps the look-at
    torch.testing.assert_close((about_centre.c2w[:, :3, 3] - CENTRE).norm(dim=-1),
                               (cams.c2w[:, :3, 3] - CENTRE).norm(dim=-1), atol=1e-5, rtol=0)
    in_place = perturb_poses(cams, g, 5.0)
    torch.testing.assert_close(in_place.c2w[:, :3, 3], cams.c2w[:, :3, 3])  # turns about its own position
    for out in (about_centre, in_place):
        rel = out.c2w[:, :3, :3] @ cams.c2w[:, :3, :3].transpose(1, 2)
        angles = _angle_deg(rel.double())
        assert float(angles.max()) <= 5.0 + 1e-2 and float(angles.min()) > 0.0
        assert torch.equal(out.fx, cams.fx) and torch.equal(out.width, cams.width)
