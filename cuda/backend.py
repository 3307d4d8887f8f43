"""Backend selection for the ops in :mod:`omnifield.cuda.ops`.

Four names exist: ``"torch"`` (the pure-PyTorch references in :mod:`omnifield.cuda.reference`,
always available: the oracle), ``"cpp"`` (C++/OpenMP CPU kernels from ``cuda/csrc`` where an op has
one, built just in time on first use; the reference elsewhere), ``"cuda"`` (CUDA kernels on CUDA
tensors: hash and SH encodings, ray/box intersection, occupancy-grid marching and update,
compositing, the Gaussian rasterizer and 4D slicing; C++ kernels on CPU tensors) and ``"tcnn"``
(``"cuda"`` plus tiny-cuda-nn's hash grid and fused MLPs in :class:`~omnifield.fields.HashGridEncoding`
and :class:`~omnifield.fields.MLP`, chosen when the module is built; see
:mod:`omnifield.cuda.tcnn_backend`). Automatic selection: ``cuda`` with a GPU, else ``cpp`` unless
``OMNIFIELD_NO_NATIVE=1``, else ``torch``; never ``tcnn`` (ask for it). Asking for an unavailable
name falls back with a single warning per name saying why (``cuda``/``tcnn`` -> ``cpp`` or
``torch``); a failed native build warns once and the op runs its reference. Nothing happens at
import time: the environment variable ``OMNIFIELD_BACKEND`` is read when :func:`resolve_backend` is
called (``omnifield --backend NAME`` sets it for the process; ``omnifield doctor`` prints what each
op runs and why).
"""

from __future__ import annotations

import os
import warnings

BACKENDS = ("torch", "cpp", "cuda", "tcnn")
ENV_VAR = "OMNIFIELD_BACKEND"

_warned: set[str] = set()


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here (checked without building anything), or ``None``."""
    if name == "torch":
        return None
    if os.environ.get("OMNIFIELD_NO_NATIVE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "native kernels are disabled by $OMNIFIELD_NO_NATIVE"
    if name == "cpp":
        return None
    if name == "tcnn":  # a CUDA device and an importable tinycudann
        from omnifield.cuda import tcnn_backend

        return tcnn_backend.unavailable_reason()
    import torch

    if not torch.cuda.is_available():
        # Each op builds its CUDA extension on first use and falls back to the reference (one
        # warning) when that build fails: a GPU is all "available" asks for.
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _available(name: str) -> bool:
    """Whether the kernels of ``name`` can run here (checked without building anything)."""
    return unavailable_reason(name) is None


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$OMNIFIELD_BACKEND``, else automatic.

    Automatic selection picks ``"cuda"`` when a GPU is present, else ``"cpp"``, else ``"torch"``.
    An explicitly requested but unavailable backend falls back to ``"cpp"`` (or ``"torch"``) with a
    one-time ``RuntimeWarning`` saying why. Raises ``ValueError`` for an unknown name.
    """
    requested = name if name is not None else os.environ.get(ENV_VAR) or None
    if requested is None:
        return "cuda" if _available("cuda") else ("cpp" if _available("cpp") else "torch")
    requested = requested.strip().lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r} (from {'argument' if name else ENV_VAR}); choose one of {BACKENDS}")
    why = unavailable_reason(requested)
    if why is None:
        return requested
    if requested not in _warned:
        _warned.add(requested)
        warnings.warn(
            f"omnifield backend {requested!r} is not available here ({why}); "
            "falling back to the CPU kernels / pure-PyTorch references",
            RuntimeWarning,
            stacklevel=2,
        )
    return "cpp" if _available("cpp") else "torch"
