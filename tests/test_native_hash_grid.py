"""The C++ CPU hash-grid kernel against the pure-PyTorch oracle, forward and backward.

The extension is built once per session (module fixture) and cached on disk for later sessions;
every test here skips, with the reason, where no compiler is present or the build fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from omnifield.cuda import cpu_hash_grid, native
from omnifield.cuda.reference.hash_encoding import hash_encode, level_is_dense


@pytest.fixture(scope="module")
def ext(native_extension):
    return native_extension("hash_grid")


def _layout(log2_t: int = 9):
    """Three dense levels (the third exactly fills T = 512 rows) and two hashed levels."""
    res = torch.tensor([2, 4, 7, 16, 33])
    sizes = [min(2**log2_t, (int(r) + 1) ** 3) for r in res]
    off = torch.tensor([0] + sizes).cumsum(0)
    assert level_is_dense(res, off) == [True, True, True, False, False]
    return res, off


def _points(n: int, dtype) -> torch.Tensor:
    """Random points in [-0.2, 1.2]^3 (some clamped), plus faces, corners and grid vertices."""
    x = torch.rand(n, 3, dtype=dtype) * 1.4 - 0.2
    x[:8] = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=dtype)  # cube corners
    x[8:16, 0] = 1.0
    x[16:24, 1] = 0.0
    x[24:40] = torch.randint(0, 17, (16, 3)).to(dtype) / 16  # vertices of the level with res 16
    x[40:48] = torch.randint(0, 8, (8, 3)).to(dtype) / 7
    x[48:56, 2] = -3.0
    return x


def _run(fn, x, table, res, off, grad, x_grad=True, table_grad=True):
    xa = x.clone().requires_grad_(x_grad)
    ta = table.clone().requires_grad_(table_grad)
    out = fn(xa, ta, res, off)
    out.backward(grad)
    return out.detach(), xa.grad, ta.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("features", [2, 3])
def test_forward_backward_match_reference(ext, tol, dtype, features):
    res, off = _layout()
    table = torch.randn(int(off[-1]), features, dtype=dtype)
    x = _points(2000, dtype)
    grad = torch.randn(x.shape[0], len(res) * features, dtype=dtype)
    ref = _run(hash_encode, x, table, res, off, grad)
    got = _run(cpu_hash_grid.hash_encode_cpu, x, table, res, off, grad)
    for name, a, b in zip(("output", "position grad", "table grad"), got, ref):
        torch.testing.assert_close(a, b, **tol["float32"], msg=lambda m, name=name: f"{name}: {m}")
    assert got[1][48:56, 2].eq(0).all()  # clamped coordinates get no gradient


@pytest.mark.parametrize("x_grad,table_grad", [(False, True), (True, False)])
def test_only_requested_gradients(ext, tol, x_grad, table_grad):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2)
    x = _points(500, torch.float32)
    grad = torch.randn(x.shape[0], len(res) * 2)
    ref = _run(hash_encode, x, table, res, off, grad, x_grad, table_grad)
    got = _run(cpu_hash_grid.hash_encode_cpu, x, table, res, off, grad, x_grad, table_grad)
    assert (got[1] is None) == (not x_grad) and (got[2] is None) == (not table_grad)
    for a, b in zip(got, ref):
        if b is not None:
            torch.testing.assert_close(a, b, **tol["float32"])


@pytest.mark.parametrize("scatter", [cpu_hash_grid.SCATTER_BY_LEVEL, cpu_hash_grid.SCATTER_ATOMIC])
@pytest.mark.parametrize("threads", [1, 2])
def test_scatter_strategies_and_threads(ext, tol, scatter, threads):
    """Both table-gradient strategies agree with the reference, with one thread and several."""
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2)
    x = torch.rand(5000, 3)  # many points per row: collisions in every level
    grad = torch.randn(x.shape[0], len(res) * 2)
    ref = _run(hash_encode, x, table, res, off, grad)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn = lambda xa, ta, r, o: cpu_hash_grid._HashEncodeCPU.apply(xa, ta, r, o, scatter)  # noqa: E731
        got = _run(fn, x, table, res, off, grad)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol["float32"])


def test_gradcheck_float64(ext, tol):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, dtype=torch.float64, requires_grad=True)
    x = (torch.rand(40, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    g = tol["gradcheck"]
    assert torch.autograd.gradcheck(
        lambda a, b: cpu_hash_grid.hash_encode_cpu(a, b, res, off), (x, table), eps=g["eps"], atol=g["atol"], rtol=g["rtol"]
    )


def test_instant_ngp_layout_matches_reference(ext, tol):
    """The paper's 16 levels x 2 features, N_min 16 .. N_max 2048, with a small T = 2^14."""
    fields = pytest.importorskip("omnifield.fields.encodings")
    cfg = fields.HashGridConfig(n_levels=16, n_features=2, log2_table_size=14)
    res, off = fields.hash_grid_layout(cfg)
    table = torch.randn(int(off[-1]), 2) * 1e-2
    x = torch.rand(3000, 3)
    grad = torch.randn(x.shape[0], 32)
    ref = _run(hash_encode, x, table, res, off, grad)
    got = _run(cpu_hash_grid.hash_encode_cpu, x, table, res, off, grad)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, **tol["float32"])


def test_bad_inputs_raise(ext):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2)
    with pytest.raises(TypeError, match="dtype"):
        cpu_hash_grid.hash_encode_cpu(torch.rand(4, 3, dtype=torch.float64), table, res, off)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        cpu_hash_grid.hash_encode_cpu(torch.rand(4, 2), table, res, off)
    with pytest.raises(ValueError, match="rows"):
        cpu_hash_grid.hash_encode_cpu(torch.rand(4, 3), table[:-1], res, off)
    assert not cpu_hash_grid.supports(torch.rand(4, 3, dtype=torch.float64), table)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert native.load_cpu_extension("hash_grid") is None
    assert not cpu_hash_grid.available()
    res, off = _layout()
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_hash_grid.hash_encode_cpu(torch.rand(4, 3), torch.randn(int(off[-1]), 2), res, off)


def test_failed_build_warns_once_and_returns_none(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(native.CPU_SOURCES, "broken", ("broken/missing_cpu.cpp",))
    monkeypatch.setattr(native, "_errors", {})
    with pytest.warns(RuntimeWarning, match="missing_cpu.cpp"):
        assert native.load_cpu_extension("broken") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load_cpu_extension("broken") is None  # no second warning
    assert "missing_cpu.cpp" in native.last_error("broken")


def test_cache_key_follows_sources(monkeypatch, tmp_path):
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    (tmp_path / "op").mkdir()
    src = tmp_path / "op" / "op_cpu.cpp"
    src.write_text("// v1\n")
    monkeypatch.setattr(native, "CSRC", tmp_path)
    monkeypatch.setitem(native.CPU_SOURCES, "op", ("op/op_cpu.cpp",))
    first = native.build_directory("op")
    assert first.parent == tmp_path / "extensions" and first.name.startswith("op-" + torch.__version__.replace("+", "_"))
    src.write_text("// v2\n")
    assert native.build_directory("op") != first


def test_nothing_is_built_at_import(tmp_path):
    """Importing the wrappers compiles and loads nothing (STYLE.md: no import-time side effects)."""
    code = (
        "import omnifield.cuda.cpu_hash_grid, omnifield.cuda.native as n, sys;"
        "assert not n._loaded and not n._errors;"
        "assert not any(m.startswith('omnifield_hash_grid') for m in sys.modules)"
    )
    env = {**os.environ, native.CACHE_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "extensions").exists()
