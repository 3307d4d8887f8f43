"""Timing helper for the viewer benchmark (``bench/viewer.py``): milliseconds per resolution level."""

from __future__ import annotations

import statistics

from omnifield.viewer.camera import ViewCamera
from omnifield.viewer.worker import DEFAULT_LEVELS, FrameRequest, render_request


def time_levels(source, camera: ViewCamera, levels: tuple[int, ...] = DEFAULT_LEVELS, repeats: int = 3, *,
                channel: str = "rgb", aspect: float = 1.0, time: float | None = None, chunk: int = 8192,
                warmup: int = 1, step_scale: float = 1.0) -> dict[int, float]:
    """Median wall time (ms) to render ``camera`` at each long-side ``level``, colour mapping included.

    Renders in the calling thread, exactly as the :class:`~omnifield.viewer.worker.RenderWorker`
    does per level (no grad, chunked, never interrupted); ``warmup`` untimed renders per level come
    first (caches, lazy kernel builds). ``step_scale``: as the worker's coarse levels use
    (:data:`~omnifield.viewer.worker.PREVIEW_STEP_SCALE`) or 1. Returns ``{level: ms}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    request = FrameRequest(camera, channel=channel, time=time, aspect=aspect, chunk=chunk)
    out: dict[int, float] = {}
    for level in levels:
        for _ in range(max(0, warmup)):
            render_request(source, request, level, step_scale=step_scale)
        times = [render_request(source, request, level, step_scale=step_scale)[0]["render_ms"] for _ in range(repeats)]
        out[int(level)] = statistics.median(times)
    return out
