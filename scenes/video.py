"""Render a camera path to an MP4 video (imageio + imageio-ffmpeg, H.264) or to PNG frames.

Channels: ``rgb``, ``alpha`` (grey), ``depth`` (turbo colour map, a fixed range for the whole video
taken from the first frame so colours do not flicker), ``normals`` (``(n + 1) / 2``), or any extra
channel a renderer provides (first three components, or a grey scale for one).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import ConfigError
from omnifield.scenes.base import RenderOptions, TimeVarying
from omnifield.scenes.camera_paths import load_camera_path

# Turbo (Mikhailov 2019, Google), polynomial approximation of the colour map, exact to ~1e-2.
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(x: np.ndarray) -> np.ndarray:
    """Map ``x [...]`` in [0, 1] to RGB ``[..., 3]`` float in [0, 1] with the turbo colour map."""
    x = np.clip(np.asarray(x, np.float64), 0, 1)
    powers = np.stack([x**k for k in range(6)], -1)
    return np.clip(np.stack([powers @ np.array(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1), 0, 1)


def depth_range(depth: Tensor, alpha: Tensor | None) -> tuple[float, float]:
    """(near, far) for colouring: the 1st and 99th percentiles of the depth where alpha > 0.5 (or everywhere)."""
    d = depth.reshape(-1).float()
    if alpha is not None:
        a = alpha.reshape(-1).float()
        if (a > 0.5).any():
            d = d[a > 0.5]
    d = d[torch.isfinite(d)]
    if d.numel() == 0:
        return 0.0, 1.0
    lo, hi = torch.quantile(d[:1_000_000], torch.tensor([0.01, 0.99])).tolist()
    return lo, hi if hi > lo else lo + 1e-6


def to_frame(out, channel: str, depth_bounds: tuple[float, float] | None = None) -> np.ndarray:
    """One RenderOutput (image-shaped) -> ``[H, W, 3]`` uint8 frame of ``channel``."""
    chans = out.channels()
    if channel not in chans:
        raise ConfigError(f"unknown channel {channel!r}; this scene renders {', '.join(chans)}")
    x = chans[channel].detach().float().cpu()
    if channel == "depth":
        near, far = depth_bounds or depth_range(out.depth, out.alpha)
        a = out.alpha.detach().float().cpu()
        d = torch.where(a > 1e-4, x, torch.full_like(x, far))
        img = turbo(((d[..., 0] - near) / (far - near)).numpy())
        img = img * a.numpy() + (1 - a.numpy())  # fade to white where nothing was hit
    elif channel == "normals":
        img = (x.numpy() + 1) / 2
    else:
        img = x.numpy()
        img = np.repeat(img[..., :1], 3, -1) if img.shape[-1] < 3 else img[..., :3]
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """H.264 with yuv420p needs even sizes: replicate the last row / column when odd."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _ffmpeg_writer(path: Path, fps: float):
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise ConfigError(f"writing MP4 needs ffmpeg: pip install imageio-ffmpeg ({e}); "
                          "or write PNG frames with frames_dir", path) from None
    return imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                              pixelformat="yuv420p", quality=8, macro_block_size=1, ffmpeg_log_level="error")


def write_video(frames, out, fps: float = 30) -> Path:
    """Write an iterable of ``[H, W, 3]`` uint8 frames as an H.264 MP4, atomically (odd sizes padded to even)."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ConfigError(f"videos are written as .mp4, got {out.suffix!r}", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        writer = _ffmpeg_writer(Path(tmp), fps)
        try:
            for frame in frames:
                writer.append_data(_pad_even(frame))
        finally:
            writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _progress(description: str, enabled: bool):
    """A rich progress bar with count, rate (frames/s), elapsed time and ETA."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} fr/s" if task.speed else "-- fr/s")

    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), Rate(), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def frame_times(scene, cameras: Cameras, time: float | None = None) -> Tensor | None:
    """``[F]`` the time each frame of a camera path is rendered at, or None for a static scene.

    ``time`` given: every frame at that time (the scene must be :class:`TimeVarying`). Otherwise the
    path's own times when its keyframes carry them (``cameras.times``), else, for a ``TimeVarying``
    scene, times going linearly over its ``time_range`` (first frame at the start, last at the end).
    """
    if time is not None:
        if not isinstance(scene, TimeVarying):
            raise ConfigError(f"a time was given but {type(scene).__name__} does not vary in time")
        return torch.full((len(cameras),), float(time))
    if cameras.times is not None:
        return cameras.times.detach().float().cpu()
    if isinstance(scene, TimeVarying):
        t0, t1 = (float(t) for t in scene.time_range)
        return torch.linspace(t0, t1, len(cameras)) if len(cameras) > 1 else torch.full((len(cameras),), t0)
    return None


def render_path(run, path_spec, out=None, frames_dir=None, num_frames: int = 120, downscale: float | None = None,
                fps: float = 30, channel: str = "rgb", *, options: RenderOptions | None = None,
                progress: bool = True, time: float | None = None) -> Path:
    """Render a camera path with ``run.scene.render`` into an MP4 (``out``) or PNG frames (``frames_dir``).

    ``path_spec``: a :class:`Cameras` batch (normalised world), a path name (``orbit``, ``spiral``,
    ``dataset``, ``train``/``val``/``test``) or a camera-path JSON (see
    :func:`~omnifield.scenes.camera_paths.load_camera_path`). ``downscale``: divide the cameras'
    resolution by this factor. Default output: ``run.path / "renders" / "<name>_<channel>.mp4"``.
    Time-varying scenes sweep time over the path (see :func:`frame_times`; ``time`` fixes one time).
    Returns the video file or the frames folder.
    """
    if isinstance(path_spec, Cameras):
        cams, name = path_spec, "path"
    else:
        cams = load_camera_path(path_spec, run, num_frames=num_frames)
        name = Path(str(path_spec)).stem
    if downscale is not None and downscale != 1:
        cams = cams.rescaled(1.0 / float(downscale))
    if out is None and frames_dir is None:
        if getattr(run, "path", None) is None:
            raise ConfigError("render_path: give out= or frames_dir= (the run has no directory)")
        out = Path(run.path) / "renders" / f"{name}_{channel}.mp4"
    device = next((t.device for t in list(run.scene.parameters()) + list(run.scene.buffers())), torch.device("cpu"))
    times = frame_times(run.scene, cams, time)
    cams = cams.to(device)
    bounds: list = [None]

    def frames():
        with _progress(f"rendering {name} ({channel})", progress) as bar:
            task = bar.add_task("render", total=len(cams))
            for c in range(len(cams)):
                t = None if times is None else float(times[c])
                o = run.scene.render(cams[c], time=t, options=options or RenderOptions())[0]
                if channel == "depth" and bounds[0] is None:
                    bounds[0] = depth_range(o.depth, o.alpha)
                yield to_frame(o, channel, bounds[0])
                bar.advance(task)

    if frames_dir is not None:
        import imageio.v2 as imageio

        frames_dir = Path(frames_dir)
        frames_dir.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(frames()):
            fd, tmp = tempfile.mkstemp(dir=frames_dir, prefix=".frame", suffix=".png")
            os.close(fd)
            imageio.imwrite(tmp, frame)
            os.replace(tmp, frames_dir / f"{i:05d}.png")
        return frames_dir
    return write_video(frames(), out, fps)
