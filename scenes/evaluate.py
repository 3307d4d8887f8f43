"""Evaluate a trained run on a split: render every image, PSNR and SSIM per image and on average."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from omnifield.errors import DataError
from omnifield.scenes import runs
from omnifield.scenes.metrics import psnr, ssim


def pick_evenly(indices: list[int], max_images: int | None) -> list[int]:
    """At most ``max_images`` of ``indices``, spread evenly (all of them when None)."""
    indices = list(indices)
    if max_images is None or max_images >= len(indices):
        return indices
    if max_images <= 0:
        return []
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, max_images)).astype(int))
    return [indices[i] for i in picks]


def image_name(data, index: int) -> str:
    """The file stem of image ``index`` (or its number when the store has no paths)."""
    paths = getattr(data.images, "paths", None)
    if paths and index < len(paths):
        return Path(paths[index]).stem
    return f"{index:05d}"


def render_image(scene, data, index: int) -> torch.Tensor:
    """Render camera ``index`` of ``data`` to ``[H, W, 3]`` float in [0, 1], on the data's background."""
    from omnifield.scenes.base import RenderOptions

    cam = data.cameras[[index]].to(scene.scene_box.device)
    time_ = None if cam.times is None else float(cam.times[0])
    out = scene.render(cam, time_, RenderOptions(background=tuple(float(b) for b in data.background)))[0]
    return out.rgb.detach().float().clamp(0.0, 1.0).cpu()


def score_images(scene, data, indices: list[int], out_dir: str | Path | None = None,
                 with_ssim: bool = True) -> tuple[list[dict], float]:
    """Render ``indices`` and score them against the ground truth.

    Returns ``(rows, render_seconds)`` with one ``{"index", "name", "psnr", "ssim"}`` per image;
    saves ``<out_dir>/<index>_<name>.png`` renders when ``out_dir`` is given.
    """
    rows, seconds = [], 0.0
    for i in indices:
        gt = data.images.rgb(i)
        t0 = time.perf_counter()
        pred = render_image(scene, data, i)
        seconds += time.perf_counter() - t0
        if tuple(pred.shape) != tuple(gt.shape):
            raise DataError(f"render of camera {i} is {tuple(pred.shape)} but the image is {tuple(gt.shape)}",
                            getattr(data, "root", None))
        name = image_name(data, i)
        row = {"index": int(i), "name": name, "psnr": psnr(pred, gt)}
        if with_ssim:
            row["ssim"] = ssim(pred, gt)
        rows.append(row)
        if out_dir is not None:
            save_png(Path(out_dir) / f"{i:05d}_{name}.png", pred)
    return rows, seconds


def save_png(path: str | Path, image: torch.Tensor) -> Path:
    """Write ``[H, W, 3]`` float [0, 1] (or uint8) as a PNG, atomically."""
    import imageio.v3 as iio

    arr = image.detach().cpu()
    if arr.dtype != torch.uint8:
        arr = (arr.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    runs.atomic_write_bytes(path, iio.imwrite("<bytes>", arr.numpy(), extension=".png"))
    return Path(path)


def evaluate(run, data, split: str = "test", out_dir: str | Path | None = None, max_images: int | None = None) -> dict:
    """Render ``split`` of ``data`` (already in the run's world, see ``Run.load_data``) and score it.

    Returns ``{"psnr", "ssim" (means), "per_image": [{"index", "name", "psnr", "ssim"}], "split",
    "num_images", "render_seconds", "step", "method"}``. With ``out_dir``, writes the renders as PNG
    and the dict as ``<out_dir>/metrics.json``.
    """
    indices = pick_evenly(data.split(split), max_images)
    scene = run.scene
    scene.eval()
    with torch.no_grad():
        rows, seconds = score_images(scene, data, indices, out_dir)
    finite = [r["psnr"] for r in rows if np.isfinite(r["psnr"])]
    result = {
        "psnr": float(np.mean(finite)) if finite else float("inf"),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "per_image": rows,
        "split": split,
        "num_images": len(rows),
        "render_seconds": seconds,
        "step": int(run.step),
        "method": run.method,
    }
    if out_dir is not None:
        runs.atomic_write_json(Path(out_dir) / "metrics.json", result)
    return result
