"""Viewer benchmark: render time per resolution level of a trained instant-ngp run, and the viewer's own
per-frame cost on the UI thread at 512x512 under Xvfb. Prints tables, writes ``bench/results/viewer.json``.

1. ``omnifield.datasets.synth.synthesize`` writes the procedural scene (``--synth-size`` pixels,
   ``--views`` training views) and instant-ngp trains ``--steps`` steps on it.
2. :func:`omnifield.viewer.timing.time_levels` renders the default view at the coarse (128) and fine
   (512) levels in the calling thread, as the render thread does (median of ``--repeats``).
3. The window (an Xvfb server is started when no display is set) is driven by ``Viewer.step_ui``.
   Each UI frame is split into ``dearpygui`` (``render_dearpygui_frame``: dearpygui drawing the
   window, texture uploads to OpenGL included) and ``ours`` (everything else step_ui runs: input,
   playback, handing a new frame to dearpygui, the frusta overlay, readouts, callbacks). Cases:
   ``idle`` (nothing new), ``new frame`` (the 512x512 frame is new: handed over this UI frame),
   ``orbit`` (the camera moves every UI frame: a new request for the render thread and the frusta of
   the ``--views`` dataset cameras redrawn; the render thread works meanwhile). Every case is also
   timed with the previous texture path, overlay and window (``--no-compare`` skips that), interleaved
   in the same run: one raw texture that dearpygui re-uploads in every UI frame, a new float32 array
   per new frame, 8 line items per frustum, a window background drawn over the whole viewport; the
   ratio is now / before. ``dearpygui CPU`` is the process's
   CPU time during ``render_dearpygui_frame`` (llvmpipe's threads included), which other processes on
   a shared machine disturb less than wall time (while orbiting it also counts the render thread).
   ``convert`` is the uint8 -> float32 RGBA conversion the render thread now does per frame (before:
   on the UI thread).

Re-time the window on an existing run (no training): ``.venv/bin/python bench/viewer.py --run RUN_DIR
--repeats 1 --ui-frames 40``. Runs of a few steps render slowly (their occupancy grid is still full).
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


class previous_ui:
    """Within this block the viewer shows frames and draws frusta as before this change: one raw 512x512
    texture (dearpygui re-uploads raw textures in every UI frame), fed a newly allocated float32 RGBA array
    (nearest-neighbour upscaled to the view) per new frame, 8 line items per frustum, and the window
    drawing its own background (see ``omnifield.viewer.panels.WINDOW_COLOR``)."""

    def __init__(self, viewer):
        self.viewer = viewer

    def __enter__(self):
        import numpy as np

        from omnifield.viewer import camera as vc
        from omnifield.viewer import panels

        v, dpg = self.viewer, self.viewer.dpg
        w, h = v.size
        self.raw = dpg.add_raw_texture(w, h, np.zeros(w * h * 4, np.float32), format=dpg.mvFormat_Float_rgba,
                                       parent=v._registry)
        dpg.configure_item(v.ui.image, texture_tag=self.raw)
        dpg.configure_item(v.ui.window, no_background=False)

        def show_frame(viewer, frame):
            img = frame.image
            if img.shape[:2] != (h, w):
                img = img[(np.arange(h) * img.shape[0] // h)][:, (np.arange(w) * img.shape[1] // w)]
            out = np.ones((h, w, 4), np.float32)
            out[..., :3] = img[..., :3] * np.float32(1 / 255)
            dpg.set_value(self.raw, out.reshape(-1))

        def draw_cameras(viewer, points, w, h):
            per_cam = [panels.FRUSTUM_COLOR] * 4 + [panels.FRUSTUM_TOP_COLOR] + [panels.FRUSTUM_COLOR] * 3
            panels._draw_segments(viewer.ui.overlay, viewer.camera, w, h, vc.frustum_segments(points), per_cam * len(points))

        self.saved = panels.show_frame, panels._draw_cameras
        panels.show_frame, panels._draw_cameras = show_frame, draw_cameras
        return self

    def __exit__(self, *exc):
        from omnifield.viewer import panels

        panels.show_frame, panels._draw_cameras = self.saved
        v = self.viewer
        v.dpg.configure_item(v.ui.image, texture_tag=v._texture)
        v.dpg.configure_item(v.ui.window, no_background=True)
        v.dpg.delete_item(self.raw)


def time_ui(run: Path, args) -> dict:
    """Median ms per UI frame of the window at 512x512, split into ours / dearpygui (no scene rendering is timed)."""
    import numpy as np

    from omnifield.scenes.trainer import pick_device
    from omnifield.viewer.app import Viewer, ViewerConfig, release_display
    from omnifield.viewer.sources import open_source
    from omnifield.viewer.worker import frame_to_texture

    viewer = Viewer(open_source(run, device=pick_device(args.device)),
                    config=ViewerConfig(width=512, height=512, vsync=False))
    dpg = viewer.dpg
    render_frame = dpg.render_dearpygui_frame
    spent: list[tuple[float, float]] = []  # (wall, process CPU) seconds of render_dearpygui_frame

    def timed_render_frame():
        t0, c0 = time.perf_counter(), time.process_time()
        render_frame()
        spent.append((time.perf_counter() - t0, time.process_time() - c0))

    try:
        if not viewer.wait_idle(600):
            raise SystemExit("bench/viewer.py: the view did not finish rendering")
        final = viewer.frame
        dpg.render_dearpygui_frame = timed_render_frame

        def new_frame():
            viewer.frame = None  # the latest worker frame counts as new: handed over this UI frame
            viewer.step_ui()

        def orbit():
            viewer.orbit(0.002, 0.0)
            viewer.step_ui()

        cases = {"idle": viewer.step_ui, "new frame": new_frame, "orbit": orbit}
        samples = {(case, when): {"ours": [], "dearpygui": [], "dearpygui cpu": []}
                   for case in cases for when in ("now", "before")}
        modes = ("now",) if args.no_compare else ("now", "before")
        rounds = 1 if args.no_compare else 10
        per_block = max(1, args.ui_frames // rounds)
        # Interleaved in short blocks, so that both see the same load of a shared machine. The render
        # thread is idle in the first two cases; orbiting comes last as it keeps it busy.
        for group in (("idle", "new frame"), ("orbit",)):
            for _ in range(rounds):
                for when in modes:
                    with previous_ui(viewer) if when == "before" else _nothing():
                        for case in group:
                            for _ in range(per_block):
                                spent.clear()
                                t0 = time.perf_counter()
                                cases[case]()
                                total = time.perf_counter() - t0
                                wall, cpu = (1000 * sum(x) for x in zip(*spent))
                                samples[case, when]["dearpygui"].append(wall)
                                samples[case, when]["dearpygui cpu"].append(cpu)
                                samples[case, when]["ours"].append(1000 * total - wall)
        out = {f"{case} {when}": {k: statistics.median(v) for k, v in parts.items()}
               for (case, when), parts in samples.items() if parts["ours"]}
        image = final.image
        convert = []
        for _ in range(args.ui_frames):
            t0 = time.perf_counter()
            frame_to_texture(image)
            convert.append(1000 * (time.perf_counter() - t0))
        out["convert"] = statistics.median(convert)
        out["frame_shape"] = list(np.shape(image))
        out["dataset_cameras"] = len(viewer.source.dataset_cameras or [])
        return out
    finally:
        dpg.render_dearpygui_frame = render_frame
        viewer.close()
        release_display()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="instant-ngp training steps")
    p.add_argument("--synth-size", type=int, default=100, help="synthetic image size in pixels")
    p.add_argument("--views", type=int, default=40, help="synthetic training views")
    p.add_argument("--repeats", type=int, default=3, help="renders per level (median)")
    p.add_argument("--ui-frames", type=int, default=100, help="UI frames per measurement (median)")
    p.add_argument("--no-compare", action="store_true", help="skip timing the previous texture path, overlay and window")
    p.add_argument("--run", help="time this existing run directory instead of training one")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", help="work folder (default: a temporary folder)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "viewer.json"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    if args.run:
        run = Path(args.run)
    else:
        run = train_run(Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="omnifield-bench-viewer-")), args)
    train_s = 0.0 if args.run else time.perf_counter() - t0
    levels = time_render(run, args)
    xvfb = start_xvfb()
    try:
        ui = time_ui(run, args)
    finally:
        if xvfb is not None:
            xvfb.terminate()
            xvfb.wait(10)

    console = Console()
    title = str(run) if args.run else f"instant-ngp, {args.steps} steps ({train_s:.0f} s training)"
    table = Table("level", "render ms", "frames/s", title=title)
    for level, ms in levels.items():
        table.add_row(f"{level}x{level}", f"{ms:.1f}", f"{1000 / ms:.1f}")
    console.print(table)
    table = Table("UI frame at 512x512", "ours ms", "dearpygui ms", "total ms", "dearpygui CPU ms", "total now / before",
                  title=f"UI thread (Xvfb, llvmpipe; {ui['dataset_cameras']} frusta), medians")
    for case in ("idle", "new frame", "orbit"):
        for when in ("now", "before"):
            t = ui.get(f"{case} {when}")
            if t is None:
                continue
            total = t["ours"] + t["dearpygui"]
            ratio = ""
            if when == "now" and f"{case} before" in ui:
                before = ui[f"{case} before"]
                ratio = f"{total / (before['ours'] + before['dearpygui']):.2f}"
            table.add_row(f"{case} ({when})", f"{t['ours']:.2f}", f"{t['dearpygui']:.2f}", f"{total:.2f}",
                          f"{t['dearpygui cpu']:.2f}", ratio)
    console.print(table)
    console.print(f"uint8 -> float32 RGBA conversion of a 512x512 frame (render thread): {ui['convert']:.2f} ms")

    trained = {} if args.run else {"steps": args.steps, "synth_size": args.synth_size, "views": args.views,
                                    "train_seconds": train_s}
    result = {"run": args.run, **trained,
              "render_ms": {str(k): v for k, v in levels.items()}, "ui_ms": ui,
              "device": args.device, "machine": platform.machine(), "cpus": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
