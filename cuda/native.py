"""Just-in-time build and load of the C++ CPU kernels in ``cuda/csrc`` (DESIGN.md, "Backends").

:func:`load_cpu_extension` compiles one op's ``*_cpu.cpp`` sources with the public
:func:`torch.utils.cpp_extension.load` (ninja + the system C++ compiler, ``-O3 -fopenmp``) on first
use, never at import time. Builds are cached on disk under
``$OMNIFIELD_CACHE/extensions`` (default ``~/.cache/omnifield/extensions``) in a folder named after
the op, the torch version and a hash of the sources and flags, so a later process loads the shared
library without compiling; torch's file baton keeps two processes from building the same folder at
once. A failed build warns once with the reason and returns ``None`` (callers fall back to the
pure-PyTorch reference). ``OMNIFIELD_NO_NATIVE=1`` disables native kernels.

:func:`load_cuda_extension` does the same for the CUDA kernels (``CUDA_SOURCES``: ``.cu`` kernels
free of torch headers plus a ``*_bind.cpp`` glue), and returns ``None`` silently where there is no
CUDA device.

Both loaders first look for a module built ahead of time by ``pip install`` (``setup.py``, see
``OMNIFIELD_BUILD_CUDA``) in ``cuda/_prebuilt/``: ``<op>_cpu*.so`` / ``<op>_cuda*.so`` beside a
``<op>_<kind>.json`` manifest recording the build key. A prebuilt module is imported only when its
key equals the key of the sources here (:func:`prebuilt_key`; for CUDA also when it was built for
the visible devices' architectures); a stale or unloadable one is ignored and the op is built just
in time as usual (:func:`find_prebuilt` says which and why; ``omnifield doctor`` prints it).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
import sysconfig
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch

CSRC = Path(__file__).resolve().parent / "csrc"

#: op name -> its C++ CPU sources, relative to ``cuda/csrc``.
CPU_SOURCES: dict[str, tuple[str, ...]] = {
    "hash_grid": ("hash_grid/hash_grid_cpu.cpp",),
    "ray_marching": ("ray_marching/ray_marching_cpu.cpp",),
    "compositing": ("compositing/compositing_cpu.cpp",),
    "gaussians": ("gaussians/gaussians_cpu.cpp",),  # includes the passes' headers: one translation unit
}

# Portable flags (no -march=native: the cached library must run on any CPU of the machine kind).
CFLAGS: tuple[str, ...] = ("-O3", "-fopenmp")
LDFLAGS: tuple[str, ...] = ("-fopenmp",)

STALE_LOCK_S = 300.0
"""Where ``flock`` is unavailable (Windows, file systems without locks): torch's build lock
(``<build dir>/lock``) older than this is taken as left by a killed build and removed (a build of ours
takes 35-90 s); torch itself would wait for it forever."""

DISABLE_ENV = "OMNIFIELD_NO_NATIVE"
CACHE_ENV = "OMNIFIELD_CACHE"

_lock = threading.Lock()
_loaded: dict[str, ModuleType] = {}
_errors: dict[str, str] = {}
_load_time = threading.local()  # per thread: seconds spent in first loads (see load_seconds)


def native_disabled() -> bool:
    """True when ``$OMNIFIELD_NO_NATIVE`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_root() -> Path:
    """``$OMNIFIELD_CACHE/extensions``, default ``~/.cache/omnifield/extensions``."""
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "omnifield")
    return Path(root).expanduser() / "extensions"


def _source_paths(name: str) -> list[Path]:
    if name not in CPU_SOURCES:
        raise ValueError(f"unknown native op {name!r}; known: {sorted(CPU_SOURCES)}")
    return [CSRC / s for s in CPU_SOURCES[name]]


def _with_headers(sources: list[Path]) -> list[Path]:
    """``sources`` and the headers (``*.h``, ``*.cuh``) of their folders: what a build key hashes."""
    headers = sorted({h for s in sources for pattern in ("*.h", "*.cuh") for h in s.parent.glob(pattern)})
    return [*sources, *headers]


def _source_digest(sources: list[Path]):
    """A sha256 of ``sources`` and the headers beside them (:func:`_with_headers`): names and contents."""
    h = hashlib.sha256()
    for path in _with_headers(sources):
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"<missing>")
    return h


def build_key(name: str) -> str:
    """``<torch version>-<hash>`` of the sources, the headers beside them, the flags and the Python ABI: the
    cache folder's suffix."""
    h = _source_digest(_source_paths(name))
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(str(sysconfig.get_config_var("SOABI")).encode())
    return f"{torch.__version__.replace('+', '_')}-{h.hexdigest()[:12]}"


def site_tag() -> str:
    """A short hash of where the sources, Python and torch live, appended to the cache folders: two
    checkouts (or two environments) would otherwise share a folder whose ninja commands differ in
    their paths, and rebuild each other's kernels on every load."""
    where = f"{CSRC.resolve()}|{sys.prefix}|{Path(torch.__file__).resolve().parent}"
    return hashlib.sha256(where.encode()).hexdigest()[:6]


def build_directory(name: str) -> Path:
    """Where the extension ``name`` is (or will be) built."""
    return cache_root() / f"{name}-{build_key(name)}-{site_tag()}"


def last_error(name: str) -> str | None:
    """Why the last build of ``name`` failed in this process (``None`` if it did not fail)."""
    return _errors.get(name)


def load_cpu_extension(name: str) -> ModuleType | None:
    """The compiled CPU extension of op ``name`` (e.g. ``"hash_grid"``), building it on first use.

    Returns ``None`` when native kernels are disabled (``$OMNIFIELD_NO_NATIVE``) or the build fails;
    a failure emits one ``RuntimeWarning`` with the reason per process (see :func:`last_error`).
    Thread-safe; the result is memoised for the process.
    """
    if native_disabled():
        return None
    sources = _source_paths(name)
    return _load_once(name, "C++ CPU kernel", _lock, _loaded, _errors,
                      lambda: _prebuilt_or_build(name, "cpu", lambda: _build(name, sources)))


def _load_once(name: str, what: str, lock: threading.Lock, loaded: dict[str, ModuleType], errors: dict[str, str],
               build) -> ModuleType | None:
    """``build()`` once per process under ``lock``, memoised in ``loaded``; a failure is remembered in
    ``errors`` and warned about once (``RuntimeWarning`` naming the kernel and the reason), then None.
    The time spent here, waiting for another thread's build included, is added to :func:`load_seconds`."""
    start = time.perf_counter()
    try:
        return _load_once_locked(name, what, lock, loaded, errors, build)
    finally:
        _load_time.seconds = load_seconds() + (time.perf_counter() - start)


def load_seconds() -> float:
    """Seconds the calling thread has spent loading native extensions, builds and waits for builds
    included. A first use builds for 30-60 s; the trainer leaves this time out of its training-time
    budget and its step-time estimate."""
    return getattr(_load_time, "seconds", 0.0)


def _load_once_locked(name: str, what: str, lock: threading.Lock, loaded: dict[str, ModuleType],
                      errors: dict[str, str], build) -> ModuleType | None:
    with lock:
        if name in loaded:
            return loaded[name]
        if name in errors:
            return None
        try:
            module = build()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the reference"
            reason = _reason(exc)
            errors[name] = reason
            warnings.warn(
                f"omnifield: could not build the {what} {name!r}; using the pure-PyTorch "
                f"reference instead. Reason: {reason}",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        loaded[name] = module
        return module


def require_cpu_extension(name: str, what: str) -> ModuleType:
    """:func:`load_cpu_extension` or ``RuntimeError("the C++ CPU <what> kernel is unavailable: <why>")``."""
    ext = load_cpu_extension(name)
    if ext is None:
        reason = last_error(name) or f"disabled by ${DISABLE_ENV}"
        raise RuntimeError(f"the C++ CPU {what} kernel is unavailable: {reason}")
    return ext


def _build(name: str, sources: list[Path]) -> ModuleType:
    _check_sources(sources)
    key = build_key(name)
    return _compile(name, "C++ CPU kernel", sources, cache_root() / f"{name}-{key}-{site_tag()}",
                    f"omnifield_{name}_cpu_{key.rsplit('-', 1)[1]}",
                    extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS))


def _check_sources(sources: list[Path]) -> None:
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        raise FileNotFoundError(f"missing sources {missing}")


def _compile(name: str, what: str, sources: list[Path], directory: Path, module_name: str, **flags) -> ModuleType:
    """``torch.utils.cpp_extension.load`` of ``sources`` as ``module_name`` in ``directory`` (the cache:
    a later process loads the library without compiling), under :func:`build_lock`; says once on stderr
    when it compiles."""
    from torch.utils import cpp_extension  # deferred: importing it is slow and probes compilers

    with build_lock(directory):
        if not any(directory.glob(f"{module_name}*.so")):
            print(f"omnifield: compiling the {what} {name!r} (once; cached in {directory})", file=sys.stderr)
        return cpp_extension.load(name=module_name, sources=[str(s) for s in sources],
                                  build_directory=str(directory), verbose=False, **flags)


@contextmanager
def build_lock(directory: Path):
    """Hold ``<directory>/build.lock`` while this process builds there, waiting for another holder.

    The lock is an advisory ``flock``, which the kernel releases when its holder dies, however it
    dies. So, while it is held, torch's own build lock (``<directory>/lock``, which torch waits for
    forever) can only be one left by a killed build: it is removed at once (said on stderr). Where
    ``flock`` is unavailable (:func:`_take_flock`), torch's lock is removed once it is
    :data:`STALE_LOCK_S` old.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "build.lock", "a") as handle:
        if not _take_flock(handle, directory):
            clear_stale_lock(directory)
            yield
            return
        try:
            left = directory / "lock"
            if left.exists():
                left.unlink(missing_ok=True)
                print(f"omnifield: removed {left}, left by an interrupted build", file=sys.stderr)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _take_flock(handle, directory: Path) -> bool:
    """Take an exclusive ``flock`` on ``handle``, waiting (said on stderr) while another process holds
    it. False where ``flock`` is unavailable: no ``fcntl`` (Windows), or a file system without locks
    (``ENOLCK`` on some network mounts)."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"omnifield: waiting for another process building in {directory}", file=sys.stderr)
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


def clear_stale_lock(directory: Path, stale_after: float = STALE_LOCK_S, poll_s: float = 1.0) -> bool:
    """Without ``flock`` (see :func:`build_lock`): wait while another process holds torch's build lock
    in ``directory``; remove the lock once it is ``stale_after`` seconds old (an interrupted build leaves
    it behind). Returns True when a stale lock was removed (said once on stderr)."""
    lock = directory / "lock"
    said = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        if age >= stale_after:
            lock.unlink(missing_ok=True)
            print(f"omnifield: removed a stale build lock ({lock}, {age:.0f} s old: an interrupted build)",
                  file=sys.stderr)
            return True
        if not said:
            print(f"omnifield: waiting for another process building in {directory} (a lock older than "
                  f"{stale_after:.0f} s is removed)", file=sys.stderr)
            said = True
        time.sleep(poll_s)


_DIAGNOSTIC = ("error", "not found", "fatal", "no such file", "required", "undefined reference")


def _reason(exc: BaseException, limit: int = 1500) -> str:
    """A short reason: the exception's first line plus the compiler's diagnostic lines (no command lines)."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and getattr(cause, "output", None):
        out = cause.output
        text += "\n" + (out.decode(errors="replace") if isinstance(out, bytes) else str(out))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = (lines[0] if lines else "").split(" [1/")[0]  # drop ninja's echoed command
    head = f"{type(exc).__name__}: {first[:300]}"
    keep: list[str] = []
    for ln in lines[1:]:
        if "-isystem" in ln or ln.startswith("[") or ln in keep:  # compile command lines, repeats
            continue
        if any(word in ln.lower() for word in _DIAGNOSTIC):
            keep.append(ln)
    reason = "\n".join([head, *keep[:12]])
    return reason if len(reason) <= limit else reason[:limit] + " ..."


# --- CUDA kernels (issue 4: Gaussian splatting; issue 5 adds the radiance-field ops) -----------------
#
# Same scheme as the CPU kernels: built on first use with torch.utils.cpp_extension.load (nvcc for
# the ``*.cu`` kernels, which include no torch header, and the host compiler for the ``*_bind.cpp``
# glue), cached under ``cache_root()`` in ``<op>-cuda-<key>`` (key: torch and CUDA versions, target
# architectures, a hash of the sources, the headers beside them and the flags), one warning per
# process when a build fails. Without a CUDA device (or with ``$OMNIFIELD_NO_NATIVE``) nothing is
# built and the loaders return None silently: the callers run the references.

#: op name -> its CUDA sources (kernels and torch glue), relative to ``cuda/csrc``.
CUDA_SOURCES: dict[str, tuple[str, ...]] = {
    "gaussians": (
        "gaussians/gaussians_cuda.cu",
        "gaussians/gaussians_isect_cuda.cu",
        "gaussians/gaussians_raster_cuda.cu",
        "gaussians/gaussians_sh_cuda.cu",
        "gaussians/gaussians_cuda_bind.cpp",
    ),
    # issue 5: radiance-field kernels, two extensions (encodings; marching and compositing)
    "encodings": (
        "hash_grid/hash_grid_cuda.cu",
        "sh/sh_cuda.cu",
        "hash_grid/encodings_cuda_bind.cpp",
    ),
    "marching": (
        "ray_marching/ray_marching_cuda.cu",
        "compositing/compositing_cuda.cu",
        "ray_marching/marching_cuda_bind.cpp",
    ),
}

# No --use_fast_math: the kernels follow the references' float operations (IEEE division, expf).
NVCC_FLAGS: tuple[str, ...] = ("-O3", "-lineinfo")
CUDA_HOST_CFLAGS: tuple[str, ...] = ("-O3",)

_cuda_lock = threading.Lock()
_cuda_loaded: dict[str, ModuleType] = {}
_cuda_errors: dict[str, str] = {}


def _cuda_source_paths(name: str) -> list[Path]:
    if name not in CUDA_SOURCES:
        raise ValueError(f"unknown CUDA op {name!r}; known: {sorted(CUDA_SOURCES)}")
    return [CSRC / s for s in CUDA_SOURCES[name]]


def _cuda_arch_tag() -> str:
    """``$TORCH_CUDA_ARCH_LIST`` or the compute capabilities of the visible devices (what torch builds for)."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env
    if not torch.cuda.is_available():
        return "none"
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ",".join(f"{major}.{minor}" for major, minor in caps)


def cuda_build_key(name: str, with_arch: bool = True) -> str:
    """``<torch version>-cu<CUDA version>-<hash>``: hash of the sources, the headers of their folders,
    the flags, the target architectures and the Python ABI (the cache folder's suffix).

    ``with_arch=False`` leaves the architectures out: the key recorded with a prebuilt module, whose
    architectures are checked separately (:func:`find_prebuilt`)."""
    h = _source_digest(_cuda_source_paths(name))
    h.update(" ".join(NVCC_FLAGS + CUDA_HOST_CFLAGS).encode())
    if with_arch:
        h.update(_cuda_arch_tag().encode())
    h.update(str(sysconfig.get_config_var("SOABI")).encode())
    return f"{torch.__version__.replace('+', '_')}-cu{torch.version.cuda}-{h.hexdigest()[:12]}"


def last_cuda_error(name: str) -> str | None:
    """Why the last CUDA build of ``name`` failed in this process (``None`` if it did not fail)."""
    return _cuda_errors.get(name)


def cuda_unavailable_reason() -> str | None:
    """Why no CUDA kernel can run here without building (no device, disabled), or ``None``."""
    if native_disabled():
        return f"native kernels disabled by ${DISABLE_ENV}"
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


CUDA_HEADER = os.path.join("include", "cuda_runtime.h")
#: Where a CUDA toolkit is looked for when neither $CUDA_HOME nor the nvcc on PATH names one ({version}:
#: torch's CUDA version).
SYSTEM_TOOLKITS: tuple[str, ...] = ("/usr/local/cuda-{version}", "/usr/local/cuda")


@dataclass(frozen=True)
class Toolkit:
    """The CUDA toolkit a build uses: its folder (``None``: none usable) and how it was found, or why not."""

    home: str | None
    how: str

    @property
    def nvcc(self) -> str | None:
        return os.path.join(self.home, "bin", "nvcc") if self.home else None


def _named_toolkits(nvcc: str) -> list[str]:
    """Toolkit folders an ``nvcc`` on ``PATH`` leads to: the one of its resolved path and, for a small
    wrapper script (``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), the ones of the nvcc paths it names."""
    real = os.path.realpath(nvcc)
    found = [os.path.dirname(os.path.dirname(real))]
    try:
        with open(real, "rb") as f:
            head = f.read(4097)
    except OSError:
        return found
    if len(head) <= 4096 and b"\0" not in head:  # a script, not the compiler itself
        found += re.findall(r"(/[^\s'\"]*)/bin/nvcc\b", head.decode("utf-8", "replace"))
    return found


def find_cuda_toolkit(environ=os.environ, which=shutil.which, cuda_version: str | None = None) -> Toolkit:
    """The CUDA toolkit to build with, found as torch's extension builder finds it, with one repair.

    torch takes ``$CUDA_HOME`` (or ``$CUDA_PATH``), else the folder above the first ``nvcc`` on ``PATH``,
    else ``/usr/local/cuda``. A ``$CUDA_HOME`` set by the user is taken as given (it must hold
    ``bin/nvcc``). Where the ``nvcc`` on ``PATH`` is a wrapper (``/usr/local/bin/nvcc`` running
    ``/usr/local/cuda-13.0/bin/nvcc``: seen on this project's machines), torch takes ``/usr/local``, which has
    no CUDA headers, and every host file of the build fails on ``cuda_runtime.h``; so that folder must hold
    the headers (in ``include``, conda's ``targets/*/include`` or ``$CUDA_INC_PATH``), else the first of the
    wrapper's resolved and named toolkits and :data:`SYSTEM_TOOLKITS` that does is taken. Without nvcc on
    ``PATH``, the first of :data:`SYSTEM_TOOLKITS`."""
    def has_nvcc(home: str) -> bool:
        return os.path.isfile(os.path.join(home, "bin", "nvcc"))

    def usable(home: str) -> bool:
        includes = [os.path.join(home, "include"), *glob.glob(os.path.join(home, "targets", "*", "include"))]
        includes += [environ["CUDA_INC_PATH"]] if environ.get("CUDA_INC_PATH") else []
        return has_nvcc(home) and any(os.path.isfile(os.path.join(i, "cuda_runtime.h")) for i in includes)

    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = environ.get(var)
        if home:
            if has_nvcc(home):
                return Toolkit(home, f"${var}")
            return Toolkit(None, f"${var}={home} is not a CUDA toolkit (no bin/nvcc there)")
    nvcc = which("nvcc")
    cuda_version = cuda_version if cuda_version is not None else torch.version.cuda
    system = [f.format(version=cuda_version) for f in SYSTEM_TOOLKITS if cuda_version or "{" not in f]
    if nvcc is not None:
        beside = os.path.dirname(os.path.dirname(nvcc))
        if usable(beside):
            return Toolkit(beside, f"nvcc on PATH ({nvcc})")
        candidates = [*_named_toolkits(nvcc), *system]
        for home in dict.fromkeys(candidates):
            if usable(home):
                return Toolkit(home, f"the nvcc on PATH ({nvcc}) is outside a toolkit ({beside} has no CUDA headers)")
        return Toolkit(None, f"nvcc on PATH ({nvcc}), but no CUDA headers ({CUDA_HEADER}) in {beside} or "
                             f"{', '.join(dict.fromkeys(candidates))}: set CUDA_HOME to the CUDA toolkit folder")
    for home in system:
        if usable(home):
            return Toolkit(home, "no nvcc on PATH; the system's toolkit")
    return Toolkit(None, "nvcc not found: set CUDA_HOME to a CUDA toolkit"
                         + (f" matching torch.version.cuda ({cuda_version})" if cuda_version else ""))


def use_cuda_toolkit(cpp_extension) -> Toolkit:
    """Point torch's extension builder (``cpp_extension.CUDA_HOME``) at :func:`find_cuda_toolkit`'s folder;
    raises ``RuntimeError`` with the reason when there is none."""
    kit = find_cuda_toolkit()
    if kit.home is None:
        raise RuntimeError(kit.how)
    cpp_extension.CUDA_HOME = kit.home
    return kit


def load_cuda_extension(name: str) -> ModuleType | None:
    """The compiled CUDA extension of op ``name`` (e.g. ``"gaussians"``), building it on first use.

    Returns ``None`` without a word when there is no CUDA device or native kernels are disabled
    (:func:`cuda_unavailable_reason`); when nvcc is missing or the build fails it emits one
    ``RuntimeWarning`` with the reason per process (see :func:`last_cuda_error`) and returns ``None``.
    Thread-safe; the result is memoised for the process.
    """
    sources = _cuda_source_paths(name)
    if cuda_unavailable_reason() is not None:
        return None
    return _load_once(name, "CUDA kernel", _cuda_lock, _cuda_loaded, _cuda_errors,
                      lambda: _prebuilt_or_build(name, "cuda", lambda: _build_cuda(name, sources)))


def cuda_float32_tensors(*tensors, half_last: bool = False) -> bool:
    """Whether the CUDA kernels take these inputs: at least one tensor, every tensor (``None`` skipped)
    on a CUDA device, every floating one float32; with ``half_last`` the last of two or more may also be
    float16 (a hash table). Integer and bool tensors are fine."""
    given = [t for t in tensors if t is not None]
    if not given:
        return False
    for k, t in enumerate(given):
        if not isinstance(t, torch.Tensor) or not t.is_cuda:
            return False
        half_ok = half_last and k == len(given) - 1 and k > 0
        if t.is_floating_point() and not (t.dtype == torch.float32 or (half_ok and t.dtype == torch.float16)):
            return False
    return True


def require_cuda_extension(name: str, what: str) -> ModuleType:
    """:func:`load_cuda_extension` or ``RuntimeError("the CUDA <what> kernel is unavailable: <why>")``."""
    ext = load_cuda_extension(name)
    if ext is None:
        reason = last_cuda_error(name) or cuda_unavailable_reason() or "unknown"
        raise RuntimeError(f"the CUDA {what} kernel is unavailable: {reason}")
    return ext


def _build_cuda(name: str, sources: list[Path]) -> ModuleType:
    from torch.utils import cpp_extension  # deferred: importing it is slow and probes compilers

    _check_sources(sources)
    use_cuda_toolkit(cpp_extension)
    key = cuda_build_key(name)
    return _compile(name, "CUDA kernel", sources, cache_root() / f"{name}-cuda-{key}-{site_tag()}",
                    f"omnifield_{name}_cuda_{key.rsplit('-', 1)[1]}",
                    extra_cflags=list(CUDA_HOST_CFLAGS), extra_cuda_cflags=list(NVCC_FLAGS))


def cuda_build_directory(name: str) -> Path:
    """Where the CUDA extension ``name`` is (or will be) built just in time."""
    return cache_root() / f"{name}-cuda-{cuda_build_key(name)}-{site_tag()}"


def cached_library(name: str, kind: str) -> Path | None:
    """The just-in-time built shared library of op ``name`` (``kind`` ``"cpu"`` or ``"cuda"``) in the
    cache, or ``None`` when it has not been built yet with the current sources. Builds nothing."""
    if kind == "cpu":
        key, directory = build_key(name), build_directory(name)
    else:
        key, directory = cuda_build_key(name), cuda_build_directory(name)
    found = sorted(directory.glob(f"omnifield_{name}_{kind}_{key.rsplit('-', 1)[1]}*.so"))
    return found[0] if found else None


def loaded_from(name: str, kind: str) -> str | None:
    """Where the extension loaded in this process came from (``"prebuilt by pip install (<path>)"``
    or ``"built, cached in <folder>"``), ``None`` when it is not loaded."""
    return _origins.get((name, kind))


# --- modules built ahead of time by pip install (setup.py, OMNIFIELD_BUILD_CUDA) ---------------------

#: Folder of the prebuilt modules (``setup.py`` writes them there).
PREBUILT_DIR = Path(__file__).resolve().parent / "_prebuilt"
#: File endings of importable prebuilt modules (the interpreter's extension-module suffixes).
PREBUILT_SUFFIXES: tuple[str, ...] = tuple(importlib.machinery.EXTENSION_SUFFIXES)

_origins: dict[tuple[str, str], str] = {}


def prebuilt_key(name: str, kind: str) -> str:
    """The key a prebuilt module of op ``name`` must record to be used: :func:`build_key` for
    ``kind="cpu"``, :func:`cuda_build_key` without architectures for ``kind="cuda"``."""
    if kind == "cpu":
        return build_key(name)
    if kind == "cuda":
        return cuda_build_key(name, with_arch=False)
    raise ValueError(f"kind must be 'cpu' or 'cuda', got {kind!r}")


def prebuilt_module_name(name: str, kind: str) -> str:
    """``<op>_<kind>``: the module name (and file stem) of a prebuilt extension."""
    return f"{name}_{kind}"


@dataclass(frozen=True)
class Prebuilt:
    """What :func:`find_prebuilt` found for one op.

    ``status``: ``"match"`` (usable: ``path`` is the module), ``"absent"`` (none shipped),
    ``"stale"`` (built from other sources, another torch or another ABI), ``"arch"`` (built for other
    GPU architectures) or ``"broken"`` (manifest unreadable). ``reason`` says it in words."""

    status: str
    path: Path | None
    reason: str


def find_prebuilt(name: str, kind: str, directory: Path | None = None) -> Prebuilt:
    """Look for a prebuilt module of op ``name`` in ``directory`` (default :data:`PREBUILT_DIR`)
    and compare its recorded key with :func:`prebuilt_key`. Imports and builds nothing."""
    directory = PREBUILT_DIR if directory is None else Path(directory)
    stem = prebuilt_module_name(name, kind)
    modules = [p for suffix in PREBUILT_SUFFIXES for p in sorted(directory.glob(stem + suffix))]
    manifest = directory / f"{stem}.json"
    if not modules:
        return Prebuilt("absent", None, "no prebuilt module (pip install without OMNIFIELD_BUILD_CUDA)")
    try:
        recorded = json.loads(manifest.read_text())
        key = str(recorded["key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Prebuilt("broken", modules[0], f"unreadable manifest {manifest}: {exc}")
    want = prebuilt_key(name, kind)
    if key != want:
        return Prebuilt("stale", modules[0], f"prebuilt module is stale (key {key}, sources here: {want})")
    if kind == "cuda" and not _arch_covered(str(recorded.get("archs", "default"))):
        return Prebuilt("arch", modules[0], f"prebuilt for GPU architectures {recorded.get('archs')}, "
                                            f"not for this device ({_cuda_arch_tag()})")
    return Prebuilt("match", modules[0], f"prebuilt by pip install ({modules[0]})")


def _arch_covered(archs: str) -> bool:
    """Whether code built for ``archs`` (TORCH_CUDA_ARCH_LIST syntax, or ``"default"``) runs on every
    visible device: an exact ``major.minor`` or a ``+PTX`` entry not newer than the device. Names
    (``Ampere``) or ``default`` cannot be checked here and count as covering."""
    tokens = [t for t in re.split(r"[;,\s]+", archs.strip()) if t]
    parsed = [re.fullmatch(r"(\d+)\.(\d+)(\+PTX)?", t) for t in tokens]
    if not tokens or archs == "default" or not all(parsed):
        return True
    if not torch.cuda.is_available():
        return True
    built = [((int(m.group(1)), int(m.group(2))), bool(m.group(3))) for m in parsed]
    for i in range(torch.cuda.device_count()):
        cap = torch.cuda.get_device_capability(i)
        if not any(b == cap or (ptx and b <= cap) for b, ptx in built):
            return False
    return True


def _import_prebuilt(path: Path, name: str, kind: str) -> ModuleType:
    """Import the extension module at ``path`` (its init function is ``PyInit_<op>_<kind>``)."""
    full = f"omnifield.cuda._prebuilt.{prebuilt_module_name(name, kind)}"
    spec = importlib.util.spec_from_file_location(full, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prebuilt_or_build(name: str, kind: str, build) -> ModuleType:
    """The matching prebuilt module of ``name`` if there is one and it imports, else ``build()``."""
    found = find_prebuilt(name, kind)
    if found.status == "match":
        try:
            module = _import_prebuilt(found.path, name, kind)
        except Exception as exc:  # noqa: BLE001 - an unloadable prebuilt module means "build it here"
            print(f"omnifield: ignoring the prebuilt {kind} module {found.path} ({_reason(exc)}); "
                  "building just in time", file=sys.stderr)
        else:
            _origins[(name, kind)] = found.reason
            return module
    module = build()
    _origins[(name, kind)] = f"built, cached in {Path(getattr(module, '__file__', '') or '.').parent}"
    return module
