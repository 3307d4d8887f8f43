"""instant-ngp and nerfstudio ``transforms.json``.

Both list ``frames`` with ``file_path`` and a 4x4 camera-to-world ``transform_matrix`` in OpenGL
axes, plus intrinsics shared at top level or per frame: ``fl_x fl_y cx cy w h`` (or
``camera_angle_x/y``), OpenCV distortion ``k1 k2 p1 p2`` (+ ``k3 k4``). Frames whose image file
is missing are skipped with one warning (as instant-ngp does) and listed in
``metadata["skipped_frames"]``.

**instant-ngp** (``format="ngp"``): the file's ``scale`` (default 0.33) and ``offset`` (default
``[0.5, 0.5, 0.5]``) map the dataset into ngp's unit cube; our world is that cube moved to the
origin: ``world = scale * x + (offset - 0.5)`` (ngp also cycles the axes xyz -> yzx; we keep the
dataset's axes, so "up" stays what the file says). ``aabb_scale`` (default 1) is ngp's
``[0.5 - a/2, 0.5 + a/2]^3`` box, so ``scene_box = [-a/2, a/2]^3`` (never smaller than
``[-0.5, 0.5]^3``). The box holds the background too, hence ``unbounded=False``; near/far are left
to the renderer (box intersection). ``is_fisheye: true`` selects the fisheye model.

**nerfstudio** (``format="nerfstudio"``, recognised by ``camera_model``, ``applied_transform`` or
per-frame ``fl_x``): ``camera_model`` PINHOLE / SIMPLE_PINHOLE / OPENCV / SIMPLE_RADIAL / RADIAL /
OPENCV_FISHEYE. Normalised like nerfstudio's dataparser with ``orientation_method="none"``: the mean
camera position goes to 0 and the largest camera coordinate to 1 (cameras in ``[-1, 1]^3``);
``scene_box = [-1, 1]^3``; ``unbounded=True``. ``train_filenames``/``val_filenames``/
``test_filenames`` define splits when present; ``mask_path`` per frame gives masks.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras, CameraModel, opengl_to_opencv
from omnifield.datasets.io import (
    POINT_FILE_NAMES,
    LoadOptions,
    center_and_scale,
    check_poses,
    check_splits,
    default_splits,
    downscaled_sources,
    find_points,
    image_size,
    make_image_store,
    make_mask_loader,
    number,
    orthonormalize,
    read_json,
    similarity,
    warn_skipped,
)
from omnifield.datasets.scene_data import SceneData
from omnifield.errors import DataError

NS_CAMERA_MODELS = {
    "PINHOLE": CameraModel.PINHOLE,
    "SIMPLE_PINHOLE": CameraModel.PINHOLE,
    "OPENCV": CameraModel.OPENCV,
    "SIMPLE_RADIAL": CameraModel.OPENCV,
    "RADIAL": CameraModel.OPENCV,
    "OPENCV_FISHEYE": CameraModel.OPENCV_FISHEYE,
}
DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3", "k4")
NGP_DEFAULT_SCALE = 0.33
NGP_DEFAULT_OFFSET = (0.5, 0.5, 0.5)


def is_nerfstudio(meta: dict) -> bool:
    """nerfstudio writes ``camera_model`` / ``applied_transform`` or per-frame intrinsics; instant-ngp does not."""
    if "camera_model" in meta or "applied_transform" in meta:
        return True
    frames = meta.get("frames") or []
    return any(isinstance(f, dict) and "fl_x" in f for f in frames)


def _resolve(root: Path, file_path, json_path: Path, k: int) -> Path:
    if not isinstance(file_path, str) or not file_path:
        raise DataError(f"frame {k} has no valid file_path ({file_path!r})", json_path)
    p = Path(file_path)
    p = p if p.is_absolute() else root / p
    if not p.is_file() and p.suffix == "" and p.with_name(p.name + ".png").is_file():
        p = p.with_name(p.name + ".png")
    return p


def _intrinsics(meta: dict, fr: dict, path: Path, json_path: Path, k: int, nerfstudio: bool):
    """(fx, fy, cx, cy, w, h, distortion[6], model) of one frame (frame keys override top-level ones)."""

    def get(key):
        v = fr.get(key, meta.get(key))
        return None if v is None else number(v, f"frame {k} {key}", json_path)

    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h = image_size(path)
    if w <= 0 or h <= 0:
        raise DataError(f"frame {k}: image size must be positive, got {w}x{h}", json_path)
    fx, fy = get("fl_x"), get("fl_y")
    ax, ay = get("camera_angle_x"), get("camera_angle_y")
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    if fx is None and fy is None:
        raise DataError(f"frame {k}: no focal length (fl_x/fl_y or camera_angle_x/y)", json_path)
    fx = fy if fx is None else fx
    fy = fx if fy is None else fy
    if fx <= 0 or fy <= 0:
        raise DataError(f"frame {k}: focal length must be positive, got {fx}, {fy}", json_path)
    cx, cy = get("cx"), get("cy")
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    dist = [get(key) or 0.0 for key in DISTORTION_KEYS]
    if nerfstudio:
        name = str(fr.get("camera_model", meta.get("camera_model", "OPENCV"))).upper()
        if name not in NS_CAMERA_MODELS:
            raise DataError(f"unsupported camera_model {name!r} (supported: {', '.join(NS_CAMERA_MODELS)})", json_path)
        model = NS_CAMERA_MODELS[name]
    elif bool(fr.get("is_fisheye", meta.get("is_fisheye", False))):
        model = CameraModel.OPENCV_FISHEYE
    else:
        model = CameraModel.OPENCV if any(dist) else CameraModel.PINHOLE
    if model == CameraModel.PINHOLE:
        dist = [0.0] * 6
    return fx, fy, cx, cy, int(round(w)), int(round(h)), dist, int(model)


def _read_frames(meta: dict, root: Path, json_path: Path, nerfstudio: bool):
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError("missing or empty 'frames' list", json_path)
    kept, skipped, paths, poses, intr = [], [], [], [], []
    for k, fr in enumerate(frames):
        if not isinstance(fr, dict) or "transform_matrix" not in fr:
            raise DataError(f"frame {k} has no transform_matrix", json_path)
        p = _resolve(root, fr.get("file_path"), json_path, k)
        if not p.is_file():
            skipped.append(str(fr["file_path"]))
            continue
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"frame {k}: transform_matrix is not numeric", json_path) from None
        if m.shape not in ((4, 4), (3, 4)):
            raise DataError(f"frame {k}: transform_matrix must be 4x4, got {m.shape}", json_path)
        kept.append(fr)
        paths.append(p)
        poses.append(np.vstack([m[:3], [0, 0, 0, 1]]))
        intr.append(_intrinsics(meta, fr, p, json_path, k, nerfstudio))
    warn_skipped(json_path, skipped, len(frames))
    if not kept:
        raise DataError(f"none of the {len(frames)} frames has an existing image", json_path)
    poses = np.stack(poses)
    check_poses(poses, json_path, [str(f["file_path"]) for f in kept])
    return kept, paths, orthonormalize(poses), intr, skipped


def _splits_from_filenames(meta: dict, kept: list[dict], root: Path, json_path: Path, every: int):
    keys = [f"{s}_filenames" for s in ("train", "val", "test")]
    if not any(k in meta for k in keys):
        return default_splits(len(kept), every)
    index = {Path(f["file_path"]).as_posix(): i for i, f in enumerate(kept)}
    splits = {}
    for s in ("train", "val", "test"):
        names = meta.get(f"{s}_filenames")
        if names is None:
            continue
        if not isinstance(names, list):
            raise DataError(f"{s}_filenames must be a list", json_path)
        splits[s] = [index[Path(n).as_posix()] for n in names if Path(n).as_posix() in index]
    splits.setdefault("val", splits.get("test", []))
    splits.setdefault("test", splits.get("val", []))
    return splits


def load_transforms_json(
    path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8, format: str | None = None
) -> SceneData:
    """Load an instant-ngp or nerfstudio ``transforms.json`` (file or its folder) into a :class:`SceneData`.

    ``format`` forces "ngp" or "nerfstudio"; by default :func:`is_nerfstudio` decides.
    """
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    json_path = Path(path)
    if json_path.is_dir():
        json_path = json_path / "transforms.json"
    root = json_path.parent
    meta = read_json(json_path)
    if format not in (None, "ngp", "nerfstudio"):
        raise ValueError(f"format must be 'ngp' or 'nerfstudio', got {format!r}")
    nerfstudio = is_nerfstudio(meta) if format is None else format == "nerfstudio"
    kept, paths, poses, intr, skipped = _read_frames(meta, root, json_path, nerfstudio)
    fx, fy, cx, cy, w, h, dist, model = (list(x) for x in zip(*intr))
    c2w = opengl_to_opencv(torch.tensor(poses, dtype=torch.float32))
    cams = Cameras.create(c2w, fx, fy, cx, cy, w, h, distortion=torch.tensor(dist), model=torch.tensor(model))
    metadata = {"downscale": opts.downscale, "skipped_frames": skipped, "json": json_path.name}
    if nerfstudio:
        scale, t = center_and_scale(poses[:, :3, 3], mode="box")
        world = similarity(scale, t)
        box = torch.tensor([[-1.0] * 3, [1.0] * 3])
        unbounded = True
        metadata["camera_model"] = meta.get("camera_model")
        if "applied_transform" in meta:
            metadata["applied_transform"] = meta["applied_transform"]
    else:
        scale = number(meta.get("scale", NGP_DEFAULT_SCALE), "scale", json_path)
        offset = np.asarray(meta.get("offset", NGP_DEFAULT_OFFSET), dtype=np.float64).reshape(-1)
        aabb = number(meta.get("aabb_scale", 1), "aabb_scale", json_path)
        if scale <= 0 or offset.shape != (3,) or not np.all(np.isfinite(offset)) or aabb <= 0:
            raise DataError(f"invalid scale {scale}, offset {offset.tolist()} or aabb_scale {aabb}", json_path)
        world = similarity(scale, offset - 0.5)
        half = max(aabb, 1.0) / 2
        box = torch.tensor([[-half] * 3, [half] * 3])
        unbounded = False
        metadata.update(aabb_scale=aabb, scale=scale, offset=offset.tolist())
    full = cams.transformed(world)
    sources, cams = downscaled_sources(paths, full, opts.downscale)
    splits = _splits_from_filenames(meta, kept, root, json_path, opts.holdout_every)
    check_splits(splits, cams, json_path)
    masks = None
    if nerfstudio and all("mask_path" in f for f in kept):
        mask_paths = [_resolve(root, f["mask_path"], json_path, i) for i, f in enumerate(kept)]
        mask_sources, _ = downscaled_sources(mask_paths, full, opts.downscale)
        masks = make_mask_loader([s.path for s in mask_sources], [s.factor for s in mask_sources], cams)
    names = ((str(meta["ply_file_path"]),) if isinstance(meta.get("ply_file_path"), str) else ()) + POINT_FILE_NAMES
    points, point_colors, _ = find_points(root, names, world)  # a static format: point times are not used
    return SceneData(
        root=root,
        format="nerfstudio" if nerfstudio else "ngp",
        cameras=cams,
        images=make_image_store(sources, cams, opts.background),
        splits=splits,
        scene_box=box.float(),
        world_from_dataset=world,
        masks=masks,
        points=points,
        point_colors=point_colors,
        unbounded=unbounded,
        background=opts.background,
        metadata=metadata,
    )

