"""CUDA Gaussian splatting kernels against the pure-PyTorch references, forward and backward.

GPU tier: every test marked ``gpu`` skips without a CUDA device. Each op runs on random inputs
(culled, off-screen and partially covered Gaussians included); the CUDA result and the reference's
(run on the same GPU) are compared, then both are backpropagated with the same random upstream
gradients. Tolerances: ``gaussians_cuda_forward`` / ``gaussians_cuda_backward`` in conftest.py.
The CPU tier checks the fallbacks and the GPU benchmark's no-GPU path.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from omnifield.cuda import cuda_gaussians as cg
from omnifield.cuda import native

REPO = Path(__file__).resolve().parent.parent
DEVICE = "cuda"  # the tier under test (tests/test_cuda_emulated.py sets "cpu" and smaller scenes)
RASTER_SCENE = (77, 53, 1500)  # width, height (partial tiles on both axes), Gaussians
PIPELINE_SCENE = (90, 64, 1200)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA kernels vs references)")


@pytest.fixture(scope="module")
def ext(cuda_extension):
    """The built extension; a build failure on a GPU machine fails (a missing nvcc skips)."""
    return cuda_extension("gaussians")


def _close(got, ref, tol, what, relative_atol=False):
    """assert_close with the table's tolerances; ``relative_atol`` scales atol by max(1, max |ref|)."""
    assert (got is None) == (ref is None), f"{what}: one of the gradients is None"
    if ref is None:
        return
    atol = tol["atol"] * (max(1.0, float(ref.detach().abs().max())) if relative_atol and ref.numel() else 1.0)
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{what}: {m}")


def _grads(outputs, leaves, upstream):
    """Backpropagate sum(out * g) over the (float) outputs; -> the leaves' gradients."""
    loss = sum((o * g).sum() for o, g in zip(outputs, upstream) if g is not None)
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _camera(width, height, device):
    """A random world-to-camera rigid transform and pinhole intrinsics (principal point off-centre)."""
    axis = torch.nn.functional.normalize(torch.randn(3, dtype=torch.float64), dim=0)
    angle = 0.3 * torch.rand(()).item()
    kx = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]], dtype=torch.float64)
    rot = torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = rot, torch.randn(3, dtype=torch.float64) * 0.3
    f = 0.9 * width
    K = torch.tensor([[f, 0, 0.47 * width], [0, f * 1.05, 0.52 * height], [0, 0, 1]], dtype=torch.float64)
    return viewmat.float().to(device), K.float().to(device)


def _scene(n, viewmat, device):
    """World means whose camera-space positions fill the frustum, ~5 % behind the near plane or
    far outside the image; random quaternions, scales and opacities."""
    z = torch.rand(n) * 5 + 1.5
    xy = (torch.rand(n, 2) * 2 - 1) * z[:, None] * 0.7
    cam = torch.cat([xy, z[:, None]], dim=1)
    cam[torch.rand(n) < 0.05, 2] *= -1  # behind the camera
    cam[torch.rand(n) < 0.05, 0] += 30.0  # off-screen
    rot, trans = viewmat[:3, :3].cpu(), viewmat[:3, 3].cpu()
    means = (cam - trans) @ rot  # R^T (cam - T)
    quats = torch.randn(n, 4)
    scales = torch.exp(torch.rand(n, 3) * 2.5 - 4.0)
    opacities = torch.rand(n) * 0.9 + 0.05
    return [t.to(device) for t in (means, quats, scales, opacities)]


# --------------------------------------------------------------------------------------------
# CPU tier


def test_cpu_tensors_are_not_supported():
    assert not cg.supports(torch.zeros(3))
    assert not cg.supports()
    with pytest.raises(TypeError, match="CUDA float32"):
        cg.spherical_harmonics(0, torch.zeros(2, 3), torch.zeros(2, 1, 3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_no_gpu_means_no_extension_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load_cuda_extension("gaussians") is None
        assert not cg.available()
    assert native.cuda_unavailable_reason() is not None
    with pytest.raises(RuntimeError, match="CUDA Gaussian splatting kernel is unavailable"):
        native.require_cuda_extension("gaussians", "Gaussian splatting")


def test_gpu_benchmark_says_no_gpu(tmp_path):
    """``bench/gpu_gaussians.py --no-gpu`` takes the no-GPU path: one line, exit 0, no results file."""
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_gaussians.py"), "--no-gpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no GPU" in lines[0], proc.stdout
    assert not out.exists()


def test_gpu_benchmark_table_formatting():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_gaussians_bench", REPO / "bench" / "gpu_gaussians.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    text = bench.format_table(["op", "ms"], [["raster fwd", 2.5], ["raster fwd+bwd", None]])
    lines = text.splitlines()
    assert lines[0].split() == ["op", "ms"] and "2.500" in lines[2] and lines[3].rstrip().endswith("-")
    assert len({len(ln) for ln in lines}) == 1  # aligned columns


# --------------------------------------------------------------------------------------------
# GPU tier


@gpu
def test_quat_scale_to_covar(ext, tol):
    from omnifield.cuda.reference import gaussians as ref

    _, quats, scales, _ = _scene(500, torch.eye(4), DEVICE)
    up = [torch.randn(500, 3, 3, device=DEVICE)]
    leaves = [t.clone().requires_grad_() for t in (quats, scales)]
    got = cg.quat_scale_to_covar(*leaves)
    want = ref.quat_scale_to_covar(*[t.detach().clone().requires_grad_() for t in (quats, scales)])
    _close(got, want, tol["gaussians_cuda_forward"], "covars")
    g_got = _grads([got], leaves, up)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (quats, scales)]
    g_ref = _grads([ref.quat_scale_to_covar(*ref_leaves)], ref_leaves, up)
    for name, a, b in zip(("quats", "scales"), g_got, g_ref):
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)


