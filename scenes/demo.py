"""``omnifield demo``: synthesize the default scene, train, evaluate, render, export, and measure geometry.

One call runs the whole pipeline on the embedded procedural scene (no download):

1. :func:`omnifield.datasets.synth.synthesize` into ``OUT/data`` (skipped when already there),
2. train ``instant-ngp`` (by default) with the Trainer for ``train_minutes`` into ``OUT/run``,
3. evaluate PSNR / SSIM on the test split,
4. render an orbit video, export a mesh and a point cloud (dataset coordinates),
5. Chamfer distance between the mesh and the ground truth,

then prints a table and writes ``OUT/run/summary.json``. Every budget is an explicit option of
:class:`DemoOptions` so the whole demo can be fitted to a machine (the target on a 2-core CPU:
<= 4 minutes wall, >= 26 dB PSNR, Chamfer <= 1 % of the scene diagonal).

Chamfer reference: ``mesh_gt_visible.ply`` (the ground-truth faces seen by at least one training
view; unseen faces such as the underside of the base cannot be reconstructed), normalised by the
bounding-box diagonal of the whole ground truth ``mesh_gt.ply``. The Chamfer distance to the whole
ground truth is reported too (``chamfer_full``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from omnifield.errors import ConfigError


@dataclass(frozen=True)
class DemoOptions:
    """Budgets and sizes of the demo's steps (all explicit, to be fitted to the machine)."""

    method: str = "instant-ngp"
    """Registered method to train."""
    max_steps: int = 5000
    """Steps the learning-rate schedule is built for; set it near what ``train_minutes`` allows
    (training stops at whichever comes first)."""
    scene_overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the method's config (as ``omnifield train --set``)."""
    trainer_overrides: dict = field(default_factory=dict)
    """Further TrainerConfig fields (e.g. ``{"num_threads": 2}``)."""
    downscale: int = 1
    """Training image downscale."""
    eval_max_images: int | None = None
    """Test images scored (None: the whole test split)."""
    video_frames: int = 60
    """Frames of the orbit video."""
    video_downscale: float = 2.0
    """Resolution divisor of the video frames."""
    fps: float = 30.0
    mesh_resolution: int = 192
    """Marching-cubes samples along the longest side of the scene box."""
    mesh_threshold: float | str | None = None
    """Density level (None: the scene's ``mesh_threshold`` or 10; "auto": from the density distribution)."""
    min_component_fraction: float = 0.01
    """Mesh components with fewer faces than this fraction are dropped as floaters."""
    cull_unseen: bool = True
    """Drop mesh faces no training camera sees (the ground truth is compared on its visible faces too)."""
    pointcloud_views: int = 10
    """Training views rendered for the point cloud."""
    pointcloud_downscale: float = 2.0
    """Resolution divisor of those renders (relative to the original images)."""
    max_points: int = 200_000
    chamfer_points: int = 100_000
    """Points sampled on each surface for the Chamfer distance."""
    device: str = "auto"
    progress: bool = True
    retrain: bool = True
    """Replace a run already in ``OUT/run`` (False: reuse it and skip training)."""


def _synth_ready(path: Path) -> bool:
    return (path / "transforms_train.json").is_file() and (path / "mesh_gt.ply").is_file()


