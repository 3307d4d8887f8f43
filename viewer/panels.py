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
WINDOW_COLOR = (37, 37, 38, 255)
"""dearpygui's default window background. The viewport is cleared to it and the window, which fills the
viewport, draws no background of its own: under a software rasterizer (Xvfb's llvmpipe) that
window-sized rectangle cost about 4 ms of CPU per UI frame, 40% of the frame."""
THUMBNAIL_SIDE = 64
"""Long side in pixels of the dataset images drawn in the frusta (downscaled once, uploaded once)."""
NEAR = 1e-3
"""Points nearer the view than this (camera-space z, world units) count as behind it."""
# A frustum (centre, tl, tr, br, bl) as one polyline through every edge but the top one, each once
# (an Euler path between the two corners of odd degree); the top edge is drawn on its own, highlighted.
FRUSTUM_PATH = [3, 2, 0, 1, 4, 3, 0, 4]
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
    shown: dict = field(default_factory=dict)
    """Text last set per widget (values are set only when they change)."""
    plotted: tuple = ()
    """``(points, last step)`` of the metrics the plots show (replotted only when new ones arrive)."""
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
        if getattr(viewer.source, "dataset_images", None) is not None:
            dpg.add_checkbox(label="with their images", default_value=viewer.config.frustum_images,
                             callback=lambda s, a: viewer.set_show_frustum_images(a))
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
    """Redraw the overlay: dataset frusta (top edge highlighted, optionally with their images) and the crop
    box, projected with the view camera."""
    import dearpygui.dearpygui as dpg

    ui = viewer.ui
    dpg.delete_item(ui.overlay, children_only=True)
    w, h = viewer.size
    cams = viewer.source.dataset_cameras
    if viewer.show_frusta and cams is not None and len(cams) > 0:
        if viewer._frustum_points is None:
            viewer._frustum_points = vc.frustum_corners(cams, viewer.frustum_scale)
        _draw_cameras(viewer, viewer._frustum_points, w, h)
    if viewer.crop_box is not None:
        b = viewer.crop_box
        corners = np.array([[b[(k >> i) & 1, i] for i in range(3)] for k in range(8)])
        _draw_segments(ui.overlay, viewer.camera, w, h, np.stack([[corners[a], corners[c]] for a, c in BOX_EDGES]),
                       [CROP_COLOR] * len(BOX_EDGES))


def _draw_cameras(viewer, points: np.ndarray, w: int, h: int) -> None:
    """Frusta ``points [C, 5, 3]`` (:func:`~omnifield.viewer.camera.frustum_corners`): images (far to near),
    then one polyline and the highlighted top edge per frustum in front of the view; frusta the view's
    near plane cuts are drawn as clipped segments, those wholly behind it not at all."""
    import dearpygui.dearpygui as dpg

    overlay = viewer.ui.overlay
    pix, z = vc.project_points(viewer.camera, w, h, points.reshape(-1, 3))
    pix, z = pix.reshape(-1, 5, 2), z.reshape(-1, 5)
    front = z > NEAR

    def on_screen(p):  # [C, k, 2] -> [C]: the bounding box of the points meets the view
        return (p.max(1) >= 0).all(-1) & (p.min(1) <= (w, h)).all(-1)

    textures = viewer.frustum_textures if viewer.show_frustum_images else None
    if textures:
        quads = np.flatnonzero(front[:, 1:].all(1) & on_screen(pix[:, 1:]))
        for c in quads[np.argsort(-z[quads, 1:].mean(1))].tolist():  # far to near
            dpg.draw_image_quad(textures[c], *pix[c, 1:].tolist(), parent=overlay)
    whole = front.all(1)
    for p in pix[whole & on_screen(pix)].tolist():
        dpg.draw_polyline([p[i] for i in FRUSTUM_PATH], color=FRUSTUM_COLOR, thickness=1, parent=overlay)
        dpg.draw_line(p[1], p[2], color=FRUSTUM_TOP_COLOR, thickness=1, parent=overlay)
    cut = front.any(1) & ~whole
    if cut.any():
        per_cam = [FRUSTUM_COLOR] * 4 + [FRUSTUM_TOP_COLOR] + [FRUSTUM_COLOR] * 3
        _draw_segments(overlay, viewer.camera, w, h, vc.frustum_segments(points[cut]), per_cam * int(cut.sum()))


def _draw_segments(parent, camera, w: int, h: int, segments: np.ndarray, colors: list) -> None:
    """World segments ``[K, 2, 3]`` clipped at the view's near plane, one line each."""
    import dearpygui.dearpygui as dpg

    pix, keep = vc.project_segments(camera, w, h, segments, near=NEAR)
    keep &= np.abs(pix).max(axis=(1, 2)) < 4 * max(w, h)  # far off-screen lines only cost time
    for (a, b), color in zip(pix[keep].tolist(), [c for c, k in zip(colors, keep) if k]):
        dpg.draw_line(a, b, color=color, thickness=1, parent=parent)


