"""Shared fixtures: the real datasets in ../shared/data (skipped when absent) and the one tolerance table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One table of tolerances (STYLE.md convention 7). Loose entries say why.
TOLERANCES: dict[str, dict[str, float]] = {
    # float32 ops compared against float64 or analytic values.
    "float32": {"rtol": 1e-5, "atol": 1e-5},
    # camera round trips through parsers that store poses as float32 text / decomposed projections.
    "camera_pixels": {"rtol": 0.0, "atol": 1e-2},
    # DTU projection matrices are decomposed (RQ) from float32 files: ~1e-3 px is the file's precision.
    "dtu_pixels": {"rtol": 0.0, "atol": 5e-2},
    # undistortion by Newton iterations converges to ~1e-6 in normalised coordinates.
    "undistort": {"rtol": 0.0, "atol": 1e-4},
    # synth depth unprojected through the written pose: open3d casts float32 rays at t ~ 4 (~1e-6 m).
    "synth_depth": {"rtol": 0.0, "atol": 1e-5},
    # float64 geometry (viewer camera math) against analytic values: a few ulps over a handful of ops.
    "float64": {"rtol": 0.0, "atol": 1e-9},
    # gradients checked in float64.
    "gradcheck": {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3},
    # SSIM (float64, separable conv) vs skimage (float64, scipy gaussian_filter): summation order only.
    "ssim_vs_skimage": {"rtol": 0.0, "atol": 1e-6},
}


@pytest.fixture
def tol():
    return TOLERANCES


def _shared_data_root() -> Path | None:
    env = os.environ.get("OMNIFIELD_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", here.parent.parent / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    return None


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip the test when the folder is absent (a user's fresh clone)."""
    root = _shared_data_root()
    if root is None:
        pytest.skip("../shared/data is absent")
    return root


@pytest.fixture(scope="session")
def native_extension():
    """``load(name)``: the C++ CPU extension ``name`` (built once, cached on disk), or skip with the reason."""
    import warnings

    from omnifield.cuda import native

    def load(name: str):
        if native.native_disabled():
            pytest.skip(f"native kernels disabled by ${native.DISABLE_ENV}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            module = native.load_cpu_extension(name)
        if module is None:
            pytest.skip(f"C++ CPU kernel {name!r} unavailable: {native.last_error(name)}")
        return module

    return load


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
