"""Volume compositing on packed samples, and the NeRF samplers."""

from __future__ import annotations

import math

import torch

from omnifield.cuda import ops
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.sampling import edges_to_packed, pdf_edges, stratified_edges
from omnifield.renderers.types import PackedSamples, RayBundle
from omnifield.renderers.volume import composite


def _packed(ray_ids, ts, te, n_rays, dtype=torch.float32):
    ri = torch.tensor(ray_ids, dtype=torch.long)
    return PackedSamples(ri, torch.tensor(ts, dtype=dtype), torch.tensor(te, dtype=dtype), ops.packed_info_from_ray_indices(ri, n_rays))


def test_two_samples_by_hand_and_empty_ray(tol):
    # Ray 0: no samples -> background. Ray 1: two samples. Ray 2: one sample.
    s = _packed([1, 1, 2], [1.0, 2.0, 0.5], [1.5, 3.0, 1.0], 3)
    sigma = torch.tensor([2.0, 1.0, 4.0])
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    bg = torch.tensor([0.2, 0.3, 0.4])
    out = composite(s, rgb, sigma, 3, bg)
    a1 = 1 - math.exp(-2.0 * 0.5)
    a2 = 1 - math.exp(-1.0 * 1.0)
    w1, w2 = a1, (1 - a1) * a2
    acc = w1 + w2
    a3 = 1 - math.exp(-4.0 * 0.5)
    expected = torch.tensor([
        [0.2, 0.3, 0.4],
        [w1 + (1 - acc) * 0.2, w2 + (1 - acc) * 0.3, (1 - acc) * 0.4],
        [(1 - a3) * 0.2, (1 - a3) * 0.3, a3 + (1 - a3) * 0.4],
    ])
    f = tol["float32"]
    torch.testing.assert_close(out.rgb, expected, **f)
    torch.testing.assert_close(out.alpha[:, 0], torch.tensor([0.0, acc, a3]), **f)
    torch.testing.assert_close(out.depth[1, 0], torch.tensor((w1 * 1.25 + w2 * 2.5) / acc), **f)
    assert float(out.depth[0, 0]) == 0.0
    assert out.extras["num_samples"][:, 0].tolist() == [0.0, 2.0, 1.0]


def test_per_ray_background_and_normals():
    s = _packed([0], [0.0], [1.0], 2)
    bg = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.5, 0.25]])
    out = composite(s, torch.ones(1, 3), torch.tensor([1e4]), 2, bg, normals=torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(out.rgb, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 0.25]]))
    torch.testing.assert_close(out.normals, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_composite_gradcheck(tol):
    s = _packed([0, 0, 0, 2, 2], [0.0, 0.3, 0.7, 0.1, 0.5], [0.3, 0.7, 1.0, 0.5, 0.9], 3, torch.float64)
    rgb = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(5, dtype=torch.float64) * 3).requires_grad_(True)
    bg = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    g = tol["gradcheck"]

    def fn(rgb, sigma, bg):
        o = composite(s, rgb, sigma, 3, bg)
        return o.rgb, o.alpha, o.depth

    assert torch.autograd.gradcheck(fn, (rgb, sigma, bg), eps=g["eps"], atol=g["atol"], rtol=g["rtol"])


def test_early_termination_changes_result_below_eps():
    class Wall(torch.nn.Module):  # opaque slab at z in [-0.5, -0.2]
        def sigma(self, x):
            return torch.where((x[:, 2] > -0.5) & (x[:, 2] < -0.2), torch.full_like(x[:, 0], 50.0), torch.zeros_like(x[:, 0]))

    wall = Wall()
    grid = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=8)
    n = 32
    rays = RayBundle(torch.cat([torch.rand(n, 2) * 0.5, torch.full((n, 1), -0.9)], 1), torch.tensor([[0.0, 0, 1]]).expand(n, 3).contiguous())
    o, d = rays.origins, rays.directions

    def sigma_fn(ts, te, ri):
        return wall.sigma(o[ri] + d[ri] * (0.5 * (ts + te))[:, None])

    full = grid.sample(rays, 0.0, 10.0, 0.01)
    cut = grid.sample(rays, 0.0, 10.0, 0.01, sigma_fn=sigma_fn, early_stop_eps=1e-4)
    assert len(cut) < len(full) / 2
    colors = lambda s: torch.sigmoid(s.positions(rays))  # noqa: E731
    bg = torch.tensor([0.1, 0.2, 0.3])
    a = composite(full, colors(full), sigma_fn(full.t_starts, full.t_ends, full.ray_indices), n, bg)
    b = composite(cut, colors(cut), sigma_fn(cut.t_starts, cut.t_ends, cut.ray_indices), n, bg)
    assert float((a.rgb - b.rgb).abs().max()) < 1e-3  # ~ eps x colour range
    assert float((a.alpha - b.alpha).abs().max()) < 1e-3


