"""What runs here and why: the data behind ``omnifield doctor``.

:func:`diagnose` returns a :class:`Report`: the environment (torch, CUDA device, nvcc, the C++
compiler, tinycudann, caches), the selected backend and why (argument, ``$OMNIFIELD_BACKEND`` or
automatic), and one :class:`OpRow` per public op of :mod:`omnifield.cuda.ops` saying which
implementation runs for CPU tensors and for CUDA tensors ("reference", "C++ CPU kernel",
"CUDA kernel", "torch", "n/a") and why ("no CUDA device", "built, cached in ...", "build failed:
...", "disabled by $OMNIFIELD_NO_NATIVE", "prebuilt by pip install (...)", "not built yet: builds
on first use"). Nothing is built unless ``build=True``, which builds the extensions the selected
backend would use here and records the results. Imports: torch and omnifield.cuda only.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from omnifield.cuda import backend as _backend
from omnifield.cuda import native

REFERENCE, CPP, CUDA, TORCH, NONE = "reference", "C++ CPU kernel", "CUDA kernel", "torch", "n/a"


@dataclass(frozen=True)
class OpSpec:
    """Which native extensions an op of :mod:`omnifield.cuda.ops` can run: ``cpu`` and ``cuda`` are
    extension names of ``native.CPU_SOURCES`` / ``native.CUDA_SOURCES`` (``None``: none), ``wrapper``
    the CUDA wrapper module (``omnifield.cuda.<wrapper>``) that must define a function named ``op``."""

    op: str
    cpu: str | None = None
    cuda: str | None = None
    wrapper: str | None = None
    note: str = ""
    torch_only: bool = False


OPS: tuple[OpSpec, ...] = (
    OpSpec("hash_encode", "hash_grid", "encodings", "cuda_encodings"),
    OpSpec("hash_encode_input_grad", None, "encodings", "cuda_encodings"),
    OpSpec("sh_encode", None, "encodings", "cuda_encodings"),
    OpSpec("ray_aabb_intersect", None, "marching", "cuda_marching"),
    OpSpec("march_occupancy_grid", "ray_marching", "marching", "cuda_marching"),
    OpSpec("grid_lookup", "ray_marching", None),
    OpSpec("occupancy_ema_update", None, "marching", "cuda_marching"),
    OpSpec("render_weights", "compositing", "marching", "cuda_marching"),
    OpSpec("composite_rays", "compositing", "marching", "cuda_marching",
           note="C++: render_weights' kernel + index_add"),
    OpSpec("accumulate_along_rays", torch_only=True),
    OpSpec("quat_scale_to_covar", None, "gaussians", "cuda_gaussians"),
    OpSpec("project_gaussians", None, "gaussians", "cuda_gaussians"),
    OpSpec("spherical_harmonics", None, "gaussians", "cuda_gaussians"),
    OpSpec("isect_tiles", "gaussians", "gaussians", "cuda_gaussians"),
    OpSpec("rasterize_to_pixels", "gaussians", "gaussians", "cuda_gaussians"),
    OpSpec("slice_gaussians_4d", None, "gaussians", "cuda_gaussians"),
    OpSpec("spherindrical_harmonics", None, "gaussians", "cuda_gaussians"),
)


@dataclass(frozen=True)
class Row:
    """One line of the environment (or of the build results): ``name``, ``value``, optional ``note``."""

    name: str
    value: str
    note: str = ""


@dataclass(frozen=True)
class OpRow:
    """What runs one op: for CPU tensors (``cpu``, ``cpu_why``) and CUDA tensors (``cuda``, ``cuda_why``)."""

    op: str
    cpu: str
    cpu_why: str
    cuda: str
    cuda_why: str


@dataclass(frozen=True)
class BackendChoice:
    """The backend of :func:`~omnifield.cuda.backend.resolve_backend`: ``requested`` (``None`` when
    automatic), its ``source`` ("--backend", "$OMNIFIELD_BACKEND", "automatic"), the ``selected`` name,
    ``reason`` in words and whether the requested backend is ``usable`` here."""

    requested: str | None
    source: str
    selected: str
    reason: str
    usable: bool


@dataclass(frozen=True)
class Report:
    """Everything ``omnifield doctor`` prints; ``ok`` is False only when an explicitly requested
    backend is unusable here."""

    environment: list[Row]
    backend: BackendChoice
    ops: list[OpRow]
    builds: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.backend.usable

    def to_dict(self) -> dict:
        """JSON-ready dict: ``environment``, ``backend``, ``ops``, ``builds``, ``ok``."""
        return {"environment": [asdict(r) for r in self.environment], "backend": asdict(self.backend),
                "ops": [asdict(r) for r in self.ops], "builds": [asdict(r) for r in self.builds], "ok": self.ok}


# --- environment -------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    """The last non-empty line of ``cmd``'s output that names a version (``nvcc --version``), else the first."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"({type(exc).__name__}: {exc})"
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for ln in lines:
        if "release" in ln.lower():
            return ln
    return lines[0] if lines else "(no output)"


