"""The pure-PyTorch references of cone marching and fused compositing (the oracles of the kernels).

Cone marching: steps grow as ``dt(t) = clamp(t * cone_angle, step, max_step)`` in the documented
float32 operation order, a tiny cone angle gives the constant steps up to rounding, the jitter moves
the first sample by ``t_offset * dt(t_min)``, and a step that rounds to no progress ends the ray.
``composite_rays`` equals ``render_weights`` + ``accumulate_along_rays`` at ``early_stop_eps = 0``,
drops exactly the samples with ``T < eps`` otherwise, and has correct gradients (float64 gradcheck).
"""

from __future__ import annotations

import torch

from omnifield.cuda.reference.compositing import (
    accumulate_along_rays,
    composite_rays,
    packed_info_from_ray_indices,
    render_weights,
)
from omnifield.cuda.reference.occupancy import march_occupancy_grid
from omnifield.cuda.reference.ray_aabb import ray_aabb_intersect

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _rays(n: int, levels: int = 3, dtype=torch.float32):
    """Rays from outside the outer box towards random points inside it, clipped to it (t_min >= 0.05)."""
    half = 2.0 ** (levels - 1)
    origins = torch.randn(n, 3, dtype=dtype) * half * 2
    targets = (torch.rand(n, 3, dtype=dtype) * 2 - 1) * half
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    t0, t1, _ = ray_aabb_intersect(origins, directions, AABB.to(dtype) * half)
    return origins, directions, t0.clamp_min(0.05), t1


def _per_ray(ray_ids, values, n_rays):
    return [values[ray_ids == r] for r in range(n_rays)]


def test_cone_steps_follow_dt():
    levels, n, step, cone, max_step = 3, 200, 0.01, 0.01, 0.08
    o, d, t_min, t_max = _rays(n, levels)
    full = torch.ones(levels, 8, 8, 8, dtype=torch.bool)
    ray_ids, t0, t1, info = march_occupancy_grid(o, d, t_min, t_max, full, AABB, step, None, cone, max_step)
    assert t0.dtype == torch.float32 and torch.equal(info, packed_info_from_ray_indices(ray_ids, n))
    dt = torch.clamp(t0 * cone, min=step, max=max_step)
    assert torch.equal(t1, torch.minimum(t0 + dt, t_max[ray_ids]))  # float32 op order of the docstring
    for r, (starts, ends) in enumerate(zip(_per_ray(ray_ids, t0, n), _per_ray(ray_ids, t1, n))):
        if starts.numel() == 0:
            assert not (t_min[r] < t_max[r])
            continue
        assert starts[0] == t_min[r] and torch.equal(starts[1:], ends[:-1])  # contiguous intervals
        assert ends[-1] == t_max[r] and starts[-1] < t_max[r]  # the last one ends at t_max
        steps = (ends - starts)[:-1]
        ulps = 4 * torch.finfo(torch.float32).eps * float(ends[-1])  # t_next - t rounds at the scale of t
        torch.testing.assert_close(steps, dt[ray_ids == r][:-1], rtol=0, atol=ulps)
    raw = t0 * cone
    assert (raw < step).any() and (raw > max_step).any() and ((raw > step) & (raw < max_step)).any()  # 3 regimes


def test_tiny_cone_angle_gives_constant_steps():
    """t * cone_angle < step everywhere: dt = step, t_i accumulated instead of start + i * step."""
    o, d, t_min, t_max = _rays(300)
    full = torch.ones(3, 8, 8, 8, dtype=torch.bool)
    step = 0.03
    const = march_occupancy_grid(o, d, t_min, t_max, full, AABB, step)
    cone = march_occupancy_grid(o, d, t_min, t_max, full, AABB, step, None, 1e-6)
    counts_c, counts_k = const[3][:, 1], cone[3][:, 1]
    assert (counts_c - counts_k).abs().max() <= 1 and (counts_c == counts_k).float().mean() > 0.95
    for r in range(300):
        a, b = const[1][const[0] == r], cone[1][cone[0] == r]
        m = min(a.numel(), b.numel())
        # t_i = t_{i-1} + step rounds once per step: i ulps of t at most
        atol = torch.finfo(torch.float32).eps * float(t_max.max()) * max(m, 1)
        torch.testing.assert_close(a[:m], b[:m], rtol=0, atol=atol)
    # Dyadic values (exact arithmetic): identical samples.
    t_min2, t_max2 = torch.full((4,), 0.25), torch.full((4,), 2.0)
    dirs = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    a = march_occupancy_grid(torch.zeros(4, 3), dirs, t_min2, t_max2, full, AABB, 1 / 64)
    b = march_occupancy_grid(torch.zeros(4, 3), dirs, t_min2, t_max2, full, AABB, 1 / 64, None, 2.0**-20)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].numel() == 4 * 112


