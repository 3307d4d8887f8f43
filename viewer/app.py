"""The desktop viewer: a dearpygui window showing the frames a :class:`RenderWorker` thread renders.

The UI thread never runs the renderer: it turns input into a new :class:`ViewCamera`, submits a
:class:`FrameRequest` (the worker renders coarse levels first, then refines), uploads the worker's
latest :class:`Frame` into a texture and draws the dataset frusta over it. Exports and videos run on
a tools thread under the same lock as the worker (a live trainer's ``lock``).

Every control is a method a test can call without mouse events (:meth:`Viewer.orbit`,
:meth:`Viewer.set_channel`, ...), and :meth:`Viewer.step_ui` renders UI frames one by one.
dearpygui has one global context, so one :class:`Viewer` exists at a time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from omnifield.errors import ConfigError
from omnifield.viewer import camera as vc
from omnifield.viewer import panels
from omnifield.viewer.display import open_display, release_display
from omnifield.viewer.panels import eval_mode, keyframe_cameras, run_like


MAX_PLOT_POINTS = 4000


@dataclass(frozen=True)
class ViewerConfig:
    """How the window opens."""

    width: int = 512
    """Render width in pixels of the finest level (the view is shown 1:1)."""
    height: int = 512
    """Render height in pixels of the finest level."""
    levels: tuple[int, ...] = (128, 256)
    """Coarser levels (long side in pixels) rendered first while moving; the finest is max(width, height)."""
    channel: str = "rgb"
    """Channel shown at start (must be one of the source's channels)."""
    camera: int | None = None
    """Start at this dataset camera (None: a view of the whole scene box)."""
    time: float | None = None
    """Start time of a time-varying source (None: the start of its time range)."""
    title: str = "omnifield"
    """Window title."""
    panel_width: int = 330
    """Width of the side panel in pixels."""
    show_frusta: bool = True
    """Draw the dataset cameras as frusta over the view."""
    frustum_images: bool = False
    """Draw each dataset camera's image in its frustum (sources with ``dataset_images``)."""
    path_frames: int = 60
    """Frames of the camera-path editor's interpolated path (preview, JSON, video)."""
    out_dir: str | None = None
    """Where screenshots, paths, videos and exports go (None: the run's ``renders/viewer`` or ./omnifield-viewer)."""
    fly_speed: float = 0.5
    """WASD/QE speed in scene-box diagonals per second."""
    orbit_speed: float = 0.3
    """Left-drag orbit speed in degrees per pixel."""
    play_seconds: float = 5.0
    """Seconds for playback to cross the whole time range."""
    live_refresh_seconds: float = 1.0
    """While training, re-render the unchanged view this often to show the new weights."""
    vsync: bool = True
    """Sync UI frames to the display (off for benchmarks)."""
    max_fps: float = 60.0
    """Cap of :meth:`Viewer.run`'s UI frame rate (leaves the CPU to the render thread where vsync does not block)."""

    def __post_init__(self):
        if self.width < 8 or self.height < 8:
            raise ConfigError(f"viewer size must be at least 8x8, got {self.width}x{self.height}")
        if any(int(lv) < 1 for lv in self.levels):
            raise ConfigError(f"viewer levels must be positive, got {self.levels}")

    @property
    def all_levels(self) -> tuple[int, ...]:
        """The progressive levels: the coarser ones below the finest, then the finest (long side)."""
        finest = max(self.width, self.height)
        return tuple(sorted({int(lv) for lv in self.levels if int(lv) < finest})) + (finest,)


class Viewer:
    """The window. ``source``: a :class:`~omnifield.viewer.sources.ViewSource`; ``trainer``: a live
    :class:`~omnifield.scenes.trainer.Trainer` whose :meth:`train` runs in a thread started here.

    Create it, then call :meth:`run` (blocks until the window closes) or drive it from Python with
    the setters and :meth:`step_ui`; always :meth:`close` it (also a context manager).
    """

    def __init__(self, source, *, trainer=None, config: ViewerConfig | None = None):
        import dearpygui.dearpygui as dpg

        from omnifield.viewer.worker import RenderWorker

        self.dpg = dpg
        self.source = source
        self.trainer = trainer
        self.config = config = config or ViewerConfig()
        self.lock = trainer.lock if trainer is not None else threading.RLock()
        self.channel = self._check_channel(config.channel)
        self.time_range = None if source.time_range is None else tuple(float(t) for t in source.time_range)
        if config.time is not None and self.time_range is None:
            raise ConfigError(f"--time {config.time:g}: {source.name!r} is static (no time range)")
        self.time = None if self.time_range is None else float(self.time_range[0] if config.time is None else config.time)
        self.crop_box: np.ndarray | None = None
        self.background = (1.0, 1.0, 1.0)
        self.size = (int(config.width), int(config.height))
        self.levels = config.all_levels
        self.show_frusta = config.show_frusta
        self.show_frustum_images = False
        self.frustum_textures: list | None = None  # one texture per dataset camera, once loaded
        self.frustum_scale = 0.05 * self.scene_diagonal
        self.playing = False
        self.keyframes: list[vc.ViewCamera] = []
        self.path_frames = int(config.path_frames)
        self.out_dir = Path(config.out_dir) if config.out_dir else panels.default_out_dir(source)
        self.jobs: list[tuple[str, Future]] = []
        self.messages: dict[str, str] = {}
        self._frustum_points = None  # [C, 5, 3] frustum corners, computed once
        self._thumbnails: Future | None = None
        self.metrics: dict[str, list] = {"step": [], "loss": [], "psnr": []}
        self.training_error: BaseException | None = None
        self.train_result = None
        self.frame = None  # the Frame shown now
        self._preview: list[vc.ViewCamera] = []
        self._tools = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnifield-viewer-tools")
        self._closed = False
        self._last_ui = time.perf_counter()
        self._ui_dt = 1 / 60
        self._last_refresh = 0.0
        self._last_step = -1
        self._frusta_dirty = True
        self._input = panels.InputState()
        self._generation = 0
        self.camera = self._initial_camera(config.camera)
        self.worker = RenderWorker(source, levels=self.levels, lock=self.lock)
        self._build_window()
        if config.frustum_images:
            self.set_show_frustum_images(True)
        self._submit()
        self._train_thread = None
        if trainer is not None:
            self._train_thread = threading.Thread(target=self._train, name="omnifield-train", daemon=True)
            self._train_thread.start()

    # -- set-up -----------------------------------------------------------------------------------
    def _check_channel(self, channel: str) -> str:
        channels = list(self.source.channels)
        if channel not in channels:
            raise ConfigError(f"unknown channel {channel!r}; this source renders {', '.join(channels)}")
        return channel

    @property
    def scene_box(self) -> np.ndarray:
        """``[2, 3]`` float64 scene box of the source (run world)."""
        return np.asarray(torch.as_tensor(self.source.scene_box).detach().double().cpu().numpy()).reshape(2, 3)

    @property
    def scene_diagonal(self) -> float:
        return float(np.linalg.norm(self.scene_box[1] - self.scene_box[0]))

    def _initial_camera(self, index: int | None) -> vc.ViewCamera:
        cams = self.source.dataset_cameras
        if index is not None:
            if cams is None or not 0 <= index < len(cams):
                raise ConfigError(f"--camera {index}: the source has {0 if cams is None else len(cams)} cameras")
            return vc.from_cameras(cams, index)
        return vc.default_view(self.scene_box, cams)

    def _build_window(self) -> None:
        dpg = self.dpg
        w, h = self.size
        width, height = w + self.config.panel_width + 40, max(h + 60, 720)
        fresh = open_display(self.config.title, width, height, self.config.vsync)
        self._registry = dpg.add_texture_registry()
        self._texture = dpg.add_static_texture(1, 1, [0.0] * 4, parent=self._registry)  # until the first frame
        self.ui = panels.build(self)
        with dpg.handler_registry() as self._handlers:
            dpg.add_mouse_wheel_handler(callback=lambda s, a: panels.on_wheel(self, a))
        if not fresh:
            dpg.set_viewport_title(self.config.title)
            dpg.set_viewport_width(width)
            dpg.set_viewport_height(height)
        dpg.set_primary_window(self.ui.window, True)
        dpg.set_viewport_clear_color(panels.WINDOW_COLOR)  # and no window background (see WINDOW_COLOR)
        dpg.configure_item(self.ui.window, no_background=True)  # after set_primary_window, which resets it

    # -- state changes (what the panels and the tests call) ------------------------------------------
    def _set_camera(self, cam: vc.ViewCamera) -> None:
        self.camera = cam
        self._frusta_dirty = True
        self._submit()

    def orbit(self, d_azimuth: float, d_elevation: float) -> None:
        """Orbit around the target by radians (left drag)."""
        self._set_camera(vc.orbit(self.camera, d_azimuth, d_elevation))

    def pan(self, dx: float, dy: float) -> None:
        """Move eye and target in the image plane, in units of the target distance (right/middle drag)."""
        self._set_camera(vc.pan(self.camera, dx, dy))

    def zoom(self, factor: float) -> None:
        """Scale the distance to the target (wheel)."""
        self._set_camera(vc.zoom(self.camera, factor))

    def fly(self, forward: float, right: float, up: float) -> None:
        """Translate eye and target in world units (WASD/QE)."""
        self._set_camera(vc.fly(self.camera, forward, right, up))

    def set_camera(self, cam: vc.ViewCamera) -> None:
        self._set_camera(cam)

    def set_fov(self, deg: float) -> None:
        self._set_camera(vc.with_fov(self.camera, deg))

    def snap_to_camera(self, i: int) -> None:
        """Jump to dataset camera ``i`` (its pose and field of view)."""
        cams = self.source.dataset_cameras
        if cams is None or not 0 <= int(i) < len(cams):
            raise ConfigError(f"no dataset camera {i} (the source has {0 if cams is None else len(cams)})")
        self._set_camera(vc.from_cameras(cams, int(i)))

    def set_channel(self, channel: str) -> None:
        self.channel = self._check_channel(channel)
        self._submit()

    def set_time(self, t: float) -> None:
        """Time of a time-varying source, clamped to its ``time_range``."""
        if self.time_range is None:
            raise ConfigError(f"source {self.source.name!r} is static (no time range)")
        self.time = float(min(max(t, self.time_range[0]), self.time_range[1]))
        self._submit()

    def set_playing(self, playing: bool) -> None:
        self.playing = bool(playing) and self.time_range is not None

    def set_crop(self, box) -> None:
        """Crop box ``[2, 3]`` (min, max; run world) or None for no crop."""
        if box is None:
            self.crop_box = None
        else:
            b = np.asarray(box, np.float64).reshape(2, 3)
            if not (b[1] > b[0]).all():
                raise ConfigError(f"crop box min must be below max on every axis, got {b.tolist()}")
            self.crop_box = b
        self._submit()

    def set_background(self, rgb) -> None:
        self.background = tuple(float(min(max(c, 0.0), 1.0)) for c in list(rgb)[:3])
        self._submit()

    def set_resolution(self, width: int, height: int, levels: tuple[int, ...] | None = None) -> None:
        """Finest render size and coarser levels (the texture is re-created)."""
        cfg = replace(self.config, width=int(width), height=int(height), levels=self.config.levels if levels is None else tuple(levels))
        self.config, self.size, self.levels = cfg, (cfg.width, cfg.height), cfg.all_levels
        panels.resize_view(self)
        self._frusta_dirty = True
        self._submit()

    def set_show_frusta(self, show: bool) -> None:
        self.show_frusta = bool(show)
        self._frusta_dirty = True

    def set_show_frustum_images(self, show: bool) -> None:
        """Draw each dataset camera's image at its frustum's far end (hidden for cameras behind the view).

        The first time, the images are read and downscaled to thumbnails (at most
        :data:`~omnifield.viewer.panels.THUMBNAIL_SIDE` pixels) on the tools thread; they appear once loaded.
        """
        images = getattr(self.source, "dataset_images", None)
        cams = self.source.dataset_cameras
        if show and (images is None or cams is None):
            raise ConfigError(f"{self.source.name}: no dataset images to show in the frusta")
        self.show_frustum_images = bool(show)
        if show and self._thumbnails is None:
            self._thumbnails = self._job("images", panels.load_thumbnails, images, len(cams))
        self._frusta_dirty = True

    def request(self):
        """The :class:`FrameRequest` of the current view state."""
        from omnifield.viewer.worker import FrameRequest

        crop = None if self.crop_box is None else tuple(tuple(float(v) for v in row) for row in self.crop_box)
        w, h = self.size
        return FrameRequest(camera=self.camera, channel=self.channel, time=self.time, crop_box=crop,
                            background=self.background, levels=self.levels, aspect=w / h)

    def _submit(self) -> None:
        if not self._closed:
            self._generation = self.worker.submit(self.request())

    # -- the UI loop ---------------------------------------------------------------------------------
    def step_ui(self, n: int = 1) -> None:
        """Render ``n`` UI frames: input, playback, the latest worker frame, overlays, readouts, callbacks."""
        dpg = self.dpg
        for _ in range(int(n)):
            now = time.perf_counter()
            self._ui_dt, self._last_ui = max(now - self._last_ui, 1e-6), now
            panels.poll_input(self)
            self._advance_preview_and_playback()
            self._poll_training()
            self._poll_thumbnails()
            self._upload_latest()
            if self._frusta_dirty:
                panels.draw_frusta(self)
                self._frusta_dirty = False
            panels.update_readouts(self)
            dpg.render_dearpygui_frame()
            dpg.run_callbacks(dpg.get_callback_queue())

    def run(self) -> None:
        """Run the window until it is closed, then :meth:`close` (stops and saves a live training)."""
        try:
            while self.dpg.is_dearpygui_running() and not self._closed:
                t0 = time.perf_counter()
                self.step_ui()
                time.sleep(max(0.0, 1.0 / self.config.max_fps - (time.perf_counter() - t0)))
        finally:
            self.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Step the UI until the worker has rendered the current request at the finest level and it is shown."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and self.dpg.is_dearpygui_running():
            self.step_ui()
            if self.worker.idle.is_set() and self.worker.error is not None:
                raise self.worker.error
            f = self.frame
            if self.worker.idle.is_set() and f is not None and f.final and f.generation == self._generation:
                self.step_ui(2)  # the uploaded texture shows in the next UI frames
                return True
            time.sleep(0.005)
        return False

    def _upload_latest(self) -> None:
        f = self.worker.latest()
        if f is None or f is self.frame:
            return
        self.frame = f
        panels.show_frame(self, f)
        self.ui.last_readout = 0.0  # show the new frame's numbers now

    def _poll_thumbnails(self) -> None:
        job = self._thumbnails
        if self.frustum_textures is None and job is not None and job.done() and job.exception() is None:
            self.frustum_textures = panels.upload_thumbnails(self, job.result())
            self._frusta_dirty = True

    def _advance_preview_and_playback(self) -> None:
        if self._preview:
            self._set_camera(self._preview.pop(0))
        if self.playing and self.time_range is not None:
            t0, t1 = self.time_range
            t = self.time + (t1 - t0) * self._ui_dt / max(self.config.play_seconds, 1e-3)
            self.set_time(t0 + (t - t0) % max(t1 - t0, 1e-12) if t > t1 else t)

    # -- live training -------------------------------------------------------------------------------
    def _train(self) -> None:
        try:
            self.train_result = self.trainer.train()
        except BaseException as e:  # noqa: BLE001 - shown in the panel and re-raised by close()
            self.training_error = e

    def _poll_training(self) -> None:
        tr = self.trainer
        if tr is None:
            return
        step = int(tr.global_step)
        if step != self._last_step and tr._last.get("loss") is not None:
            self._last_step = step
            self.metrics["step"].append(step)
            self.metrics["loss"].append(float(tr._last["loss"]))
            psnr = tr._last.get("psnr")
            self.metrics["psnr"].append(float("nan") if psnr is None else float(psnr))
            if len(self.metrics["step"]) > MAX_PLOT_POINTS:  # keep the plot cheap: halve the history
                self.metrics = {k: v[::2] for k, v in self.metrics.items()}
            now = time.perf_counter()
            if now - self._last_refresh >= self.config.live_refresh_seconds and self.worker.idle.is_set():
                self._last_refresh = now
                self._submit()

    @property
    def training_state(self) -> str:
        if self.trainer is None:
            return ""
        if self.training_error is not None:
            return f"failed: {self.training_error}"
        if self.train_result is not None:
            return f"{self.train_result.status} at step {self.train_result.step}"
        return "paused" if self.trainer.paused else "training"

    def pause_training(self) -> None:
        if self.trainer is not None:
            self.trainer.pause()

    def resume_training(self) -> None:
        if self.trainer is not None:
            self.trainer.resume_training()

    def save_training(self) -> Future:
        """Checkpoint the live run (on the tools thread: saving takes the trainer's lock)."""
        if self.trainer is None:
            raise ConfigError("no live training to save")
        return self._job("save", self.trainer.save)

    # -- tools (on the tools thread; they hold the render lock) ----------------------------------------
    def _job(self, name: str, fn, *args, **kwargs) -> Future:
        fut = self._tools.submit(fn, *args, **kwargs)
        self.jobs.append((name, fut))
        return fut

    def wait_jobs(self, timeout: float = 60.0) -> None:
        """Step the UI until every tool job is done; re-raises the first failure."""
        deadline = time.perf_counter() + timeout
        while any(not f.done() for _, f in self.jobs) and time.perf_counter() < deadline:
            self.step_ui()
            time.sleep(0.01)
        for _, f in self.jobs:
            f.result(timeout=0)

    def _out(self, path, stem: str, suffix: str) -> Path:
        if path is not None:
            return Path(path)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"

    def screenshot(self, path=None) -> Path:
        """Write the shown frame of the current channel as a PNG (the render resolution, no UI)."""
        import imageio.v3 as iio

        if self.frame is None:
            raise ConfigError("no frame rendered yet")
        out = self._out(path, f"screenshot-{self.channel}", ".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out, np.ascontiguousarray(self.frame.image))
        return out

    def add_keyframe(self) -> None:
        self.keyframes.append(self.camera)

    def clear_keyframes(self) -> None:
        self.keyframes.clear()
        self._preview.clear()

    def path_cameras(self):
        """The editor's path: ``path_frames`` cameras through the keyframes (:func:`interpolate_path`)."""
        from omnifield.scenes.camera_paths import interpolate_path

        if not self.keyframes:
            raise ConfigError("the camera path has no keyframes (add one from the current view)")
        return interpolate_path(keyframe_cameras(self.keyframes, *self.size, self.time), self.path_frames)

    def preview_path(self) -> None:
        """Fly along the path, one path camera per UI frame."""
        cams = self.path_cameras()
        self._preview = [vc.from_cameras(cams, i, target=self.camera.target, up=self.camera.up)
                         if panels.in_front(cams, i, self.camera.target) else vc.from_cameras(cams, i, up=self.camera.up)
                         for i in range(len(cams))]

    def save_path(self, path=None) -> Path:
        """Save the path as camera-path JSON in the dataset's original coordinates."""
        from omnifield.scenes.camera_paths import save_camera_path

        out = self._out(path, "camera-path", ".json")
        return save_camera_path(self.path_cameras(), out, self.run_like().world_from_dataset)

    def render_video(self, out=None, json_path=None) -> Future:
        """Render the path to an MP4 with :func:`render_path` (what ``omnifield render RUN --path FILE`` does)."""
        from omnifield.scenes.video import render_path

        json_path = Path(json_path) if json_path is not None else self.save_path()
        out = self._out(out, "path-" + self.channel, ".mp4")
        run, options = self.run_like(), self._render_options()

        def job():
            with self.lock, eval_mode(run.scene):
                return render_path(run, json_path, out=out, channel=self.channel, options=options, progress=False)

        return self._job("video", job)

    def export_mesh(self, out=None, resolution: int = 256) -> Future:
        """Marching cubes inside the crop box (or the scene box) -> mesh file in dataset coordinates."""
        from omnifield.scenes.export import export_mesh

        out, run, crop = self._out(out, "mesh", ".ply"), self.run_like(), self.crop_box

        def job():
            with self.lock, eval_mode(run.scene):
                return export_mesh(run, out, resolution=resolution, crop_box=None if crop is None else torch.tensor(crop).float())

        return self._job("mesh", job)

    def export_pointcloud(self, out=None) -> Future:
        """Depth points of the training views inside the crop box (or the scene box) -> .ply in dataset coordinates."""
        from omnifield.scenes.export import export_pointcloud

        out, run, crop = self._out(out, "points", ".ply"), self.run_like(), self.crop_box

        def job():
            with self.lock, eval_mode(run.scene):
                return export_pointcloud(run, out, crop_box=None if crop is None else torch.tensor(crop).float())

        return self._job("points", job)

    def _render_options(self):
        from omnifield.scenes.base import RenderOptions

        crop = None if self.crop_box is None else tuple(tuple(float(v) for v in r) for r in self.crop_box)
        return RenderOptions(background=self.background, crop_box=crop)

    def run_like(self):
        """What the scenes' export and video functions need: ``scene``, ``world_from_dataset``, ``scene_box``, ``info``."""
        return run_like(self.source)

    # -- reading the window back ---------------------------------------------------------------------
    def frame_buffer(self, timeout: float = 5.0) -> np.ndarray:
        """The whole window as ``[H, W, 3]`` uint8 (read back from the GPU after the next UI frame)."""
        got: dict = {}
        self.dpg.output_frame_buffer(callback=lambda s, a, *_: got.setdefault("buf", a))
        deadline = time.perf_counter() + timeout
        while "buf" not in got and time.perf_counter() < deadline:
            self.step_ui()
        if "buf" not in got:
            raise RuntimeError("dearpygui did not return the frame buffer")
        buf = got["buf"]
        img = np.asarray(buf, np.float32).reshape(buf.get_height(), buf.get_width(), 4)
        return np.clip(np.round(img[..., :3] * 255), 0, 255).astype(np.uint8)

    def view_pixels(self) -> np.ndarray:
        """The part of :meth:`frame_buffer` showing the render, ``[height, width, 3]`` uint8."""
        img = self.frame_buffer()
        x, y = (int(v) for v in self.dpg.get_item_rect_min(self.ui.drawlist))
        w, h = self.size
        return img[y : y + h, x : x + w]

    # -- closing ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop a live training (it saves a checkpoint), the worker and the tools; destroy the window."""
        if self._closed:
            return
        self._closed = True
        if self.trainer is not None:
            self.trainer.stop()
            if self._train_thread is not None:
                self._train_thread.join()
        self.worker.stop()
        self._tools.shutdown(wait=True)
        if self.dpg.is_dearpygui_running():  # keep the OS window for the next Viewer (see display.open_display)
            for item in (self.ui.window, self._handlers, self._registry):
                self.dpg.delete_item(item)
        else:  # the user closed the window
            release_display()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- entry points (what the CLI calls) ---------------------------------------------------------------
def open_viewer(path, *, config: ViewerConfig | None = None, device: str = "auto", screenshot=None,
                timeout: float = 600.0, flow=None) -> Path | None:
    """``omnifield view PATH``: open a run, a .ply / mesh file, a dataset folder or point clouds in the window.

    With ``screenshot``: wait until the view is fully refined (``timeout`` seconds at most), write the
    frame as a PNG, close, and return its path; otherwise block until the window is closed. ``flow``: a
    ``flow.npz`` of ``omnifield flow estimate`` shown as the ``flow`` channel of a point-cloud sequence.
    """
    from omnifield.scenes.trainer import pick_device
    from omnifield.viewer.sources import open_source

    source = open_source(path, device=pick_device(device), flow=flow)
    viewer = Viewer(source, config=config)
    try:
        if screenshot is None:
            viewer.run()
            return None
        if not viewer.wait_idle(timeout):
            raise ConfigError(f"the view did not finish rendering within {timeout:g} s", path)
        return viewer.screenshot(screenshot)
    finally:
        viewer.close()


def live_source(trainer):
    """A :class:`~omnifield.viewer.sources.SceneSource` showing a Trainer's scene as it trains."""
    from omnifield.scenes.runs import SceneInfo
    from omnifield.viewer.sources import SceneSource

    info = SceneInfo.from_data(trainer.data)
    info.metadata = {**info.metadata, "downscale": trainer.downscale}
    name = trainer.run_dir.name if trainer.run_dir is not None else trainer.method
    return SceneSource(trainer.scene, info, name, extra_stats={"run": str(trainer.run_dir or "")},
                       dataset_images=lambda i: trainer.data.images.rgb(i).numpy())


def train_with_viewer(method: str, data_path, *, config: ViewerConfig | None = None, **kwargs):
    """``omnifield train --view``: train in a background thread while the window shows the live scene.

    ``kwargs``: those of :func:`omnifield.scenes.trainer.build_trainer`. Closing the window stops
    training and saves a checkpoint. Returns the :class:`~omnifield.scenes.trainer.TrainResult`; a training error
    (e.g. TrainingDiverged) is re-raised after the window closes.
    """
    from omnifield.scenes.trainer import build_trainer

    trainer = build_trainer(method, data_path, **kwargs)
    viewer = Viewer(live_source(trainer), trainer=trainer, config=config)
    viewer.run()
    if viewer.training_error is not None:
        raise viewer.training_error
    return viewer.train_result


__all__ = ["Viewer", "ViewerConfig", "release_display", "open_viewer", "train_with_viewer", "live_source"]
