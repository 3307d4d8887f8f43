"""Ahead-of-time build (setup.py, OMNIFIELD_BUILD_CUDA) and native's preference for a matching
prebuilt module; nothing here compiles (fake modules in temporary folders)."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import pytest
import torch

from omnifield.cuda import native

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup_py():
    """``setup.py`` imported as a module (its ``setup()`` call only runs as ``__main__``)."""
    spec = importlib.util.spec_from_file_location("omnifield_setup_under_test", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("value, mode", [(None, "auto"), ("", "auto"), ("AUTO", "auto"), ("0", "0"), ("off", "0"),
                                          ("no", "0"), ("1", "1"), ("true", "1"), (" yes ", "1")])
def test_build_mode_parsing(setup_py, value, mode):
    environ = {} if value is None else {setup_py.BUILD_ENV: value}
    assert setup_py.build_mode(environ) == mode


def test_build_mode_rejects_unknown_values(setup_py):
    with pytest.raises(setup_py.BuildConfigError, match="OMNIFIELD_BUILD_CUDA='sometimes': use auto, 0 or 1"):
        setup_py.build_mode({setup_py.BUILD_ENV: "sometimes"})


def _tools(setup_py, torch_version="2.5.0", cuda="12.4", nvcc="/usr/local/cuda/bin/nvcc", error=None):
    return setup_py.Toolchain(torch_version, error, cuda, nvcc)


def test_auto_builds_only_with_cuda_torch_and_nvcc(setup_py):
    assert setup_py.should_build("auto", _tools(setup_py))[0]
    build, why = setup_py.should_build("auto", _tools(setup_py, cuda=None, nvcc=None))
    assert not build and "has no CUDA support" in why
    build, why = setup_py.should_build("auto", _tools(setup_py, nvcc=None))
    assert not build and "nvcc not found" in why
    build, why = setup_py.should_build("auto", _tools(setup_py, torch_version=None, cuda=None, nvcc=None,
                                                      error="ModuleNotFoundError: No module named 'torch'"))
    assert not build and "--no-build-isolation" in why  # pip's isolated build environment has no torch


def test_zero_never_builds(setup_py):
    assert setup_py.should_build("0", _tools(setup_py)) == (False, "OMNIFIELD_BUILD_CUDA=0")


@pytest.mark.parametrize("tools, message", [
    (dict(cuda=None, nvcc=None), r"OMNIFIELD_BUILD_CUDA=1 but torch 2\.5\.0 has no CUDA support"),
    (dict(nvcc=None), r"OMNIFIELD_BUILD_CUDA=1 but nvcc not found \(set CUDA_HOME"),
    (dict(torch_version=None, cuda=None, nvcc=None, error="ModuleNotFoundError: torch"),
     r"OMNIFIELD_BUILD_CUDA=1 but torch is not importable .*--no-build-isolation"),
])
def test_one_without_cuda_is_a_clear_error(setup_py, tools, message):
    with pytest.raises(setup_py.BuildConfigError, match=message):
        setup_py.should_build("1", _tools(setup_py, **tools))


@pytest.mark.skipif(torch.version.cuda is not None, reason="checks a CPU-only torch")
def test_auto_with_this_cpu_torch_adds_no_extensions(setup_py, capsys):
    assert setup_py.extension_kwargs({}) == {}
    assert "not building" in capsys.readouterr().out
    with pytest.raises(setup_py.BuildConfigError, match="has no CUDA support"):
        setup_py.extension_kwargs({setup_py.BUILD_ENV: "1"})


def test_extension_specs_cover_every_registered_op(setup_py):
    specs = setup_py.extension_specs(native)
    names = {(s["op"], s["kind"]) for s in specs}
    assert names == {(op, "cpu") for op in native.CPU_SOURCES} | {(op, "cuda") for op in native.CUDA_SOURCES}
    for spec in specs:
        assert spec["name"] == f"omnifield.cuda._prebuilt.{spec['op']}_{spec['kind']}"
        table = native.CPU_SOURCES if spec["kind"] == "cpu" else native.CUDA_SOURCES
        assert spec["sources"] == [f"cuda/csrc/{s}" for s in table[spec["op"]]]  # relative to setup.py


def test_manifest_records_the_key_native_checks(setup_py):
    record = setup_py.manifest(native, "hash_grid", "cpu")
    assert record["key"] == native.prebuilt_key("hash_grid", "cpu") == native.build_key("hash_grid")
    record = setup_py.manifest(native, "gaussians", "cuda")
    assert record["key"] == native.prebuilt_key("gaussians", "cuda") == native.cuda_build_key("gaussians", with_arch=False)
    assert "archs" in record


# --- native prefers a matching prebuilt module ---------------------------------------------------------


@pytest.fixture
def prebuilt(monkeypatch, tmp_path):
    """A temporary prebuilt folder whose modules are ``.py`` files; fresh loader state; a fake JIT build."""
    monkeypatch.setattr(native, "PREBUILT_DIR", tmp_path)
    monkeypatch.setattr(native, "PREBUILT_SUFFIXES", (".py",))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_errors", {})
    monkeypatch.setattr(native, "_origins", {})
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    built = []

    def fake_build(name, sources):
        built.append(name)
        return types.SimpleNamespace(MARK="jit", __file__=f"/cache/{name}.so")

    monkeypatch.setattr(native, "_build", fake_build)

    def write(op="hash_grid", kind="cpu", key=None, body="MARK = 'prebuilt'\n", **extra):
        (tmp_path / f"{op}_{kind}.py").write_text(body)
        record = {"key": native.prebuilt_key(op, kind) if key is None else key, **extra}
        (tmp_path / f"{op}_{kind}.json").write_text(json.dumps(record))

    write.dir, write.built = tmp_path, built
    return write


def test_matching_prebuilt_module_is_imported_not_built(prebuilt):
    prebuilt()
    found = native.find_prebuilt("hash_grid", "cpu")
    assert found.status == "match" and found.path == prebuilt.dir / "hash_grid_cpu.py"
    module = native.load_cpu_extension("hash_grid")
    assert module.MARK == "prebuilt" and prebuilt.built == []
    assert native.loaded_from("hash_grid", "cpu") == f"prebuilt by pip install ({prebuilt.dir / 'hash_grid_cpu.py'})"


def test_stale_prebuilt_module_is_ignored(prebuilt):
    prebuilt(key="2.0.0-0123456789ab")
    found = native.find_prebuilt("hash_grid", "cpu")
    assert found.status == "stale" and "2.0.0-0123456789ab" in found.reason
    assert native.load_cpu_extension("hash_grid").MARK == "jit" and prebuilt.built == ["hash_grid"]
    assert native.loaded_from("hash_grid", "cpu") == "built, cached in /cache"


def test_prebuilt_key_follows_the_sources(prebuilt, monkeypatch, tmp_path):
    src = tmp_path / "op" / "op_cpu.cpp"
    src.parent.mkdir()
    src.write_text("// v1\n")
    monkeypatch.setattr(native, "CSRC", tmp_path)
    monkeypatch.setitem(native.CPU_SOURCES, "op", ("op/op_cpu.cpp",))
    prebuilt(op="op")
    assert native.find_prebuilt("op", "cpu").status == "match"
    src.write_text("// v2\n")  # the sources changed after the install: the module is stale
    assert native.find_prebuilt("op", "cpu").status == "stale"


def test_missing_or_broken_manifest_and_unloadable_module(prebuilt, capsys):
    assert native.find_prebuilt("hash_grid", "cpu").status == "absent"
    (prebuilt.dir / "hash_grid_cpu.py").write_text("MARK = 1\n")
    (prebuilt.dir / "hash_grid_cpu.json").write_text("{not json")
    assert native.find_prebuilt("hash_grid", "cpu").status == "broken"
    prebuilt(body="raise ImportError('undefined symbol: _ZN3c10')\n")
    assert native.load_cpu_extension("hash_grid").MARK == "jit"  # import failed: built just in time
    assert "ignoring the prebuilt cpu module" in capsys.readouterr().err


def test_cuda_prebuilt_key_and_architectures(prebuilt, monkeypatch):
    prebuilt(op="gaussians", kind="cuda", archs="8.0;9.0")
    assert native.find_prebuilt("gaussians", "cuda").status == "match"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (8, 6))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6")  # keeps the key's arch tag off the real device
    found = native.find_prebuilt("gaussians", "cuda")
    assert found.status == "arch" and "8.0;9.0" in found.reason
    assert native._arch_covered("8.0+PTX") and native._arch_covered("8.6") and native._arch_covered("default")
    assert not native._arch_covered("9.0+PTX") and not native._arch_covered("7.5 8.0")
    prebuilt(op="gaussians", kind="cuda", archs="8.0 8.6")
    assert native.find_prebuilt("gaussians", "cuda").status == "match"


def test_cuda_key_without_arch_ignores_the_arch_list(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    first = (native.cuda_build_key("gaussians"), native.cuda_build_key("gaussians", with_arch=False))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert native.cuda_build_key("gaussians") != first[0]
    assert native.cuda_build_key("gaussians", with_arch=False) == first[1]


def _toolkit(root: Path, name: str, headers: bool = True) -> Path:
    """A fake CUDA toolkit folder: bin/nvcc and, with ``headers``, include/cuda_runtime.h."""
    home = root / name
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_bytes(b"\x7fELF\0 fake compiler")
    if headers:
        (home / "include").mkdir()
        (home / "include" / "cuda_runtime.h").write_text("")
    return home


def test_cuda_toolkit_behind_an_nvcc_wrapper_script_is_found(tmp_path):
    """An nvcc on PATH that is a wrapper script (as /usr/local/bin/nvcc on this project's machines) makes
    torch take the folder above it, which has no CUDA headers; the toolkit it runs is taken instead."""
    real = _toolkit(tmp_path, "cuda-13.0")
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    kit = native.find_cuda_toolkit(environ={}, which=lambda _: str(wrapper), cuda_version="99.9")
    assert kit.home == str(real) and kit.nvcc == str(real / "bin" / "nvcc")
    assert "has no CUDA headers" in kit.how

    plain = _toolkit(tmp_path, "plain")  # nvcc on PATH inside a complete toolkit: torch's own rule
    kit = native.find_cuda_toolkit(environ={}, which=lambda _: str(plain / "bin" / "nvcc"), cuda_version="99.9")
    assert kit.home == str(plain)


def test_cuda_toolkit_errors_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "SYSTEM_TOOLKITS", (str(tmp_path / "none-{version}"),))
    headless = _toolkit(tmp_path, "headless", headers=False)
    kit = native.find_cuda_toolkit(environ={"CUDA_HOME": str(tmp_path)}, which=lambda _: None, cuda_version="99.9")
    assert kit.home is None and kit.nvcc is None
    assert kit.how == f"$CUDA_HOME={tmp_path} is not a CUDA toolkit (no bin/nvcc there)"
    # A user's CUDA_HOME is taken as given (conda keeps the headers elsewhere, $CUDA_INC_PATH names them).
    assert native.find_cuda_toolkit(environ={"CUDA_HOME": str(headless)}, which=lambda _: None).home == str(headless)
    kit = native.find_cuda_toolkit(environ={}, which=lambda _: str(headless / "bin" / "nvcc"), cuda_version="99.9")
    assert kit.home is None and f"no CUDA headers (include/cuda_runtime.h) in {headless}" in kit.how
    assert kit.how.endswith("set CUDA_HOME to the CUDA toolkit folder")
    conda = _toolkit(tmp_path, "conda", headers=False)  # headers under targets/<arch>/include count
    (conda / "targets" / "x86_64-linux" / "include").mkdir(parents=True)
    (conda / "targets" / "x86_64-linux" / "include" / "cuda_runtime.h").write_text("")
    assert native.find_cuda_toolkit(environ={}, which=lambda _: str(conda / "bin" / "nvcc")).home == str(conda)
    kit = native.find_cuda_toolkit(environ={}, which=lambda _: None, cuda_version="99.9")
    assert kit.home is None and kit.how == "nvcc not found: set CUDA_HOME to a CUDA toolkit matching torch.version.cuda (99.9)"
    system = _toolkit(tmp_path, "none-99.9")  # no nvcc on PATH: the system folders are tried
    assert native.find_cuda_toolkit(environ={}, which=lambda _: None, cuda_version="99.9").home == str(system)
    good = _toolkit(tmp_path, "good")
    kit = native.find_cuda_toolkit(environ={"CUDA_PATH": str(good)}, which=lambda _: None, cuda_version="99.9")
    assert (kit.home, kit.how) == (str(good), "$CUDA_PATH")


def test_cuda_build_points_torch_at_the_found_toolkit(tmp_path, monkeypatch):
    real = _toolkit(tmp_path, "cuda")
    monkeypatch.setenv("CUDA_HOME", str(real))
    fake_cpp_extension = types.SimpleNamespace(CUDA_HOME=str(tmp_path))
    assert native.use_cuda_toolkit(fake_cpp_extension).home == str(real)
    assert fake_cpp_extension.CUDA_HOME == str(real)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="missing is not a CUDA toolkit \\(no bin/nvcc there\\)"):
        native.use_cuda_toolkit(fake_cpp_extension)
