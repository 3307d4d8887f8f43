"""The render thread: the UI thread submits :class:`FrameRequest`s, this thread hands back :class:`Frame`s.

Progressive refinement: each request is rendered at its coarsest level first, handed over, then at
each finer level unless a newer request arrived. Submitting bumps a generation counter; the running
render sees it through ``should_stop`` at its next chunk and gives up, and no frame of an older
generation is published after :meth:`RenderWorker.submit` returns. Rendering runs under
``torch.no_grad()``; with a ``lock`` (a Trainer's ``.lock`` during live training) the source holds
it while each chunk renders.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import ContextManager

import numpy as np
import torch

from omnifield.scenes.base import RenderOptions
from omnifield.scenes.video import depth_range, to_frame
from omnifield.viewer.camera import ViewCamera, to_cameras

DEFAULT_LEVELS = (128, 256, 512)
PREVIEW_STEP_SCALE = 2.0
"""Marching-step multiplier of the coarse levels (full quality at the final level)."""


@dataclass(frozen=True, eq=False)
class FrameRequest:
    """What to render.

    Attributes:
        camera: the view.
        channel: one of the source's ``channels`` (depth is colour-mapped with turbo).
        time: time for dynamic sources, None for static ones.
        crop_box: optional ``[2, 3]`` box (min, max) in the source's world; outside is empty.
        background: RGB in [0, 1], or None for the source's default.
        levels: long-side resolutions, coarse to fine; None = the worker's levels.
        aspect: width / height of the view.
        depth_bounds: (near, far) of the depth colour map; None = from the coarsest level's
            1st / 99th percentiles, kept for the finer levels so colours do not jump.
        chunk: rays per chunk (the granularity of interruption).
    """

    camera: ViewCamera
    channel: str = "rgb"
    time: float | None = None
    crop_box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    background: tuple[float, float, float] | None = None
    levels: tuple[int, ...] | None = None
    aspect: float = 1.0
    depth_bounds: tuple[float, float] | None = None
    chunk: int = 8192


@dataclass(frozen=True, eq=False)
class Frame:
    """One rendered image handed to the UI.

    Attributes:
        image: ``[H, W, 3]`` uint8.
        level: the long-side resolution it was rendered at.
        width, height: image size.
        render_ms: wall time of the render (ms), colour mapping included.
        generation: the request's generation (increases with every submit).
        channel: what the image shows.
        final: True for the finest level of its request.
        request: the request it answers.
        texture: ``[H * W * 4]`` float32 RGBA in [0, 1] of ``image`` (alpha 1), made by the render
            thread so that the UI thread only hands it to dearpygui (:func:`frame_to_texture`).
    """

    image: np.ndarray
    level: int
    width: int
    height: int
    render_ms: float
    generation: int
    channel: str
    final: bool
    request: FrameRequest | None = None
    texture: np.ndarray | None = None


def frame_to_texture(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 frame -> flat ``[H * W * 4]`` float32 RGBA (alpha 1), one contiguous buffer."""
    h, w = image.shape[:2]
    out = np.ones((h, w, 4), np.float32)
    np.multiply(image[..., :3], np.float32(1 / 255), out=out[..., :3])
    return out.reshape(-1)


def level_size(level: int, aspect: float) -> tuple[int, int]:
    """``(width, height)`` with the long side ``level`` pixels and ``width / height ~= aspect``."""
    if level < 1 or not aspect > 0:
        raise ValueError(f"level must be >= 1 and aspect > 0, got {level}, {aspect}")
    if aspect >= 1:
        return int(level), max(1, round(level / aspect))
    return max(1, round(level * aspect)), int(level)


