"""The repository root is the ``omnifield`` package: every top-level folder imports as ``omnifield.<folder>``.

The package list is computed, so a new subpackage needs no edit here.

Ahead-of-time kernels (DESIGN.md, "Backends"): ``OMNIFIELD_BUILD_CUDA=auto|0|1`` (default ``auto``).
``auto`` builds the CUDA extensions of ``cuda/native.py`` ``CUDA_SOURCES`` (and the C++ CPU ones of
``CPU_SOURCES``) when torch is importable here with ``torch.version.cuda`` and nvcc is found; ``0``
never; ``1`` requires them and stops with the reason otherwise. pip builds in an isolated environment
without torch, so ahead-of-time builds need ``pip install --no-build-isolation .`` (or ``-e .``);
a plain ``pip install -e .`` builds nothing, and every kernel is then built just in time on first use.
Modules go to ``omnifield/cuda/_prebuilt/<op>_<cpu|cuda>*.so`` with a ``<op>_<kind>.json`` manifest
holding the build key; ``native.load_*_extension`` imports them only while that key matches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
TOP_LEVEL = ["datasets", "fields", "renderers", "cuda", "scenes", "distill", "viewer", "cli"]
BUILD_ENV = "OMNIFIELD_BUILD_CUDA"
PREBUILT_PACKAGE = "omnifield.cuda._prebuilt"
NO_ISOLATION_HINT = "install with `pip install --no-build-isolation ...` so the build sees your torch"


class BuildConfigError(RuntimeError):
    """``OMNIFIELD_BUILD_CUDA`` asks for something this environment cannot do (the message says why)."""


def packages() -> list[str]:
    """``omnifield`` and every subpackage of the top-level folders."""
    found = ["omnifield"]
    for top in TOP_LEVEL:
        if not os.path.isfile(os.path.join(ROOT, top, "__init__.py")):
            continue
        found.append(f"omnifield.{top}")
        found += [f"omnifield.{top}.{sub}" for sub in find_packages(os.path.join(ROOT, top))]
    return found


def build_mode(environ=os.environ) -> str:
    """``$OMNIFIELD_BUILD_CUDA`` as ``"auto"`` (unset, empty, ``auto``), ``"0"`` (0/false/no/off) or
    ``"1"`` (1/true/yes/on); anything else is a :class:`BuildConfigError`."""
    value = environ.get(BUILD_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "false", "no", "off"):
        return "0"
    if value in ("1", "true", "yes", "on"):
        return "1"
    raise BuildConfigError(f"{BUILD_ENV}={environ.get(BUILD_ENV)!r}: use auto, 0 or 1")


class Toolchain(NamedTuple):
    """What the build can use: the importable torch's version (``None``: not importable, ``torch_error``
    says why), its ``torch.version.cuda`` and the nvcc path."""

    torch_version: str | None
    torch_error: str | None
    cuda_version: str | None
    nvcc: str | None


def probe_toolchain() -> Toolchain:
    """Import torch (if it can be) and find the CUDA toolkit as the just-in-time builds do
    (``native.find_cuda_toolkit``: torch's rule, repaired for an ``nvcc`` wrapper script on ``PATH``)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install: nothing to build
        return Toolchain(None, f"{type(exc).__name__}: {exc}", None, None)
    nvcc = load_native().find_cuda_toolkit().nvcc if torch.version.cuda is not None else None
    return Toolchain(torch.__version__, None, torch.version.cuda, nvcc)


def should_build(mode: str, tools: Toolchain) -> tuple[bool, str]:
    """``(build?, why)`` for ``mode`` (:func:`build_mode`) and ``tools``; mode ``"1"`` without what it
    needs raises :class:`BuildConfigError` naming the missing piece."""
    if mode == "0":
        return False, f"{BUILD_ENV}=0"
    missing = None
    if tools.torch_version is None:
        missing = f"torch is not importable in the build environment ({tools.torch_error}); {NO_ISOLATION_HINT}"
    elif tools.cuda_version is None:
        missing = f"torch {tools.torch_version} has no CUDA support (torch.version.cuda is None)"
    elif tools.nvcc is None:
        missing = f"nvcc not found (set CUDA_HOME to a CUDA {tools.cuda_version} toolkit)"
    if missing is None:
        return True, f"torch {tools.torch_version} with CUDA {tools.cuda_version}, nvcc {tools.nvcc}"
    if mode == "1":
        raise BuildConfigError(f"{BUILD_ENV}=1 but {missing}")
    return False, f"{BUILD_ENV}=auto: {missing}"


def load_native():
    """``cuda/native.py`` imported by path (it needs only torch), for its source lists, flags and keys."""
    name = "_omnifield_native_for_setup"
    spec = importlib.util.spec_from_file_location(name, ROOT / "cuda" / "native.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def extension_specs(native) -> list[dict]:
    """One dict per extension to build: ``op``, ``kind`` (``cpu``/``cuda``), ``name`` (the module's
    dotted name), ``sources`` (paths relative to the repository root)."""
    specs = []
    for kind, table in (("cpu", native.CPU_SOURCES), ("cuda", native.CUDA_SOURCES)):
        for op, sources in table.items():
            specs.append({"op": op, "kind": kind, "name": f"{PREBUILT_PACKAGE}.{native.prebuilt_module_name(op, kind)}",
                          "sources": [f"cuda/csrc/{s}" for s in sources]})
    return specs


def manifest(native, op: str, kind: str) -> dict:
    """What a prebuilt module records beside it: its key (:func:`native.prebuilt_key`) and, for CUDA,
    the target architectures (``$TORCH_CUDA_ARCH_LIST``, the visible devices', or ``default``)."""
    record = {"op": op, "kind": kind, "key": native.prebuilt_key(op, kind)}
    if kind == "cuda":
        tag = native._cuda_arch_tag()
        record["archs"] = "default" if tag == "none" else tag
    return record


def make_extensions(native) -> list:
    """torch ``CppExtension`` / ``CUDAExtension`` objects for :func:`extension_specs` (needs torch)."""
    from torch.utils import cpp_extension
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    native.use_cuda_toolkit(cpp_extension)  # CUDAExtension takes its include and library folders from it

    extensions = []
    for spec in extension_specs(native):
        if spec["kind"] == "cpu":
            extensions.append(CppExtension(spec["name"], spec["sources"], extra_compile_args={"cxx": list(native.CFLAGS)},
                                           extra_link_args=list(native.LDFLAGS)))
        else:
            extensions.append(CUDAExtension(spec["name"], spec["sources"], extra_compile_args={
                "cxx": list(native.CUDA_HOST_CFLAGS), "nvcc": list(native.NVCC_FLAGS)}))
    return extensions


def make_build_ext(native):
    """torch's ``BuildExtension`` that also writes each module's manifest next to it (in the build
    folder, and in ``cuda/_prebuilt`` of the source tree for in-place and editable builds)."""
    from torch.utils.cpp_extension import BuildExtension

    specs = {s["name"]: s for s in extension_specs(native)}

    class BuildWithManifests(BuildExtension):
        def run(self):
            (ROOT / "cuda" / "_prebuilt").mkdir(exist_ok=True)  # in-place / editable copies land here
            super().run()
            for ext in self.extensions:
                spec = specs[ext.name]
                record = json.dumps(manifest(native, spec["op"], spec["kind"]), indent=2)
                stem = native.prebuilt_module_name(spec["op"], spec["kind"])
                folders = {Path(self.get_ext_fullpath(ext.name)).parent, ROOT / "cuda" / "_prebuilt"}
                for folder in folders:
                    if any(folder.glob(stem + ".*so")) or any(folder.glob(stem + ".*pyd")):
                        (folder / f"{stem}.json").write_text(record + "\n")

    return BuildWithManifests


def extension_kwargs(environ=os.environ) -> dict:
    """``ext_modules`` and ``cmdclass`` for :func:`setuptools.setup` per ``$OMNIFIELD_BUILD_CUDA``
    (empty when nothing is to be built); prints the decision."""
    build, why = should_build(build_mode(environ), probe_toolchain())
    print(f"omnifield: {'building' if build else 'not building'} the CUDA and C++ kernels ahead of time ({why})")
    if not build:
        return {}
    native = load_native()
    return {"ext_modules": make_extensions(native), "cmdclass": {"build_ext": make_build_ext(native)}}


def main() -> None:
    setup(
        package_dir={"omnifield": "."},
        packages=packages(),
        package_data={"omnifield.cuda": ["csrc/**/*"]},
        **extension_kwargs(),
    )


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__
    main()
