"""Point renderer: project coloured points into one camera and keep the nearest per pixel (z-buffer).

Pure PyTorch and vectorised: every (point, splat offset) pair becomes a candidate for one pixel;
``scatter_reduce(amin)`` keyed by pixel finds the nearest depth, and the candidate with that depth
(the highest point index on exact ties) gives the colour. Used by the viewer for point clouds, meshes
shown as surface samples, and the scene-flow representation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.renderers.types import RenderOutput


def splat_offsets(point_size_px: float, device=None) -> Tensor:
    """``[O, 2]`` int64 pixel offsets ``(du, dv)`` of a disc ``point_size_px`` wide (``(0, 0)`` first).

    1 -> the pixel itself; 2 -> a plus of 5 pixels; 3 -> a 3x3 square; larger -> rasterised discs.
    """
    if not (point_size_px > 0 and math.isfinite(point_size_px)):
        raise ValueError(f"point_size_px must be positive, got {point_size_px}")
    r = max(point_size_px / 2.0, 0.5)
    k = int(math.floor(r + 1e-9))
    d = torch.arange(-k, k + 1, device=device)
    du, dv = torch.meshgrid(d, d, indexing="xy")
    du, dv = du.reshape(-1), dv.reshape(-1)
    inside = (du * du + dv * dv).double() <= r * r + 1e-9
    if point_size_px >= 3:  # 3 px and up: include the corners of the 3x3 block (a square reads better)
        inside |= (du.abs() <= 1) & (dv.abs() <= 1)
    off = torch.stack([du[inside], dv[inside]], -1)
    order = (off * off).sum(-1).argsort(stable=True)
    return off[order]


def render_points(
    points: Tensor,
    colors: Tensor,
    cameras: Cameras,
    background=(1.0, 1.0, 1.0),
    point_size_px: float = 1.0,
    *,
    normals: Tensor | None = None,
    near: float = 1e-6,
) -> RenderOutput:
    """Render ``P`` points into one camera with a z-buffer.

    Args:
        points: ``[P, 3]`` float world points.
        colors: ``[P, 3]`` float colours in [0, 1] (uint8 is divided by 255).
        cameras: exactly one camera (any model: projection is :meth:`Cameras.project`).
        background: ``[3]`` colour of empty pixels.
        point_size_px: splat diameter in pixels (see :func:`splat_offsets`).
        normals: optional ``[P, 3]`` world normals, rendered as the ``normals`` channel.
        near: points whose camera-space z is not above this are dropped (behind the camera).

    Returns:
        Image-shaped ``[H, W, k]`` :class:`RenderOutput`: ``rgb`` (background where empty),
        ``alpha`` (1 where a point lands, else 0), ``depth`` (distance from the camera centre, the
        ray parameter t of the volume renderer; 0 where empty), ``normals`` when given.
        Differentiable w.r.t. ``colors`` (and ``normals``) through the gather; not w.r.t. positions.
    """
    if len(cameras) != 1:
        raise ValueError(f"render_points renders one camera at a time, got {len(cameras)}")
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points must be [P, 3], got {tuple(points.shape)}")
    colors = torch.as_tensor(colors, device=points.device)
    if colors.shape != points.shape:
        raise ValueError(f"colors must be [P, 3] like points {tuple(points.shape)}, got {tuple(colors.shape)}")
    if colors.dtype == torch.uint8:
        colors = colors.float() / 255.0
    if normals is not None and normals.shape != points.shape:
        raise ValueError(f"normals must be [P, 3] like points {tuple(points.shape)}, got {tuple(normals.shape)}")
    device = points.device
    cameras = cameras.to(device)
    h, w = int(cameras.height[0]), int(cameras.width[0])
    bg = torch.as_tensor(background, dtype=colors.dtype if colors.is_floating_point() else torch.float32, device=device)
    if points.shape[0] == 0:
        colors = torch.zeros(1, 3, dtype=bg.dtype, device=device)  # never selected: nothing is hit
        normals = None if normals is None else torch.zeros(1, 3, dtype=bg.dtype, device=device)

    with torch.no_grad():
        pix, z = cameras.project(points.detach().float())  # [1, P, 2], [1, P]
        pix, z = pix[0], z[0]
        dist = (points.detach().float() - cameras.c2w[0, :3, 3]).norm(dim=-1)
        front = (z > near) & torch.isfinite(pix).all(-1)
        idx = front.nonzero().squeeze(-1)
        base = torch.floor(pix[idx]).long()  # pixel (u, v) holds the point when u <= x < u + 1
        off = splat_offsets(point_size_px, device)
        uv = (base[:, None, :] + off[None]).reshape(-1, 2)
        cand = idx[:, None].expand(-1, len(off)).reshape(-1)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        uv, cand = uv[inside], cand[inside]
        key = uv[:, 1] * w + uv[:, 0]
        d = dist[cand]
        zbuf = torch.full((h * w,), math.inf, device=device).scatter_reduce(0, key, d, "amin", include_self=True)
        nearest = d <= zbuf[key]
        winner = torch.full((h * w,), -1, dtype=torch.long, device=device)
        winner = winner.scatter_reduce(0, key[nearest], cand[nearest], "amax", include_self=True)
        hit = winner >= 0
        safe = winner.clamp_min(0)

    rgb = torch.where(hit[:, None], colors[safe].to(bg.dtype), bg.expand(h * w, 3))
    alpha = hit.to(rgb.dtype)[:, None]
    depth = torch.where(hit, zbuf, torch.zeros_like(zbuf))[:, None].to(rgb.dtype)
    out_normals = None
    if normals is not None:
        out_normals = torch.where(hit[:, None], normals[safe].to(rgb.dtype), torch.zeros(1, 3, dtype=rgb.dtype, device=device))
    out = RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normals=out_normals)
    return out.map(lambda t: t.reshape(h, w, -1))
