"""``load_scene``: detect a dataset's format and parse it into a :class:`SceneData`.

Detection (a folder, or one of the files named below):

| found | format |
|---|---|
| ``transforms_train.json`` (frames with ``time``: D-NeRF) | ``blender`` / ``dnerf`` |
| ``transforms.json`` (nerfstudio if ``camera_model``, ``applied_transform`` or frame ``fl_x``) | ``ngp`` / ``nerfstudio`` |
| ``poses_bounds.npy`` and ``cam*.mp4`` videos (N3V multi-view video) | ``n3v`` |
| ``poses_bounds.npy`` | ``llff`` |
| ``cameras.npz`` / ``cameras_sphere.npz`` | ``dtu`` |
| ``cameras`` + ``images`` ``.bin``/``.txt`` in ``sparse/0``, ``sparse`` or the folder | ``colmap`` |

The first row that matches wins (LLFF before COLMAP: LLFF folders often carry a partial
``sparse/0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omnifield.errors import ConfigError, DataError

if TYPE_CHECKING:
    from omnifield.datasets.scene_data import SceneData

FORMATS = ("blender", "dnerf", "ngp", "nerfstudio", "colmap", "llff", "n3v", "dtu")


def detect_format(path) -> str:
    """The format name of a dataset folder or file (see the module table); DataError when none matches."""
    from omnifield.datasets import blender, colmap, dtu, n3v, transforms_json
    from omnifield.datasets.io import read_json

    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", p)
    if p.is_file():
        name = p.name
        if name.startswith("transforms_") and name.endswith(".json"):
            p = p.parent
        elif name.endswith(".json"):
            return "nerfstudio" if transforms_json.is_nerfstudio(read_json(p)) else "ngp"
        elif name == "poses_bounds.npy":
            return "n3v" if n3v.is_n3v(p.parent) else "llff"
        elif name in dtu.CAMERA_FILES:
            return "dtu"
        else:
            raise DataError("not a recognised dataset file (transforms*.json, poses_bounds.npy, cameras.npz)", p)
    if (p / "transforms_train.json").is_file():
        return "dnerf" if blender.is_dnerf(p) else "blender"
    if (p / "transforms.json").is_file():
        return "nerfstudio" if transforms_json.is_nerfstudio(read_json(p / "transforms.json")) else "ngp"
    if (p / "poses_bounds.npy").is_file():
        return "n3v" if n3v.is_n3v(p) else "llff"
    if dtu.find_camera_file(p) is not None:
        return "dtu"
    if colmap.find_model_dir(p) is not None:
        return "colmap"
    raise DataError(
        "no recognisable dataset: expected transforms_train.json, transforms.json, poses_bounds.npy, "
        "cameras.npz or a COLMAP model (sparse/0/cameras.bin ...)",
        p,
    )


def load_scene(
    path,
    *,
    downscale: int = 1,
    background=(1.0, 1.0, 1.0),
    holdout_every: int = 8,
    format: str | None = None,
    max_frames: int | None = None,
    frame_stride: int = 1,
) -> SceneData:
    """Load any supported dataset into a :class:`SceneData` (cameras in OpenCV axes, normalised world).

    Args:
        path: dataset folder (or its transforms.json / poses_bounds.npy / cameras.npz).
        downscale: integer image downscale N (``images_N/`` folders used when present).
        background: RGB in [0, 1] that RGBA images are composited on.
        holdout_every: without dataset splits, every n-th frame is test (and val).
        format: force one of :data:`FORMATS` instead of detecting it.
        max_frames, frame_stride: multi-view video (``n3v``) only: every ``frame_stride``-th frame of
            each video, at most ``max_frames`` of them (the first ones); ValueError for other formats.
    """
    from omnifield.datasets import blender, colmap, dtu, llff, n3v, transforms_json

    fmt = detect_format(path) if format is None else format
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    kw = dict(downscale=downscale, background=background, holdout_every=holdout_every)
    if fmt != "n3v" and (max_frames is not None or frame_stride != 1):
        raise ConfigError(f"max_frames and frame_stride apply to multi-view video (n3v), not to {fmt} data", path)
    if fmt in ("blender", "dnerf"):
        data = blender.load_blender(path, **kw)
    elif fmt in ("ngp", "nerfstudio"):
        data = transforms_json.load_transforms_json(path, format=fmt, **kw)
    elif fmt == "colmap":
        data = colmap.load_colmap(path, **kw)
    elif fmt == "llff":
        data = llff.load_llff(path, **kw)
    elif fmt == "n3v":
        data = n3v.load_n3v(path, max_frames=max_frames, frame_stride=frame_stride, **kw)
    else:
        data = dtu.load_dtu(path, **kw)
    return data


def recorded_frame_options(metadata: dict | None) -> dict:
    """The ``max_frames`` / ``frame_stride`` that data was loaded with (from its metadata, as a run
    records it), as keyword arguments of :func:`load_scene`: empty for data other than video."""
    metadata = metadata or {}
    out = {}
    if metadata.get("frame_stride") is not None:
        out["frame_stride"] = int(metadata["frame_stride"])
    if metadata.get("max_frames") is not None:
        out["max_frames"] = int(metadata["max_frames"])
    return out