def compiler_path() -> tuple[str, str | None]:
    """``($CXX or "c++", its resolved path or None)``: the host compiler torch's builds call."""
    name = os.environ.get("CXX") or "c++"
    return name, shutil.which(name)


def _device_row() -> Row:
    if not torch.cuda.is_available():
        why = native.cuda_unavailable_reason() or "no CUDA device"
        return Row("CUDA device", "none", why)
    names = [f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
             for i in range(torch.cuda.device_count())]
    return Row("CUDA device", ", ".join(names))


def environment_rows() -> list[Row]:
    """torch, CUDA, nvcc, C++ compiler, ninja, tinycudann, caches and the relevant variables."""
    from omnifield.cuda import tcnn_backend

    kit = native.find_cuda_toolkit()
    nvcc = kit.nvcc
    cxx, cxx_path = compiler_path()
    tcnn_why = tcnn_backend.unavailable_reason()
    prebuilt = sorted(p.name for p in native.PREBUILT_DIR.glob("*") if p.suffix != ".json") \
        if native.PREBUILT_DIR.is_dir() else []
    return [
        Row("python", f"{platform.python_version()} ({sys.executable})"),
        Row("torch", torch.__version__),
        Row("torch.version.cuda", str(torch.version.cuda), "" if torch.version.cuda else "CPU-only torch build"),
        _device_row(),
        Row("nvcc", f"{nvcc}: {_first_line([nvcc, '--version'])}" if nvcc else "not found",
            f"toolkit {kit.home}: {kit.how}" if nvcc else kit.how),
        Row("C++ compiler", f"{cxx_path}: {_first_line([cxx_path, '--version'])}" if cxx_path else f"{cxx}: not found"),
        Row("ninja", shutil.which("ninja") or "not found", "" if shutil.which("ninja") else "needed by just-in-time builds"),
        Row("tinycudann", "importable" if tcnn_why is None else "unavailable", tcnn_why or ""),
        Row("build cache", str(native.cache_root()), f"${native.CACHE_ENV}"),
        Row("prebuilt modules", ", ".join(prebuilt) or "none", str(native.PREBUILT_DIR)),
        Row(f"${native.DISABLE_ENV}", os.environ.get(native.DISABLE_ENV, "") or "unset"),
        Row(f"${_backend.ENV_VAR}", os.environ.get(_backend.ENV_VAR, "") or "unset"),
    ]


# --- backend ------------------------------------------------------------------------------------------


