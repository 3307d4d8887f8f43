"""The pure-PyTorch Gaussian rasterizer (cuda/reference/gaussians.py) and render_gaussians.

(1) rasterize_to_pixels against a per-pixel brute force that reads the spec literally; (2) float64
gradchecks; (3) analytic projection / SH / binning / culling cases; (4) render_gaussians end to end.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from omnifield.cuda import ops
from omnifield.cuda.reference import gaussians as ref
from omnifield.datasets.cameras import Cameras
from omnifield.renderers.gaussians import GaussianPrimitives, GaussianRenderSettings, render_gaussians

W, H = 37, 29  # tiles are partial at the right and bottom for tile sizes 16 and 8


# --- (1) brute force --------------------------------------------------------------------------------


def _tile_lists(means2d, radii, depths, width, height, ts):
    """{(tx, ty): Gaussian ids sorted by (depth, index)} from the spec's tile-range formula."""
    tile_w, tile_h = -(-width // ts), -(-height // ts)
    lists: dict[tuple[int, int], list[int]] = {}
    for g, ((mx, my), r) in enumerate(zip(means2d, radii)):
        if r <= 0:
            continue
        x0, x1 = (min(max(f(v / ts), 0), tile_w) for f, v in ((math.floor, mx - r), (math.ceil, mx + r)))
        y0, y1 = (min(max(f(v / ts), 0), tile_h) for f, v in ((math.floor, my - r), (math.ceil, my + r)))
        for ty in range(y0, y1):
            for tx in range(x0, x1):
                lists.setdefault((tx, ty), []).append(g)
    return {k: sorted(v, key=lambda g: (depths[g], g)) for k, v in lists.items()}


def _brute_force(means2d, conics, colors, opacities, depths, radii, ts, background=None):
    """Python-float loop over pixels and their tile's Gaussians -> (colors [H,W,C], alphas [H,W,1], stats)."""
    m, con, col, op = means2d.tolist(), conics.tolist(), colors.tolist(), opacities.tolist()
    lists = _tile_lists(m, radii.tolist(), depths.tolist(), W, H, ts)
    n_ch = len(col[0])
    stats = {"terminated": 0, "faint": 0, "negative": 0}
    out, alphas = torch.zeros(H, W, n_ch, dtype=torch.float64), torch.zeros(H, W, 1, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            T, acc = 1.0, [0.0] * n_ch
            for g in lists.get((x // ts, y // ts), []):
                dx, dy = x + 0.5 - m[g][0], y + 0.5 - m[g][1]
                a, b, c = con[g]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                if sigma < 0:
                    stats["negative"] += 1
                    continue
                alpha = min(0.99, op[g] * math.exp(-sigma))
                if alpha < 1.0 / 255.0:
                    stats["faint"] += alpha > 0
                    continue
                t_next = T * (1.0 - alpha)
                if t_next <= 1e-4:
                    stats["terminated"] += 1
                    break
                acc = [v + alpha * T * ci for v, ci in zip(acc, col[g])]
                T = t_next
            bg = [0.0] * n_ch if background is None else background.tolist()
            out[y, x] = torch.tensor([v + T * bi for v, bi in zip(acc, bg)], dtype=torch.float64)
            alphas[y, x, 0] = 1.0 - T
    return out, alphas, stats


def _scene(n, dtype, kind="mixed", channels=3, seed=0):
    """Random screen-space Gaussians: means partly off-screen, 1.5-8 px std (x2 when opaque), depth ties,
    radii by the spec. ``kind``: "mixed" opacities 0.05-0.95, "opaque" 0.9-1 (30% exactly 1, clamped
    to 0.99), "faint" 0.01-0.06 (wide tails below 1/255)."""
    g = torch.Generator().manual_seed(seed)
    means2d = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 20.0, H + 20.0]) - 10
    theta = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    std = torch.rand(n, 2, generator=g, dtype=torch.float64) * 6.5 + 1.5
    if kind == "opaque":  # big and dense: pixels reach T <= 1e-4 and stop
        std = std * 2.0
    rot = torch.stack([torch.cos(theta), -torch.sin(theta), torch.sin(theta), torch.cos(theta)], -1).reshape(n, 2, 2)
    cov = rot @ torch.diag_embed(std**2) @ rot.transpose(1, 2) + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    radii = torch.ceil(3 * torch.linalg.eigvalsh(cov)[:, -1].sqrt()).to(torch.int32)
    depths = torch.randint(0, 4, (n,), generator=g).to(torch.float64) + 1  # many ties: index breaks them
    opacities = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    if kind == "opaque":
        opacities = torch.where(torch.rand(n, generator=g) < 0.3, 1.0, 0.9 + 0.1 * opacities)
    elif kind == "faint":
        opacities = 0.01 + 0.05 * opacities
    colors = torch.rand(n, channels, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means2d, conics, colors, opacities, depths)] + [radii]


@pytest.mark.parametrize("tile_size", [16, 8])
@pytest.mark.parametrize("n,kind", [(3, "mixed"), (40, "mixed"), (40, "opaque"), (25, "faint")])
def test_rasterize_matches_brute_force(tol, tile_size, n, kind):
    means2d, conics, colors, opacities, depths, radii = _scene(n, torch.float64, kind, channels=4, seed=n)
    if kind == "mixed" and n > 3:  # an indefinite conic: sigma < 0 somewhere, skipped by the sign rule
        conics[0] = torch.tensor([0.02, 0.05, 0.02], dtype=torch.float64)
    background = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    offsets, ids = ref.isect_tiles(means2d, radii, depths, W, H, tile_size)
    got, got_alpha = ref.rasterize_to_pixels(means2d, conics, colors, opacities, W, H, tile_size, offsets, ids, background)
    want, want_alpha, stats = _brute_force(means2d, conics, colors, opacities, depths, radii, tile_size, background)
    torch.testing.assert_close(got, want, **tol["float64"])
    torch.testing.assert_close(got_alpha, want_alpha, **tol["float64"])
    if kind == "opaque":
        assert stats["terminated"] > 100, stats
    if kind == "faint":
        assert stats["faint"] > 100, stats
    if kind == "mixed" and n > 3:
        assert stats["negative"] > 0, stats


def test_rasterize_float32_matches_brute_force(tol):
    scene = _scene(30, torch.float32, "mixed", channels=3, seed=7)
    means2d, conics, colors, opacities, depths, radii = scene
    offsets, ids = ref.isect_tiles(means2d, radii, depths, W, H, 16)
    got, got_alpha = ref.rasterize_to_pixels(means2d, conics, colors, opacities, W, H, 16, offsets, ids)
    want, want_alpha, _ = _brute_force(*scene, 16)
    torch.testing.assert_close(got, want.float(), **tol["float32"])
    torch.testing.assert_close(got_alpha, want_alpha.float(), **tol["float32"])


def test_rasterize_chunking_does_not_change_the_image(monkeypatch, tol):
    scene = _scene(40, torch.float64, "mixed", seed=3)
    means2d, conics, colors, opacities, depths, radii = scene
    offsets, ids = ref.isect_tiles(means2d, radii, depths, W, H, 8)
    whole = ref.rasterize_to_pixels(means2d, conics, colors, opacities, W, H, 8, offsets, ids)
    monkeypatch.setattr(ref, "PAIRS_PER_CHUNK", 1)  # one tile per chunk
    pieces = ref.rasterize_to_pixels(means2d, conics, colors, opacities, W, H, 8, offsets, ids)
    torch.testing.assert_close(pieces, whole, **tol["float64"])  # only the summation order may differ


def test_rasterize_empty_scene_gives_background_and_a_graph():
    colors = torch.rand(2, 3, requires_grad=True)
    means2d = torch.tensor([[-100.0, -100.0], [5.0, 5.0]])
    radii = torch.tensor([0, 0], dtype=torch.int32)
    offsets, ids = ref.isect_tiles(means2d, radii, torch.ones(2), W, H, 16)
    assert ids.numel() == 0 and offsets.shape == (2, 3) and not offsets.any()
    bg = torch.tensor([0.5, 0.25, 1.0])
    img, alpha = ops.rasterize_to_pixels(means2d, torch.ones(2, 3), colors, torch.ones(2), W, H, 16, offsets, ids, bg)
    assert torch.equal(img, bg.expand(H, W, 3)) and not alpha.any()
    img.sum().backward()
    assert torch.equal(colors.grad, torch.zeros(2, 3))


# --- (2) gradchecks (float64, away from the alpha clamp, the 1/255 threshold and termination) -------


def test_gradcheck_rasterize_to_pixels(tol):
    g = tol["gradcheck"]
    w, h, ts = 11, 9, 8
    means2d = torch.tensor([[3.0, 4.0], [8.5, 2.5], [5.0, 7.0]], dtype=torch.float64, requires_grad=True)
    # wide Gaussians (std ~6-9 px) over the whole 11x9 image: alpha > 1/255 everywhere, < 0.99 by opacity
    conics = torch.tensor([[1 / 40, 0.004, 1 / 50], [1 / 70, -0.003, 1 / 45], [1 / 36, 0.0, 1 / 80]],
                          dtype=torch.float64, requires_grad=True)
    colors = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    opacities = torch.tensor([0.6, 0.45, 0.7], dtype=torch.float64, requires_grad=True)
    background = torch.rand(4, dtype=torch.float64, requires_grad=True)
    radii = torch.full((3,), 30, dtype=torch.int32)
    offsets, ids = ref.isect_tiles(means2d, radii, torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64), w, h, ts)

    def fn(m, c, col, o, bg):
        return ref.rasterize_to_pixels(m, c, col, o, w, h, ts, offsets, ids, bg)

    assert torch.autograd.gradcheck(fn, (means2d, conics, colors, opacities, background), eps=g["eps"],
                                    atol=g["atol"], rtol=g["rtol"])


