"""The C++ CPU volume-rendering weights against the pure-PyTorch oracle, forward and backward.

The extension is built once per session (module fixture) and cached on disk for later sessions;
every test here skips, with the reason, where no compiler is present or the build fails.
"""

from __future__ import annotations


import pytest
import torch

from omnifield.cuda import cpu_compositing, native
from omnifield.cuda.reference.compositing import packed_info_from_ray_indices, render_weights


@pytest.fixture(scope="module")
def ext(native_extension):
    return native_extension("compositing")


def _samples(n_rays: int, dtype=torch.float32, max_count: int = 64):
    """Ragged packed samples: a quarter of the rays empty, some nearly opaque, sorted intervals."""
    counts = torch.randint(0, max_count, (n_rays,))
    counts[torch.rand(n_rays) < 0.25] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    packed_info = packed_info_from_ray_indices(ray_indices, n_rays)
    s = ray_indices.shape[0]
    deltas = torch.rand(s, dtype=dtype) * 0.05 + 1e-3
    t_ends = torch.cumsum(deltas, 0)
    t_starts = t_ends - deltas
    sigmas = torch.rand(s, dtype=dtype) * 30
    sigmas[torch.rand(s) < 0.3] = 0.0  # empty space
    sigmas[torch.rand(s) < 0.02] = 1e4  # opaque surfaces: transmittance underflows behind them
    return sigmas, t_starts, t_ends, ray_indices, packed_info


def _run(fn, sigmas, t_starts, t_ends, ray_indices, packed_info, grads, times_grad=True):
    """Forward, then backward of sum(out_k * grad_k) over the outputs whose grad is not None."""
    leaves = [sigmas.clone().requires_grad_(), t_starts.clone().requires_grad_(times_grad), t_ends.clone().requires_grad_(times_grad)]
    out = fn(*leaves, ray_indices, packed_info)
    loss = sum((o * g).sum() for o, g in zip(out, grads) if g is not None)
    loss.backward()
    return [o.detach() for o in out], [leaf.grad for leaf in leaves]


def _assert_close(got, ref, tol, what):
    for i, (a, b) in enumerate(zip(got, ref)):
        if b is None:
            assert a is None, f"{what}[{i}] should be None"
            continue
        torch.testing.assert_close(a, b, **tol["float32"], msg=lambda m, i=i: f"{what}[{i}]: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_backward_match_reference(ext, tol, dtype):
    data = _samples(500, dtype)
    grads = [torch.randn(data[0].shape[0], dtype=dtype) for _ in range(3)]
    ref_out, ref_grad = _run(render_weights, *data, grads)
    got_out, got_grad = _run(cpu_compositing.render_weights_cpu, *data, grads)
    _assert_close(got_out, ref_out, tol, "outputs")
    _assert_close(got_grad, ref_grad, tol, "grads (sigmas, t_starts, t_ends)")
    assert all(o.dtype == dtype for o in got_out)


@pytest.mark.parametrize("used", [(True, False, False), (False, True, False), (False, False, True), (True, False, True)])
def test_gradient_of_some_outputs(ext, tol, used):
    """Only the used outputs carry upstream gradients (the others get None); sigma grad only."""
    data = _samples(200)
    grads = [torch.randn(data[0].shape[0]) if u else None for u in used]
    ref = _run(render_weights, *data, grads, times_grad=False)
    got = _run(cpu_compositing.render_weights_cpu, *data, grads, times_grad=False)
    _assert_close(got[1], ref[1], tol, "grads")


def test_gradcheck_float64(ext, tol):
    sigmas, t_starts, t_ends, ray_indices, packed_info = _samples(12, torch.float64, max_count=8)
    sigmas = sigmas.clamp_max(20.0)  # finite differences need a smooth, not saturated, exponent
    inputs = tuple(t.clone().requires_grad_() for t in (sigmas, t_starts, t_ends))
    g = tol["gradcheck"]
    assert torch.autograd.gradcheck(
        lambda s, a, b: cpu_compositing.render_weights_cpu(s, a, b, ray_indices, packed_info),
        inputs, eps=g["eps"], atol=g["atol"], rtol=g["rtol"],
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_identical_results(ext, threads):
    data = _samples(3000)
    grads = [torch.randn(data[0].shape[0]) for _ in range(3)]
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        base = _run(cpu_compositing.render_weights_cpu, *data, grads)
        torch.set_num_threads(threads)
        other = _run(cpu_compositing.render_weights_cpu, *data, grads)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(base[0] + base[1], other[0] + other[1]):
        assert torch.equal(a, b)


def test_no_samples_and_empty_rays(ext):
    empty = torch.zeros(0)
    info = torch.zeros(5, 2, dtype=torch.long)
    out = cpu_compositing.render_weights_cpu(empty, empty, empty, empty.long(), info)
    assert [tuple(o.shape) for o in out] == [(0,), (0,), (0,)]
    sigmas = torch.rand(3, requires_grad=True)
    w, t, a = cpu_compositing.render_weights_cpu(sigmas, torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.long),
                                                 torch.tensor([[0, 3], [3, 0]]))
    assert t[0] == 1.0 and torch.allclose(w.sum() + t[-1] * (1 - a[-1]), torch.tensor(1.0))


def test_bad_inputs_raise(ext):
    sigmas, t_starts, t_ends, ray_indices, packed_info = _samples(10)
    fn = cpu_compositing.render_weights_cpu
    with pytest.raises(TypeError, match="dtype"):
        fn(sigmas.double(), t_starts, t_ends, ray_indices, packed_info)
    with pytest.raises(ValueError, match="t_ends"):
        fn(sigmas, t_starts, t_ends[:-1], ray_indices, packed_info)
    with pytest.raises(ValueError, match="packed_info"):
        fn(sigmas, t_starts, t_ends, ray_indices, packed_info[:, 0])
    bad = packed_info.clone()
    bad[-1] = torch.tensor([sigmas.shape[0] - 1, 5])
    with pytest.raises(RuntimeError, match="outside"):
        fn(sigmas, t_starts, t_ends, ray_indices, bad)
    assert not cpu_compositing.supports(sigmas.half(), t_starts.half(), t_ends.half(), packed_info)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert not cpu_compositing.available()
    s = torch.rand(2)
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_compositing.render_weights_cpu(s, s, s, torch.zeros(2, dtype=torch.long), torch.tensor([[0, 2]]))