def backend_choice(name: str | None = None) -> BackendChoice:
    """Which backend :func:`resolve_backend` selects for ``name`` (else ``$OMNIFIELD_BACKEND``, else
    automatic) and why, without warnings. ``source`` is "--backend" for ``name``."""
    env = os.environ.get(_backend.ENV_VAR) or None
    requested = name if name is not None else env
    source = "--backend" if name is not None else (f"${_backend.ENV_VAR}" if env else "automatic")
    if requested is None:
        selected = _backend.resolve_backend()
        if selected == "cuda":
            reason = "automatic: a CUDA device is present"
        else:
            reason = f"automatic: {_backend.unavailable_reason('cuda')}; " + (
                "C++ CPU kernels" if selected == "cpp" else "pure-PyTorch references")
        return BackendChoice(None, source, selected, reason, True)
    requested = requested.strip().lower()
    if requested not in _backend.BACKENDS:
        return BackendChoice(requested, source, "torch", f"unknown backend {requested!r} (from {source}); "
                             f"choose one of {_backend.BACKENDS}", False)
    why = _backend.unavailable_reason(requested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selected = _backend.resolve_backend(requested)
    if why is None:
        return BackendChoice(requested, source, selected, f"requested by {source}", True)
    return BackendChoice(requested, source, selected,
                         f"requested by {source} but unavailable ({why}); falls back to {selected!r}", False)


# --- per-op rows --------------------------------------------------------------------------------------


def _native_state(name: str, kind: str) -> tuple[str, str]:
    """(implementation, why) for CPU (``kind="cpu"``, the C++ extension) or CUDA tensors (``"cuda"``) given the
    state of the extension ``name``: failed, loaded, prebuilt, cached, or built on first use."""
    native_impl = CPP if kind == "cpu" else CUDA
    if kind == "cpu" and native.native_disabled():
        return REFERENCE, f"disabled by ${native.DISABLE_ENV}"
    error = native.last_error(name) if kind == "cpu" else native.last_cuda_error(name)
    if error:
        return REFERENCE, "build failed: " + error.splitlines()[0]
    origin = native.loaded_from(name, kind)
    if origin is not None:
        return native_impl, origin
    found = native.find_prebuilt(name, kind)
    if found.status == "match":
        return native_impl, found.reason
    stale = f" ({found.reason})" if found.status != "absent" else ""
    cached = native.cached_library(name, kind)
    if cached is not None:
        return native_impl, f"built, cached in {cached.parent}{stale}"
    if kind == "cuda":
        kit = native.find_cuda_toolkit()
        if kit.home is None:
            return REFERENCE, f"{kit.how}: the build on first use will fail and the reference runs{stale}"
    folder = native.build_directory(name) if kind == "cpu" else native.cuda_build_directory(name)
    return native_impl, f"not built yet: builds on first use (cache {folder}){stale}"


def _wrapper_missing(spec: OpSpec) -> str | None:
    """Why the CUDA wrapper of ``spec`` cannot run it (placeholder, missing sources), or None."""
    import importlib

    module = importlib.import_module(f"omnifield.cuda.{spec.wrapper}")
    if not callable(getattr(module, spec.op, None)):
        return f"no CUDA kernel yet (omnifield.cuda.{spec.wrapper} is a placeholder)"
    missing = [s for s in native.CUDA_SOURCES[spec.cuda] if not (native.CSRC / s).is_file()]
    return f"CUDA sources missing: {', '.join(missing)}" if missing else None


def op_row(spec: OpSpec, selected: str) -> OpRow:
    """The :class:`OpRow` of one op under backend ``selected`` (see :func:`diagnose`)."""
    if spec.torch_only:
        return OpRow(spec.op, TORCH, "index_add on every device (no kernel needed)", TORCH, "index_add")
    if spec.cpu is None:
        cpu = (REFERENCE, "no C++ CPU kernel for this op")
    elif native.native_disabled():
        cpu = (REFERENCE, f"disabled by ${native.DISABLE_ENV}")
    elif selected == "torch":
        cpu = (REFERENCE, "backend 'torch' forces the references")
    else:
        cpu = _native_state(spec.cpu, "cpu")
    if spec.cuda is None:
        cuda = (REFERENCE, "no CUDA kernel for this op")
    elif (why := native.cuda_unavailable_reason()) is not None:
        cuda = (NONE, why)
    elif (why := _wrapper_missing(spec)) is not None:
        cuda = (REFERENCE, why)
    elif selected not in ("cuda", "tcnn"):
        cuda = (REFERENCE, f"backend {selected!r} selected (CUDA kernels run with 'cuda' or 'tcnn')")
    else:
        cuda = _native_state(spec.cuda, "cuda")
    cpu_why = f"{cpu[1]}; {spec.note}" if spec.note and cpu[0] == CPP else cpu[1]
    return OpRow(spec.op, cpu[0], cpu_why, cuda[0], cuda[1])


def _fields_rows(selected: str) -> list[OpRow]:
    """HashGridEncoding and MLP: tiny-cuda-nn modules under ``tcnn``, else ours (the ops above)."""
    from omnifield.cuda import tcnn_backend

    rows = []
    for name, ours in (("fields.HashGridEncoding", "hash_encode (above)"), ("fields.MLP", "torch (nn.Linear)")):
        if selected == "tcnn":
            cuda = ("tiny-cuda-nn", "backend 'tcnn': built at construction")
        elif _backend.unavailable_reason("tcnn") is None:
            cuda = (ours, "tinycudann is importable: --backend tcnn selects it")
        else:
            cuda = (ours, f"tiny-cuda-nn only with --backend tcnn ({tcnn_backend.unavailable_reason() or 'not requested'})")
        rows.append(OpRow(name, ours, "tiny-cuda-nn needs CUDA tensors", *cuda))
    return rows


# --- builds and the report ----------------------------------------------------------------------------


def build_extensions(selected: str) -> list[Row]:
    """Build (or load from cache / prebuilt) every extension the ops would use here under ``selected``;
    one :class:`Row` per extension: ``"ok"`` with where it came from, or ``"failed"`` with the reason."""
    rows: list[Row] = []
    jobs: list[tuple[str, str]] = []
    if selected != "torch" and not native.native_disabled():
        jobs += [("cpu", n) for n in sorted({s.cpu for s in OPS if s.cpu})]
    if selected in ("cuda", "tcnn") and native.cuda_unavailable_reason() is None:
        jobs += [("cuda", n) for n in sorted({s.cuda for s in OPS if s.cuda})]
    for kind, name in jobs:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = native.load_cpu_extension(name) if kind == "cpu" else native.load_cuda_extension(name)
        seconds = f"{time.perf_counter() - start:.1f} s"
        if module is not None:
            rows.append(Row(f"{name} ({kind})", "ok", f"{native.loaded_from(name, kind) or 'loaded'}; {seconds}"))
        else:
            error = native.last_error(name) if kind == "cpu" else native.last_cuda_error(name)
            rows.append(Row(f"{name} ({kind})", "failed", error or "unavailable"))
    return rows


def diagnose(backend: str | None = None, build: bool = False) -> Report:
    """The doctor's report for backend ``backend`` (else ``$OMNIFIELD_BACKEND``, else automatic).

    ``build=True`` first builds the extensions the selected backend would use here (else nothing is
    built: rows say "not built yet: builds on first use"); a failed build of a requested ``cpp`` /
    ``cuda`` backend makes it unusable (``Report.ok`` False).
    """
    choice = backend_choice(backend)
    builds = build_extensions(choice.selected) if build else []
    failed = [r.name for r in builds if r.value == "failed"]
    if choice.requested in ("cpp", "cuda", "tcnn") and choice.usable and failed:
        kinds = ("cpu",) if choice.requested == "cpp" else ("cpu", "cuda")
        bad = [n for n in failed if n.endswith(tuple(f"({k})" for k in kinds))]
        if bad:
            choice = BackendChoice(choice.requested, choice.source, choice.selected,
                                   f"{choice.reason}; build failed: {', '.join(bad)}", False)
    ops = [op_row(spec, choice.selected) for spec in OPS] + _fields_rows(choice.selected)
    return Report(environment_rows(), choice, ops, builds)
