"""CUDA hash-grid and SH encodings against the pure-PyTorch references, forward and backward.

GPU tier: every test marked ``gpu`` skips without a CUDA device. The hash encoding runs on points
inside, outside and exactly on cell boundaries of every level (dense and hashed), float32 and
float16 tables and several feature counts; outputs and gradients (random upstream gradients) are
compared with the reference run on the same device, and the double backward (NeuS2's eikonal loss,
``create_graph=True``) with autograd through ``hash_encode_gather``. ``tests/test_cuda_emulated_encodings.py``
runs these functions on CPU tensors against the emulated kernels (slow tier).
CPU tier: the reference twin ``hash_encode_input_grad`` (equal to autograd, float64 gradcheck and
gradgradcheck) and the wrapper's behaviour without a GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from omnifield.cuda import cuda_encodings as ce
from omnifield.cuda import native, ops
from omnifield.cuda.reference import hash_encoding as he
from omnifield.cuda.reference import sh_encoding as she

DEVICE = "cuda"  # the tier under test (tests/test_cuda_emulated_encodings.py sets "cpu" and smaller sizes)
N_POINTS = 3000
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA kernels vs references)")

@pytest.fixture(scope="module")
def ext(cuda_extension):
    """The built extension; a build failure on a GPU machine fails (a missing nvcc skips)."""
    return cuda_extension("encodings")


def _close(got, ref, tol, what, relative_atol=False):
    """assert_close with the table's tolerances; ``relative_atol`` scales atol by max(1, max |ref|)."""
    assert (got is None) == (ref is None), f"{what}: one of the gradients is None"
    if ref is None:
        return
    atol = tol["atol"] * (max(1.0, float(ref.detach().abs().max())) if relative_atol and ref.numel() else 1.0)
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{what}: {m}")


def _layout(log2_t: int = 9):
    """Three dense levels (the third exactly fills T rows) and two hashed levels."""
    res = torch.tensor([2, 4, 7, 16, 33])
    sizes = [min(2**log2_t, (int(r) + 1) ** 3) for r in res]
    off = torch.tensor([0] + sizes).cumsum(0)
    assert he.level_is_dense(res, off) == [True, True, True, False, False]
    return res, off


