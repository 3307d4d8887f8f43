"""COLMAP sparse models, text and binary (``cameras``, ``images``, ``points3D``), read without pycolmap.

The model lives in ``sparse/0/``, ``sparse/`` or the folder itself (binary preferred when both
exist); images in ``images/``. COLMAP poses are world-to-camera quaternion ``qw qx qy qz`` plus
translation in OpenCV axes already, so ``c2w = inv([R|t])``. Pixel centres are at +0.5, like ours.

Camera models: SIMPLE_PINHOLE, PINHOLE -> PINHOLE; SIMPLE_RADIAL (k), RADIAL (k1 k2), OPENCV
(k1 k2 p1 p2) -> OPENCV; OPENCV_FISHEYE (k1..k4), SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE ->
OPENCV_FISHEYE. Others raise DataError.

Normalisation: the mean camera centre goes to 0 and the farthest camera to distance 1;
``scene_box`` is the 1..99th percentile box of the sparse points (padded 5%), or ``[-1, 1]^3``
without points; ``unbounded=True``. Images are sorted by name; every ``holdout_every``-th is test.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras, CameraModel
from omnifield.datasets.io import (
    LoadOptions,
    center_and_scale,
    check_poses,
    check_splits,
    default_splits,
    downscaled_sources,
    make_image_store,
    orthonormalize,
    points_box,
    similarity,
)
from omnifield.datasets.scene_data import SceneData
from omnifield.errors import DataError

# model id -> (name, number of parameters), as in COLMAP's src/colmap/sensor/models.h
MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: (i, n) for i, (name, n) in MODELS.items()}


@dataclass(frozen=True)
class ColmapCamera:
    """One COLMAP camera: model name, image size and the model's parameters."""

    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    """One registered image: world-to-camera quaternion (w, x, y, z) and translation."""

    id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str


@dataclass(frozen=True)
class ColmapPoints:
    """Sparse points: ``xyz [P, 3]`` float64, ``rgb [P, 3]`` uint8, ``error [P]``."""

    xyz: np.ndarray
    rgb: np.ndarray
    error: np.ndarray


# ----------------------------------------------------------------------------- binary


class _Reader:
    """Little-endian struct reads that raise DataError (naming the file) on truncation."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("file not found", self.path)
        self.data = self.path.read_bytes()
        self.pos = 0

    def _need(self, size: int) -> None:
        if self.pos + size > len(self.data):
            msg = f"truncated binary file (needed {size} bytes at offset {self.pos} of {len(self.data)})"
            raise DataError(msg, self.path)

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        self._need(size)
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, size: int) -> None:
        self._need(size)
        self.pos += size

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise DataError(f"truncated binary file (unterminated name at offset {self.pos})", self.path)
        out = self.data[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return out


def _model(model_id_or_name, path: Path) -> tuple[str, int]:
    if isinstance(model_id_or_name, int):
        if model_id_or_name not in MODELS:
            raise DataError(f"unknown camera model id {model_id_or_name}", path)
        return MODELS[model_id_or_name]
    if model_id_or_name not in MODEL_IDS:
        raise DataError(f"unknown camera model {model_id_or_name!r}", path)
    return model_id_or_name, MODEL_IDS[model_id_or_name][1]


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """``cameras.bin``: uint64 count, then per camera int32 id, int32 model, uint64 w, h, double params."""
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, w, h = r.read("iiQQ")
        name, n = _model(model_id, r.path)
        out[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), r.read(f"{n}d"))
    return out


def read_images_binary(path: Path) -> dict[int, ColmapImage]:
    """``images.bin``: per image id, qvec, tvec, camera id, name, then 2D points (skipped)."""
    r = _Reader(path)
    out = {}
    for _ in range(r.read("Q")[0]):
        img_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.read("idddddddi")
        name = r.string()
        r.skip(24 * r.read("Q")[0])  # x, y (double) + point3D id (int64) per observation
        out[img_id] = ColmapImage(img_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name)
    return out


def read_points3d_binary(path: Path) -> ColmapPoints:
    """``points3D.bin``: per point uint64 id, 3 double xyz, 3 uint8 rgb, double error, track (skipped)."""
    r = _Reader(path)
    n = r.read("Q")[0]
    xyz, rgb, err = np.empty((n, 3)), np.empty((n, 3), np.uint8), np.empty(n)
    for i in range(n):
        rec = r.read("QdddBBBd")
        xyz[i], rgb[i], err[i] = rec[1:4], rec[4:7], rec[7]
        r.skip(8 * r.read("Q")[0])  # (int32 image id, int32 point2D index) per element
    return ColmapPoints(xyz, rgb, err)


# ----------------------------------------------------------------------------- text


def _lines(path: Path) -> list[tuple[int, str]]:
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not a text file: {e}", path) from None
    return [(i + 1, ln.strip()) for i, ln in enumerate(text.splitlines())]


def _parse(fields, types, path: Path, lineno: int):
    try:
        return [t(f) for t, f in zip(types, fields, strict=True)]
    except ValueError as e:
        raise DataError(f"line {lineno}: malformed ({e})", path) from None


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line."""
    out = {}
    for lineno, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 4:
            raise DataError(f"line {lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]", path)
        name, n = _model(f[1], Path(path))
        vals = _parse([f[0], f[2], f[3]] + f[4:], [int, int, int] + [float] * n, path, lineno)
        out[vals[0]] = ColmapCamera(vals[0], name, vals[1], vals[2], tuple(vals[3:]))
    return out


