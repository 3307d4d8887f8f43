"""The CUDA marching and compositing kernels run on the CPU under emulation (slow tier).

``tests/cuda_emulation`` compiles the very ``.cu`` sources of the ``"marching"`` extension and its
real glue as a host extension emulating CUDA threads and atomics (one std::thread per CUDA thread;
``include/emu_extra_marching.h`` adds atomicCAS / atomicExch and the bit casts). The GPU-tier tests
of ``tests/test_cuda_marching.py`` then run against it on CPU tensors with tiny sizes: indexing, the
two marching passes and the scan, the float operation order (bit-identical samples), the EMA's
atomic max and every backward. GPU-only behaviour (memory model, speed) is not checked.
Marked slow: the first build takes a minute or more on 2 cores (then cached).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from omnifield.cuda import cuda_marching as cm

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def emulated(emulated_extension):
    return emulated_extension("marching")


@pytest.fixture
def gpu_tests(emulated, monkeypatch, load_module):
    """tests/test_cuda_marching.py on CPU tensors, with cuda_marching running the emulated kernels."""
    monkeypatch.setattr(cm, "_ext", lambda: emulated)
    monkeypatch.setattr(cm, "supports", lambda *tensors: True)
    module = load_module("omnifield_test_cuda_marching_emulated", TESTS / "test_cuda_marching.py")
    module.DEVICE = "cpu"
    module.N_RAYS = 160
    module.GRID_RES = 8
    module.N_COMPOSITE_RAYS = 60
    module.MAX_SAMPLES = 24
    return module


CASES = [
    ("test_ray_aabb_intersect_identical", {}),
    ("test_march_identical", {"levels": 1, "cone_angle": 0.0, "jitter": False}),
    ("test_march_identical", {"levels": 3, "cone_angle": 0.0, "jitter": True}),
    ("test_march_identical", {"levels": 1, "cone_angle": 1 / 256, "jitter": True}),
    ("test_march_identical", {"levels": 3, "cone_angle": 1 / 256, "jitter": False}),
    ("test_march_far_segments_and_partial_intervals", {"cone_angle": 0.0}),
    ("test_march_far_segments_and_partial_intervals", {"cone_angle": 0.05}),
    ("test_march_empty_and_full_grids", {"fill": False, "cone_angle": 0.0}),
    ("test_march_empty_and_full_grids", {"fill": True, "cone_angle": 1 / 256}),
    ("test_march_samples_on_cell_boundaries", {}),
    ("test_march_no_rays_and_no_samples", {}),
    ("test_march_bad_inputs_raise", {}),
    ("test_occupancy_ema_update_identical", {}),
    ("test_render_weights", {"upstream": "all"}),
    ("test_render_weights", {"upstream": "trans"}),
    ("test_composite_rays", {"channels": 3, "early_stop_eps": 0.0}),
    ("test_composite_rays", {"channels": 5, "early_stop_eps": 1e-2}),
    ("test_composite_rays", {"channels": 1, "early_stop_eps": 1e-2}),
    ("test_composite_rays_partial_upstream", {}),
    ("test_compositing_empty_inputs", {}),
]

IDS = ["-".join([name[5:], *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())])
       for name, kw in CASES]


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_kernels_under_emulation(gpu_tests, emulated, tol, name, kwargs):
    fn = getattr(gpu_tests, name)
    args = {"ext": emulated, **({"tol": tol} if "tol" in inspect.signature(fn).parameters else {}), **kwargs}
    fn(**args)
