"""The render thread: progressive refinement, interruption, idle, rendering only on the worker thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from omnifield.renderers.types import RenderOutput
from omnifield.viewer.camera import default_view
from omnifield.viewer.timing import time_levels
from omnifield.viewer.worker import PREVIEW_STEP_SCALE, FrameRequest, RenderWorker, level_size

TIMEOUT = 5.0


class FakeSource:
    """A cheap source: a colour gradient, ``chunks`` interruptible steps, optional gate to hold a render."""

    name = "fake"
    channels = ("rgb", "alpha", "depth")
    time_range = None
    scene_box = torch.tensor([[-1.0] * 3, [1.0] * 3])
    dataset_cameras = None
    world_from_dataset = torch.eye(4)

    def __init__(self, chunks=4, delay=0.0):
        self.chunks, self.delay = chunks, delay
        self.threads: list[threading.Thread] = []
        self.sizes: list[tuple[int, int]] = []
        self.grad_enabled: list[bool] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.locked: list[bool] = []
        self.end_gate = threading.Event()
        self.end_gate.set()
        self.at_end = threading.Event()

    def stats(self):
        return {"kind": "fake"}

    def render(self, cameras, t, options, should_stop, *, lock=None):
        self.threads.append(threading.current_thread())
        self.grad_enabled.append(torch.is_grad_enabled())
        self.step_scales = getattr(self, "step_scales", []) + [options.step_scale]
        h, w = int(cameras.height[0]), int(cameras.width[0])
        self.sizes.append((w, h))
        self.started.set()
        for _ in range(self.chunks):
            self.gate.wait(TIMEOUT)
            if should_stop():
                return None
            if lock is not None:
                with lock:
                    self.locked.append(True)
            if self.delay:
                time.sleep(self.delay)
        self.at_end.set()
        self.end_gate.wait(TIMEOUT)
        rgb = torch.linspace(0, 1, w)[None, :, None].expand(h, w, 3).contiguous()
        ones = torch.ones(h, w, 1)
        return RenderOutput(rgb=rgb, alpha=ones, depth=ones * (1 + torch.arange(w)[None, :, None]))


def _request(**kw):
    return FrameRequest(default_view(torch.tensor([[-1.0] * 3, [1.0] * 3])), **kw)


def _drain(worker, until_final=True):
    frames = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        f = worker.frames.get(timeout=TIMEOUT)
        frames.append(f)
        if f.final and until_final:
            break
    return frames


def test_level_size():
    assert level_size(128, 1.0) == (128, 128)
    assert level_size(256, 16 / 9) == (256, 144)
    assert level_size(100, 0.5) == (50, 100)
    with pytest.raises(ValueError):
        level_size(0, 1.0)


def test_frames_arrive_coarse_to_fine_from_the_worker_thread():
    src = FakeSource()
    with RenderWorker(src, levels=(8, 16, 32)) as worker:
        gen = worker.submit(_request(aspect=2.0))
        frames = _drain(worker)
        assert worker.idle.wait(TIMEOUT)
        assert [f.level for f in frames] == [8, 16, 32]
        assert [f.final for f in frames] == [False, False, True]
        assert [(f.width, f.height) for f in frames] == [(8, 4), (16, 8), (32, 16)]
        for f in frames:
            assert f.image.dtype == np.uint8 and f.image.shape == (f.height, f.width, 3)
            assert f.generation == gen and f.channel == "rgb" and f.render_ms >= 0
        assert worker.latest() is frames[-1]
        assert set(src.threads) == {worker} and worker is not threading.current_thread()
        assert not any(src.grad_enabled)
        assert worker.error is None
        # Coarse levels are previews (coarser marching); the final level is full quality.
        assert src.step_scales == [PREVIEW_STEP_SCALE, PREVIEW_STEP_SCALE, 1.0] and PREVIEW_STEP_SCALE > 1


def test_request_levels_override_the_worker_levels_and_depth_is_colour_mapped():
    src = FakeSource()
    with RenderWorker(src, levels=(8, 16)) as worker:
        worker.submit(_request(levels=(4, 12), channel="depth"))
        frames = _drain(worker)
        assert [f.level for f in frames] == [4, 12]
        img = frames[-1].image
        assert not np.array_equal(img[0, 0], img[0, -1])  # depth varies along x: turbo colours differ


def test_new_request_interrupts_and_stale_generation_never_refines():
    src = FakeSource(chunks=50)
    with RenderWorker(src, levels=(8, 16, 32)) as worker:
        src.gate.clear()  # hold the first render mid-way
        old = worker.submit(_request())
        assert src.started.wait(TIMEOUT)
        new = worker.submit(_request(channel="alpha"))
        src.gate.set()
        frames = _drain(worker)
        assert worker.idle.wait(TIMEOUT)
        assert new > old
        assert all(f.generation == new for f in frames)  # nothing from the interrupted request
        assert [f.level for f in frames] == [8, 16, 32] and frames[-1].channel == "alpha"
        assert worker.frames.empty()


def test_a_render_finishing_after_submit_is_not_published():
    # The old render passes its last should_stop check, then the new request is submitted, then the
    # old render returns a complete output: the worker must drop it.
    src = FakeSource(chunks=1)
    src.end_gate.clear()
    with RenderWorker(src, levels=(8, 16)) as worker:
        old = worker.submit(_request())
        assert src.at_end.wait(TIMEOUT)
        new = worker.submit(_request(channel="depth"))
        src.end_gate.set()
        frames = _drain(worker)
        assert worker.idle.wait(TIMEOUT)
        assert old not in {f.generation for f in frames}
        assert [(f.generation, f.level) for f in frames] == [(new, 8), (new, 16)]


def test_idle_and_errors_and_lock():
    src = FakeSource()
    lock = threading.Lock()
    with RenderWorker(src, levels=(8,), lock=lock) as worker:
        assert worker.idle.is_set()  # nothing to do yet
        worker.submit(_request(channel="nope"))
        assert worker.idle.wait(TIMEOUT)
        assert worker.error is not None and "nope" in str(worker.error)
        assert worker.is_alive()
        worker.submit(_request())
        assert worker.frames.get(timeout=TIMEOUT).final
        assert worker.idle.wait(TIMEOUT) and worker.error is None
        assert src.locked and not lock.locked()
    assert not worker.is_alive()


def test_stop_interrupts_a_running_render():
    src = FakeSource(chunks=1000, delay=0.001)
    worker = RenderWorker(src, levels=(8,))
    worker.submit(_request())
    assert src.started.wait(TIMEOUT)
    t0 = time.monotonic()
    worker.stop()
    assert not worker.is_alive() and time.monotonic() - t0 < 2.0


def test_time_levels():
    src = FakeSource()
    ms = time_levels(src, _request().camera, (8, 16), repeats=2)
    assert sorted(ms) == [8, 16] and all(v >= 0 for v in ms.values())
    assert src.sizes[-1] == (16, 16)
