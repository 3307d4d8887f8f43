"""The C++ CPU Gaussian rasterizer and tile binning against the pure-PyTorch oracle, forward and backward.

Oracle: ``omnifield.cuda.reference.gaussians`` (``isect_tiles``, ``rasterize_to_pixels``; autograd through it
is the reference backward). The extension is built once per session and cached on disk; every test here skips,
with the reason, where no compiler is present or the build fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from omnifield.cuda import cpu_gaussians, native
from omnifield.cuda.reference.gaussians import isect_tiles, rasterize_to_pixels


@pytest.fixture(scope="module")
def ext(native_extension):
    return native_extension("gaussians")


def _scene(n, width, height, channels=3, dtype=torch.float32, opacity=(0.05, 1.0), scale=(0.4, 12.0), seed=0):
    """Random anisotropic 2D Gaussians over (and a little beyond) the image, as projection produces them.

    Returns ``means2d, conics, colors, opacities, radii, depths``. A few conics are not positive definite, a few
    opacities are 0 or 1 (clamped alpha), a few depths tie (index order decides).
    """
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    means = rand(n, 2) * torch.tensor([1.3 * width, 1.3 * height], dtype=torch.float64) - torch.tensor(
        [0.15 * width, 0.15 * height], dtype=torch.float64)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    sig = torch.exp(lo + (hi - lo) * rand(n, 2))
    theta = rand(n) * math.pi
    rot = torch.stack([theta.cos(), -theta.sin(), theta.sin(), theta.cos()], -1).reshape(n, 2, 2)
    cov = rot @ torch.diag_embed(sig**2) @ rot.transpose(1, 2) + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    odd = rand(n) < 0.04  # not positive definite: sigma < 0 somewhere
    conics[odd, 1] = 2.0 * (conics[odd, 0] * conics[odd, 2]).sqrt()
    a, b, c = cov[:, 0, 0], cov[:, 0, 1], cov[:, 1, 1]
    mid = 0.5 * (a + c)
    radii = torch.ceil(3 * torch.sqrt(mid + torch.sqrt((mid * mid - (a * c - b * b)).clamp_min(0)))).int()
    radii[rand(n) < 0.05] = 0  # culled
    opacities = opacity[0] + (opacity[1] - opacity[0]) * rand(n)
    opacities[rand(n) < 0.03] = 0.0
    opacities[rand(n) < 0.03] = 1.0
    depths = rand(n) * 10
    depths[rand(n) < 0.1] = 5.0  # ties
    colors = rand(n, channels)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in (means, conics, colors, opacities, radii, depths))


def _run(fn, width, height, tile_size, scene, background, grads):
    """Forward, then backward of sum(out * grad) over the outputs whose grad is not None -> (outputs, grads)."""
    means, conics, colors, opacities, radii, depths = scene
    offsets, ids = isect_tiles(means, radii, depths, width, height, tile_size)
    leaves = [t.clone().requires_grad_() for t in (means, conics, colors, opacities)]
    bg = None if background is None else background.clone().requires_grad_()
    out = fn(*leaves, width, height, tile_size, offsets, ids, bg)
    loss = sum((o * g).sum() for o, g in zip(out, grads) if g is not None)
    loss.backward()
    return [o.detach() for o in out], [t.grad for t in leaves + ([] if bg is None else [bg])]


def _assert_close(got, want, tol, what):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"{what}[{i}]: {m}")


def _assert_grads_close(got, want, tol, what):
    """Gradients compared after dividing each by its largest reference entry (sums of many terms: the absolute
    rounding error scales with the gradient, not with each entry)."""
    for i, (a, b) in enumerate(zip(got, want)):
        scale = b.abs().max().clamp_min(1e-30)
        torch.testing.assert_close(a / scale, b / scale, **tol, msg=lambda m, i=i: f"{what}[{i}] / max|ref|: {m}")


@pytest.mark.parametrize("channels", [1, 3, 4, 5])
@pytest.mark.parametrize("with_background", [False, True])
def test_forward_backward_match_reference(ext, tol, channels, with_background):
    """Partial tiles (50 x 37), culled and off-image Gaussians, random upstream gradients on both outputs."""
    width, height = 50, 37
    scene = _scene(300, width, height, channels, seed=channels)
    bg = torch.rand(channels) if with_background else None
    grads = [torch.randn(height, width, channels), torch.randn(height, width, 1)]
    want_out, want_grad = _run(rasterize_to_pixels, width, height, 16, scene, bg, grads)
    got_out, got_grad = _run(cpu_gaussians.rasterize_to_pixels_cpu, width, height, 16, scene, bg, grads)
    _assert_close(got_out, want_out, tol["float32"], "outputs (colors, alphas)")
    _assert_grads_close(got_grad, want_grad, tol["gaussian_raster_grad"], "grads (means2d, conics, colors, opacities, bg)")


def test_early_termination_matches_reference(ext, tol):
    """Many nearly opaque layers: most pixels stop at T <= 1e-4 (checked), which the backward must respect."""
    width, height = 40, 32
    scene = _scene(600, width, height, 4, opacity=(0.6, 1.0), scale=(3.0, 12.0), seed=7)
    bg = torch.rand(4)
    grads = [torch.randn(height, width, 4), torch.randn(height, width, 1)]
    want_out, want_grad = _run(rasterize_to_pixels, width, height, 16, scene, bg, grads)
    got_out, got_grad = _run(cpu_gaussians.rasterize_to_pixels_cpu, width, height, 16, scene, bg, grads)
    assert (want_out[1] > 1 - 2e-4).float().mean() > 0.5, "the scene should terminate most pixels early"
    _assert_close(got_out, want_out, tol["float32"], "outputs (colors, alphas)")
    _assert_grads_close(got_grad, want_grad, tol["gaussian_raster_grad"], "grads")


@pytest.mark.parametrize("tile_size", [4, 12, 32])
def test_other_tile_sizes_float64(ext, tol, tile_size):
    """Tile sizes that are not 16 (row groups of 8 pixels partly outside the tile); float64 end to end."""
    width, height = 45, 29
    scene = _scene(150, width, height, 3, dtype=torch.float64, seed=tile_size)
    bg = torch.rand(3, dtype=torch.float64)
    grads = [torch.randn(height, width, 3, dtype=torch.float64), torch.randn(height, width, 1, dtype=torch.float64)]
    want_out, want_grad = _run(rasterize_to_pixels, width, height, tile_size, scene, bg, grads)
    got_out, got_grad = _run(cpu_gaussians.rasterize_to_pixels_cpu, width, height, tile_size, scene, bg, grads)
    assert all(o.dtype == torch.float64 for o in got_out)
    _assert_close(got_out, want_out, tol["gaussian_raster_float64"], "outputs")
    _assert_grads_close(got_grad, want_grad, tol["gaussian_raster_float64"], "grads")


@pytest.mark.parametrize("used", [(True, False), (False, True)])
def test_gradient_of_one_output(ext, tol, used):
    """Only one output carries an upstream gradient (the other gets None in the Function's backward)."""
    width, height = 33, 20
    scene = _scene(120, width, height, 3, seed=3)
    grads = [torch.randn(height, width, 3) if used[0] else None, torch.randn(height, width, 1) if used[1] else None]
    want = _run(rasterize_to_pixels, width, height, 16, scene, None, grads)[1]
    got = _run(cpu_gaussians.rasterize_to_pixels_cpu, width, height, 16, scene, None, grads)[1]
    _assert_grads_close(got, want, tol["gaussian_raster_grad"], "grads")


def test_gradcheck_float64(ext, tol):
    """The kernel's own backward against finite differences (broad Gaussians: every alpha far from 1/255,
    no pixel near termination or the 0.99 clamp, so the output is smooth)."""
    width, height, ts = 11, 9, 4
    g = torch.Generator().manual_seed(1)
    n = 5
    means = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([width, height], dtype=torch.float64)
    conics = torch.tensor([[0.02, 0.004, 0.03]], dtype=torch.float64).repeat(n, 1)
    conics = conics * (0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64))
    colors = torch.rand(n, 2, generator=g, dtype=torch.float64)
    opacities = 0.2 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    bg = torch.rand(2, generator=g, dtype=torch.float64)
    radii = torch.full((n,), 30, dtype=torch.int32)
    offsets, ids = cpu_gaussians.isect_tiles_cpu(means, radii, torch.rand(n, dtype=torch.float64), width, height, ts)
    inputs = tuple(t.clone().requires_grad_() for t in (means, conics, colors, opacities, bg))
    fn = lambda m, c, col, o, b: cpu_gaussians.rasterize_to_pixels_cpu(  # noqa: E731
        m, c, col, o, width, height, ts, offsets, ids, b)
    gc = tol["gradcheck"]
    assert torch.autograd.gradcheck(fn, inputs, eps=gc["eps"], atol=gc["atol"], rtol=gc["rtol"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tile_size", [8, 16])
def test_isect_tiles_equals_reference(ext, dtype, tile_size):
    width, height = 77, 50
    means, _, _, _, radii, depths = _scene(800, width, height, dtype=dtype, scale=(0.4, 25.0), seed=tile_size)
    depths[:5] = -0.0  # -0 and +0 tie: index order
    depths[5:10] = 0.0
    want = isect_tiles(means, radii, depths, width, height, tile_size)
    got = cpu_gaussians.isect_tiles_cpu(means, radii, depths, width, height, tile_size)
    assert got[0].dtype == torch.int32 and got[1].dtype == torch.int64
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # float64 depths with float32 means (depth keys are exact), int64 radii
    want = isect_tiles(means, radii.long(), depths.double(), width, height, tile_size)
    got = cpu_gaussians.isect_tiles_cpu(means, radii.long(), depths.double(), width, height, tile_size)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_and_instruction_sets_give_identical_results(ext, threads):
    """Bit-identical across thread counts and between the AVX2 and the portable (SSE2) copies of the kernel."""
    width, height = 70, 45
    scene = _scene(2000, width, height, 4, seed=11)
    bg = torch.rand(4)
    grads = [torch.randn(height, width, 4), torch.randn(height, width, 1)]

    def run():
        out, grad = _run(cpu_gaussians.rasterize_to_pixels_cpu, width, height, 16, scene, bg, grads)
        means, _, _, _, radii, depths = scene
        return out + grad + list(cpu_gaussians.isect_tiles_cpu(means, radii, depths, width, height))

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        base = run()
        torch.set_num_threads(threads)
        other = run()
        ext.set_avx2(False)
        portable = run()
    finally:
        ext.set_avx2(True)
        torch.set_num_threads(previous)
    for a, b, c in zip(base, other, portable):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_empty_inputs(ext):
    """No Gaussians, or none on screen: background everywhere, alpha 0, zero gradients."""
    bg = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)
    zero = torch.zeros(0, 2)
    offsets, ids = cpu_gaussians.isect_tiles_cpu(zero, torch.zeros(0, dtype=torch.int32), torch.zeros(0), 20, 10)
    assert offsets.shape == (1, 2) and ids.numel() == 0
    leaves = [torch.zeros(0, 2, requires_grad=True), torch.zeros(0, 3, requires_grad=True),
              torch.zeros(0, 3, requires_grad=True), torch.zeros(0, requires_grad=True)]
    colors, alphas = cpu_gaussians.rasterize_to_pixels_cpu(*leaves, 20, 10, 16, offsets, ids, bg)
    assert torch.equal(colors, bg.detach().expand(10, 20, 3)) and torch.equal(alphas, torch.zeros(10, 20, 1))
    (colors.sum() + alphas.sum()).backward()
    assert torch.allclose(bg.grad, torch.full((3,), 200.0))
    assert all(t.grad is not None and t.grad.shape == t.shape for t in leaves)


def test_non_contiguous_inputs(ext, tol):
    width, height = 30, 20
    means, conics, colors, opacities, radii, depths = _scene(100, width, height, 3, seed=5)
    offsets, ids = isect_tiles(means, radii, depths, width, height, 16)
    wide = torch.stack([colors, colors], -1)[..., 0]  # a strided view with the same values
    want = rasterize_to_pixels(means, conics, colors, opacities, width, height, 16, offsets, ids)
    got = cpu_gaussians.rasterize_to_pixels_cpu(means.t().contiguous().t(), conics, wide, opacities, width, height,
                                                16, offsets, ids)
    _assert_close(got, want, tol["float32"], "outputs")


def test_bad_inputs_raise(ext):
    means, conics, colors, opacities, radii, depths = _scene(20, 16, 16, 3)
    offsets, ids = isect_tiles(means, radii, depths, 16, 16, 16)
    fn = cpu_gaussians.rasterize_to_pixels_cpu
    with pytest.raises(ValueError, match="conics"):
        fn(means, conics[:-1], colors, opacities, 16, 16, 16, offsets, ids)
    with pytest.raises(ValueError, match="isect_offsets"):
        fn(means, conics, colors, opacities, 40, 16, 16, offsets, ids)
    with pytest.raises(ValueError, match="backgrounds"):
        fn(means, conics, colors, opacities, 16, 16, 16, offsets, ids, torch.zeros(4))
    with pytest.raises(TypeError, match="dtype"):
        fn(means.double(), conics, colors, opacities, 16, 16, 16, offsets, ids)
    with pytest.raises(RuntimeError, match="flatten_ids"):
        fn(means, conics, colors, opacities, 16, 16, 16, offsets, torch.full_like(ids, 20))
    with pytest.raises(ValueError, match="radii"):
        cpu_gaussians.isect_tiles_cpu(means, radii[:-1], depths, 16, 16)
    assert not cpu_gaussians.supports(means.half(), conics.half(), colors.half(), opacities.half())
    assert not cpu_gaussians.isect_supports(means, radii.float(), depths)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert not cpu_gaussians.available()
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_gaussians.isect_tiles_cpu(torch.zeros(1, 2), torch.ones(1, dtype=torch.int32), torch.ones(1), 8, 8)
