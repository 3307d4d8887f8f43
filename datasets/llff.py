"""LLFF ``poses_bounds.npy`` (Mildenhall et al. 2019, Local Light Field Fusion; NeRF's forward-facing scenes).

Each row holds a 3x5 matrix ``[R | t | hwf]`` (row-major, 15 values) and the near/far depth bounds
of that view. ``R``'s columns are [down, right, back]; OpenCV c2w columns are therefore
``x = right = col1``, ``y = down = col0``, ``z = forward = -col2``. ``hwf`` (height, width, focal)
is at full resolution; intrinsics are scaled to the size of the images actually read:
``images_N/`` for ``downscale=N`` when present, else ``images/`` block-averaged by ``N``; when
neither exists the finest ``images_M/`` is used (a warning says so when ``N`` is not a multiple of
``M``).

Normalisation as in NeRF's ``load_llff_data`` (``bd_factor=0.75``, ``recenter=True``): scale so
that the smallest bound is ``1 / 0.75``, then express everything in the frame of the average
camera (its centre at 0, looking along -z with +y up in world axes). ``near = 0.9 * min bound``,
``far = max bound`` (scaled). Poses share the world of COLMAP's points: ``sparse/0/points3D`` is
loaded when present. ``scene_box`` is the points' 1..99th percentile box, or the box of the view
frusta between near and far. ``unbounded=True``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras, CameraModel
from omnifield.datasets.colmap import read_model_file
from omnifield.datasets.io import (
    ImageSource,
    LoadOptions,
    check_poses,
    check_splits,
    default_splits,
    downscale_cameras,
    image_size,
    list_images,
    make_image_store,
    orthonormalize,
    points_box,
    read_npy,
    similarity,
)
from omnifield.datasets.scene_data import SceneData
from omnifield.errors import DataError

BD_FACTOR = 0.75


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def parse_poses_bounds(arr: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[N, 17]`` -> OpenCV c2w ``[N, 4, 4]``, hwf ``[N, 3]``, bounds ``[N, 2]`` (dataset units)."""
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise DataError(f"expected an N x 17 array, got shape {arr.shape}", path)
    if not np.all(np.isfinite(arr)):
        raise DataError("non-finite values in poses or bounds", path)
    m = arr[:, :15].reshape(-1, 3, 5).astype(np.float64)
    c2w = np.tile(np.eye(4), (len(arr), 1, 1))
    c2w[:, :3, 0] = m[:, :, 1]  # right
    c2w[:, :3, 1] = m[:, :, 0]  # down
    c2w[:, :3, 2] = -m[:, :, 2]  # forward = -back
    c2w[:, :3, 3] = m[:, :, 3]
    hwf = m[:, :, 4]
    bounds = arr[:, 15:17].astype(np.float64)
    if np.any(bounds <= 0) or np.any(hwf <= 0):
        raise DataError("bounds and hwf must be positive", path)
    return c2w, hwf, bounds


def llff_world(c2w: np.ndarray, bounds: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale, rotation, translation) of NeRF's LLFF normalisation: bd_factor scale + recentring on the average pose."""
    scale = 1.0 / (bounds.min() * BD_FACTOR)
    center = c2w[:, :3, 3].mean(axis=0)
    back = _normalize((-c2w[:, :3, 2]).sum(axis=0))  # OpenGL z
    up = (-c2w[:, :3, 1]).sum(axis=0)  # OpenGL y
    right = _normalize(np.cross(up, back))
    up = _normalize(np.cross(back, right))
    avg_rot = np.stack([right, up, back], axis=1)  # columns: the average camera's axes (OpenGL)
    rot = avg_rot.T
    return scale, rot, -scale * rot @ center