def _camera64():
    """A world-to-camera ``[4, 4]`` (small rotation + translation) and K for a 40x30 image, float64."""
    a = 0.1
    rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = rot, torch.tensor([0.1, -0.2, 3.0], dtype=torch.float64)
    K = torch.tensor([[35.0, 0, 19.0], [0, 33.0, 16.0], [0, 0, 1]], dtype=torch.float64)
    return viewmat, K


@pytest.mark.parametrize("antialias", [False, True])
def test_gradcheck_project_gaussians(tol, antialias):
    g = tol["gradcheck"]
    viewmat, K = _camera64()
    # one mean far to the side exercises the Jacobian clamp (t.x/z beyond lim_x_pos, but on screen by radius)
    means = torch.tensor([[0.2, 0.1, 0.5], [-0.4, 0.3, -0.2], [2.2, 0.0, 0.3]], dtype=torch.float64)
    covars = ref.quat_scale_to_covar(torch.randn(3, 4, dtype=torch.float64), torch.rand(3, 3, dtype=torch.float64) + 0.2)
    assert (ref.project_gaussians(means, covars, viewmat, K, 40, 30)[3] > 0).all()

    def fn(m, c, v):
        m2, con, d, _, comp = ref.project_gaussians(m, c, v, K, 40, 30, antialias=antialias)
        return (m2, con, d) if comp is None else (m2, con, d, comp)

    inputs = tuple(t.clone().requires_grad_() for t in (means, covars, viewmat))
    assert torch.autograd.gradcheck(fn, inputs, eps=g["eps"], atol=g["atol"], rtol=g["rtol"])


