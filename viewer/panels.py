"""The viewer's widgets: the view (texture + frustum overlay) and the side panel, built from the source's
capabilities (channels, time range, dataset cameras) and from whether a trainer is attached.

Callbacks only call :class:`~omnifield.viewer.app.Viewer` methods; nothing here renders the scene.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from omnifield.errors import ConfigError
from omnifield.viewer import camera as vc

RESOLUTIONS = (256, 384, 512, 768, 1024)
FRUSTUM_COLOR = (255, 140, 30, 200)
FRUSTUM_TOP_COLOR = (255, 230, 60, 255)
CROP_COLOR = (60, 200, 255, 220)
READOUT_SECONDS = 0.25
# A box's 12 edges as pairs of corner indices (corner k: x from bit 0, y from bit 1, z from bit 2).
BOX_EDGES = [(a, b) for a, b in itertools.combinations(range(8), 2) if bin(a ^ b).count("1") == 1]


@dataclass
class Widgets:
    """dearpygui item ids the Viewer updates."""

    window: int | str = 0
    drawlist: int | str = 0
    image: int | str = 0
    overlay: int | str = 0
    readouts: int | str = 0
    stats: int | str = 0
    jobs: int | str = 0
    time_slider: int | str | None = None
    play: int | str | None = None
    crop: list = field(default_factory=list)
    crop_enabled: int | str = 0
    keyframes: int | str = 0
    out_dir: int | str = 0
    training: int | str | None = None
    loss_series: int | str | None = None
    psnr_series: int | str | None = None
    loss_axes: tuple = ()
    psnr_axes: tuple = ()
    last_readout: float = 0.0
    fps: float = 0.0
    frames: int = 0
    fps_since: float = field(default_factory=time.perf_counter)


def build(viewer) -> Widgets:
    """Create the window's widgets (inside the current dearpygui context); returns their ids."""
    import dearpygui.dearpygui as dpg

    ui = Widgets()
    w, h = viewer.size
    with dpg.window(label=viewer.config.title) as ui.window:
        with dpg.group(horizontal=True):
            with dpg.drawlist(w, h) as ui.drawlist:
                ui.image = dpg.draw_image(viewer._texture, (0, 0), (w, h))
                ui.overlay = dpg.add_draw_layer()
            with dpg.child_window(width=viewer.config.panel_width, autosize_y=True):
                _view_panel(viewer, ui)
                _camera_panel(viewer, ui)
                _crop_panel(viewer, ui)
                _tools_panel(viewer, ui)
                if viewer.trainer is not None:
                    _training_panel(viewer, ui)
                with dpg.collapsing_header(label="Info", default_open=True):
                    ui.readouts = dpg.add_text("")
                    ui.stats = dpg.add_text("\n".join(f"{k}: {v}" for k, v in viewer.source.stats().items()))
                    ui.jobs = dpg.add_text("")
    return ui