def _image_folder(root: Path, n: int) -> tuple[Path, int, int]:
    """(folder, downscale of its images, block-average factor still to apply)."""
    if n > 1 and (root / f"images_{n}").is_dir():
        return root / f"images_{n}", n, 1
    if (root / "images").is_dir():
        return root / "images", 1, n
    found = (re.fullmatch(r"images_(\d+)", d.name) for d in root.iterdir() if d.is_dir())
    avail = sorted(int(m.group(1)) for m in found if m)
    exact = [m for m in avail if n % m == 0]
    if exact:
        return root / f"images_{max(exact)}", max(exact), n // max(exact)
    if avail:
        m = avail[0]
        warnings.warn(f"{root}: no images/ or images_{n}/ folder; using images_{m}/ (downscale {m})", stacklevel=3)
        return root / f"images_{m}", m, 1
    raise DataError("no images/ or images_N/ folder", root)


def frustum_box(cams: Cameras, near: float, far: float) -> torch.Tensor:
    """``[2, 3]`` box around the view frusta of ``cams`` between depths ``near`` and ``far``."""
    pts = []
    for u, v in ((0, 0), (1, 0), (0, 1), (1, 1)):
        x = (u * cams.width - cams.cx) / cams.fx
        y = (v * cams.height - cams.cy) / cams.fy
        d = torch.stack([x, y, torch.ones_like(x)], -1)
        d = (cams.c2w[:, :3, :3] @ d[..., None])[..., 0]
        for depth in (near, far):
            pts.append(cams.c2w[:, :3, 3] + depth * d)
    pts = torch.cat(pts)
    return torch.stack([pts.min(0).values, pts.max(0).values])


def load_llff(path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8) -> SceneData:
    """Load an LLFF folder (``poses_bounds.npy`` + ``images*/``) into a :class:`SceneData`."""
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    root = Path(path)
    if root.is_file():
        root = root.parent
    npy = root / "poses_bounds.npy"
    c2w, hwf, bounds = parse_poses_bounds(read_npy(npy), npy)
    check_poses(c2w, npy)
    c2w = orthonormalize(c2w)
    folder, pre, extra = _image_folder(root, opts.downscale)
    files = list_images(folder)
    if len(files) != len(c2w):
        raise DataError(f"{len(files)} images for {len(c2w)} poses in {npy.name}", folder)
    w, h = image_size(files[0])
    full_h, full_w, f = hwf[:, 0], hwf[:, 1], hwf[:, 2]
    if abs((w / h) / (full_w[0] / full_h[0]) - 1) > 0.02:
        raise DataError(f"image is {w}x{h} but poses_bounds.npy says {full_w[0]:.0f}x{full_h[0]:.0f}", files[0])
    sx, sy = w / full_w, h / full_h
    scale, rot, t = llff_world(c2w, bounds)
    world = similarity(scale, t, rot)
    cams = Cameras.create(
        torch.tensor(c2w, dtype=torch.float32), f * sx, f * sy, w / 2, h / 2, w, h, model=CameraModel.PINHOLE
    ).transformed(world)
    cams = downscale_cameras(cams, extra)
    near, far = 0.9 * float(bounds.min()) * scale, float(bounds.max()) * scale
    points = colors = None
    sparse = root / "sparse" / "0"
    if (sparse / "points3D.bin").is_file() or (sparse / "points3D.txt").is_file():
        pts = read_model_file(sparse, "points3D")
        if len(pts.xyz):
            points = torch.tensor(pts.xyz @ (scale * rot).T + t, dtype=torch.float32)
            colors = torch.from_numpy(pts.rgb.copy())
    box = points_box(points.numpy()) if points is not None else frustum_box(cams, near, far)
    splits = default_splits(len(files), opts.holdout_every)
    check_splits(splits, cams, npy)
    return SceneData(
        root=root,
        format="llff",
        cameras=cams,
        images=make_image_store([ImageSource(p, extra) for p in files], cams, opts.background),
        splits=splits,
        scene_box=box,
        world_from_dataset=world,
        near=near,
        far=far,
        points=points,
        point_colors=colors,
        unbounded=True,
        background=opts.background,
        metadata={
            "downscale": pre * extra,
            "skipped_frames": [],
            "image_folder": folder.name,
            "bounds": [float(bounds.min()), float(bounds.max())],
        },
    )