def test_gradcheck_quat_scale_to_covar_and_sh(tol):
    g = tol["gradcheck"]
    kw = dict(eps=g["eps"], atol=g["atol"], rtol=g["rtol"])
    quats = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    scales = (torch.rand(4, 3, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(ref.quat_scale_to_covar, (quats, scales), **kw)
    dirs = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    coeffs = torch.randn(4, 16, 3, dtype=torch.float64, requires_grad=True)
    for degree in range(4):
        assert torch.autograd.gradcheck(lambda d, c: ref.spherical_harmonics(degree, d, c), (dirs, coeffs), **kw)


# --- (3) analytic cases --------------------------------------------------------------------------------


def test_isotropic_gaussian_facing_the_camera(tol):
    f, s, z, cx, cy = 50.0, 0.2, 4.0, 20.0, 15.0
    K = torch.tensor([[f, 0, cx], [0, f, cy], [0, 0, 1]])
    covars = ref.quat_scale_to_covar(torch.tensor([[1.0, 0, 0, 0], [0.3, 0.1, -0.5, 0.2]]), torch.full((2, 3), s))
    torch.testing.assert_close(covars, (s * s * torch.eye(3)).expand(2, 3, 3), **tol["float32"])  # isotropic
    means = torch.tensor([[0.0, 0.0, z], [0.5, -0.3, z]])
    m2, con, depths, radii, comp = ref.project_gaussians(means, covars, torch.eye(4), K, 40, 30, antialias=True)
    torch.testing.assert_close(m2, (means @ K.T)[:, :2] / z, **tol["float32"])  # K t / z
    v = (f * s / z) ** 2
    cov2d = (v + 0.3) * torch.eye(2)
    want_conic = torch.linalg.inv(cov2d)
    torch.testing.assert_close(con[0], torch.stack([want_conic[0, 0], want_conic[0, 1], want_conic[1, 1]]), **tol["float32"])
    torch.testing.assert_close(depths, means[:, 2], **tol["float32"])
    assert radii[0].item() == math.ceil(3 * math.sqrt(v + 0.3))
    torch.testing.assert_close(comp[0], torch.tensor(v / (v + 0.3)), **tol["float32"])
    assert ref.project_gaussians(means, covars, torch.eye(4), K, 40, 30)[4] is None


def test_sh_degree0_is_c0_times_dc_and_degree1_by_hand(tol):
    coeffs = torch.randn(5, 9, 3)
    dirs = torch.randn(5, 3)
    torch.testing.assert_close(ref.spherical_harmonics(0, dirs, coeffs), ref.SH_C0 * coeffs[:, 0], **tol["float32"])
    x, y, z = torch.nn.functional.normalize(dirs, dim=-1).unbind(-1)
    want = ref.SH_C0 * coeffs[:, 0] + ref.SH_C1 * (-y[:, None] * coeffs[:, 1] + z[:, None] * coeffs[:, 2] - x[:, None] * coeffs[:, 3])
    torch.testing.assert_close(ops.spherical_harmonics(1, dirs, coeffs), want, **tol["float32"])
    with pytest.raises(ValueError, match="coeffs"):
        ref.spherical_harmonics(3, dirs, coeffs)


def test_isect_tiles_straddling_borders_and_order():
    # 37x29 with 16 px tiles: tile grid 3 wide, 2 high. Gaussian 0 straddles the corner (16, 16): 4 tiles;
    # Gaussian 1 sits in tile (2, 1) only; Gaussian 2 has Gaussian 0's depth (index breaks the tie)
    # and covers tiles x 0..2 of row 0; Gaussian 3 is nearer and covers tile (0, 0) only.
    # (Gaussian 2's box ends exactly on the tile border y = 16: ceil(16 / 16) = 1 keeps it in row 0.)
    means2d = torch.tensor([[16.0, 16.0], [36.0, 28.0], [24.0, 4.0], [4.0, 4.0]])
    radii = torch.tensor([3, 2, 12, 3], dtype=torch.int32)
    depths = torch.tensor([2.0, 1.0, 2.0, 0.5])
    offsets, ids = ref.isect_tiles(means2d, radii, depths, W, H, 16)
    assert offsets.dtype == torch.int32 and ids.dtype == torch.int64 and offsets.shape == (2, 3)
    # tile 0: [3, 0, 2]; tile 1: [0, 2]; tile 2: [2]; tile 3: [0]; tile 4: [0]; tile 5: [1]
    assert ids.tolist() == [3, 0, 2, 0, 2, 2, 0, 0, 1]
    assert offsets.flatten().tolist() == [0, 3, 5, 6, 7, 8]


def test_culled_gaussians_have_radius_zero_and_no_intersections():
    K = torch.tensor([[50.0, 0, 20.0], [0, 50.0, 15.0], [0, 0, 1]])
    means = torch.tensor([
        [0.0, 0.0, 3.0],  # visible
        [0.0, 0.0, -3.0],  # behind the camera
        [0.0, 0.0, 0.005],  # nearer than near = 0.01
        [40.0, 0.0, 3.0],  # far off-screen to the right
        [0.0, -30.0, 3.0],  # far above
        [0.1, 0.1, 2.0],  # visible, but culled by radius_clip below (the 0.3 px^2 blur alone gives radius 2)
    ])
    scales = torch.tensor([[0.1] * 3] * 5 + [[0.001] * 3])
    covars = ref.quat_scale_to_covar(torch.tensor([[1.0, 0, 0, 0]]).expand(6, 4), scales)
    m2, con, depths, radii, _ = ref.project_gaussians(means, covars, torch.eye(4), K, 40, 30, radius_clip=2.0)
    assert radii.dtype == torch.int32 and radii.tolist()[1:] == [0] * 5 and radii[0] > 0
    assert not m2[1:].any() and not con[1:].any()
    offsets, ids = ref.isect_tiles(m2, radii, depths, 40, 30, 16)
    assert set(ids.tolist()) == {0}
    _, _, _, radii_far, _ = ref.project_gaussians(means, covars, torch.eye(4), K, 40, 30, far=2.5)
    assert radii_far[0] == 0


# --- (4) render_gaussians end to end ---------------------------------------------------------------------


def _cameras(c2w=None, width=32, height=24):
    c2w = torch.eye(4) if c2w is None else c2w
    return Cameras.create(c2w, fx=40.0, fy=40.0, cx=width / 2, cy=height / 2, width=width, height=height)


def _prims(means, opacities, colors, scale=0.3, **kw):
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4)
    return GaussianPrimitives(means=means, opacities=opacities, quats=quats, scales=torch.full((n, 3), scale),
                              colors=colors, **kw)


def test_opaque_gaussian_occludes_the_one_behind():
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    for front, want in ((0, 0), (1, 1)):
        means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]])
        if front == 1:
            means = means.flip(0)
        out = render_gaussians(_prims(means, torch.tensor([1.0, 1.0]), torch.tensor([red, green])), _cameras(), 0, None)
        centre = out.rgb[12, 16]
        assert centre[want] > 0.95 and centre[1 - want] < 0.05, centre
        assert out.alpha[12, 16, 0] > 0.98


