"""The CUDA kernels compile without a GPU, and stay free of torch headers (issue 5's rule).

Every ``.cu`` file under ``cuda/csrc`` is compiled with ``nvcc -c -std=c++17 -arch=sm_90`` (the
H200's architecture) into a temporary folder: one nvcc call per file, skipped with the reason where
nvcc is absent. The torch glue (``*_bind.cpp``) needs torch's CUDA headers and is built only by
``torch.utils.cpp_extension`` on a GPU machine (``tests/test_cuda_gaussians.py``,
``bench/gpu_gaussians.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "cuda" / "csrc"
CU_FILES = sorted(CSRC.rglob("*.cu"))
TORCH_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10|caffe2|pybind11)/', re.MULTILINE)
LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


def _kernel_files() -> list[Path]:
    """The ``.cu`` files, every ``.cuh`` and the headers the ``.cu`` files include (transitively): what nvcc
    compiles. The C++ CPU kernels' own headers (``*_cpu.h``) may use torch."""
    seen, todo = set(), [*CU_FILES, *CSRC.rglob("*.cuh")]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        todo += [(path.parent / name).resolve() for name in LOCAL_INCLUDE.findall(path.read_text())]
    return sorted(seen)


KERNEL_FILES = _kernel_files()


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


NVCC = _nvcc()


def test_kernel_sources_exist():
    assert CU_FILES, f"no .cu files under {CSRC}"


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: str(p.relative_to(CSRC)))
def test_no_torch_headers_in_kernels(path):
    """``.cu`` / ``.cuh`` / ``.h`` files hold params structs, kernels and launchers only."""
    hits = TORCH_INCLUDE.findall(path.read_text())
    assert not hits, f"{path.relative_to(CSRC)} includes torch headers ({hits}): move that code to the *_bind.cpp glue"


def test_every_cuda_source_is_built():
    """Each ``.cu`` file belongs to an op of ``native.CUDA_SOURCES`` (or it would never be compiled)."""
    from omnifield.cuda import native

    listed = {CSRC / s for sources in native.CUDA_SOURCES.values() for s in sources}
    assert all(p.is_file() for p in listed), sorted(str(p) for p in listed if not p.is_file())
    assert set(CU_FILES) <= listed, sorted(str(p.relative_to(CSRC)) for p in set(CU_FILES) - listed)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (no CUDA toolkit): .cu files are compile-checked where it is")
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: str(p.relative_to(CSRC)))
def test_cu_compiles(path, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-arch=sm_90", "-O3", str(path), "-o", str(tmp_path / (path.stem + ".o"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nvcc failed on {path.relative_to(CSRC)}:\n{proc.stdout}\n{proc.stderr}"
