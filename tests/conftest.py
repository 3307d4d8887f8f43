"""Shared fixtures: the real datasets in ../shared/data (skipped when absent), the one tolerance table,
and a writer of tiny Blender-format datasets."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
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
    # Gaussian rasterizer gradients, C++ kernel vs autograd through the reference, each gradient divided by its
    # largest reference entry: float32 sums over hundreds of pixels in other orders, and the kernel recovers T by
    # division back to front (3DGS) where autograd differentiates a cumprod; measured up to ~2e-6 of the scale.
    "gaussian_raster_grad": {"rtol": 1e-5, "atol": 5e-6},
    # the same comparisons in float64 (outputs, and gradients divided by their scale).
    "gaussian_raster_float64": {"rtol": 1e-10, "atol": 1e-12},
    # SSIM (float64, separable conv) vs skimage (float64, scipy gaussian_filter): summation order only.
    "ssim_vs_skimage": {"rtol": 0.0, "atol": 1e-6},
    # CUDA Gaussian splatting forward vs the reference on the GPU: float32, the same operations but
    # other summation orders (matmuls, cumprod scans vs a running product, FMA contraction).
    "gaussians_cuda_forward": {"rtol": 1e-4, "atol": 1e-5},
    # ... its gradients: float atomics summed in arbitrary order over hundreds of pixels per Gaussian,
    # transmittance recovered by division back to front; atol is relative to the gradient's max |.|
    # (a CPU emulation of the kernels measured ~1e-6 of it: 100x margin for GPU FMA and atomics).
    "gaussians_cuda_backward": {"rtol": 1e-4, "atol": 1e-4},
    # CUDA hash / SH encodings forward vs the reference on the same device: float32 sums of 8 products in
    # another order.
    "encodings_cuda_forward": {"rtol": 1e-5, "atol": 1e-5},
    # ... gradients: float atomics summed in arbitrary order (hundreds of points per coarse row); atol is
    # relative to the gradient's max |.|.
    "encodings_cuda_backward": {"rtol": 1e-4, "atol": 1e-5},
    # float16 table gradients: both sides rounded to half (1 ulp = 2^-10 relative) after float32 sums.
    "encodings_cuda_half_grad": {"rtol": 2e-3, "atol": 1e-3},
    # CUDA marching / compositing vs the reference on the same device: sample sets are compared exactly
    # (not through this table); weights and composites accumulate the optical depth in float64 as the
    # reference does, so only float32 rounding of exp and products differs.
    "marching_cuda_forward": {"rtol": 1e-5, "atol": 1e-5},
    # ... gradients: suffix sums in another order than autograd's; atol relative to the max |grad|.
    "marching_cuda_backward": {"rtol": 1e-4, "atol": 1e-4},
}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny networks (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    one thread is as fast on an idle CPU, and on a shared, oversubscribed one OpenMP's spin-waits make
    two threads 10x slower (measured: 200 training steps 17 s against 207 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def two_object_scene(tmp_path_factory):
    """Factory fixture: ``two_object_scene(name, n_train, n_test)``, a loaded synthetic scene (a sphere
    and a box, 32x32 views, images from the independent ray caster) in a fresh temporary folder."""
    from omnifield.datasets.load import load_scene
    from omnifield.datasets.synth import SynthConfig, synthesize

    def make(name: str, n_train: int, n_test: int):
        root = synthesize(tmp_path_factory.mktemp(name) / "synth",
                          SynthConfig(n_train=n_train, n_test=n_test, width=32, height=32, supersample=1,
                                      objects=("sphere", "box")))
        return load_scene(root)

    return make


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


@pytest.fixture(scope="session")
def cuda_extension():
    """``load(op)``: the CUDA extension of ``op`` (GPU tier); a missing nvcc or disabled native kernels
    skip, a build failure on a GPU machine fails with the reason."""
    import warnings

    from omnifield.cuda import native

    def load(op: str):
        if native.native_disabled():
            pytest.skip(f"native kernels disabled by ${native.DISABLE_ENV}")
        kit = native.find_cuda_toolkit()
        if kit.home is None:
            pytest.skip(f"no CUDA toolkit, the CUDA extension cannot be built here: {kit.how}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            module = native.load_cuda_extension(op)
        assert module is not None, f"CUDA build failed: {native.last_cuda_error(op)}"
        return module

    return load


def _load_module(name: str, path: Path):
    """Import the file ``path`` as module ``name`` (a fresh module object every call)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_module():
    """``load(name, path)``: import a file as a fresh module (the GPU-tier test files under emulation)."""
    return _load_module


