"""Benchmark: Gaussian splatting tile binning and rasterization, pure-PyTorch reference vs. the C++ CPU kernel.

Scenes: N 3D Gaussians on the surfaces of three boxes (a trained 3DGS scene such as lego is mostly surface
splats), log-uniform scales (5 % of them 4x larger), random rotations, opacities ``sigmoid(2 z + 1)``, seen
from distance ~4 by a ``side x side`` pinhole camera with lego's field of view (focal 1.39 side), projected by
the reference EWA projection: radii of a few pixels to tens of pixels. For each of 200x200 and 400x400 with 10k
and 100k Gaussians: ``isect_tiles``, ``rasterize_to_pixels`` forward (no grad), and forward + backward (random
upstream gradients on colours and alphas), reference and C++ timed in the same run (best of ``--repeats``,
wall clock, ``--threads`` threads, default torch's). The C++ rows also give the process CPU time of the best
call: on a shared machine, wall time well above CPU time / threads means the threads waited for a core.
Prints a table with the speed-ups and writes ``bench/results/gaussians_cpu.json``. Builds the kernel on first
use (~1 min). Run: ``.venv/bin/python bench/gaussians_cpu.py [--repeats 5] [--ref-repeats 2] [--threads 2]
[--quick]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from omnifield.cuda import cpu_gaussians, native
from omnifield.cuda.reference import gaussians as ref

RESULTS = Path(__file__).resolve().parent / "results" / "gaussians_cpu.json"


def surface_scene(n: int, side: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(means2d, conics, colors [N, 3], opacities, radii, depths)`` of N projected Gaussians (module doc)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g) * 2 - 1
    face = torch.randint(0, 3, (n,), generator=g)
    u[torch.arange(n), face] = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    centers = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.3, -0.2], [-0.4, -0.3, 0.3]])
    sizes = torch.tensor([0.8, 0.5, 0.4])
    box = torch.randint(0, 3, (n,), generator=g)
    means = centers[box] + u * sizes[box, None]
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.004), math.log(0.05), generator=g))
    scales[torch.rand(n, generator=g) < 0.05] *= 4
    covars = ref.quat_scale_to_covar(torch.randn(n, 4, generator=g), scales)
    opacities = torch.sigmoid(torch.randn(n, generator=g) * 2 + 1)
    colors = torch.rand(n, 3, generator=g)
    eye = torch.tensor([2.4, -2.0, 2.5])
    forward = -eye / eye.norm()
    right = torch.linalg.cross(forward, torch.tensor([0.0, 0.0, 1.0]))
    right = right / right.norm()
    rot = torch.stack([right, torch.linalg.cross(forward, right), forward])  # world -> camera (OpenCV)
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = rot, -rot @ eye
    f = 1.39 * side
    K = torch.tensor([[f, 0.0, side / 2], [0.0, f, side / 2], [0.0, 0.0, 1.0]])
    with torch.no_grad():
        means2d, conics, depths, radii, _ = ref.project_gaussians(means, covars, viewmat, K, side, side)
    return means2d, conics, colors, opacities, radii, depths


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeats`` calls after one warm-up call."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats + 1):  # the first call warms up
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def case_rows(n: int, side: int, args) -> tuple[dict, list[dict]]:
    """Times the three ops on one scene, reference and C++; returns the scene's statistics and the rows."""
    means2d, conics, colors, opacities, radii, depths = surface_scene(n, side)
    offsets, ids = cpu_gaussians.isect_tiles_cpu(means2d, radii, depths, side, side)
    leaves = [t.clone().requires_grad_() for t in (means2d, conics, colors, opacities)]
    grad_colors, grad_alphas = torch.randn(side, side, 3), torch.randn(side, side, 1)
    rows = []

    def raster(fn):
        def forward():
            with torch.no_grad():
                fn(*leaves, side, side, 16, offsets, ids)

        def forward_backward():
            out_colors, out_alphas = fn(*leaves, side, side, 16, offsets, ids)
            ((out_colors * grad_colors).sum() + (out_alphas * grad_alphas).sum()).backward()

        return forward, forward_backward

    ref_fwd, ref_fb = raster(ref.rasterize_to_pixels)
    cpp_fwd, cpp_fb = raster(cpu_gaussians.rasterize_to_pixels_cpu)
    for op, ref_fn, cpp_fn in (
        ("isect_tiles", lambda: ref.isect_tiles(means2d, radii, depths, side, side),
         lambda: cpu_gaussians.isect_tiles_cpu(means2d, radii, depths, side, side)),
        ("rasterize fwd", ref_fwd, cpp_fwd),
        ("rasterize fwd+bwd", ref_fb, cpp_fb),
    ):
        (t_ref, _), (t_cpp, cpu_cpp) = best_of(ref_fn, args.ref_repeats), best_of(cpp_fn, args.repeats)
        rows.append({"side": side, "gaussians": n, "op": op, "reference_ms": t_ref * 1e3, "cpp_ms": t_cpp * 1e3,
                     "cpp_cpu_ms": cpu_cpp * 1e3, "speedup": t_ref / t_cpp})
    with torch.no_grad():
        alphas = cpu_gaussians.rasterize_to_pixels_cpu(means2d, conics, colors, opacities, side, side, 16, offsets,
                                                       ids)[1]
    visible = radii > 0
    stats = {"side": side, "gaussians": n, "visible": int(visible.sum()), "intersections": int(ids.numel()),
             "median_radius": float(radii[visible].float().median()), "max_radius": int(radii.max()),
             "mean_alpha": float(alphas.mean())}
    return stats, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed calls of the C++ kernel (best kept)")
    p.add_argument("--ref-repeats", type=int, default=2, help="timed calls of the reference (best kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="only 200x200 with 10k Gaussians")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not cpu_gaussians.available():
        raise SystemExit(f"C++ kernel unavailable: {native.last_error('gaussians')}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(10_000, 200)] if args.quick else [(10_000, 200), (100_000, 200), (10_000, 400), (100_000, 400)]
    threads = torch.get_num_threads()
    print(f"Gaussian splatting, float32, C=3, tile 16, threads={threads}, best of {args.repeats} (C++) / "
          f"{args.ref_repeats} (reference), load average {os.getloadavg()[0]:.1f}")
    print(f"{'image':>8s} {'N':>7s} {'M':>8s} {'op':18s} {'reference ms':>12s} {'C++ ms':>8s} {'C++ cpu ms':>10s} "
          f"{'speed-up':>8s}")
    all_stats, all_rows = [], []
    for n, side in cases:
        stats, rows = case_rows(n, side, args)
        all_stats.append(stats)
        all_rows += rows
        for r in rows:
            print(f"{side:>4d}^2   {n:>7d} {stats['intersections']:>8d} {r['op']:18s} {r['reference_ms']:12.1f} "
                  f"{r['cpp_ms']:8.2f} {r['cpp_cpu_ms']:10.2f} {r['speedup']:7.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": threads,
              "load_average": os.getloadavg()[0], "scenes": all_stats, "rows": all_rows}
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
