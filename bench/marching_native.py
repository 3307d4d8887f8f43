"""Benchmark: occupancy-grid marching and packed compositing, pure-PyTorch reference vs. C++ kernels.

Instant-NGP-like sizes: a 128 x 128 pinhole camera (16,384 rays) looking at a box of side 3 with a
64^3 occupancy grid (~30 % of the cells occupied, at random), step ``sqrt(3) * 3 / 512``; then
compositing of ~500k packed samples (``render_weights`` forward, forward + backward of the weights,
as ``renderers.volume.composite`` uses them). Prints one table with the speed-up of the kernel over
the reference. Builds the kernels on first use (~35 s each, cached).
Run: ``.venv/bin/python bench/marching_native.py [--repeats 5] [--levels 1] [--res 64]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from omnifield.cuda import cpu_compositing, cpu_ray_marching, native
from omnifield.cuda.reference.compositing import packed_info_from_ray_indices, render_weights
from omnifield.cuda.reference.occupancy import march_occupancy_grid
from omnifield.cuda.reference.ray_aabb import ray_aabb_intersect


def camera_rays(side: int, radius: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``side^2`` rays of a pinhole camera (60 deg fov) on a sphere of ``radius``, looking at the origin."""
    eye = torch.tensor([radius * 0.6, radius * 0.5, radius * 0.62])
    forward = torch.nn.functional.normalize(-eye, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0])), dim=0)
    up = torch.linalg.cross(right, forward)
    f = 0.5 * side / math.tan(math.radians(30))
    j, i = torch.meshgrid(torch.arange(side) + 0.5 - side / 2, torch.arange(side) + 0.5 - side / 2, indexing="ij")
    d = forward + (i[..., None] * right - j[..., None] * up) / f
    d = torch.nn.functional.normalize(d.reshape(-1, 3), dim=-1)
    return eye.expand_as(d).contiguous(), d


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def marching_rows(args) -> tuple[list[tuple[str, float, float]], tuple]:
    half = 1.5
    aabb = torch.tensor([[-half] * 3, [half] * 3])
    o, d = camera_rays(args.side)
    outer = aabb * 2 ** (args.levels - 1)
    t0, t1, _ = ray_aabb_intersect(o, d, outer)
    t_min, t_max = t0.clamp_min(0.0), t1
    bins = torch.rand(args.levels, args.res, args.res, args.res) < args.occupied
    step = math.sqrt(3) * 2 * half / 512
    offset = torch.rand(o.shape[0])
    rows = []
    for tag, off in (("", None), (" + t_offset", offset)):
        ref = lambda: march_occupancy_grid(o, d, t_min, t_max, bins, aabb, step, off)  # noqa: E731
        cpp = lambda: cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, aabb, step, off)  # noqa: E731
        got, want = cpp(), ref()
        assert all(torch.equal(a, b) for a, b in zip(got, want)), "C++ marcher differs from the reference"
        name = f"march {o.shape[0]} rays, {args.levels}x{args.res}^3, {want[0].numel()} samples{tag}"
        rows.append((name, best_of(ref, args.repeats), best_of(cpp, args.repeats)))
    return rows, got


def compositing_rows(args, packed) -> list[tuple[str, float, float]]:
    ray_ids, ts, te, info = packed
    if ray_ids.numel() < args.samples:  # pad the marched rays' samples up to the requested size
        reps = math.ceil(args.samples / max(ray_ids.numel(), 1))
        n_rays = info.shape[0]
        ray_ids = (ray_ids[None] + n_rays * torch.arange(reps)[:, None]).reshape(-1)
        ts, te = ts.repeat(reps), te.repeat(reps)
        info = packed_info_from_ray_indices(ray_ids, n_rays * reps)
    sigmas = torch.rand(ray_ids.shape[0]) * 20
    grad = torch.randn(ray_ids.shape[0])
    rows = []
    for name, fn in (("reference", render_weights), ("C++", cpu_compositing.render_weights_cpu)):
        def forward(fn=fn):
            with torch.no_grad():
                fn(sigmas, ts, te, ray_ids, info)

        def forward_backward(fn=fn):
            s = sigmas.detach().requires_grad_(True)
            w, _, _ = fn(s, ts, te, ray_ids, info)
            w.backward(grad)

        rows.append((best_of(forward, args.repeats), best_of(forward_backward, args.repeats)))
    n = ray_ids.shape[0]
    return [
        (f"render_weights fwd (no grad), {n} samples, {info.shape[0]} rays", rows[0][0], rows[1][0]),
        (f"render_weights fwd + bwd (weights), {n} samples", rows[0][1], rows[1][1]),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--side", type=int, default=128, help="camera pixels per side (rays = side^2)")
    p.add_argument("--res", type=int, default=64, help="occupancy grid cells per side")
    p.add_argument("--levels", type=int, default=1, help="cascade levels")
    p.add_argument("--occupied", type=float, default=0.3, help="fraction of occupied cells")
    p.add_argument("--samples", type=int, default=500_000, help="packed samples for compositing")
    args = p.parse_args()
    for op, module in (("ray_marching", cpu_ray_marching), ("compositing", cpu_compositing)):
        if not module.available():
            raise SystemExit(f"C++ kernel {op!r} unavailable: {native.last_error(op)}")
    torch.manual_seed(0)
    march, packed = marching_rows(args)
    rows = march + compositing_rows(args, packed)
    print(f"occupancy marching + compositing, float32, threads={torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'case':68s} {'reference ms':>12s} {'C++ ms':>8s} {'speed-up':>8s}")
    for name, ref, cpp in rows:
        print(f"{name:68s} {ref * 1e3:12.2f} {cpp * 1e3:8.2f} {ref / cpp:7.1f}x")


if __name__ == "__main__":
    main()