def read_images_text(path: Path) -> dict[int, ColmapImage]:
    """``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then its 2D points."""
    lines = _lines(path)
    out = {}
    i = 0
    while i < len(lines):
        lineno, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        f = line.split(maxsplit=9)
        if len(f) < 10:
            raise DataError(f"line {lineno}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME", path)
        v = _parse(f[:9], [int] + [float] * 7 + [int], path, lineno)
        out[v[0]] = ColmapImage(v[0], tuple(v[1:5]), tuple(v[5:8]), v[8], f[9])
        i += 1  # the POINTS2D line (possibly empty)
    return out


def read_points3d_text(path: Path) -> ColmapPoints:
    """``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line."""
    xyz, rgb, err = [], [], []
    for lineno, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 8:
            raise DataError(f"line {lineno}: expected POINT3D_ID X Y Z R G B ERROR TRACK[]", path)
        v = _parse(f[1:8], [float] * 3 + [int] * 3 + [float], path, lineno)
        xyz.append(v[:3])
        rgb.append(v[3:6])
        err.append(v[6])
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    return ColmapPoints(xyz, np.asarray(rgb, np.uint8).reshape(-1, 3), np.asarray(err, np.float64))


def read_model_file(folder: Path, stem: str):
    """Read ``<stem>.bin`` (preferred) or ``<stem>.txt`` from a model folder."""
    readers = {
        "cameras": (read_cameras_binary, read_cameras_text),
        "images": (read_images_binary, read_images_text),
        "points3D": (read_points3d_binary, read_points3d_text),
    }[stem]
    if (folder / f"{stem}.bin").is_file():
        return readers[0](folder / f"{stem}.bin")
    if (folder / f"{stem}.txt").is_file():
        return readers[1](folder / f"{stem}.txt")
    raise DataError(f"no {stem}.bin or {stem}.txt", folder)


def find_model_dir(root: Path) -> Path | None:
    """The folder holding ``cameras.*`` and ``images.*``: ``sparse/0``, ``sparse`` or ``root``."""
    for d in (root / "sparse" / "0", root / "sparse", root):
        has = lambda stem: (d / f"{stem}.bin").is_file() or (d / f"{stem}.txt").is_file()  # noqa: E731
        if has("cameras") and has("images"):
            return d
    return None


# ----------------------------------------------------------------------------- conversion


def qvec_to_rotmat(q) -> np.ndarray:
    """Rotation matrix of a (w, x, y, z) quaternion (not renormalised: a bad one fails the rigidity check)."""
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * y * y - 2 * z * z, 2 * x * y - 2 * w * z, 2 * z * x + 2 * w * y],
            [2 * x * y + 2 * w * z, 1 - 2 * x * x - 2 * z * z, 2 * y * z - 2 * w * x],
            [2 * z * x - 2 * w * y, 2 * y * z + 2 * w * x, 1 - 2 * x * x - 2 * y * y],
        ]
    )