def test_stratified_and_pdf_sampling():
    near, far = torch.full((4,), 2.0), torch.full((4,), 6.0)
    e = stratified_edges(near, far, 8, perturb=True)
    assert e.shape == (4, 9) and bool((e[:, 1:] >= e[:, :-1]).all())
    assert float(e[:, 0].min()) == 2.0 and float(e[:, -1].max()) == 6.0
    w = torch.zeros(4, 8)
    w[:, 5] = 1.0  # all mass in [4.5, 5)
    fine = pdf_edges(stratified_edges(near, far, 8, perturb=False), w, 64, perturb=True, include_original=False)
    assert fine.shape == (4, 64) and bool((fine[:, 1:] >= fine[:, :-1]).all())
    inside = ((fine >= 4.5) & (fine <= 5.0)).float().mean()
    assert float(inside) > 0.95
    packed = edges_to_packed(e)
    assert len(packed) == 32 and packed.packed_info[:, 1].tolist() == [8] * 4


def _random_packed(n_rays: int, gen: torch.Generator):
    counts = torch.randint(0, 12, (n_rays,), generator=gen)
    counts[0] = 0  # an empty ray
    ri = torch.repeat_interleave(torch.arange(n_rays), counts)
    ts = torch.rand(len(ri), generator=gen) * 2
    te = ts + torch.rand(len(ri), generator=gen) * 0.3
    return PackedSamples(ri, ts, te, ops.packed_info_from_ray_indices(ri, n_rays))


def test_fused_composite_at_eps_0_equals_weights_then_sums():
    # composite() without normals runs ops.composite_rays; at early_stop_eps 0 it is the old
    # render_weights + accumulate path, bit for bit on the CPU, gradients included.
    gen = torch.Generator().manual_seed(3)
    s = _random_packed(40, gen)
    rgb = torch.rand(len(s), 3, generator=gen, requires_grad=True)
    sigma = (torch.rand(len(s), generator=gen) * 8).requires_grad_(True)
    bg = torch.tensor([0.1, 0.5, 0.9])
    out = composite(s, rgb, sigma, 40, bg)
    w, _, _ = ops.render_weights(sigma, s.t_starts, s.t_ends, s.ray_indices, s.packed_info)
    color = ops.accumulate_along_rays(w, rgb, s.ray_indices, 40)
    acc = ops.accumulate_along_rays(w, None, s.ray_indices, 40)
    depth = ops.accumulate_along_rays(w, s.t_mid[:, None], s.ray_indices, 40) / acc.clamp_min(1e-10)
    old_rgb = color + (1.0 - acc) * bg
    assert torch.equal(out.rgb, old_rgb) and torch.equal(out.alpha, acc) and torch.equal(out.depth, depth)
    up = torch.rand(40, 3, generator=gen)
    g_new = torch.autograd.grad((out.rgb * up).sum() + out.depth.sum(), (rgb, sigma))
    g_old = torch.autograd.grad((old_rgb * up).sum() + depth.sum(), (rgb, sigma))
    for a, b in zip(g_new, g_old):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_composite_early_termination_equals_dropping_the_samples(tol):
    # With early_stop_eps > 0 a sample whose transmittance is below eps adds nothing: the same as
    # compositing only the samples the sampler's early termination keeps (normals path too).
    gen = torch.Generator().manual_seed(4)
    s = _random_packed(30, gen)
    rgb = torch.rand(len(s), 3, generator=gen)
    normals = torch.rand(len(s), 3, generator=gen)
    sigma = torch.rand(len(s), generator=gen) * 40
    bg = torch.tensor([0.3, 0.2, 0.1])
    eps = 1e-2
    _, trans, _ = ops.render_weights(sigma, s.t_starts, s.t_ends, s.ray_indices, s.packed_info)
    keep = trans >= eps
    assert 0 < int(keep.sum()) < len(s)
    ri = s.ray_indices[keep]
    kept = PackedSamples(ri, s.t_starts[keep], s.t_ends[keep], ops.packed_info_from_ray_indices(ri, 30))
    ref = composite(kept, rgb[keep], sigma[keep], 30, bg, normals=normals[keep])
    f = tol["float32"]
    for with_normals in (False, True):
        out = composite(s, rgb, sigma, 30, bg, normals=normals if with_normals else None, early_stop_eps=eps)
        torch.testing.assert_close(out.rgb, ref.rgb, **f)
        torch.testing.assert_close(out.alpha, ref.alpha, **f)
        torch.testing.assert_close(out.depth, ref.depth, **f)
        if with_normals:
            torch.testing.assert_close(out.normals, ref.normals, **f)
    full = composite(s, rgb, sigma, 30, bg)
    assert float((full.alpha - ref.alpha).abs().max()) > 0  # eps really cut something


