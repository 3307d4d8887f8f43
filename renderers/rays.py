"""Pixel rays for every camera model (pinhole, OpenCV radial-tangential, OpenCV fisheye).

Pixel centres are at ``(u + 0.5, v + 0.5)``. Directions are unit length in the normalised world;
origins are the camera centres. Distorted pixels are undistorted with :func:`omnifield.datasets.cameras.undistort`;
:func:`image_rays` caches the camera-space directions of whole images per intrinsics.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor

from omnifield.datasets.cameras import CameraModel, Cameras, undistort
from omnifield.renderers.types import RayBundle

_CACHE_SIZE = 16
_image_dir_cache: OrderedDict[tuple, Tensor] = OrderedDict()


def _camera_space_directions(cameras: Cameras, camera_indices: Tensor, pixels: Tensor) -> Tensor:
    """Unnormalised camera-space directions ``[R, 3]`` (z = 1 plane) for pixels ``[R, 2]``."""
    fx, fy = cameras.fx[camera_indices], cameras.fy[camera_indices]
    cx, cy = cameras.cx[camera_indices], cameras.cy[camera_indices]
    x = (pixels[:, 0] - cx) / fx
    y = (pixels[:, 1] - cy) / fy
    model = cameras.model[camera_indices]
    distorted = model != int(CameraModel.PINHOLE)
    if bool(distorted.any()):
        sel = distorted.nonzero().squeeze(-1)
        xu, yu = undistort(x[sel], y[sel], cameras.distortion[camera_indices[sel]], model[sel])
        x, y = x.clone(), y.clone()
        x[sel], y[sel] = xu, yu
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def _to_world(cameras: Cameras, camera_indices: Tensor, dirs_cam: Tensor) -> RayBundle:
    c2w = cameras.c2w[camera_indices]
    dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3], dirs_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, :3, 3].contiguous()
    # Radius of a disc with the pixel's area at unit distance (mip-NeRF uses 2/sqrt(12) of the pixel width).
    radius = (2.0 / math.sqrt(12.0)) / cameras.fx[camera_indices]
    times = None if cameras.times is None else cameras.times[camera_indices]
    return RayBundle(origins, dirs, camera_indices, times, radius)


def camera_rays(cameras: Cameras, camera_indices: Tensor, pixels: Tensor) -> RayBundle:
    """Rays through float pixel coordinates.

    Args:
        cameras: ``C`` cameras.
        camera_indices: ``[R]`` int64 camera of each ray.
        pixels: ``[R, 2]`` float ``(u, v)`` pixel coordinates; the centre of pixel ``(i, j)`` is
            ``(i + 0.5, j + 0.5)``.

    Returns:
        A :class:`RayBundle` (unit directions, camera centres, camera indices, times when the cameras
        have them, pixel radius). Not differentiable w.r.t. the cameras.
    """
    camera_indices = torch.as_tensor(camera_indices, dtype=torch.long, device=cameras.device)
    pixels = torch.as_tensor(pixels, dtype=torch.float32, device=cameras.device)
    if camera_indices.ndim != 1 or pixels.shape != (camera_indices.shape[0], 2):
        raise ValueError(f"camera_rays needs camera_indices [R] and pixels [R, 2], got {tuple(camera_indices.shape)} and {tuple(pixels.shape)}")
    if camera_indices.numel() and (int(camera_indices.min()) < 0 or int(camera_indices.max()) >= len(cameras)):
        raise ValueError(f"camera_indices out of range for {len(cameras)} cameras")
    return _to_world(cameras, camera_indices, _camera_space_directions(cameras, camera_indices, pixels))


def image_rays(cameras: Cameras, c: int) -> RayBundle:
    """All ``H * W`` rays of camera ``c`` in row-major order (ray ``v * W + u`` is pixel ``(u, v)``).

    Undistorted camera-space directions are cached per (intrinsics, distortion, size).
    """
    h, w = int(cameras.height[c]), int(cameras.width[c])
    model = int(cameras.model[c])
    key = (h, w, model, *(float(t[c]) for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy)),
           *cameras.distortion[c].tolist(), str(cameras.device))
    idx = torch.full((h * w,), c, dtype=torch.long, device=cameras.device)
    dirs_cam = _image_dir_cache.get(key) if model != int(CameraModel.PINHOLE) else None
    if dirs_cam is None:
        v, u = torch.meshgrid(torch.arange(h, device=cameras.device), torch.arange(w, device=cameras.device), indexing="ij")
        pixels = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1).float() + 0.5
        dirs_cam = _camera_space_directions(cameras, idx, pixels)
        if model != int(CameraModel.PINHOLE):
            _image_dir_cache[key] = dirs_cam
            while len(_image_dir_cache) > _CACHE_SIZE:
                _image_dir_cache.popitem(last=False)
    return _to_world(cameras, idx, dirs_cam)