def _points(n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Random points in [-0.2, 1.2]^3 (some clamped) plus cube corners, faces at 0 and 1, vertices
    of the res-16 and res-7 levels (cell boundaries) and far-outside coordinates."""
    x = torch.rand(n, 3, dtype=dtype) * 1.4 - 0.2
    special = [
        torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], dtype=dtype),  # cube corners
        torch.cat([torch.ones(4, 1, dtype=dtype), torch.rand(4, 2, dtype=dtype)], dim=1),  # the face x = 1
        torch.cat([torch.rand(4, 1, dtype=dtype), torch.zeros(4, 1, dtype=dtype), torch.rand(4, 1, dtype=dtype)], 1),
        torch.randint(0, 17, (8, 3)).to(dtype) / 16,  # vertices of the res-16 level
        torch.randint(0, 8, (8, 3)).to(dtype) / 7,
        torch.tensor([[0.5, 0.5, -3.0], [4.0, 0.25, 0.75], [-1.0, 2.0, 0.5], [1.0 + 1e-7, 0.5, 1.0]], dtype=dtype),
    ]
    special = torch.cat(special)[:n]
    x[: special.shape[0]] = special
    return x.to(device or DEVICE)


def _leaves(*tensors, grads=None):
    """Fresh leaf copies; ``grads[i]``: whether copy i requires grad (default all)."""
    grads = grads or (True,) * len(tensors)
    return [t.detach().clone().requires_grad_(g) for t, g in zip(tensors, grads)]


# --------------------------------------------------------------------------------------------
# CPU tier: the reference twin of the input-grad op, and the wrapper without a GPU


def test_cpu_tensors_are_not_supported():
    assert not ce.supports(torch.zeros(3))
    assert not ce.supports()
    assert not ce.supports(torch.zeros(2, 3), torch.zeros(5, 2))
    res, off = _layout()
    with pytest.raises(TypeError, match="CUDA float32"):
        ce.hash_encode(torch.zeros(2, 3), torch.zeros(int(off[-1]), 2), res, off)
    with pytest.raises(TypeError, match="CUDA float32"):
        ce.sh_encode(torch.zeros(2, 3), 2)


def test_layout_host_copy_is_cached_until_changed():
    """A layout on the GPU costs one device-to-host copy, redone after an in-place change."""
    res, off = _layout()
    first = ce._host_layout(res, off)
    assert ce._host_layout(res, off)[0] is first[0]
    res.add_(0)
    assert ce._host_layout(res, off)[0] is not first[0]
    with torch.inference_mode():  # no version counter: converted every call
        r, o = torch.tensor([2]), torch.tensor([0, 27])
        assert torch.equal(ce._host_layout(r, o)[1], o)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_no_gpu_means_no_extension_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load_cuda_extension("encodings") is None
        assert not ce.available()
    with pytest.raises(RuntimeError, match="CUDA encodings kernel is unavailable"):
        native.require_cuda_extension("encodings", "encodings")


def test_ops_input_grad_on_cpu_is_the_reference():
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2)
    x = _points(300, "cpu")
    g = torch.randn(300, 10)
    torch.testing.assert_close(ops.hash_encode_input_grad(g, x, table, res, off),
                               he.hash_encode_input_grad(g, x, table, res, off))


@pytest.mark.parametrize("features", [1, 2, 3])
def test_reference_input_grad_equals_autograd(tol, features):
    torch.manual_seed(0)
    res, off = _layout()
    table = torch.randn(int(off[-1]), features, dtype=torch.float64)
    x = _points(500, "cpu", torch.float64)
    g = torch.randn(500, len(res) * features, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(he.hash_encode_gather(xr, table, res, off), xr, g)
    got = he.hash_encode_input_grad(g, x, table, res, off)
    torch.testing.assert_close(got, want, **tol["float64"])
    assert got[(x < 0) | (x > 1)].eq(0).all()  # clamped coordinates get no gradient


def test_reference_input_grad_gradcheck(tol):
    """float64 gradcheck and gradgradcheck w.r.t. grad_out and table (x is a constant of the op)."""
    torch.manual_seed(1)
    res = torch.tensor([1, 3, 6])
    off = torch.tensor([0, 8, 72, 104])  # dense, dense, hashed with T = 32
    assert he.level_is_dense(res, off) == [True, True, False]
    x = torch.rand(7, 3, dtype=torch.float64) * 1.2 - 0.1
    x[0] = torch.tensor([1.0, 0.5, 1 / 3], dtype=torch.float64)
    table = torch.randn(104, 2, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda g_, t_: he.hash_encode_input_grad(g_, x, t_, res, off)  # noqa: E731
    gc = tol["gradcheck"]
    assert torch.autograd.gradcheck(fn, (g, table), eps=gc["eps"], atol=gc["atol"], rtol=gc["rtol"])
    assert torch.autograd.gradgradcheck(fn, (g, table), eps=gc["eps"], atol=gc["atol"], rtol=gc["rtol"])


def test_reference_input_grad_checks_shapes():
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2)
    with pytest.raises(ValueError, match="grad_out"):
        he.hash_encode_input_grad(torch.zeros(4, 9), torch.zeros(4, 3), table, res, off)


# --------------------------------------------------------------------------------------------
# GPU tier


def _hash_both(x, table, res, off, up, x_grad=True, table_grad=True):
    """(out, grad_x, grad_table) of ours and of the reference (table upcast to float32)."""
    xc, tc = _leaves(x, table, grads=(x_grad, table_grad))
    xr, tr = _leaves(x, table.float(), grads=(x_grad, table_grad))
    got, want = ce.hash_encode(xc, tc, res, off), he.hash_encode(xr, tr, res, off)
    if x_grad or table_grad:
        got.backward(up)
        want.backward(up)
    return (got.detach(), xc.grad, tc.grad), (want.detach(), xr.grad, tr.grad)


@gpu
@pytest.mark.parametrize("features,half", [(2, False), (2, True), (1, False), (3, False), (4, True), (8, False),
                                           (6, False)])
def test_hash_encode(ext, tol, features, half):
    torch.manual_seed(features)
    res, off = _layout()
    table = torch.randn(int(off[-1]), features, device=DEVICE)
    table = table.half() if half else table
    x = _points(N_POINTS)
    up = torch.randn(x.shape[0], len(res) * features, device=DEVICE)
    (out, gx, gt), (out_r, gx_r, gt_r) = _hash_both(x, table, res.to(DEVICE), off.to(DEVICE), up)
    assert out.dtype == torch.float32 and out.shape == (x.shape[0], len(res) * features)
    _close(out, out_r, tol["encodings_cuda_forward"], "output", relative_atol=True)
    _close(gx, gx_r, tol["encodings_cuda_backward"], "d/dx", relative_atol=True)
    assert gt.dtype == table.dtype
    if half:
        _close(gt.float(), gt_r.half().float(), tol["encodings_cuda_half_grad"], "d/dtable", relative_atol=True)
    else:
        _close(gt, gt_r, tol["encodings_cuda_backward"], "d/dtable", relative_atol=True)
    outside = ((x < 0) | (x > 1))
    assert gx[outside].eq(0).all()  # the clamp stops the position gradient


@gpu
@pytest.mark.parametrize("x_grad,table_grad", [(False, True), (True, False), (False, False)])
def test_hash_encode_only_requested_gradients(ext, tol, x_grad, table_grad):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, device=DEVICE)
    x = _points(min(N_POINTS, 500))
    up = torch.randn(x.shape[0], len(res) * 2, device=DEVICE)
    got, want = _hash_both(x, table, res, off, up, x_grad, table_grad)
    assert (got[1] is None) == (not x_grad) and (got[2] is None) == (not table_grad)
    for name, a, b in zip(("output", "d/dx", "d/dtable"), got, want):
        _close(a, b, tol["encodings_cuda_backward"], name, relative_atol=True)


@gpu
def test_hash_encode_cell_boundaries_match_reference_corners(ext, tol):
    """On vertices of every level (and at 0 and 1) both sides pick the same cell: a one-hot table
    row per vertex gives the same features, not only close ones."""
    res, off = _layout()
    rows = int(off[-1])
    table = torch.randn(rows, 2, device=DEVICE)
    grid = torch.arange(0, 17, device=DEVICE, dtype=torch.float32) / 16
    x = torch.stack(torch.meshgrid(grid[::3], grid[::2], grid[::4], indexing="ij"), dim=-1).reshape(-1, 3)
    x = torch.cat([x, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], device=DEVICE)])
    got = ce.hash_encode(x, table, res, off)
    want = he.hash_encode_naive(x, table, res, off)
    _close(got, want, tol["encodings_cuda_forward"], "vertex features")


@gpu
def test_hash_encode_empty_and_layout_on_device(ext):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, device=DEVICE, requires_grad=True)
    x = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    out = ce.hash_encode(x, table, res.to(DEVICE), off.to(DEVICE))
    assert out.shape == (0, 10)
    out.sum().backward()
    assert x.grad.shape == (0, 3) and table.grad.eq(0).all()
    gx = ce.hash_encode_input_grad(torch.zeros(0, 10, device=DEVICE), x.detach(), table, res, off)
    assert gx.shape == (0, 3)


@gpu
def test_glue_rejects_bad_inputs(ext):
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, device=DEVICE)
    x = torch.rand(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="x has shape"):
        ce.hash_encode(torch.rand(4, 2, device=DEVICE), table, res, off)
    with pytest.raises(ValueError, match="offsets"):
        ce.hash_encode(x, table[:-1], res, off)
    with pytest.raises(ValueError, match="power-of-two"):
        ce.hash_encode(x, torch.randn(100, 2, device=DEVICE), torch.tensor([2, 9]), torch.tensor([0, 27, 100]))
    with pytest.raises(ValueError, match="grad_out"):
        ce.hash_encode_input_grad(torch.zeros(4, 9, device=DEVICE), x, table, res, off)
    with pytest.raises(ValueError, match="degree"):
        ce.sh_encode(x, 5)


@gpu
@pytest.mark.parametrize("half", [False, True])
def test_hash_encode_input_grad(ext, tol, half):
    """The input-grad op and its double-backward kernel vs the reference twin, random upstreams."""
    torch.manual_seed(3)
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, device=DEVICE)
    table = table.half() if half else table
    x = _points(N_POINTS)
    g = torch.randn(x.shape[0], len(res) * 2, device=DEVICE)
    up = torch.randn(x.shape[0], 3, device=DEVICE)
    gc, tc = _leaves(g, table)
    gr, tr = _leaves(g, table.float())
    got, want = ce.hash_encode_input_grad(gc, x, tc, res, off), he.hash_encode_input_grad(gr, x, tr, res, off)
    bwd = tol["encodings_cuda_backward"]
    _close(got, want, bwd, "grad_x", relative_atol=True)
    got.backward(up)
    want.backward(up)
    _close(gc.grad, gr.grad, bwd, "d/dgrad_out", relative_atol=True)
    assert tc.grad.dtype == table.dtype
    if half:
        _close(tc.grad.float(), tr.grad.half().float(), tol["encodings_cuda_half_grad"], "d/dtable", True)
    else:
        _close(tc.grad, tr.grad, bwd, "d/dtable", relative_atol=True)


def _eikonal_grads(encode, x, table, w1, w2, res, off):
    """Gradients w.r.t. (table, w1, w2) of an eikonal loss on a tiny SDF network over the encoding."""
    leaves = [t.detach().clone().requires_grad_() for t in (table, w1, w2)]
    xr = x.detach().clone().requires_grad_()
    h = encode(xr, leaves[0], res, off).float()
    sdf = torch.tanh(h @ leaves[1]) @ leaves[2]
    (gx,) = torch.autograd.grad(sdf.sum(), xr, create_graph=True)
    loss = (((gx * gx).sum(dim=-1) - 1.0) ** 2).mean() + 0.1 * sdf.square().mean()
    return torch.autograd.grad(loss, leaves), gx.detach()


@gpu
@pytest.mark.parametrize("half", [False, True])
def test_hash_double_backward_eikonal(ext, tol, half):
    """``create_graph=True`` through hash_encode (NeuS2's eikonal loss) vs autograd through the gather reference."""
    torch.manual_seed(4)
    res, off = _layout()
    table = torch.randn(int(off[-1]), 2, device=DEVICE) * 0.3
    table = table.half() if half else table
    x = _points(N_POINTS)
    w1 = torch.randn(len(res) * 2, 16, device=DEVICE) * 0.5
    w2 = torch.randn(16, device=DEVICE) * 0.5
    got, gx = _eikonal_grads(ce.hash_encode, x, table, w1, w2, res, off)
    want, gx_r = _eikonal_grads(he.hash_encode_gather, x, table.float(), w1, w2, res, off)
    bwd = tol["encodings_cuda_backward"]
    _close(gx, gx_r, bwd, "grad_x", relative_atol=True)
    half_tol = tol["encodings_cuda_half_grad"]
    _close(got[0].float(), want[0].to(table.dtype).float(), half_tol if half else bwd, "d/dtable", True)
    _close(got[1], want[1], bwd, "d/dw1", relative_atol=True)
    _close(got[2], want[2], bwd, "d/dw2", relative_atol=True)


@gpu
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_sh_encode(ext, tol, degree):
    torch.manual_seed(degree)
    n = N_POINTS
    d = torch.nn.functional.normalize(torch.randn(n, 3, device=DEVICE), dim=-1)
    d[0] = torch.tensor([0.0, 0.0, 1.0], device=DEVICE)
    up = torch.randn(n, degree**2, device=DEVICE)
    dc, dr = _leaves(d, d)
    got, want = ce.sh_encode(dc, degree), she.sh_encode(dr, degree)
    assert got.shape == (n, degree**2) and got.dtype == torch.float32
    _close(got, want, tol["encodings_cuda_forward"], "sh")
    got.backward(up)
    if degree == 1:  # the constant band: the reference's output does not depend on the directions
        assert dc.grad.eq(0).all()
    else:
        want.backward(up)
        _close(dc.grad, dr.grad, tol["encodings_cuda_backward"], "d/ddirections", relative_atol=True)
    empty = ce.sh_encode(d[:0], degree)
    assert empty.shape == (0, degree**2)


@gpu
def test_supports_dtypes(ext):
    x = torch.rand(5, 3, device=DEVICE)
    table = torch.randn(10, 2, device=DEVICE)
    assert ce.supports(x, table) and ce.supports(x, table.half()) and ce.supports(x)
    assert not ce.supports(x.half(), table) and not ce.supports(x.half()) and not ce.supports(x.double(), table)
    assert not ce.supports(x, table.cpu())
