"""Camera poses for distillation: new views around the dataset cameras (PVD) and small perturbations
of given poses (PVD-AL's neighbours of hard poses). Pure torch, deterministic for a generator.

A new view is a dataset camera rotated rigidly about a centre (the point the cameras look at), so it
still looks at the scene, with its distance to the centre scaled a little. Intrinsics and image size
are those of the camera it came from (no distortion); time is copied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omnifield.datasets.cameras import CameraModel, Cameras


def look_at_centre(cameras: Cameras, scene_box: Tensor | None = None) -> Tensor:
    """``[3]`` the point closest, in least squares, to the optical axes of ``cameras``.

    Minimises ``sum_k |(I - z_k z_k^T)(p - o_k)|^2`` over ``p`` (``o_k`` camera centres, ``z_k`` unit
    optical axes, OpenCV +z). When the axes are (nearly) parallel the system is singular; then the
    centre of ``scene_box`` (``[2, 3]``) is returned, or the origin without a box.
    """
    c2w = cameras.c2w.double()
    o, z = c2w[:, :3, 3], torch.nn.functional.normalize(c2w[:, :3, 2], dim=-1)
    proj = torch.eye(3, dtype=torch.float64) - z[:, :, None] * z[:, None, :]  # [C, 3, 3]
    a, b = proj.sum(0), (proj @ o[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(a)
    if len(cameras) < 2 or float(eig[0]) < 1e-3 * float(eig[-1]):
        if scene_box is None:
            return torch.zeros(3, device=cameras.device)
        return torch.as_tensor(scene_box, dtype=torch.float32).reshape(2, 3).mean(0).to(cameras.device)
    return torch.linalg.solve(a, b).float().to(cameras.device)


def random_rotations(n: int, max_angle_deg: float, generator: torch.Generator) -> Tensor:
    """``[n, 3, 3]`` rotations about uniformly random axes by angles uniform in ``[0, max_angle_deg]``
    (Rodrigues' formula)."""
    if max_angle_deg < 0:
        raise ValueError(f"max_angle_deg must be >= 0, got {max_angle_deg}")
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator, dtype=torch.float64), dim=-1)
    angle = torch.rand(n, generator=generator, dtype=torch.float64) * math.radians(max_angle_deg)
    k = torch.zeros(n, 3, 3, dtype=torch.float64)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * (k @ k)


def _orbit(c2w: Tensor, rot: Tensor, centre: Tensor, scale: Tensor) -> Tensor:
    """Rotate camera-to-world ``[n, 4, 4]`` rigidly about ``centre`` (``[3]`` or ``[n, 3]``) by
    ``rot [n, 3, 3]``, then scale the camera's distance to the centre by ``scale [n]``."""
    c2w = c2w.double()
    centre = centre.double()
    out = c2w.clone()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    offset = (rot @ (c2w[:, :3, 3] - centre)[:, :, None])[:, :, 0]
    out[:, :3, 3] = centre + scale[:, None] * offset
    return out.float()


def _pinhole_like(cameras: Cameras, picks: Tensor, c2w: Tensor) -> Cameras:
    """Cameras with the intrinsics, size and time of ``cameras[picks]``, poses ``c2w``, no distortion."""
    sel = cameras[picks]
    return Cameras.create(c2w.to(cameras.device), sel.fx, sel.fy, sel.cx, sel.cy, sel.width, sel.height,
                          model=int(CameraModel.PINHOLE), times=sel.times)


def sample_poses(cameras: Cameras, indices: list[int], n: int, generator: torch.Generator, *,
                 max_angle_deg: float = 20.0, radius_jitter: float = 0.1, center: Tensor | None = None,
                 scene_box: Tensor | None = None) -> Cameras:
    """``n`` new cameras around the cameras ``indices`` of ``cameras`` (PVD's training poses).

    Each picks a camera of ``indices`` uniformly, rotates its pose rigidly about ``center`` by a random
    rotation of angle <= ``max_angle_deg`` (so a camera that looked at the centre still does) and
    scales its distance to the centre by ``1 + U(-radius_jitter, radius_jitter)``.

    Args:
        cameras: the dataset cameras (normalised world).
        indices: the cameras to start from (e.g. the training split).
        n: cameras to make.
        generator: the only source of randomness.
        center: ``[3]`` rotation centre; default :func:`look_at_centre` of the picked-from cameras
            (falling back to the centre of ``scene_box`` when their axes are parallel).

    Returns:
        ``n`` pinhole :class:`Cameras` with the intrinsics, size and time of the cameras they came from.
    """
    if not indices:
        raise ValueError("sample_poses: indices is empty")
    if not 0 <= radius_jitter < 1:
        raise ValueError(f"sample_poses: radius_jitter must be in [0, 1), got {radius_jitter}")
    idx = torch.as_tensor(list(indices), dtype=torch.long)
    if center is None:
        center = look_at_centre(cameras[idx], scene_box)
    picks = idx[torch.randint(len(idx), (n,), generator=generator)]
    rot = random_rotations(n, max_angle_deg, generator)
    scale = 1.0 + radius_jitter * (2.0 * torch.rand(n, generator=generator, dtype=torch.float64) - 1.0)
    c2w = _orbit(cameras.c2w[picks].cpu(), rot, torch.as_tensor(center).cpu(), scale)
    return _pinhole_like(cameras, picks.to(cameras.device), c2w)


def perturb_poses(cameras: Cameras, generator: torch.Generator, max_angle_deg: float, *,
                  center: Tensor | None = None) -> Cameras:
    """Each camera of ``cameras`` rotated by a random rotation of angle <= ``max_angle_deg`` (PVD-AL's
    neighbours of hard poses): about ``center`` (``[3]``; the camera orbits it and keeps looking at it)
    or, without a centre, about the camera's own position (it looks slightly elsewhere)."""
    n = len(cameras)
    rot = random_rotations(n, max_angle_deg, generator)
    c2w = cameras.c2w.cpu()
    pivot = c2w[:, :3, 3] if center is None else torch.as_tensor(center, dtype=torch.float32).cpu()
    out = _orbit(c2w, rot, pivot, torch.ones(n, dtype=torch.float64))
    return _pinhole_like(cameras, torch.arange(n, device=cameras.device), out)

__all__ = ["sample_poses", "perturb_poses", "look_at_centre", "random_rotations"]
