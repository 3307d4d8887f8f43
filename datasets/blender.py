"""Blender / NeRF-synthetic and D-NeRF: ``transforms_{train,val,test}.json``.

Layout (Mildenhall et al. 2020, NeRF): one JSON per split with ``camera_angle_x`` (horizontal field
of view, radians) and ``frames``, each with ``file_path`` (usually without extension: ``.png`` is
added) and a 4x4 camera-to-world ``transform_matrix`` in OpenGL/Blender axes. Images are RGBA,
composited on the chosen background (alpha kept). The world is the dataset's own (identity), the
object lies in ``[-1.5, 1.5]^3``, rays run from near 2 to far 6.

D-NeRF (Pumarola et al. 2021) is the same layout with a per-frame ``time``: cameras carry times
normalised to [0, 1] and ``time_range`` the original ones.

Splits come from the files present; a missing val split reuses test (and vice versa); with only
``transforms_train.json`` every ``holdout_every``-th frame is held out as test and val.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras, CameraModel, opengl_to_opencv
from omnifield.datasets.io import (
    LoadOptions,
    check_poses,
    check_splits,
    default_splits,
    downscaled_sources,
    find_points,
    image_size,
    make_image_store,
    number,
    orthonormalize,
    read_json,
)
from omnifield.datasets.scene_data import SPLITS, SceneData
from omnifield.errors import DataError

SCENE_BOX = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
NEAR, FAR = 2.0, 6.0


def split_files(root: Path) -> dict[str, Path]:
    """``{split: transforms_<split>.json}`` for the split files present in ``root``."""
    return {s: root / f"transforms_{s}.json" for s in SPLITS if (root / f"transforms_{s}.json").is_file()}


def is_dnerf(root: Path) -> bool:
    """True when the Blender-layout JSON has per-frame ``time`` (D-NeRF)."""
    files = split_files(Path(root))
    if "train" not in files:
        return False
    frames = read_json(files["train"]).get("frames") or []
    return bool(frames) and isinstance(frames[0], dict) and "time" in frames[0]


def frame_image_path(root: Path, file_path, json_path: Path) -> Path:
    """Resolve a frame's ``file_path`` relative to the JSON's folder, adding ``.png`` when it has no extension."""
    if not isinstance(file_path, str) or not file_path:
        raise DataError(f"frame has no valid file_path ({file_path!r})", json_path)
    p = Path(file_path)
    p = p if p.is_absolute() else root / p
    if p.suffix == "" or (not p.is_file() and p.with_name(p.name + ".png").is_file()):
        p = p.with_name(p.name + ".png")
    return p


def _read_split(root: Path, json_path: Path, dynamic: bool):
    meta = read_json(json_path)
    frames = meta.get("frames")
    if not isinstance(frames, list):
        raise DataError("missing 'frames' list", json_path)
    if not frames:
        raise DataError("split has no frames", json_path)
    if "camera_angle_x" not in meta:
        raise DataError("missing 'camera_angle_x'", json_path)
    fov = number(meta["camera_angle_x"], "camera_angle_x", json_path)
    if not 0 < fov < math.pi:
        raise DataError(f"camera_angle_x must be in (0, pi), got {fov}", json_path)
    paths, poses, times = [], [], []
    for k, fr in enumerate(frames):
        if not isinstance(fr, dict) or "transform_matrix" not in fr:
            raise DataError(f"frame {k} has no transform_matrix", json_path)
        paths.append(frame_image_path(root, fr.get("file_path"), json_path))
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"frame {k}: transform_matrix is not numeric", json_path) from None
        if m.shape not in ((4, 4), (3, 4)):
            raise DataError(f"frame {k}: transform_matrix must be 4x4, got {m.shape}", json_path)
        poses.append(np.vstack([m[:3], [0, 0, 0, 1]]))
        if dynamic:
            if "time" not in fr:
                raise DataError(f"frame {k} ({fr.get('file_path')}) has no 'time'", json_path)
            times.append(number(fr["time"], f"frame {k} time", json_path))
    poses = np.stack(poses)
    check_poses(poses, json_path, [str(p.name) for p in paths])
    width, height = image_size(paths[0])
    focal = 0.5 * width / math.tan(0.5 * fov)
    return paths, orthonormalize(poses), times, (width, height, focal)


def _normalised_times(t: np.ndarray, time_range: tuple[float, float]) -> torch.Tensor:
    """Time stamps ``t`` mapped so ``time_range`` becomes [0, 1] (all 0 for a single time), float32."""
    t0, t1 = time_range
    return torch.tensor((t - t0) / (t1 - t0) if t1 > t0 else np.zeros_like(t), dtype=torch.float32)


def load_blender(path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8) -> SceneData:
    """Load a Blender / NeRF-synthetic (or D-NeRF) folder into a :class:`SceneData`.

    ``format`` is "dnerf" when frames carry ``time``, else "blender". Raises DataError naming the
    file for missing/malformed JSON, bad poses, missing first images and empty splits.
    """
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    root = Path(path)
    if root.is_file():
        root = root.parent
    files = split_files(root)
    if "train" not in files:
        raise DataError("no transforms_train.json", root)
    dynamic = is_dnerf(root)
    all_paths, all_poses, all_times, fx, widths, heights = [], [], [], [], [], []
    splits: dict[str, list[int]] = {}
    for split, json_path in files.items():
        paths, poses, times, (w, h, f) = _read_split(root, json_path, dynamic)
        splits[split] = list(range(len(all_paths), len(all_paths) + len(paths)))
        all_paths += paths
        all_poses.append(poses)
        all_times += times
        fx += [f] * len(paths)
        widths += [w] * len(paths)
        heights += [h] * len(paths)
    if set(splits) == {"train"}:
        splits = default_splits(len(all_paths), opts.holdout_every)
    else:
        splits.setdefault("val", splits.get("test", []))
        splits.setdefault("test", splits.get("val", []))
    c2w = opengl_to_opencv(torch.tensor(np.concatenate(all_poses), dtype=torch.float32))
    w_t, h_t = torch.tensor(widths), torch.tensor(heights)
    times_t, time_range = None, None
    if dynamic:
        t = np.asarray(all_times, dtype=np.float64)
        time_range = (float(t.min()), float(t.max()))
        times_t = _normalised_times(t, time_range)
    cams = Cameras.create(c2w, fx, fx, w_t / 2, h_t / 2, w_t, h_t, model=CameraModel.PINHOLE, times=times_t)
    sources, cams = downscaled_sources(all_paths, cams, opts.downscale)
    check_splits(splits, cams, files["train"])
    points, point_colors, point_times = find_points(root)
    point_times = None if point_times is None or time_range is None else _normalised_times(point_times, time_range)
    return SceneData(
        root=root,
        format="dnerf" if dynamic else "blender",
        cameras=cams,
        images=make_image_store(sources, cams, opts.background),
        splits=splits,
        scene_box=torch.tensor(SCENE_BOX, dtype=torch.float32),
        world_from_dataset=torch.eye(4),
        near=NEAR,
        far=FAR,
        time_range=time_range,
        points=points,
        point_colors=point_colors,
        point_times=point_times,
        unbounded=False,
        background=opts.background,
        metadata={
            "downscale": opts.downscale,
            "skipped_frames": [],
            "split_files": sorted(p.name for p in files.values()),
        },
    )