def _project_both(means, covars, viewmat, K, width, height, antialias):
    from omnifield.cuda.reference import gaussians as ref

    out = {}
    for name, fn in (("ours", cg.project_gaussians), ("ref", ref.project_gaussians)):
        leaves = [t.detach().clone().requires_grad_() for t in (means, covars, viewmat)]
        res = fn(leaves[0], leaves[1], leaves[2], K, width, height, 0.01, 1e10, 0.3, 0.0, antialias)
        out[name] = (leaves, res)
    return out


@gpu
@pytest.mark.parametrize("antialias", [False, True])
def test_project_gaussians(ext, tol, antialias):
    from omnifield.cuda.reference import gaussians as ref

    width, height, n = 96, 72, 2000
    viewmat, K = _camera(width, height, DEVICE)
    means, quats, scales, _ = _scene(n, viewmat, DEVICE)
    covars = ref.quat_scale_to_covar(quats, scales)
    both = _project_both(means, covars, viewmat, K, width, height, antialias)
    (lc, got), (lr, want) = both["ours"], both["ref"]
    radii_c, radii_r = got[3], want[3]
    assert radii_c.dtype == torch.int32 and 0 < int((radii_r > 0).sum()) < n
    same = radii_c == radii_r
    assert int((~same).sum()) <= 2, f"{int((~same).sum())} radii differ"
    vis = same & (radii_r > 0)
    fwd = tol["gaussians_cuda_forward"]
    for i, name in enumerate(("means2d", "conics")):
        _close(got[i][vis], want[i][vis], fwd, name, relative_atol=True)
    _close(got[2], want[2], fwd, "depths")
    assert (got[0][radii_c == 0] == 0).all() and (got[1][radii_c == 0] == 0).all()
    if antialias:
        _close(got[4][vis], want[4][vis], fwd, "compensations")
    else:
        assert got[4] is None and want[4] is None
    # Random upstream gradients on every float output; zero where the radii disagree.
    up = [torch.randn_like(want[0]), torch.randn_like(want[1]) * 0.01, torch.randn_like(want[2])]
    up = [u * same.reshape(-1, *([1] * (u.ndim - 1))) for u in up]
    if antialias:
        up.append(torch.randn_like(want[4]) * same)
    g_got = _grads(got[:3] + ((got[4],) if antialias else ()), lc, up)
    g_ref = _grads(want[:3] + ((want[4],) if antialias else ()), lr, up)
    bwd = tol["gaussians_cuda_backward"]
    _close(g_got[0], g_ref[0], bwd, "d/dmeans", relative_atol=True)
    sym = lambda g: 0.5 * (g + g.transpose(-1, -2))  # noqa: E731 - the reference's is one-sided
    _close(g_got[1], sym(g_ref[1]), bwd, "d/dcovars (symmetric part)", relative_atol=True)
    _close(g_got[2], g_ref[2], bwd, "d/dviewmat", relative_atol=True)


def _raster_inputs(n, channels, width, height, tile_size):
    from omnifield.cuda.reference import gaussians as ref

    viewmat, K = _camera(width, height, DEVICE)
    means, quats, scales, opacities = _scene(n, viewmat, DEVICE)
    with torch.no_grad():
        covars = ref.quat_scale_to_covar(quats, scales)
        means2d, conics, depths, radii, _ = ref.project_gaussians(means, covars, viewmat, K, width, height)
        offsets, ids = ref.isect_tiles(means2d, radii, depths, width, height, tile_size)
    colors = torch.rand(n, channels, device=DEVICE)
    return means2d, conics, colors, opacities, offsets, ids