def run_demo(out_dir="demo", *, train_minutes: float = 2.0, options: DemoOptions = DemoOptions(),
             synth_config=None) -> dict:
    """Run the demo pipeline into ``out_dir`` and return the summary (also written to ``run/summary.json``).

    ``synth_config``: a :class:`~omnifield.datasets.synth.SynthConfig` (default: the standard scene:
    100 train / 20 test views at 200x200). Returns a dict with at least ``psnr``, ``ssim``,
    ``train_seconds``, ``chamfer``, ``chamfer_ratio``, ``total_seconds``, ``video``, ``mesh``,
    ``pointcloud`` and per-step ``timings``.
    """
    from omnifield.datasets.synth import SynthConfig, load_synth_ground_truth, synthesize
    from omnifield.scenes import runs
    from omnifield.scenes.evaluate import evaluate
    from omnifield.scenes.export import export_mesh, export_pointcloud
    from omnifield.scenes.geometry import chamfer_distance, load_mesh
    from omnifield.scenes.trainer import train_method
    from omnifield.scenes.video import render_path

    if not train_minutes > 0:
        raise ConfigError(f"train_minutes must be > 0, got {train_minutes}")
    start = time.perf_counter()
    out = Path(out_dir)
    data_dir, run_dir = out / "data", out / "run"
    timings: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        return result

    if not _synth_ready(data_dir):
        timed("synthesize", lambda: synthesize(data_dir, synth_config or SynthConfig(), overwrite=True,
                                               progress=options.progress))
    train_seconds = None
    if (run_dir / runs.CONFIG_FILE).exists() and not options.retrain:
        timings["train"] = 0.0
    else:
        if run_dir.exists():
            if not (run_dir / runs.CONFIG_FILE).exists() and any(run_dir.iterdir()):
                raise ConfigError("exists and is not a run directory; remove it or choose another demo folder", run_dir)
            shutil.rmtree(run_dir)  # the demo's own previous run
        trainer = {"max_minutes": float(train_minutes), "max_steps": options.max_steps, "eval_every": 0,
                   "checkpoint_every": 0, "checkpoint_minutes": None, "progress": options.progress,
                   **options.trainer_overrides}
        result = timed("train", lambda: train_method(options.method, data_dir, out=run_dir, downscale=options.downscale,
                                                     scene_overrides=list(options.scene_overrides),
                                                     trainer_overrides=trainer, device=options.device))
        train_seconds = float(result.elapsed_seconds)
    run = runs.load_run(run_dir, device=_device(options.device))
    if train_seconds is None:
        train_seconds = float(runs.load_trainer_state(run_dir).trainer.get("elapsed_seconds", 0.0))

    data = run.load_data(split="test")
    ev = timed("evaluate", lambda: evaluate(run, data, "test", out_dir=run_dir / "renders" / "test",
                                            max_images=options.eval_max_images))
    video = timed("video", lambda: render_path(run, "orbit", out=run_dir / "renders" / "orbit.mp4",
                                               num_frames=options.video_frames, downscale=options.video_downscale,
                                               fps=options.fps, progress=options.progress))
    mesh = timed("mesh", lambda: export_mesh(run, run_dir / "mesh.ply", resolution=options.mesh_resolution,
                                             threshold=options.mesh_threshold,
                                             min_component_fraction=options.min_component_fraction,
                                             cull_unseen=options.cull_unseen))
    cloud = timed("pointcloud", lambda: export_pointcloud(run, run_dir / "points.ply", max_points=options.max_points,
                                                          downscale=options.pointcloud_downscale,
                                                          max_views=options.pointcloud_views))

    def geometry():
        pv, pf = load_mesh(mesh)
        full_v, full_f = load_synth_ground_truth(data_dir)
        vis_v, vis_f = load_synth_ground_truth(data_dir, visible_only=True)
        diag = float(np.linalg.norm(full_v.max(0) - full_v.min(0)))
        vis = chamfer_distance(pv, pf, vis_v, vis_f, num_points=options.chamfer_points, reference_diagonal=diag)
        full = chamfer_distance(pv, pf, full_v, full_f, num_points=options.chamfer_points)
        return vis, full

    vis, full = timed("chamfer", geometry)
    summary = {
        "method": run.method,
        "step": int(run.step),
        "psnr": float(ev["psnr"]),
        "ssim": float(ev["ssim"]),
        "test_images": int(ev["num_images"]),
        "train_seconds": train_seconds,
        "chamfer": vis.chamfer,
        "chamfer_ratio": vis.ratio,
        "chamfer_accuracy": vis.pred_to_ref,
        "chamfer_completeness": vis.ref_to_pred,
        "chamfer_full": full.chamfer,
        "chamfer_full_ratio": full.ratio,
        "gt_diagonal": vis.diagonal,
        "chamfer_reference": "mesh_gt_visible.ply",
        "video": str(video),
        "mesh": str(mesh),
        "pointcloud": str(cloud),
        "data": str(data_dir),
        "run": str(run_dir),
        "timings": timings,
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "train_minutes": float(train_minutes),
    }
    summary["total_seconds"] = time.perf_counter() - start
    runs.atomic_write_json(run_dir / "summary.json", summary)
    print_summary(summary)
    return summary


def _device(device: str):
    from omnifield.scenes.trainer import pick_device

    return pick_device(device)


def print_summary(summary: dict) -> None:
    """Print the demo's results and timings as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"omnifield demo ({summary['method']}, {summary['step']} steps)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("PSNR (test)", f"{summary['psnr']:.2f} dB")
    table.add_row("SSIM (test)", f"{summary['ssim']:.4f}")
    table.add_row("Chamfer (visible GT)", f"{summary['chamfer']:.4f} ({100 * summary['chamfer_ratio']:.2f}% of diagonal)")
    table.add_row("Chamfer (whole GT)", f"{summary['chamfer_full']:.4f} ({100 * summary['chamfer_full_ratio']:.2f}%)")
    for name, seconds in summary["timings"].items():
        table.add_row(f"time: {name}", f"{seconds:.1f} s")
    table.add_row("time: total", f"{summary['total_seconds']:.1f} s")
    for key in ("video", "mesh", "pointcloud"):
        table.add_row(key, summary[key])
    Console().print(table)


__all__ = ["DemoOptions", "run_demo", "print_summary"]