def camera_intrinsics(cam: ColmapCamera, path: Path) -> tuple[float, float, float, float, list[float], CameraModel]:
    """(fx, fy, cx, cy, distortion [k1 k2 p1 p2 k3 k4], model) of a COLMAP camera."""
    p = list(cam.params)
    m = cam.model
    if m in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        k = p[3:] + [0.0] * (2 - len(p[3:]))
        dist = [k[0], k[1], 0, 0, 0, 0]
    elif m in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE"):
        fx, fy, cx, cy = p[:4]
        d = p[4:]
        if m == "OPENCV":
            dist = [d[0], d[1], d[2], d[3], 0, 0]
        elif m == "OPENCV_FISHEYE":
            dist = [d[0], d[1], 0, 0, d[2], d[3]]
        else:
            dist = [0.0] * 6
    else:
        raise DataError(f"camera {cam.id}: camera model {m} is not supported", path)
    model = {
        "SIMPLE_PINHOLE": CameraModel.PINHOLE,
        "PINHOLE": CameraModel.PINHOLE,
        "OPENCV_FISHEYE": CameraModel.OPENCV_FISHEYE,
        "SIMPLE_RADIAL_FISHEYE": CameraModel.OPENCV_FISHEYE,
        "RADIAL_FISHEYE": CameraModel.OPENCV_FISHEYE,
    }.get(m, CameraModel.OPENCV)
    return fx, fy, cx, cy, [float(x) for x in dist], model


def images_folder(root: Path, model_dir: Path) -> Path:
    """``images/`` next to the model (dataset root, or two levels up from ``sparse/0``)."""
    for d in (root, model_dir.parent, model_dir.parent.parent):
        if (d / "images").is_dir():
            return d / "images"
    return root / "images"


def load_colmap(path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8) -> SceneData:
    """Load a COLMAP reconstruction (text or binary) with its images into a :class:`SceneData`."""
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    root = Path(path)
    model_dir = find_model_dir(root)
    if model_dir is None:
        raise DataError("no COLMAP model (cameras.bin/txt + images.bin/txt in sparse/0, sparse or here)", root)
    cameras = read_model_file(model_dir, "cameras")
    images = sorted(read_model_file(model_dir, "images").values(), key=lambda im: im.name)
    images_file = model_dir / ("images.bin" if (model_dir / "images.bin").is_file() else "images.txt")
    if not images:
        raise DataError("no registered images", images_file)
    c2w, intr = [], []
    for im in images:
        if im.camera_id not in cameras:
            raise DataError(f"image {im.name} refers to missing camera {im.camera_id}", images_file)
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(im.qvec)
        w2c[:3, 3] = im.tvec
        check_poses(w2c[None], images_file, [im.name])  # a rigid w2c has a rigid inverse
        c2w.append(np.linalg.inv(w2c))
        cam = cameras[im.camera_id]
        intr.append((*camera_intrinsics(cam, model_dir), cam.width, cam.height))
    c2w = orthonormalize(np.stack(c2w))
    fx, fy, cx, cy, dist, model, w, h = (list(x) for x in zip(*intr))
    scale, t = center_and_scale(c2w[:, :3, 3], mode="radius")
    world = similarity(scale, t)
    cams = Cameras.create(
        torch.tensor(c2w, dtype=torch.float32), fx, fy, cx, cy, w, h,
        distortion=torch.tensor(dist), model=torch.tensor([int(m) for m in model]),
    ).transformed(world)
    points = colors = None
    box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    if (model_dir / "points3D.bin").is_file() or (model_dir / "points3D.txt").is_file():
        pts = read_model_file(model_dir, "points3D")
        if len(pts.xyz):
            points = torch.tensor(pts.xyz * scale + t, dtype=torch.float32)
            colors = torch.from_numpy(pts.rgb.copy())
            box = points_box(points.numpy())
    folder = images_folder(root, model_dir)
    sources, cams = downscaled_sources([folder / im.name for im in images], cams, opts.downscale)
    splits = default_splits(len(images), opts.holdout_every)
    check_splits(splits, cams, images_file)
    return SceneData(
        root=root,
        format="colmap",
        cameras=cams,
        images=make_image_store(sources, cams, opts.background),
        splits=splits,
        scene_box=box,
        world_from_dataset=world,
        points=points,
        point_colors=colors,
        unbounded=True,
        background=opts.background,
        metadata={
            "downscale": opts.downscale,
            "skipped_frames": [],
            "model_dir": str(model_dir.relative_to(root)) if model_dir != root else ".",
            "camera_models": sorted({c.model for c in cameras.values()}),
        },
    )