@gpu
@pytest.mark.parametrize("tile_size", [16, 8])
def test_isect_tiles_matches_reference_exactly(ext, tile_size):
    from omnifield.cuda.reference import gaussians as ref

    width, height = 100, 70
    viewmat, K = _camera(width, height, DEVICE)
    means, quats, scales, _ = _scene(3000, viewmat, DEVICE)
    means2d, _, depths, radii, _ = ref.project_gaussians(means, ref.quat_scale_to_covar(quats, scales), viewmat, K,
                                                         width, height)
    depths = depths.detach().clone()
    depths[::7] = depths[3]  # exact depth ties: ordered by Gaussian index
    off_c, ids_c = cg.isect_tiles(means2d.detach(), radii, depths, width, height, tile_size)
    off_r, ids_r = ref.isect_tiles(means2d.detach(), radii, depths, width, height, tile_size)
    assert off_c.dtype == torch.int32 and ids_c.dtype == torch.int64 and ids_c.numel() > 0
    assert torch.equal(off_c, off_r) and torch.equal(ids_c, ids_r)
    empty = cg.isect_tiles(means2d[:0], radii[:0], depths[:0], width, height, tile_size)
    assert empty[1].numel() == 0 and not empty[0].any()


@gpu
@pytest.mark.parametrize("channels,tile_size,background", [(3, 16, True), (4, 16, False), (1, 16, True),
                                                           (5, 16, True), (3, 8, False), (2, 12, True)])
def test_rasterize_to_pixels(ext, tol, channels, tile_size, background):
    from omnifield.cuda.reference import gaussians as ref

    width, height, n = RASTER_SCENE
    means2d, conics, colors, opacities, offsets, ids = _raster_inputs(n, channels, width, height, tile_size)
    bg = torch.rand(channels, device=DEVICE) if background else None
    leaves_c = [t.detach().clone().requires_grad_() for t in (means2d, conics, colors, opacities)]
    leaves_r = [t.detach().clone().requires_grad_() for t in (means2d, conics, colors, opacities)]
    bg_c = bg.clone().requires_grad_() if background else None
    bg_r = bg.clone().requires_grad_() if background else None
    got = cg.rasterize_to_pixels(*leaves_c, width, height, tile_size, offsets, ids, bg_c)
    want = ref.rasterize_to_pixels(*leaves_r, width, height, tile_size, offsets, ids, bg_r)
    fwd = tol["gaussians_cuda_forward"]
    _close(got[0], want[0], fwd, "colors")
    _close(got[1], want[1], fwd, "alphas")
    assert 0.05 < float(want[1].detach().mean()) < 0.999, "the scene should be partly covered"
    up = [torch.randn_like(want[0]), torch.randn_like(want[1])]
    extra = [bg_c] if background else []
    g_got = _grads(got, leaves_c + extra, up)
    g_ref = _grads(want, leaves_r + ([bg_r] if background else []), up)
    names = ["means2d", "conics", "colors", "opacities"] + (["backgrounds"] if background else [])
    for name, a, b in zip(names, g_got, g_ref):
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)


@gpu
def test_rasterize_empty_image_is_background(ext):
    offsets = torch.zeros(2, 3, dtype=torch.int32, device=DEVICE)
    ids = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    z = torch.zeros(0, 3, device=DEVICE)
    bg = torch.tensor([0.1, 0.2, 0.3], device=DEVICE)
    colors, alphas = cg.rasterize_to_pixels(z[:, :2], z, z, z[:, 0], 40, 20, 16, offsets, ids, bg)
    assert torch.equal(colors, bg.expand(20, 40, 3)) and not alphas.any()


@gpu
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spherical_harmonics(ext, tol, degree):
    from omnifield.cuda.reference import gaussians as ref

    n = 4000
    dirs = torch.randn(n, 3, device=DEVICE) * 3
    coeffs = torch.randn(n, 16, 3, device=DEVICE)
    lc = [t.clone().requires_grad_() for t in (dirs, coeffs)]
    lr = [t.clone().requires_grad_() for t in (dirs, coeffs)]
    got, want = cg.spherical_harmonics(degree, *lc), ref.spherical_harmonics(degree, *lr)
    _close(got, want, tol["gaussians_cuda_forward"], "colors", relative_atol=True)
    up = [torch.randn_like(want)]
    for name, a, b in zip(("dirs", "coeffs"), _grads([got], lc, up), _grads([want], lr, up)):
        b = torch.zeros_like(a) if b is None else b  # degree 0: the reference's dirs gradient is unused
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)


