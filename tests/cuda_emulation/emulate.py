"""Build a CUDA op's kernels as a host (CPU) extension that emulates the GPU, for logic tests without one.

The ``.cu`` sources of ``native.CUDA_SOURCES[op]`` are copied unchanged except for two rewrites
(``kernel<<<grid, block, smem, stream>>>(args)`` -> ``emu::launch(&kernel, grid, block, smem, stream,
args)`` and ``extern __shared__ T name[];`` -> a pointer to the block's dynamic shared memory), and
compiled as C++20 against ``include/emu_cuda.h`` (threads, barriers, shuffles, atomics) and stand-ins
for CUB and the two c10/cuda headers the glue uses. The glue (``*_bind.cpp``) is the real one, with
its "is a CUDA tensor" checks dropped so that it takes CPU tensors. FMA contraction is off.

Built with ``torch.utils.cpp_extension.load`` into ``<omnifield cache>/<op>-emulated-<hash>``
(minutes on 2 cores, then cached). Used by ``tests/test_cuda_emulated.py``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
LAUNCH = re.compile(r"([\w:]+(?:<\w+>)?)<<<([^>]*)>>>\(")
DYNAMIC_SMEM = re.compile(r"extern __shared__ (\w+) (\w+)\[\];")


def rewrite_cu(text: str) -> str:
    """The host-C++ form of a ``.cu`` file (see the module docstring)."""
    text = LAUNCH.sub(r"emu::launch(&\1, \2, ", text)
    text = DYNAMIC_SMEM.sub(r"\1* \2 = emu::dyn_smem<\1>();", text)
    return '#include "emu_cuda.h"\n' + text


def rewrite_bind(text: str) -> str:
    """The glue without its CUDA-device checks (everything else unchanged)."""
    return text.replace("t.is_cuda() && ", "")


def _write_if_changed(path: Path, text: str) -> None:
    """Leave an unchanged copy alone, so ninja does not recompile it."""
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def build_emulated(op: str = "gaussians") -> ModuleType:
    """Compile (or load the cached) emulated extension of ``op``."""
    from torch.utils import cpp_extension

    from omnifield.cuda import native

    sources = [native.CSRC / s for s in native.CUDA_SOURCES[op]]
    folders = sorted({s.parent for s in sources})
    headers = sorted(h for f in folders for pattern in ("*.h", "*.cuh") for h in f.glob(pattern))
    emu_files = sorted(p for p in (HERE / "include").rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in [*sources, *headers, *emu_files, Path(__file__)]:
        digest.update(path.name.encode() + path.read_bytes())
    key = digest.hexdigest()[:12]
    root = native.cache_root() / f"{op}-emulated-{key}"
    src_dir = root / "src"
    src_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for path in sources:
        if path.suffix == ".cu":
            out = src_dir / f"{path.stem}_emu.cpp"
            _write_if_changed(out, rewrite_cu(path.read_text()))
        else:
            out = src_dir / path.name
            _write_if_changed(out, rewrite_bind(path.read_text()))
        built.append(str(out))
    for header in headers:
        _write_if_changed(src_dir / header.name, header.read_text())
    with native.build_lock(root):
        return cpp_extension.load(
            name=f"omnifield_{op}_emulated_{key}",
            sources=built,
            extra_include_paths=[str(HERE / "include"), str(src_dir)],
            extra_cflags=["-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas"],
            extra_ldflags=["-pthread"],
            build_directory=str(root),
            verbose=False,
        )
