"""The CUDA Gaussian kernels run on the CPU under emulation (slow tier): logic checks without a GPU.

``tests/cuda_emulation`` compiles the very ``.cu`` sources and the real glue as a host extension
that emulates CUDA threads, barriers, warp shuffles and atomics (one std::thread per CUDA thread).
The GPU-tier tests of ``tests/test_cuda_gaussians.py`` then run against it on CPU tensors, on
smaller scenes. This checks indexing, synchronisation, the math of every backward and the glue's
interface; it cannot check GPU-only behaviour (memory model, launch limits, real CUB, speed).
Marked slow: the first build takes minutes (then cached), the tests a few minutes on 2 cores.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from omnifield.cuda import cuda_gaussians as cg

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def emulated(emulated_extension):
    return emulated_extension("gaussians")


@pytest.fixture
def gpu_tests(emulated, monkeypatch, load_module):
    """tests/test_cuda_gaussians.py on CPU tensors, with cuda_gaussians running the emulated kernels."""
    monkeypatch.setattr(cg, "_ext", lambda: emulated)
    monkeypatch.setattr(cg, "supports", lambda *tensors: True)
    module = load_module("omnifield_test_cuda_gaussians_emulated", TESTS / "test_cuda_gaussians.py")
    module.DEVICE = "cpu"
    module.RASTER_SCENE = (37, 21, 250)
    module.PIPELINE_SCENE = (40, 24, 300)
    return module


CASES = [
    ("test_quat_scale_to_covar", {}),
    ("test_project_gaussians", {"antialias": False}),
    ("test_project_gaussians", {"antialias": True}),
    ("test_isect_tiles_matches_reference_exactly", {"tile_size": 16}),
    ("test_rasterize_to_pixels", {"channels": 3, "tile_size": 16, "background": True}),
    ("test_rasterize_to_pixels", {"channels": 5, "tile_size": 16, "background": True}),
    ("test_rasterize_to_pixels", {"channels": 2, "tile_size": 12, "background": False}),
    ("test_rasterize_empty_image_is_background", {}),
    ("test_spherical_harmonics", {"degree": 3}),
    ("test_spherindrical_harmonics", {}),
    ("test_slice_gaussians_4d", {"t_as_tensor": True}),
    ("test_pipeline_matches_reference", {}),
]


IDS = ["-".join([name[5:], *(f"{k}={v}" for k, v in kw.items())]) for name, kw in CASES]


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_kernels_under_emulation(gpu_tests, emulated, tol, name, kwargs):
    fn = getattr(gpu_tests, name)
    args = {"ext": emulated, **({"tol": tol} if "tol" in inspect.signature(fn).parameters else {}), **kwargs}
    fn(**args)