def test_occupancy_grid_cone_marching_takes_fewer_samples_far_away():
    grid = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=8, levels=3)
    n = 16
    o = torch.tensor([[0.0, 0.0, -3.9]]).expand(n, 3).contiguous()
    d = torch.nn.functional.normalize(torch.rand(n, 3) * 0.2 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    rays = RayBundle(o, d)
    const = grid.sample(rays, 0.0, 10.0, 0.01)
    cone = grid.sample(rays, 0.0, 10.0, 0.01, cone_angle=1 / 64)
    assert 0 < len(cone) < len(const) / 2
    steps = cone.t_ends - cone.t_starts
    assert bool((steps <= torch.clamp(cone.t_starts / 64, min=0.01) * (1 + 1e-5)).all())
    assert float(steps.max()) > 0.05  # t up to ~5: steps grew past 5x the base step
    capped = grid.sample(rays, 0.0, 10.0, 0.01, cone_angle=1 / 64, max_step=0.02)
    assert float((capped.t_ends - capped.t_starts).max()) <= 0.02 + 1e-6


def test_occupancy_update_scales_the_step_per_level_with_cone_marching():
    grid = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=4, levels=3)
    cone = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=4, levels=3)
    ones = lambda x: torch.ones(x.shape[0])  # noqa: E731
    grid.update(0, ones, 0.01, warmup_steps=10)
    cone.update(0, ones, 0.01, warmup_steps=10, cone_angle=1 / 256, max_step=0.03)
    per_level = cone.occs.view(3, -1)
    torch.testing.assert_close(grid.occs, torch.full_like(grid.occs, 0.01))
    torch.testing.assert_close(per_level[:, 0], torch.tensor([0.01, 0.02, 0.03]))  # 2^l steps, capped


def test_cells_of_marks_the_cells_the_sampler_looks_up():
    grid = OccupancyGrid(torch.tensor([[-1.0, -0.5, -1], [1, 1.5, 1]]), resolution=8, levels=2)
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(50, 3, generator=gen) * 5.0 - 2.5  # some in level 0, some in level 1, some outside
    cells = grid.cells_of(points)
    assert cells.shape == grid.binaries.shape
    inside = ops.grid_lookup(points, torch.ones_like(grid.binaries), grid.aabb)
    assert bool(ops.grid_lookup(points[inside], cells, grid.aabb).all())  # the oracle: the sampler's own lookup
    assert int(cells.sum()) <= int(inside.sum())  # nothing but their cells
    others = torch.rand(2000, 3, generator=gen) * 5.0 - 2.5
    same_cell = ops.grid_lookup(others, cells, grid.aabb)
    assert 0 < int(same_cell.sum()) < len(others)
    # Dilation by one cell: a 3x3x3 block per isolated cell within the level.
    one = grid.cells_of(torch.tensor([[0.0, 0.5, 0.0]]), dilation=1)
    assert int(one.sum()) == 27 and int(one[1].sum()) == 0


def test_a_restricted_grid_never_occupies_or_evaluates_cells_outside_its_limit():
    grid = OccupancyGrid(torch.tensor([[-1.0, -1, -1], [1, 1, 1]]), resolution=8)
    limit = grid.cells_of(torch.tensor([[0.1, 0.1, 0.1], [-0.6, 0.3, 0.9]]), dilation=1)
    grid.restrict(limit)
    assert torch.equal(grid.binaries, limit)
    seen = []

    def density(x):
        seen.append(x)
        return torch.full((len(x),), 10.0)  # dense everywhere: an unrestricted grid would fill

    for step in (0, 300, 301):  # the warm-up (every cell) and the random phase
        grid.update(step, density, 0.1)
        assert torch.equal(grid.binaries, limit)
    x = torch.cat(seen)
    assert bool(ops.grid_lookup(x, limit, grid.aabb).all())  # evaluated only inside the limit
    assert "limit" not in grid.state_dict()
    grid.restrict(None)
    grid.update(0, density, 0.1)
    assert bool(grid.binaries.all())