def test_depth_channel_is_tz_for_a_single_gaussian(tol):
    # a rotated, translated camera: the Gaussian sits on its optical axis at camera depth 3
    a = 0.4
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    c2w[:3, 3] = torch.tensor([1.0, -0.5, 0.2])
    mean = c2w[:3, 3] + 3.0 * c2w[:3, 2]
    prims = _prims(mean[None], torch.tensor([0.9]), torch.tensor([[0.2, 0.4, 0.6]]))
    bg = torch.tensor([1.0, 1.0, 1.0])
    out = render_gaussians(prims, _cameras(c2w), 0, bg)
    torch.testing.assert_close(out.depth[12, 16, 0], torch.tensor(3.0), **tol["float32"])
    assert out.alpha[12, 16, 0] > 0.85
    a0 = out.alpha[12, 16, 0]
    torch.testing.assert_close(out.rgb[12, 16], a0 * torch.tensor([0.2, 0.4, 0.6]) + (1 - a0) * bg, **tol["float32"])
    assert torch.equal(out.depth[out.alpha == 0], torch.zeros_like(out.depth[out.alpha == 0]))
    corner = out.to_output()
    assert torch.equal(corner.rgb[0, 0], bg) and corner.depth.shape == (24, 32, 1) and corner.extras == {}


