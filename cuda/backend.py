"""Backend selection for the ops in :mod:`omnifield.cuda.ops`.

Four names exist: ``"torch"`` (the pure-PyTorch references in :mod:`omnifield.cuda.reference`,
always available: the oracle), ``"cpp"`` (C++/OpenMP CPU kernels from ``cuda/csrc`` where an op has
one, built just in time on first use; the reference elsewhere), ``"cuda"`` (CUDA kernels where an op has them: the Gaussian rasterizer and 4D slicing; the
radiance-field kernels arrive with issue 5)
and ``"tcnn"`` (tiny-cuda-nn). Automatic selection: ``cuda`` with a GPU and a build, else ``cpp``
unless ``OMNIFIELD_NO_NATIVE=1``. Asking for an unavailable name falls back with a single warning
per name (``cuda``/``tcnn`` -> ``cpp`` or ``torch``); a failed native build warns once and the op
runs its reference. Nothing happens at import time: the environment variable
``OMNIFIELD_BACKEND`` is read when :func:`resolve_backend` is called.
"""

from __future__ import annotations

import os
import warnings

BACKENDS = ("torch", "cpp", "cuda", "tcnn")
ENV_VAR = "OMNIFIELD_BACKEND"

_warned: set[str] = set()


def _available(name: str) -> bool:
    """Whether the kernels of ``name`` can run here (checked without building anything)."""
    if name == "torch":
        return True
    if name == "cpp":
        return os.environ.get("OMNIFIELD_NO_NATIVE", "") not in ("1", "true", "yes")
    if name == "cuda":
        # A GPU is present; each op builds its CUDA extension on first use and falls back to the
        # reference (one warning) when that build fails. Radiance-field CUDA kernels: issue 5.
        import torch

        return torch.cuda.is_available()
    return False  # tiny-cuda-nn arrives with issue 5


def resolve_backend(name: str | None = None) -> str:
    """The backend to use: ``name``, else ``$OMNIFIELD_BACKEND``, else automatic.

    Automatic selection picks ``"cuda"`` when a GPU and a build are present, otherwise ``"torch"``.
    An explicitly requested but unavailable backend falls back to ``"torch"`` with a one-time
    ``RuntimeWarning``. Raises ``ValueError`` for an unknown name.
    """
    requested = name if name is not None else os.environ.get(ENV_VAR) or None
    if requested is None:
        return "cuda" if _available("cuda") else ("cpp" if _available("cpp") else "torch")
    requested = requested.strip().lower()
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r} (from {'argument' if name else ENV_VAR}); choose one of {BACKENDS}")
    if _available(requested):
        return requested
    if requested not in _warned:
        _warned.add(requested)
        warnings.warn(
            f"omnifield backend {requested!r} is not available (no compiled kernels in this build); "
            "falling back to the CPU kernels / pure-PyTorch references",
            RuntimeWarning,
            stacklevel=2,
        )
    return "cpp" if _available("cpp") else "torch"