def _view_panel(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    with dpg.collapsing_header(label="View", default_open=True):
        dpg.add_combo(list(viewer.source.channels), label="channel", default_value=viewer.channel,
                      callback=lambda s, a: viewer.set_channel(a))
        if viewer.time_range is not None:
            t0, t1 = viewer.time_range
            with dpg.group(horizontal=True):
                ui.play = dpg.add_button(label="play", width=50, callback=lambda: _toggle_play(viewer, ui))
                ui.time_slider = dpg.add_slider_float(label="time", min_value=t0, max_value=t1, default_value=viewer.time,
                                                      width=-40, callback=lambda s, a: viewer.set_time(a))
        dpg.add_slider_float(label="fov", min_value=10.0, max_value=120.0, default_value=viewer.camera.fov_y_deg,
                             callback=lambda s, a: viewer.set_fov(a))
        dpg.add_color_edit(tuple(int(c * 255) for c in viewer.background) + (255,), label="background", no_alpha=True,
                           callback=lambda s, a: viewer.set_background(_rgb01(a)))
        choices = sorted(set(RESOLUTIONS) | {max(viewer.size)})
        dpg.add_combo([str(r) for r in choices], label="resolution", default_value=str(max(viewer.size)),
                      callback=lambda s, a: _set_long_side(viewer, int(a)))
        coarse = viewer.config.levels
        dpg.add_checkbox(label="progressive (coarse while moving)", default_value=len(viewer.levels) > 1,
                         callback=lambda s, a: viewer.set_resolution(*viewer.size, levels=coarse if a else ()))


def _camera_panel(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    cams = viewer.source.dataset_cameras
    with dpg.collapsing_header(label="Cameras", default_open=False):
        dpg.add_checkbox(label="draw frusta", default_value=viewer.show_frusta,
                         callback=lambda s, a: viewer.set_show_frusta(a))
        dpg.add_button(label="reset view", callback=lambda: viewer.set_camera(
            vc.default_view(viewer.scene_box, viewer.source.dataset_cameras, viewer.camera.fov_y_deg)))
        if cams is not None and len(cams) > 0:
            items = [f"camera {i}" for i in range(len(cams))]
            dpg.add_listbox(items, num_items=6, callback=lambda s, a: viewer.snap_to_camera(int(a.split()[-1])))


def _crop_panel(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    box = viewer.scene_box
    with dpg.collapsing_header(label="Crop box", default_open=False):
        ui.crop_enabled = dpg.add_checkbox(label="crop", callback=lambda: _apply_crop(viewer, ui))
        for side, name in enumerate(("min", "max")):
            for axis, a in enumerate("xyz"):
                ui.crop.append(dpg.add_slider_float(
                    label=f"{name} {a}", min_value=float(box[0, axis]), max_value=float(box[1, axis]),
                    default_value=float(box[side, axis]), callback=lambda: _apply_crop(viewer, ui)))


def _tools_panel(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    with dpg.collapsing_header(label="Tools", default_open=False):
        ui.out_dir = dpg.add_input_text(label="folder", default_value=str(viewer.out_dir),
                                        callback=lambda s, a: setattr(viewer, "out_dir", _path(a)))
        dpg.add_button(label="screenshot", callback=lambda: _report(viewer, "screenshot", viewer.screenshot))
        dpg.add_separator()
        dpg.add_text("camera path")
        ui.keyframes = dpg.add_text("0 keyframes")
        with dpg.group(horizontal=True):
            dpg.add_button(label="add keyframe", callback=viewer.add_keyframe)
            dpg.add_button(label="clear", callback=viewer.clear_keyframes)
            dpg.add_button(label="preview", callback=lambda: _report(viewer, "preview", viewer.preview_path))
        dpg.add_slider_int(label="frames", min_value=2, max_value=600, default_value=viewer.path_frames,
                           callback=lambda s, a: setattr(viewer, "path_frames", int(a)))
        with dpg.group(horizontal=True):
            dpg.add_button(label="save JSON", callback=lambda: _report(viewer, "path", viewer.save_path))
            dpg.add_button(label="render MP4", callback=lambda: _report(viewer, "video", viewer.render_video))
        dpg.add_separator()
        with dpg.group(horizontal=True):
            dpg.add_button(label="export mesh", callback=lambda: _report(viewer, "mesh", viewer.export_mesh))
            dpg.add_button(label="export points", callback=lambda: _report(viewer, "points", viewer.export_pointcloud))


def _training_panel(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    with dpg.collapsing_header(label="Training", default_open=True):
        ui.training = dpg.add_text("")
        with dpg.group(horizontal=True):
            dpg.add_button(label="pause", callback=viewer.pause_training)
            dpg.add_button(label="resume", callback=viewer.resume_training)
            dpg.add_button(label="save", callback=lambda: _report(viewer, "save", viewer.save_training))
        for name in ("loss", "psnr"):
            with dpg.plot(label=name, height=130, width=-1):
                x = dpg.add_plot_axis(dpg.mvXAxis, label="step", auto_fit=True)
                y = dpg.add_plot_axis(dpg.mvYAxis, auto_fit=True)
                series = dpg.add_line_series([], [], parent=y)
            setattr(ui, f"{name}_series", series)
            setattr(ui, f"{name}_axes", (x, y))


# -- callbacks -------------------------------------------------------------------------------------
def _rgb01(value) -> tuple[float, float, float]:
    """dearpygui colours arrive as 0..1 floats in callbacks and 0..255 from get_value: accept both."""
    rgb = [float(v) for v in list(value)[:3]]
    return tuple(v / 255.0 for v in rgb) if max(rgb) > 1.0 else tuple(rgb)


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _toggle_play(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    viewer.set_playing(not viewer.playing)
    dpg.configure_item(ui.play, label="pause" if viewer.playing else "play")


def _set_long_side(viewer, long_side: int) -> None:
    w, h = viewer.size
    s = long_side / max(w, h)
    viewer.set_resolution(max(8, round(w * s)), max(8, round(h * s)))


def _apply_crop(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    if not dpg.get_value(ui.crop_enabled):
        viewer.set_crop(None)
        return
    v = np.array([dpg.get_value(s) for s in ui.crop], np.float64).reshape(2, 3)
    lo, hi = np.minimum(v[0], v[1]), np.maximum(v[0], v[1])
    hi = np.maximum(hi, lo + 1e-3)
    viewer.set_crop(np.stack([lo, hi]))


def _report(viewer, name: str, fn) -> None:
    """Run a tool from a button; its result or error shows in the Info panel instead of raising in the UI."""
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - a failing tool must not close the window; the message is shown
        viewer.messages[name] = f"{name}: failed: {e}"
        return
    if result is not None and not hasattr(result, "done"):
        viewer.messages[name] = f"{name}: {result}"


@dataclass
class InputState:
    """An ongoing mouse drag: which action and the last mouse position."""

    drag: str | None = None
    last: np.ndarray | None = None


# -- input ---------------------------------------------------------------------------------------
def poll_input(viewer) -> None:
    """Mouse drags (left: orbit, right/middle: pan) over the view and WASD/QE keys -> camera moves."""
    import dearpygui.dearpygui as dpg

    st = viewer._input
    hovered = dpg.is_item_hovered(viewer.ui.drawlist)
    pos = np.array(dpg.get_mouse_pos(local=False), np.float64)
    buttons = {"orbit": dpg.mvMouseButton_Left, "pan": dpg.mvMouseButton_Right, "pan2": dpg.mvMouseButton_Middle}
    if st.drag is None and hovered:
        st.drag = next((k for k, b in buttons.items() if dpg.is_mouse_button_down(b)), None)
        st.last = pos
    elif st.drag is not None and not dpg.is_mouse_button_down(buttons[st.drag]):
        st.drag = None
    if st.drag is not None and st.last is not None:
        dx, dy = pos - st.last
        st.last = pos
        if dx or dy:
            if st.drag == "orbit":
                k = math.radians(viewer.config.orbit_speed)
                viewer.orbit(-dx * k, dy * k)
            else:
                s = 2 * math.tan(math.radians(viewer.camera.fov_y_deg) / 2) / viewer.size[1]
                viewer.pan(-dx * s, -dy * s)
    if hovered or st.drag is not None:
        step = viewer.config.fly_speed * viewer.scene_diagonal * min(viewer._ui_dt, 0.1)
        keys = {k: dpg.is_key_down(getattr(dpg, f"mvKey_{k}")) for k in "WASDQE"}
        move = (keys["W"] - keys["S"], keys["D"] - keys["A"], keys["E"] - keys["Q"])
        if any(move):
            viewer.fly(*(m * step for m in move))


def on_wheel(viewer, delta) -> None:
    """Mouse wheel over the view: zoom."""
    import dearpygui.dearpygui as dpg

    if dpg.is_item_hovered(viewer.ui.drawlist) and delta:
        viewer.zoom(0.9 ** float(delta))


# -- per-frame updates -------------------------------------------------------------------------------
def draw_frusta(viewer) -> None:
    """Redraw the overlay: dataset frusta (top edge highlighted) and the crop box, projected with the view camera."""
    import dearpygui.dearpygui as dpg

    ui = viewer.ui
    dpg.delete_item(ui.overlay, children_only=True)
    w, h = viewer.size
    segments, colors = [], []
    cams = viewer.source.dataset_cameras
    if viewer.show_frusta and cams is not None and len(cams) > 0:
        if getattr(viewer, "_frustum_segments", None) is None:
            viewer._frustum_segments = vc.frustum_lines(cams, viewer.frustum_scale)
        seg = viewer._frustum_segments
        segments.append(seg)
        per_cam = [FRUSTUM_COLOR] * 4 + [FRUSTUM_TOP_COLOR] + [FRUSTUM_COLOR] * 3
        colors += per_cam * (len(seg) // 8)
    if viewer.crop_box is not None:
        b = viewer.crop_box
        corners = np.array([[b[(k >> i) & 1, i] for i in range(3)] for k in range(8)])
        segments.append(np.stack([[corners[a], corners[c]] for a, c in BOX_EDGES]))
        colors += [CROP_COLOR] * len(BOX_EDGES)
    if not segments:
        return
    pix, keep = vc.project_segments(viewer.camera, w, h, np.concatenate(segments))
    inside = np.abs(pix).max(axis=(1, 2)) < 4 * max(w, h)  # far off-screen lines only cost time
    for (a, b), color in zip(pix[keep & inside].tolist(), [c for c, k in zip(colors, keep & inside) if k]):
        dpg.draw_line(a, b, color=color, thickness=1, parent=ui.overlay)


def resize_view(viewer) -> None:
    """Re-create the texture and the drawlist image for a new render size."""
    import dearpygui.dearpygui as dpg

    ui, (w, h) = viewer.ui, viewer.size
    old = viewer._texture
    viewer._texture = dpg.add_raw_texture(w, h, np.zeros(w * h * 4, np.float32), format=dpg.mvFormat_Float_rgba,
                                          parent=viewer._registry)
    dpg.delete_item(ui.image)
    ui.image = dpg.draw_image(viewer._texture, (0, 0), (w, h), parent=ui.drawlist, before=ui.overlay)
    dpg.configure_item(ui.drawlist, width=w, height=h)
    dpg.delete_item(old)
    viewer.frame = None


def update_readouts(viewer) -> None:
    """FPS, render time, resolution, jobs, training state and plots (at most every READOUT_SECONDS)."""
    import dearpygui.dearpygui as dpg

    ui = viewer.ui
    ui.frames += 1
    now = time.perf_counter()
    if now - ui.last_readout < READOUT_SECONDS:
        return
    ui.fps = ui.frames / max(now - ui.fps_since, 1e-6)
    ui.frames, ui.fps_since, ui.last_readout = 0, now, now
    f = viewer.frame
    lines = [f"UI {ui.fps:.0f} FPS"]
    if f is not None:
        lines.append(f"render {f.render_ms:.0f} ms at {f.width}x{f.height} (level {f.level})"
                     + ("" if f.final else ", refining"))
    if viewer.time is not None:
        lines.append(f"time {viewer.time:.3f}")
    if viewer.worker.error is not None:
        lines.append(f"render failed: {viewer.worker.error}")
    dpg.set_value(ui.readouts, "\n".join(lines))
    dpg.set_value(ui.keyframes, f"{len(viewer.keyframes)} keyframes")
    if ui.time_slider is not None and viewer.playing:
        dpg.set_value(ui.time_slider, viewer.time)
    jobs = [f"{name}: " + ("running" if not fut.done() else _job_result(fut)) for name, fut in viewer.jobs[-4:]]
    dpg.set_value(ui.jobs, "\n".join(jobs + list(viewer.messages.values())[-3:]))
    if ui.training is not None:
        _update_training(viewer, ui)


def _job_result(fut) -> str:
    e = fut.exception()
    return f"failed: {e}" if e is not None else f"wrote {fut.result()}"


def _update_training(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    tr, m = viewer.trainer, viewer.metrics
    last = m["loss"][-1] if m["loss"] else None
    text = f"{viewer.training_state}, step {tr.global_step} / {tr.config.max_steps}"
    if last is not None:
        text += f"\nloss {last:.4g}"
        if m["psnr"] and np.isfinite(m["psnr"][-1]):
            text += f", PSNR {m['psnr'][-1]:.2f} dB"
    dpg.set_value(ui.training, text)
    steps = [float(s) for s in m["step"]]
    dpg.set_value(ui.loss_series, [steps, [float(v) for v in m["loss"]]])
    ok = [i for i, v in enumerate(m["psnr"]) if np.isfinite(v)]
    dpg.set_value(ui.psnr_series, [[steps[i] for i in ok], [float(m["psnr"][i]) for i in ok]])


# -- tool helpers (no widgets) -------------------------------------------------------------------------------------------
def frame_to_texture(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[h, w, 3]`` uint8 frame -> flat float32 RGBA of ``width x height`` (nearest-neighbour scaling)."""
    h, w = image.shape[:2]
    if (h, w) != (height, width):
        image = image[(np.arange(height) * h // height)][:, (np.arange(width) * w // width)]
    out = np.ones((height, width, 4), np.float32)
    out[..., :3] = image[..., :3] * np.float32(1 / 255)
    return out.reshape(-1)


def keyframe_cameras(keyframes: list, width: int, height: int, t: float | None = None):
    """Keyframe :class:`ViewCamera` s -> one :class:`Cameras` batch of ``width x height`` (times ``t``)."""
    from omnifield.datasets.cameras import Cameras

    cams = [vc.to_cameras(k, width, height) for k in keyframes]
    cat = lambda name: torch.cat([getattr(c, name) for c in cams])  # noqa: E731
    return Cameras.create(cat("c2w"), cat("fx"), cat("fy"), cat("cx"), cat("cy"), cat("width"), cat("height"),
                          times=None if t is None else torch.full((len(cams),), float(t)))


def in_front(cams, i: int, point) -> bool:
    c2w = cams.c2w[i].double().numpy()
    return float((np.asarray(point) - c2w[:3, 3]) @ c2w[:3, 2]) > 1e-6


def default_out_dir(source) -> Path:
    run = source.stats().get("run")  # SceneSource of a run directory
    return Path(run) / "renders" / "viewer" if run else Path.cwd() / "omnifield-viewer"


def run_like(source):
    """A :class:`~omnifield.scenes.runs.Run` (or a stand-in with the same attributes) for a source with a scene."""
    run = getattr(source, "run", None)
    if run is not None:
        return run
    scene = getattr(source, "scene", None)
    if scene is None:
        raise ConfigError(f"{source.name}: only scenes can be exported or rendered to video "
                          "(meshes and point clouds are for viewing)")
    info = getattr(source, "info", None)
    w = torch.as_tensor(source.world_from_dataset, dtype=torch.float32)
    downscale = 1 if info is None else int((info.metadata or {}).get("downscale", 1))
    return SimpleNamespace(scene=scene, info=info, world_from_dataset=w, scene_box=scene.scene_box.detach().cpu(),
                           downscale=downscale, path=None, method=getattr(scene, "method", ""), background=None)


class CroppedScene:
    """A scene whose :meth:`render` applies a crop box (for :func:`export_pointcloud`, which takes none)."""

    def __init__(self, scene, crop_box):
        self._scene, self._crop = scene, crop_box

    def render(self, cameras, time=None, options=None):
        from dataclasses import replace

        from omnifield.scenes.base import RenderOptions

        return self._scene.render(cameras, time=time, options=replace(options or RenderOptions(), crop_box=self._crop))

    def __getattr__(self, name):
        return getattr(self._scene, name)


class eval_mode:
    """Put a module in eval mode for a block and restore its mode after (a live trainer sets train mode)."""

    def __init__(self, module):
        self.module = getattr(module, "_scene", module)

    def __enter__(self):
        self.was_training = bool(getattr(self.module, "training", False))
        if hasattr(self.module, "eval"):
            self.module.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.module.train()
