"""``describe``/``format_info``: what a loaded dataset holds, as a dict and as text (``omnifield data info``)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omnifield.datasets.scene_data import SceneData


def describe(data: SceneData) -> dict:
    """A JSON-friendly summary: format, cameras, resolutions, models, splits, box, bounds, time, points, skips."""
    from omnifield.datasets.cameras import CameraModel

    cams = data.cameras
    sizes = Counter(zip(cams.width.tolist(), cams.height.tolist()))
    models = Counter(CameraModel(m).name for m in cams.model.tolist())
    skipped = list(data.metadata.get("skipped_frames", []))
    extra = {k: v for k, v in data.metadata.items() if k not in ("skipped_frames", "downscale")}
    return {
        "root": str(data.root),
        "format": data.format,
        "num_cameras": len(cams),
        "resolutions": {f"{w}x{h}": n for (w, h), n in sorted(sizes.items())},
        "camera_models": dict(sorted(models.items())),
        "splits": {name: len(idx) for name, idx in data.splits.items()},
        "scene_box": [[round(float(x), 4) for x in row] for row in data.scene_box.tolist()],
        "near": data.near,
        "far": data.far,
        "unbounded": data.unbounded,
        "time_range": None if data.time_range is None else list(data.time_range),
        "num_points": 0 if data.points is None else int(data.points.shape[0]),
        "points_have_times": getattr(data, "point_times", None) is not None,
        "world_scale": round(data.world_scale, 6),
        "downscale": data.metadata.get("downscale", 1),
        "skipped_frames": skipped,
        "has_masks": data.masks is not None,
        "metadata": extra,
    }


def format_info(info: dict) -> str:
    """Human-readable lines for a :func:`describe` dict."""

    def fmt_counts(d: dict) -> str:
        return ", ".join(f"{k} ({v})" for k, v in d.items())

    box = info["scene_box"]
    lines = [
        f"format:        {info['format']}  ({info['root']})",
        f"cameras:       {info['num_cameras']}",
        f"resolutions:   {fmt_counts(info['resolutions'])}  (downscale {info['downscale']})",
        f"camera models: {fmt_counts(info['camera_models'])}",
        "splits:        " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()),
        f"scene box:     min {box[0]}  max {box[1]}" + ("  (unbounded)" if info["unbounded"] else ""),
        f"near / far:    {_num(info['near'])} / {_num(info['far'])}",
    ]
    if info["time_range"] is not None:
        lines.append(f"time range:    {info['time_range'][0]:g} .. {info['time_range'][1]:g}")
    lines.append(f"points:        {info['num_points']}" + (" (each with a time)" if info.get("points_have_times") else ""))
    lines.append(f"world scale:   {info['world_scale']:g} (world units per dataset unit)")
    if info["has_masks"]:
        lines.append("masks:         yes")
    if info["skipped_frames"]:
        names = info["skipped_frames"]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        lines.append(f"skipped:       {len(names)} frames without image ({shown})")
    for k, v in info["metadata"].items():
        lines.append(f"{k + ':':<14} {v}")
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"