@gpu
def test_spherindrical_harmonics(ext, tol):
    from omnifield.cuda.reference import gaussians4d as ref4

    n, n_time = 1000, 3
    dirs, dt = torch.randn(n, 3, device=DEVICE), torch.randn(n, device=DEVICE)
    coeffs = torch.randn(n, 16 * n_time, 3, device=DEVICE)
    lc = [t.clone().requires_grad_() for t in (dirs, dt, coeffs)]
    lr = [t.clone().requires_grad_() for t in (dirs, dt, coeffs)]
    got = cg.spherindrical_harmonics(3, n_time, lc[0], lc[1], 1.7, lc[2])
    want = ref4.spherindrical_harmonics(3, n_time, lr[0], lr[1], 1.7, lr[2])
    _close(got, want, tol["gaussians_cuda_forward"], "colors", relative_atol=True)
    up = [torch.randn_like(want)]
    for name, a, b in zip(("dirs", "dt", "coeffs"), _grads([got], lc, up), _grads([want], lr, up)):
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)


@gpu
@pytest.mark.parametrize("t_as_tensor", [False, True])
def test_slice_gaussians_4d(ext, tol, t_as_tensor):
    from omnifield.cuda.reference import gaussians4d as ref4

    n = 3000
    means4 = torch.randn(n, 4, device=DEVICE)
    scales4 = torch.exp(torch.rand(n, 4, device=DEVICE) * 2 - 1.5)
    ql, qr = torch.randn(n, 4, device=DEVICE), torch.randn(n, 4, device=DEVICE) * 2
    t = torch.tensor(0.3, device=DEVICE) if t_as_tensor else 0.3
    lc = [x.clone().requires_grad_() for x in (means4, scales4, ql, qr)]
    lr = [x.clone().requires_grad_() for x in (means4, scales4, ql, qr)]
    tc = t.clone().requires_grad_() if t_as_tensor else t
    tr = t.clone().requires_grad_() if t_as_tensor else t
    got, want = cg.slice_gaussians_4d(*lc, tc), ref4.slice_gaussians_4d(*lr, tr)
    for name, a, b in zip(("means3", "covars3", "marginal"), got, want):
        _close(a, b, tol["gaussians_cuda_forward"], name, relative_atol=True)
    up = [torch.randn_like(w) for w in want]
    extra_c, extra_r = ([tc], [tr]) if t_as_tensor else ([], [])
    names = ["means4", "scales4", "q_left", "q_right"] + (["t"] if t_as_tensor else [])
    for name, a, b in zip(names, _grads(got, lc + extra_c, up), _grads(want, lr + extra_r, up)):
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)


def _render(ops, means, quats, scales, opacities, sh, viewmat, K, width, height):
    """The renderer's pipeline on one op set: covariances, projection, SH colour + depth, tiles, compositing."""
    covars = ops.quat_scale_to_covar(quats, scales)
    means2d, conics, depths, radii, _ = ops.project_gaussians(means, covars, viewmat, K, width, height)
    campos = -viewmat[:3, :3].T @ viewmat[:3, 3]
    colors = (ops.spherical_harmonics(3, means - campos, sh) + 0.5).clamp_min(0.0)
    offsets, ids = ops.isect_tiles(means2d, radii, depths, width, height, 16)
    features = torch.cat([colors, depths[:, None]], dim=-1)
    return ops.rasterize_to_pixels(means2d, conics, features, opacities, width, height, 16, offsets, ids)


@gpu
def test_pipeline_matches_reference(ext, tol):
    """The whole renderer path, gradients w.r.t. every Gaussian tensor and the camera pose."""
    from omnifield.cuda.reference import gaussians as ref

    width, height, n = PIPELINE_SCENE
    viewmat, K = _camera(width, height, DEVICE)
    means, quats, scales, opacities = _scene(n, viewmat, DEVICE)
    sh = torch.randn(n, 16, 3, device=DEVICE) * 0.3
    inputs = (means, quats, scales, opacities, sh, viewmat)
    lc = [t.clone().requires_grad_() for t in inputs]
    lr = [t.clone().requires_grad_() for t in inputs]
    got = _render(cg, *lc[:6], K, width, height)
    want = _render(ref, *lr[:6], K, width, height)
    fwd = tol["gaussians_cuda_forward"]
    _close(got[0], want[0], {"rtol": fwd["rtol"], "atol": 1e-4}, "image (rgb + depth)", relative_atol=True)
    _close(got[1], want[1], fwd, "alphas")
    up = [torch.randn_like(want[0]), torch.randn_like(want[1])]
    names = ("means", "quats", "scales", "opacities", "sh", "viewmat")
    for name, a, b in zip(names, _grads(got, lc, up), _grads(want, lr, up)):
        _close(a, b, tol["gaussians_cuda_backward"], f"d/d{name}", relative_atol=True)