def show_frame(viewer, frame) -> None:
    """Show ``frame`` in the view: its texture becomes a new static texture (sent to the GPU once, at the
    frame's own size, stretched over the view) and the previous one is deleted. dearpygui re-uploads
    raw and dynamic textures in every UI frame, which costs more than one upload per new frame."""
    import dearpygui.dearpygui as dpg

    from omnifield.viewer.worker import frame_to_texture

    data = frame.texture if frame.texture is not None else frame_to_texture(frame.image)
    texture = dpg.add_static_texture(frame.width, frame.height, data, parent=viewer._registry)
    dpg.configure_item(viewer.ui.image, texture_tag=texture)
    dpg.delete_item(viewer._texture)
    viewer._texture = texture


def upload_thumbnails(viewer, thumbnails: list[np.ndarray]) -> list:
    """One static texture (uploaded once) per :func:`load_thumbnails` image."""
    import dearpygui.dearpygui as dpg

    from omnifield.viewer.worker import frame_to_texture

    return [dpg.add_static_texture(t.shape[1], t.shape[0], frame_to_texture(t), parent=viewer._registry)
            for t in thumbnails]


def resize_view(viewer) -> None:
    """Resize the drawlist and its image for a new render size (the next frame brings its own texture)."""
    import dearpygui.dearpygui as dpg

    ui, (w, h) = viewer.ui, viewer.size
    dpg.configure_item(ui.image, pmax=(w, h))
    dpg.configure_item(ui.drawlist, width=w, height=h)
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
        label = getattr(viewer.source, "time_label", None)  # sequences: which frame the time shows
        lines.append(f"time {viewer.time:.3f}" + (f", {label(viewer.time)}" if label is not None else ""))
    if viewer.worker.error is not None:
        lines.append(f"render failed: {viewer.worker.error}")
    _set_text(ui, ui.readouts, "\n".join(lines))
    _set_text(ui, ui.keyframes, f"{len(viewer.keyframes)} keyframes")
    if ui.time_slider is not None and viewer.playing:
        dpg.set_value(ui.time_slider, viewer.time)
    jobs = [f"{name}: " + ("running" if not fut.done() else _job_result(fut)) for name, fut in viewer.jobs[-4:]]
    _set_text(ui, ui.jobs, "\n".join(jobs + list(viewer.messages.values())[-3:]))
    if ui.training is not None:
        _update_training(viewer, ui)


def _set_text(ui: Widgets, item, text: str) -> None:
    """``dpg.set_value`` only when the text changed."""
    import dearpygui.dearpygui as dpg

    if ui.shown.get(item) != text:
        ui.shown[item] = text
        dpg.set_value(item, text)


def _job_result(fut) -> str:
    e = fut.exception()
    if e is not None:
        return f"failed: {e}"
    return f"wrote {fut.result()}" if isinstance(fut.result(), (str, Path)) else "done"


def _update_training(viewer, ui: Widgets) -> None:
    import dearpygui.dearpygui as dpg

    tr, m = viewer.trainer, viewer.metrics
    last = m["loss"][-1] if m["loss"] else None
    text = f"{viewer.training_state}, step {tr.global_step} / {tr.config.max_steps}"
    if last is not None:
        text += f"\nloss {last:.4g}"
        if m["psnr"] and np.isfinite(m["psnr"][-1]):
            text += f", PSNR {m['psnr'][-1]:.2f} dB"
    _set_text(ui, ui.training, text)
    plotted = (len(m["step"]), m["step"][-1] if m["step"] else None)
    if plotted == ui.plotted:
        return
    ui.plotted = plotted
    steps = [float(s) for s in m["step"]]
    dpg.set_value(ui.loss_series, [steps, [float(v) for v in m["loss"]]])
    ok = [i for i, v in enumerate(m["psnr"]) if np.isfinite(v)]
    dpg.set_value(ui.psnr_series, [[steps[i] for i in ok], [float(m["psnr"][i]) for i in ok]])


# -- tool helpers (no widgets) -------------------------------------------------------------------------------------------
def thumbnail(image, max_side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """``[H, W, 3+]`` uint8 -> ``[h, w, 3]`` uint8 with ``max(h, w) <= max_side``: each output pixel is the
    mean of the input pixels it covers (area averaging); images already small enough are returned as they are."""
    img = np.asarray(image)[..., :3]
    if img.ndim != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"thumbnail: expected an [H, W, 3] image, got {img.shape}")
    big, small = img.shape[:2], max(img.shape[:2])
    if small <= max_side:
        return np.ascontiguousarray(img)
    out = [max(1, round(n * max_side / small)) for n in big]
    edges = [np.linspace(0, n, m + 1).round().astype(int) for n, m in zip(big, out)]
    sums = np.add.reduceat(np.add.reduceat(img.astype(np.float64), edges[0][:-1], axis=0), edges[1][:-1], axis=1)
    area = np.diff(edges[0])[:, None, None] * np.diff(edges[1])[None, :, None]
    return np.round(sums / area).clip(0, 255).astype(np.uint8)


def load_thumbnails(images, count: int, max_side: int = THUMBNAIL_SIDE) -> list[np.ndarray]:
    """:func:`thumbnail` of ``images(i)`` (a source's ``dataset_images``) for cameras ``0 .. count-1``.

    Reads every image once: run it off the UI thread (the viewer's tools thread does).
    """
    return [thumbnail(images(i), max_side) for i in range(count)]


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


class eval_mode:
    """Put a module in eval mode for a block and restore its mode after (a live trainer sets train mode)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        self.was_training = bool(getattr(self.module, "training", False))
        if hasattr(self.module, "eval"):
            self.module.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.module.train()