def render_request(source, request: FrameRequest, level: int, should_stop=lambda: False, *,
                   lock: ContextManager | None = None, depth_bounds=None, step_scale: float = 1.0):
    """Render ``request`` at one level: ``(Frame fields dict, depth_bounds)`` or None when stopped.

    ``step_scale``: :attr:`RenderOptions.step_scale` (the worker uses :data:`PREVIEW_STEP_SCALE` for
    every level but the last, so frames keep up with a moving camera).

    Used by the worker and by :func:`omnifield.viewer.timing.time_levels`; runs in the caller's thread.
    """
    w, h = level_size(level, request.aspect)
    cams = to_cameras(request.camera, w, h)
    options = RenderOptions(chunk=request.chunk, background=request.background, crop_box=request.crop_box,
                            step_scale=step_scale)
    t0 = time.perf_counter()
    with torch.no_grad():
        kwargs = {} if lock is None else {"lock": lock}
        out = source.render(cams, request.time, options, should_stop, **kwargs)
        if out is None:
            return None
        bounds = request.depth_bounds or depth_bounds
        if request.channel == "depth" and bounds is None:
            bounds = depth_range(out.depth, out.alpha)
        image = to_frame(out, request.channel, bounds)
    ms = 1000.0 * (time.perf_counter() - t0)
    return dict(image=image, level=int(level), width=w, height=h, render_ms=ms, channel=request.channel), bounds


class RenderWorker(threading.Thread):
    """A daemon thread that renders the newest request progressively (started on construction).

    ``source``: a :class:`~omnifield.viewer.sources.ViewSource`. ``levels``: default long-side
    resolutions. ``lock``: held by the source while each chunk renders (live training).
    ``frames``: a bounded queue of :class:`Frame` (the oldest is dropped when full); :meth:`latest`
    returns the newest frame without blocking. ``idle`` is set once the last request is fully
    refined (or failed; see ``error``).
    """

    def __init__(self, source, *, levels: tuple[int, ...] = DEFAULT_LEVELS, lock: ContextManager | None = None,
                 max_queued: int = 8, autostart: bool = True):
        super().__init__(name="omnifield-render", daemon=True)
        if not levels or any(int(x) < 1 for x in levels):
            raise ValueError(f"levels must be positive long-side sizes, got {levels}")
        self.source = source
        self.levels = tuple(int(x) for x in levels)
        self.lock = lock
        self.frames: queue.Queue[Frame] = queue.Queue(maxsize=max_queued)
        self.idle = threading.Event()
        self.idle.set()
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._pending: FrameRequest | None = None
        self._generation = 0
        self._stopping = False
        self._latest: Frame | None = None
        if autostart:
            self.start()

    @property
    def generation(self) -> int:
        """The generation of the newest submitted request (0 before any)."""
        return self._generation

    def submit(self, request: FrameRequest) -> int:
        """Queue ``request`` in place of any pending one and interrupt the running render; returns its generation."""
        with self._cond:
            self._generation += 1
            self._pending = request
            self.idle.clear()
            self._cond.notify_all()
            return self._generation

    def latest(self) -> Frame | None:
        """The newest published frame (any generation), or None; never blocks."""
        with self._cond:
            return self._latest

    def stop(self, timeout: float | None = 5.0) -> None:
        """Interrupt the render, end the thread and join it (``timeout`` seconds at most)."""
        with self._cond:
            self._stopping = True
            self._generation += 1
            self._cond.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def __enter__(self) -> "RenderWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    while self._pending is None and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    request, gen = self._pending, self._generation
                    self._pending = None
                try:
                    self._refine(request, gen)
                except Exception as e:  # keep the thread alive; the UI shows worker.error
                    self.error = e
                with self._cond:
                    if self._pending is None and gen == self._generation:
                        self.idle.set()

    def _refine(self, request: FrameRequest, gen: int) -> None:
        levels = tuple(request.levels) if request.levels else self.levels
        stale = lambda: self._stopping or self._generation != gen  # noqa: E731
        bounds = None
        for k, level in enumerate(levels):
            if stale():
                return
            final = k == len(levels) - 1
            result = render_request(self.source, request, level, stale, lock=self.lock, depth_bounds=bounds,
                                    step_scale=1.0 if final else PREVIEW_STEP_SCALE)
            if result is None:
                return
            fields, bounds = result
            frame = Frame(**fields, generation=gen, final=final, request=request,
                          texture=frame_to_texture(fields["image"]))
            with self._cond:
                if gen != self._generation:  # a newer request was submitted while we rendered
                    return
                self._latest = frame
                self.error = None
                self._put(frame)

    def _put(self, frame: Frame) -> None:
        while True:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                except queue.Empty:
                    pass


def with_levels(request: FrameRequest, levels: tuple[int, ...]) -> FrameRequest:
    """The same request at other levels (e.g. only the coarsest while the user drags)."""
    return replace(request, levels=tuple(levels))