@pytest.fixture(scope="session")
def emulated_extension():
    """``build(op)``: the CUDA kernels of ``op`` compiled as host C++ with the CPU emulation of
    ``tests/cuda_emulation`` (slow tier; cached on disk), or skip without a compiler."""
    import shutil

    from omnifield.cuda import native

    def build(op: str):
        if native.native_disabled():
            pytest.skip(f"native kernels disabled by ${native.DISABLE_ENV}")
        if not (shutil.which("c++") or shutil.which("g++")):
            pytest.skip("no C++ compiler")
        emulate = _load_module("omnifield_cuda_emulation", Path(__file__).resolve().parent / "cuda_emulation" / "emulate.py")
        return emulate.build_emulated(op)

    return build


def write_blender(root: Path, *, n: int = 6, size: int = 8, image="random", frames=None) -> Path:
    """A tiny Blender-format dataset in ``root``: ``transforms_{train,test}.json`` and RGBA PNGs.

    Camera ``k`` of ``n`` sits on a circle of radius 4 at height 1 and looks at the origin (OpenGL
    axes, ``camera_angle_x`` 0.7); every 3rd frame (k = 0, 3, ...) is a test frame. ``frames``: write only
    these of the ``n`` circle positions (default all). ``image``: ``"random"`` (RGBA noise, seeded, drawn
    frame by frame), ``"gradient"`` (a smooth colour gradient with alpha 0.5 left of x = 0.3 and 1
    right of it), or an RGB / RGBA tuple of uint8 values (a solid colour, alpha 255 if not given).
    """
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    written = {"train": [], "test": []}
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k in range(n) if frames is None else frames:
        a = 2 * math.pi * k / n
        pos = np.array([4 * math.cos(a), 4 * math.sin(a), 1.0])
        z = pos / np.linalg.norm(pos)  # OpenGL: the camera looks along -z
        x = np.cross([0.0, 0.0, 1.0], z)
        x /= np.linalg.norm(x)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, pos
        if isinstance(image, str) and image == "random":
            img = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
        elif isinstance(image, str) and image == "gradient":
            img = (np.stack([xx, yy, 0.5 + 0 * xx, 0.5 + 0.5 * (xx > 0.3)], -1) * 255).astype(np.uint8)
        elif isinstance(image, (tuple, list)) and len(image) in (3, 4):
            img = np.empty((size, size, 4), np.uint8)
            img[:] = tuple(image) + (255,) * (4 - len(image))
        else:
            raise ValueError(f"write_blender: image must be 'random', 'gradient' or an RGB(A) tuple, got {image!r}")
        split = "test" if k % 3 == 0 else "train"
        (root / split).mkdir(exist_ok=True)
        iio.imwrite(root / split / f"r_{k}.png", img)
        written[split].append({"file_path": f"./{split}/r_{k}", "transform_matrix": m.tolist()})
    for split, fr in written.items():
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": fr}))
    return root


@pytest.fixture
def blender_dataset():
    """Factory fixture: :func:`write_blender` (``blender_dataset(root, n=..., size=..., image=..., frames=...)``)."""
    return write_blender


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def xvfb():
    """An Xvfb server on a free display with ``DISPLAY`` set, for every window test of the session.

    Session-scoped on purpose: the viewer keeps one dearpygui context per process, and a context created
    after one was destroyed can crash in its first frames (see ``viewer/display.py``), so the context is
    released once, when the session ends, not per test module.
    """
    import importlib.util
    import shutil
    import subprocess
    import time

    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    if importlib.util.find_spec("dearpygui") is None:
        pytest.skip("dearpygui is not installed (pip install 'omnifield[viewer]')")
    n = next((n for n in range(99, 200)
              if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists()), None)
    if n is None:
        raise RuntimeError("no free X display number in 99..199")
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Xvfb :{n} did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    old = {k: os.environ.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY")}
    os.environ["DISPLAY"] = f":{n}"
    os.environ.pop("WAYLAND_DISPLAY", None)
    yield f":{n}"
    from omnifield.viewer.app import release_display

    release_display()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)