def test_gradients_reach_camera_pose_and_means2d(tol):
    g = torch.Generator().manual_seed(1)
    n = 12
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([2.0, 1.5, 1.0], dtype=torch.float64)
    means[:, 2] += 4.0
    sh = torch.randn(n, 4, 3, generator=g, dtype=torch.float64) * 0.3
    prims = GaussianPrimitives(
        means=means.requires_grad_(), opacities=torch.full((n,), 0.6, dtype=torch.float64),
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64), scales=torch.full((n, 3), 0.4, dtype=torch.float64),
        sh=sh,
    )
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 3] = torch.tensor([0.1, 0.05, -0.2], dtype=torch.float64)
    cams = replace(_cameras(), c2w=c2w[None].clone().requires_grad_())
    weights = torch.rand(24, 32, 3, generator=g, dtype=torch.float64)
    settings = GaussianRenderSettings(antialias=True)

    def loss(c):
        out = render_gaussians(prims, replace(cams, c2w=c), 0, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), settings)
        return (out.rgb * weights).sum() + out.depth.sum() * 0.01, out

    value, out = loss(cams.c2w)
    out.means2d.retain_grad()
    value.backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (n, 2) and out.means2d.grad.abs().sum() > 0
    assert prims.means.grad.abs().sum() > 0
    grad = cams.c2w.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the directional derivative along a pose perturbation matches central differences
    direction = torch.zeros(1, 4, 4, dtype=torch.float64)
    direction[0, :3] = torch.randn(3, 4, generator=g, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        numeric = (loss(cams.c2w + h * direction)[0] - loss(cams.c2w - h * direction)[0]) / (2 * h)
    torch.testing.assert_close((grad * direction).sum(), numeric, rtol=tol["gradcheck"]["rtol"], atol=tol["gradcheck"]["atol"])


def test_sh_degree_setting_and_sh_colour():
    means = torch.tensor([[0.0, 0.0, 3.0]])
    sh = torch.zeros(1, 16, 3)
    sh[0, 0] = torch.tensor([1.0, -1.0, 0.0])
    sh[0, 2] = torch.tensor([5.0, 5.0, 5.0])  # degree-1 z term: the view direction is +z here
    base = dict(means=means, opacities=torch.tensor([0.99]), quats=torch.tensor([[1.0, 0, 0, 0]]),
                scales=torch.full((1, 3), 0.5))
    dc_only = render_gaussians(GaussianPrimitives(**base, sh=sh), _cameras(), 0, None, GaussianRenderSettings(sh_degree=0))
    as_colors = GaussianPrimitives(**base, colors=(ref.SH_C0 * sh[:, 0] + 0.5).clamp_min(0))
    torch.testing.assert_close(dc_only.rgb, render_gaussians(as_colors, _cameras(), 0, None).rgb)
    full = render_gaussians(GaussianPrimitives(**base, sh=sh), _cameras(), 0, None)
    assert (full.rgb[12, 16] > dc_only.rgb[12, 16] + 0.5).all()


def test_render_validates_inputs():
    means, op = torch.zeros(2, 3), torch.ones(2)
    cams = _cameras()
    cases = [
        (GaussianPrimitives(means=means, opacities=op, covars=torch.eye(3).expand(2, 3, 3)), "exactly one of sh"),
        (GaussianPrimitives(means=means, opacities=op, colors=torch.ones(2, 3)), "quats"),
        (_prims(means, torch.ones(3), torch.ones(2, 3)), "opacities"),
        (_prims(means, op, torch.ones(2, 4)), "colors"),
        (GaussianPrimitives(means=means, opacities=op, quats=torch.ones(2, 4), scales=torch.ones(2, 3),
                            covars=torch.eye(3).expand(2, 3, 3), colors=torch.ones(2, 3)), "covars"),
        (GaussianPrimitives(means=means, opacities=op, covars=torch.eye(3).expand(2, 3, 3), sh=torch.ones(2, 5, 3)), "sh"),
    ]
    for prims, message in cases:
        with pytest.raises(ValueError, match=message):
            render_gaussians(prims, cams, 0, None)
    with pytest.raises(ValueError, match="background"):
        render_gaussians(_prims(means, op, torch.ones(2, 3)), cams, 0, torch.ones(4))
    with pytest.raises(ValueError, match="sh_degree"):
        prims = GaussianPrimitives(means=means, opacities=op, covars=torch.eye(3).expand(2, 3, 3), sh=torch.ones(2, 4, 3))
        render_gaussians(prims, cams, 0, None, GaussianRenderSettings(sh_degree=2))
