"""Backend selection and fallback (cuda/backend.py) and the half-precision hash table option."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from omnifield.cuda import backend, ops
from omnifield.cuda.reference import hash_encoding as ref
from omnifield.fields import HashGridConfig, HashGridEncoding

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.delenv("OMNIFIELD_NO_NATIVE", raising=False)
    monkeypatch.setattr(backend, "_warned", set())


def test_explicit_names_and_unknown(fresh, monkeypatch):
    assert backend.resolve_backend("torch") == "torch"
    assert backend.resolve_backend(" CPP ") == "cpp"
    with pytest.raises(ValueError, match="unknown backend 'metal' \\(from argument\\)"):
        backend.resolve_backend("metal")
    monkeypatch.setenv(backend.ENV_VAR, "vulkan")
    with pytest.raises(ValueError, match="from OMNIFIELD_BACKEND"):
        backend.resolve_backend()


def test_environment_is_read_per_call(fresh, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "torch")
    assert backend.resolve_backend() == "torch"
    monkeypatch.setenv(backend.ENV_VAR, "cpp")
    assert backend.resolve_backend() == "cpp"
    assert backend.resolve_backend("torch") == "torch"  # the argument wins


@no_gpu
def test_automatic_without_gpu(fresh, monkeypatch):
    assert backend.resolve_backend() == "cpp"
    monkeypatch.setenv("OMNIFIELD_NO_NATIVE", "1")
    assert backend.resolve_backend() == "torch"
    assert "OMNIFIELD_NO_NATIVE" in backend.unavailable_reason("cpp")


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "tcnn"])
def test_unavailable_backend_falls_back_with_one_warning(fresh, name):
    with pytest.warns(RuntimeWarning, match=rf"backend '{name}' is not available here \(no CUDA device"):
        assert backend.resolve_backend(name) == "cpp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.resolve_backend(name) == "cpp"  # no second warning


@no_gpu
def test_ops_run_under_every_backend_name(fresh, monkeypatch):
    res, off = _layout(HashGridConfig(n_levels=3, log2_table_size=8, max_resolution=32))
    x, table = torch.rand(9, 3), torch.randn(int(off[-1]), 2)
    want = ref.hash_encode(x, table, res, off)
    for name in backend.BACKENDS:
        monkeypatch.setenv(backend.ENV_VAR, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cuda / tcnn fall back here
            torch.testing.assert_close(ops.hash_encode(x, table, res, off), want, rtol=1e-5, atol=1e-6)


# --- half-precision table -----------------------------------------------------------------------------


def _layout(config):
    from omnifield.fields import hash_grid_layout

    return hash_grid_layout(config)


def test_table_dtype_validation():
    assert HashGridConfig().table_dtype == "float32"
    with pytest.raises(ValueError, match="table_dtype must be one of"):
        HashGridConfig(table_dtype="bfloat16")


@pytest.mark.parametrize("backend_name", ["torch", "cpp"])
def test_half_table_reads_rounded_values_and_trains_the_float32_master(fresh, backend_name):
    torch.manual_seed(0)
    config = HashGridConfig(n_levels=4, log2_table_size=10, max_resolution=64, init_scale=1.0, table_dtype="float16")
    enc = HashGridEncoding(config)
    enc.table.data += 1e-4 * torch.rand_like(enc.table)  # values a half cannot hold exactly
    full = HashGridEncoding(HashGridConfig(**{**config.__dict__, "table_dtype": "float32"}))
    full.table.data.copy_(enc.table.data)
    x = torch.rand(64, 3, requires_grad=True)
    out = ops.hash_encode(x, enc.table.half(), enc.resolutions, enc.offsets, backend=backend_name)
    assert out.dtype == torch.float32
    rounded = ref.hash_encode(x, enc.table.detach().half().float(), enc.resolutions, enc.offsets)
    torch.testing.assert_close(out, rounded, rtol=1e-5, atol=1e-6)
    got = enc(x)
    torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, full(x))  # the rounding is real
    torch.testing.assert_close(got, full(x), rtol=0, atol=5e-3)  # ... and small (half: 11 bits)
    grad = torch.randn_like(got)
    got.backward(grad)
    assert enc.table.dtype == enc.table.grad.dtype == torch.float32
    want = torch.autograd.grad(full(x), full.table, grad)[0]
    # the table gradient comes back in the table's dtype (half: 11 bits), then reaches the float32 master
    torch.testing.assert_close(enc.table.grad, want, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(enc.table.grad, want.half().float(), rtol=1e-5, atol=1e-7)


_HOLD_BUILD_LOCK = """
import sys, time
from pathlib import Path
from omnifield.cuda import native
directory = Path(sys.argv[1])
with native.build_lock(directory):
    (directory / "lock").touch()  # torch's own build lock, as cpp_extension.load makes it
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    (directory / "lock").unlink()
"""


def _hold_build_lock(directory, seconds):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _HOLD_BUILD_LOCK, str(directory), str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_build_killed_however_it_dies_does_not_hold_up_the_next_one(tmp_path, capsys):
    import signal
    import time

    from omnifield.cuda import native

    child = _hold_build_lock(tmp_path, 600)
    child.send_signal(signal.SIGKILL)  # no finally runs: torch's lock file stays behind
    child.wait()
    assert (tmp_path / "lock").exists()
    start = time.perf_counter()
    with native.build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
    assert time.perf_counter() - start < 5.0 and "left by an interrupted build" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_live_build_is_waited_for(tmp_path, capsys):
    import time

    from omnifield.cuda import native

    child = _hold_build_lock(tmp_path, 1.0)
    start = time.perf_counter()
    with native.build_lock(tmp_path):
        waited = time.perf_counter() - start
        assert child.wait(5) == 0 and not (tmp_path / "lock").exists()
    err = capsys.readouterr().err
    assert waited >= 0.5 and "waiting for another process" in err and "interrupted" not in err


def test_a_file_system_without_locks_falls_back_to_the_age_rule(tmp_path, capsys, monkeypatch):
    import errno
    import time
    import types

    from omnifield.cuda import native

    def no_locks(handle, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(native, "fcntl", types.SimpleNamespace(LOCK_EX=2, LOCK_NB=4, LOCK_UN=8, flock=no_locks))
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 1000.0
    os.utime(lock, (old, old))
    with native.build_lock(tmp_path):
        assert not lock.exists()
    assert "stale build lock" in capsys.readouterr().err


def test_without_flock_a_stale_torch_lock_is_removed_and_a_live_one_is_waited_for(tmp_path, capsys):
    import threading
    import time

    from omnifield.cuda.native import clear_stale_lock

    assert clear_stale_lock(tmp_path) is False  # no lock: nothing to do
    lock = tmp_path / "lock"
    lock.touch()
    old = time.time() - 1000.0
    os.utime(lock, (old, old))  # what torch's FileBaton leaves when its process is killed mid-build
    assert clear_stale_lock(tmp_path, stale_after=300.0) is True
    assert not lock.exists() and "stale build lock" in capsys.readouterr().err
    lock.touch()  # a live build: waited for until its process removes the lock, which is not touched
    threading.Timer(0.3, lock.unlink).start()
    start = time.perf_counter()
    assert clear_stale_lock(tmp_path, stale_after=300.0, poll_s=0.05) is False
    assert time.perf_counter() - start >= 0.25 and "waiting for another process" in capsys.readouterr().err