def test_jitter_moves_the_first_sample():
    o, d, t_min, t_max = _rays(100)
    full = torch.ones(3, 8, 8, 8, dtype=torch.bool)
    offset = torch.rand(100)
    for cone, step in ((0.0, 0.02), (0.05, 0.01)):
        ray_ids, t0, _, info = march_occupancy_grid(o, d, t_min, t_max, full, AABB, step, offset, cone, 1.0)
        first = info[:, 0][info[:, 1] > 0]
        rays = ray_ids[first]
        dt0 = torch.clamp(t_min * cone, min=step, max=1.0) if cone > 0 else torch.full_like(t_min, step)
        assert torch.equal(t0[first], (t_min + offset * dt0)[rays])
        assert (t0[first] >= t_min[rays]).all() and (t0[first] < t_min[rays] + dt0[rays]).all()


def test_cone_march_stops_without_progress():
    """t + dt == t in float32 (tiny step far away): one sample, then the ray ends (no endless loop)."""
    o = torch.zeros(2, 3)
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t_min, t_max = torch.full((2,), 1e4), torch.full((2,), 2e4)
    full = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    box = torch.tensor([[-3e4] * 3, [3e4] * 3])
    ray_ids, t0, t1, info = march_occupancy_grid(o, d, t_min, t_max, full, box, 1e-8, None, 1e-14)
    assert ray_ids.tolist() == [0, 1] and torch.equal(t0, t_min) and torch.equal(t1, t_min)


def _packed(n_rays: int, dtype=torch.float32, max_count: int = 20):
    counts = torch.randint(0, max_count, (n_rays,))
    counts[::5] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    info = packed_info_from_ray_indices(ray_indices, n_rays)
    s = ray_indices.shape[0]
    deltas = torch.rand(s, dtype=dtype) * 0.1 + 1e-3
    t_ends = torch.cumsum(deltas, 0)
    sigmas = torch.rand(s, dtype=dtype) * 20
    return sigmas, t_ends - deltas, t_ends, ray_indices, info


def test_composite_equals_weights_and_accumulate():
    sigmas, ts, te, ri, info = _packed(50)
    values = torch.rand(sigmas.shape[0], 4)
    out, depth, acc = composite_rays(sigmas, values, ts, te, ri, info)
    w, _, _ = render_weights(sigmas, ts, te, ri, info)
    assert torch.equal(out, accumulate_along_rays(w, values, ri, 50))
    assert torch.equal(acc, accumulate_along_rays(w, None, ri, 50)[:, 0])
    assert torch.equal(depth, accumulate_along_rays(w, (0.5 * (ts + te))[:, None], ri, 50)[:, 0])


def test_early_termination_drops_exactly_the_samples_below_eps():
    sigmas, ts, te, ri, info = _packed(50)
    values = torch.rand(sigmas.shape[0], 3)
    eps = 0.05
    w, trans, _ = render_weights(sigmas, ts, te, ri, info)
    dropped = trans < eps
    assert 0 < int(dropped.sum()) < sigmas.shape[0]
    out, depth, acc = composite_rays(sigmas, values, ts, te, ri, info, eps)
    kept = w * (~dropped)
    torch.testing.assert_close(out, accumulate_along_rays(kept, values, ri, 50), rtol=0, atol=0)
    torch.testing.assert_close(acc, accumulate_along_rays(kept, None, ri, 50)[:, 0], rtol=0, atol=0)
    # T never increases along a ray: the dropped samples are a suffix of each ray (early termination).
    for r in range(50):
        d = dropped[ri == r]
        assert torch.equal(d, d.cummax(0).values)
    # Changing a dropped sample changes nothing.
    sig2, val2 = sigmas.clone(), values.clone()
    sig2[dropped], val2[dropped] = 123.0, -7.0
    assert all(torch.equal(a, b) for a, b in zip(composite_rays(sig2, val2, ts, te, ri, info, eps), (out, depth, acc)))


def test_composite_rays_gradcheck(tol):
    sigmas, ts, te, ri, info = _packed(6, torch.float64, max_count=6)
    values = torch.rand(sigmas.shape[0], 2, dtype=torch.float64)
    g = tol["gradcheck"]
    for eps in (0.0, 0.2):
        _, trans, _ = render_weights(sigmas, ts, te, ri, info)
        assert ((trans - eps).abs() > 1e-3).all()  # no sample at the threshold: the mask is locally constant
        fn = lambda s, v: composite_rays(s, v, ts, te, ri, info, eps)  # noqa: E731 - t_mid is not differentiated
        inputs = [t.clone().requires_grad_() for t in (sigmas, values)]
        assert torch.autograd.gradcheck(fn, inputs, eps=g["eps"], atol=g["atol"], rtol=g["rtol"])
