"""Viewer benchmark: render time per resolution level of a trained instant-ngp run, and the viewer's own
per-frame cost (texture upload + UI) at 512x512 under Xvfb. Prints tables, writes ``bench/results/viewer.json``.

1. ``omnifield.datasets.synth.synthesize`` writes the procedural scene (``--synth-size`` pixels,
   ``--views`` training views) and instant-ngp trains ``--steps`` steps on it.
2. :func:`omnifield.viewer.timing.time_levels` renders the default view at the coarse (128) and fine
   (512) levels in the calling thread, as the render thread does (median of ``--repeats``).
3. The window (an Xvfb server is started when no display is set) is driven without rendering the
   scene: ``upload`` = frame -> RGBA float texture -> ``dpg.set_value``; ``ui`` = one UI frame with
   nothing new; ``ui+upload`` = one UI frame that uploads a new 512x512 frame (the viewer's total
   overhead per displayed frame).

Smoke run: ``.venv/bin/python bench/viewer.py --steps 20 --synth-size 48 --views 8 --repeats 1 --ui-frames 20``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_run(work: Path, args) -> Path:
    """Synthesise the scene and train instant-ngp on it; returns the run directory."""
    from omnifield.datasets.synth import SynthConfig, synthesize
    from omnifield.scenes.trainer import train_method

    data = work / "synth"
    if not (data / "transforms_train.json").is_file():
        synthesize(data, SynthConfig(n_train=args.views, n_test=2, width=args.synth_size, height=args.synth_size),
                   overwrite=True)
    run = work / "run"
    if run.exists():
        shutil.rmtree(run)  # the benchmark's own previous run
    train_method("instant-ngp", data, out=run, device=args.device,
                 trainer_overrides=dict(max_steps=args.steps, eval_every=0, checkpoint_every=0,
                                        checkpoint_minutes=None, progress=not args.quiet))
    return run


def time_render(run: Path, args) -> dict[int, float]:
    from omnifield.scenes.trainer import pick_device
    from omnifield.viewer.camera import default_view
    from omnifield.viewer.sources import open_source
    from omnifield.viewer.timing import time_levels

    source = open_source(run, device=pick_device(args.device))
    cam = default_view(source.scene_box, source.dataset_cameras)
    return time_levels(source, cam, levels=(128, 512), repeats=args.repeats)


def start_xvfb():
    """An Xvfb server on a free display when no display is set; returns the process (or None)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if shutil.which("Xvfb") is None:
        raise SystemExit("bench/viewer.py: no display and no Xvfb (apt-get install xvfb)")
    n = next(n for n in range(99, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists()
             and not Path(f"/tmp/.X{n}-lock").exists())
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench/viewer.py: Xvfb :{n} did not start")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{n}"
    return proc


def time_ui(run: Path, args) -> dict[str, float]:
    """Median ms per UI frame of the window at 512x512 (no scene rendering is timed)."""
    import numpy as np

    from omnifield.scenes.trainer import pick_device
    from omnifield.viewer.app import Viewer, ViewerConfig, release_display
    from omnifield.viewer.panels import frame_to_texture
    from omnifield.viewer.sources import open_source

    viewer = Viewer(open_source(run, device=pick_device(args.device)),
                    config=ViewerConfig(width=512, height=512, vsync=False))
    try:
        if not viewer.wait_idle(600):
            raise SystemExit("bench/viewer.py: the view did not finish rendering")
        image = viewer.frame.image
        dpg = viewer.dpg

        def median_ms(fn) -> float:
            times = []
            for _ in range(args.ui_frames):
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
            return statistics.median(times)

        def upload():
            dpg.set_value(viewer._texture, frame_to_texture(image, 512, 512))

        def ui_upload():
            viewer.frame = None  # the latest worker frame counts as new: uploaded this UI frame
            viewer.step_ui()

        return {"upload": median_ms(upload), "ui": median_ms(viewer.step_ui), "ui+upload": median_ms(ui_upload),
                "frame_shape": list(np.shape(image))}
    finally:
        viewer.close()
        release_display()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="instant-ngp training steps")
    p.add_argument("--synth-size", type=int, default=100, help="synthetic image size in pixels")
    p.add_argument("--views", type=int, default=40, help="synthetic training views")
    p.add_argument("--repeats", type=int, default=3, help="renders per level (median)")
    p.add_argument("--ui-frames", type=int, default=100, help="UI frames per measurement (median)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", help="work folder (default: a temporary folder)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "viewer.json"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="omnifield-bench-viewer-"))
    t0 = time.perf_counter()
    run = train_run(work, args)
    train_s = time.perf_counter() - t0
    levels = time_render(run, args)
    xvfb = start_xvfb()
    try:
        ui = time_ui(run, args)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)

    console = Console()
    table = Table("level", "render ms", "frames/s", title=f"instant-ngp, {args.steps} steps ({train_s:.0f} s training)")
    for level, ms in levels.items():
        table.add_row(f"{level}x{level}", f"{ms:.1f}", f"{1000 / ms:.1f}")
    console.print(table)
    table = Table("512x512 viewer overhead", "ms / frame", title="UI thread (Xvfb, llvmpipe)")
    for key in ("upload", "ui", "ui+upload"):
        table.add_row(key, f"{ui[key]:.2f}")
    console.print(table)

    result = {"steps": args.steps, "synth_size": args.synth_size, "views": args.views, "train_seconds": train_s,
              "render_ms": {str(k): v for k, v in levels.items()}, "ui_ms": ui,
              "device": args.device, "machine": platform.machine(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
