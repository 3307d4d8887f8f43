"""The CUDA encodings kernels run on the CPU under emulation (slow tier): logic checks without a GPU.

``tests/cuda_emulation`` compiles the very ``.cu`` sources of the ``encodings`` extension (hash grid
and SH) and the real glue as a host extension emulating CUDA threads and atomics (one std::thread
per CUDA thread; ``__half`` from ``include/emu_extra_encodings.h``). The GPU-tier tests of
``tests/test_cuda_encodings.py`` then run against it on CPU tensors with fewer points. This checks
indexing (dense and hashed levels, feature chunks, cell boundaries, clamping), the math of the
backward and double backward, half tables and the glue's checks; not GPU-only behaviour (vector
atomics of sm_90, the memory model, speed). Marked slow: the first build takes minutes (then cached).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from omnifield.cuda import cuda_encodings as ce

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def emulated(emulated_extension):
    return emulated_extension("encodings")


@pytest.fixture
def gpu_tests(emulated, monkeypatch, load_module):
    """tests/test_cuda_encodings.py on CPU tensors, with cuda_encodings running the emulated kernels."""
    monkeypatch.setattr(ce, "_ext", lambda: emulated)
    monkeypatch.setattr(ce, "supports", lambda *tensors: True)
    module = load_module("omnifield_test_cuda_encodings_emulated", TESTS / "test_cuda_encodings.py")
    module.DEVICE = "cpu"
    module.N_POINTS = 500
    return module


CASES = [
    ("test_hash_encode", {"features": 2, "half": False}),
    ("test_hash_encode", {"features": 2, "half": True}),
    ("test_hash_encode", {"features": 3, "half": False}),
    ("test_hash_encode", {"features": 4, "half": True}),
    ("test_hash_encode", {"features": 8, "half": False}),
    ("test_hash_encode_only_requested_gradients", {"x_grad": True, "table_grad": False}),
    ("test_hash_encode_only_requested_gradients", {"x_grad": False, "table_grad": True}),
    ("test_hash_encode_cell_boundaries_match_reference_corners", {}),
    ("test_hash_encode_empty_and_layout_on_device", {}),
    ("test_glue_rejects_bad_inputs", {}),
    ("test_hash_encode_input_grad", {"half": False}),
    ("test_hash_encode_input_grad", {"half": True}),
    ("test_hash_double_backward_eikonal", {"half": False}),
    ("test_hash_double_backward_eikonal", {"half": True}),
    ("test_sh_encode", {"degree": 1}),
    ("test_sh_encode", {"degree": 2}),
    ("test_sh_encode", {"degree": 3}),
    ("test_sh_encode", {"degree": 4}),
]


IDS = ["-".join([name[5:], *(f"{k}={v}" for k, v in kw.items())]) for name, kw in CASES]


@pytest.mark.parametrize("name,kwargs", CASES, ids=IDS)
def test_kernels_under_emulation(gpu_tests, emulated, tol, name, kwargs):
    fn = getattr(gpu_tests, name)
    args = {"ext": emulated, **({"tol": tol} if "tol" in inspect.signature(fn).parameters else {}), **kwargs}
    fn(**args)
