"""Batched cameras in OpenCV axes (x right, y down, z forward), the one camera type of omnifield.

Every parser converts its poses into :class:`Cameras` once. Conventions:

- ``c2w`` is camera-to-world, ``[C, 4, 4]``, OpenCV axes. OpenGL/Blender poses (x right, y up,
  z backward) become OpenCV by negating the y and z columns: :func:`opengl_to_opencv`.
- Pixel centres are at ``(u + 0.5, v + 0.5)`` for integer pixel indices ``(u, v)``.
- ``distortion`` holds OpenCV radial-tangential coefficients ``[k1, k2, p1, p2, k3, k4]``
  (zeros when absent); ``model`` says which are used.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from enum import IntEnum

import torch
from torch import Tensor


class CameraModel(IntEnum):
    """Projection model per camera."""

    PINHOLE = 0
    OPENCV = 1  # pinhole + radial (k1, k2, k3) + tangential (p1, p2)
    OPENCV_FISHEYE = 2  # equidistant fisheye with k1..k4 (distortion[0, 1, 4, 5] = k1, k2, k3, k4)


DISTORTION_PARAMS = 6


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """Convert camera-to-world ``[..., 4, 4]`` (or ``[..., 3, 4]``) from OpenGL to OpenCV axes."""
    out = c2w.clone()
    out[..., :3, 1:3] *= -1
    return out


@dataclass(frozen=True)
class Cameras:
    """A batch of ``C`` cameras.

    Attributes:
        c2w: ``[C, 4, 4]`` float32 camera-to-world, OpenCV axes.
        fx, fy, cx, cy: ``[C]`` float32 intrinsics in pixels.
        width, height: ``[C]`` int64 image size in pixels.
        distortion: ``[C, 6]`` float32 ``k1 k2 p1 p2 k3 k4`` (zeros for pinhole).
        model: ``[C]`` int64 :class:`CameraModel` values.
        times: ``[C]`` float32 normalised time in [0, 1], or None for static scenes.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    distortion: Tensor
    model: Tensor
    times: Tensor | None = None

    @staticmethod
    def create(
        c2w: Tensor,
        fx,
        fy,
        cx,
        cy,
        width,
        height,
        distortion: Tensor | None = None,
        model=None,
        times: Tensor | None = None,
    ) -> "Cameras":
        """Build cameras, broadcasting scalars to ``C`` and validating shapes and values."""
        c2w = torch.as_tensor(c2w, dtype=torch.float32)
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.shape[-2:] == (3, 4):
            bottom = torch.tensor([0, 0, 0, 1], dtype=torch.float32).expand(c2w.shape[0], 1, 4)
            c2w = torch.cat([c2w, bottom], dim=1)
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must be [C, 4, 4] or [C, 3, 4], got {tuple(c2w.shape)}")
        n = c2w.shape[0]

        def vec(x, dtype, name):
            t = torch.as_tensor(x, dtype=dtype).reshape(-1)
            if t.numel() == 1:
                t = t.expand(n).clone()
            if t.shape != (n,):
                raise ValueError(f"{name} must be a scalar or have {n} entries, got {tuple(t.shape)}")
            return t

        if distortion is None:
            distortion = torch.zeros(n, DISTORTION_PARAMS)
        distortion = torch.as_tensor(distortion, dtype=torch.float32)
        if distortion.ndim == 1:
            distortion = distortion.expand(n, -1)
        if distortion.shape[-1] < DISTORTION_PARAMS:
            pad = torch.zeros(n, DISTORTION_PARAMS - distortion.shape[-1])
            distortion = torch.cat([distortion, pad], dim=-1)
        if model is None:
            model = CameraModel.OPENCV if bool(distortion.abs().sum() > 0) else CameraModel.PINHOLE
        cams = Cameras(
            c2w=c2w.contiguous(),
            fx=vec(fx, torch.float32, "fx"),
            fy=vec(fy, torch.float32, "fy"),
            cx=vec(cx, torch.float32, "cx"),
            cy=vec(cy, torch.float32, "cy"),
            width=vec(width, torch.int64, "width"),
            height=vec(height, torch.int64, "height"),
            distortion=distortion.contiguous().clone(),
            model=vec(int(model) if not isinstance(model, Tensor) else model, torch.int64, "model"),
            times=None if times is None else vec(times, torch.float32, "times"),
        )
        return cams

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, index) -> "Cameras":
        """Select cameras by int, slice, list or tensor of indices (always keeps the batch dim)."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index, dtype=torch.long)
        return Cameras(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in fields(self)
            }
        )

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device) -> "Cameras":
        """Move every tensor to ``device``."""
        return Cameras(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                for f in fields(self)
            }
        )

    def intrinsics_matrix(self) -> Tensor:
        """``[C, 3, 3]`` pinhole matrices K."""
        k = torch.zeros(len(self), 3, 3, device=self.device)
        k[:, 0, 0], k[:, 1, 1] = self.fx, self.fy
        k[:, 0, 2], k[:, 1, 2] = self.cx, self.cy
        k[:, 2, 2] = 1
        return k

    def rescaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (0.25 for --downscale 4)."""
        w = torch.floor(self.width.double() * factor).long()
        h = torch.floor(self.height.double() * factor).long()
        sx = w.float() / self.width.float()
        sy = h.float() / self.height.float()
        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=self.cx * sx,
            cy=self.cy * sy,
            width=w,
            height=h,
        )

    def transformed(self, world_from_old: Tensor) -> "Cameras":
        """Apply a similarity transform ``[4, 4]`` (s*R | t) to the poses, keeping rotations orthonormal."""
        m = torch.as_tensor(world_from_old, dtype=torch.float32, device=self.device)
        scale = torch.linalg.det(m[:3, :3]).abs() ** (1.0 / 3.0)
        c2w = m @ self.c2w
        c2w[:, :3, :3] /= scale
        return replace(self, c2w=c2w)

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points ``[C, P, 3]`` (or ``[P, 3]``) to pixels ``[C, P, 2]`` and depth ``[C, P]``.

        Applies the distortion model; useful as an oracle for ray generation and for tests.
        """
        if points.ndim == 2:
            points = points[None].expand(len(self), -1, -1)
        w2c = torch.linalg.inv(self.c2w)
        pc = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        z = pc[..., 2]
        x, y = pc[..., 0] / z, pc[..., 1] / z
        x, y = distort(x, y, self.distortion[:, None, :], self.model[:, None])
        u = self.fx[:, None] * x + self.cx[:, None]
        v = self.fy[:, None] * y + self.cy[:, None]
        return torch.stack([u, v], dim=-1), z


def distort(x: Tensor, y: Tensor, dist: Tensor, model: Tensor) -> tuple[Tensor, Tensor]:
    """Apply OpenCV distortion to normalised image coordinates ``x, y`` (broadcasting with ``dist[..., 6]``)."""
    k1, k2, p1, p2, k3, k4 = (dist[..., i] for i in range(DISTORTION_PARAMS))
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    # Equidistant fisheye.
    r = torch.sqrt(r2).clamp_min(1e-12)
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    fx_, fy_ = x * theta_d / r, y * theta_d / r
    is_fish = model == CameraModel.OPENCV_FISHEYE
    is_pin = model == CameraModel.PINHOLE
    xd = torch.where(is_fish, fx_, torch.where(is_pin, x, xd))
    yd = torch.where(is_fish, fy_, torch.where(is_pin, y, yd))
    return xd, yd


def undistort(xd: Tensor, yd: Tensor, dist: Tensor, model: Tensor, iterations: int = 10) -> tuple[Tensor, Tensor]:
    """Invert :func:`distort` by Newton iterations (as nerfstudio and COLMAP do); exact for pinhole."""
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        x_ = x.detach().requires_grad_(True)
        y_ = y.detach().requires_grad_(True)
        with torch.enable_grad():
            fx_, fy_ = distort(x_, y_, dist, model)
            rx, ry = fx_ - xd, fy_ - yd
            gxx, gxy = torch.autograd.grad(rx.sum(), (x_, y_), retain_graph=True)
            gyx, gyy = torch.autograd.grad(ry.sum(), (x_, y_))
        det = gxx * gyy - gxy * gyx
        det = torch.where(det.abs() < 1e-8, torch.full_like(det, 1e-8), det)
        x = x - (rx.detach() * gyy - ry.detach() * gxy) / det
        y = y - (ry.detach() * gxx - rx.detach() * gyx) / det
    return x.detach(), y.detach()
