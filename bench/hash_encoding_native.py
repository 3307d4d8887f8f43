"""Benchmark: hash-encoding forward + backward, pure-PyTorch reference vs. the C++ CPU kernel.

Instant-NGP defaults: 2^18 points, 16 levels x 2 features, T = 2^19, resolutions 16 .. 2048; then a
smaller case (2^16 points, T = 2^17). Prints one table with the speed-up of the kernel over the
reference, with and without the position gradient, and the two table-gradient strategies of the
kernel's backward (partition by level, atomic adds). Builds the kernel on first use (~1 min).
Run: ``.venv/bin/python bench/hash_encoding_native.py [--repeats 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from omnifield.cuda import cpu_hash_grid, native
from omnifield.cuda.reference.hash_encoding import hash_encode

try:
    from omnifield.fields.encodings import HashGridConfig, hash_grid_layout
except ImportError:  # fields is optional for this script
    HashGridConfig = hash_grid_layout = None


def layout(levels: int, log2_t: int, n_min: int = 16, n_max: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """``(resolutions [L], offsets [L + 1])``: ``floor(n_min * b^l)``, dense levels where they fit."""
    if hash_grid_layout is not None:
        cfg = HashGridConfig(n_levels=levels, n_features=2, log2_table_size=log2_t,
                             base_resolution=n_min, max_resolution=n_max)
        return hash_grid_layout(cfg)
    b = math.exp((math.log(n_max) - math.log(n_min)) / (levels - 1))
    res = torch.tensor([math.floor(n_min * b**l + 1e-6) for l in range(levels)], dtype=torch.long)
    sizes = [min(2**log2_t, (int(r) + 1) ** 3) for r in res]
    return res, torch.tensor([0] + sizes, dtype=torch.long).cumsum(0)


def _time(fn, x, table, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        x.grad = table.grad = None
        t0 = time.perf_counter()
        out = fn(x, table)
        out.backward(torch.ones_like(out))
        best = min(best, time.perf_counter() - t0)
    return best


def run_case(log2_n: int, log2_t: int, repeats: int, levels: int = 16, features: int = 2) -> list[tuple[str, float]]:
    res, off = layout(levels, log2_t)
    table = (torch.rand(int(off[-1]), features) * 2e-4 - 1e-4).requires_grad_(True)
    rows = []
    for pos_grad in (True, False):
        x = torch.rand(2**log2_n, 3).requires_grad_(pos_grad)
        tag = "x+table grad" if pos_grad else "table grad"
        variants = [
            ("reference hash_encode", lambda x, t: hash_encode(x, t, res, off)),
            ("C++ kernel (auto)", lambda x, t: cpu_hash_grid.hash_encode_cpu(x, t, res, off)),
            ("C++ kernel, scatter by level", lambda x, t: cpu_hash_grid._HashEncodeCPU.apply(x, t, res, off, 1)),
            ("C++ kernel, atomic scatter", lambda x, t: cpu_hash_grid._HashEncodeCPU.apply(x, t, res, off, 2)),
        ]
        for name, fn in variants:
            rows.append((f"N=2^{log2_n} T=2^{log2_t} {tag:12s} {name}", _time(fn, x, table, repeats)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="only the 2^16-point case")
    args = p.parse_args()
    if not cpu_hash_grid.available():
        raise SystemExit(f"C++ kernel unavailable: {native.last_error('hash_grid')}")
    cases = [(16, 17)] if args.quick else [(18, 19), (16, 17)]
    print(f"hash encoding fwd+bwd, L=16, F=2, N_min=16, N_max=2048, float32, threads={torch.get_num_threads()}")
    print(f"{'case / variant':72s} {'seconds':>8s} {'vs ref':>7s}")
    for log2_n, log2_t in cases:
        rows = run_case(log2_n, log2_t, args.repeats)
        for i, (name, sec) in enumerate(rows):
            ref = rows[(i // 4) * 4][1]
            print(f"{name:72s} {sec:8.3f} {ref / sec:6.1f}x")


if __name__ == "__main__":
    main()
