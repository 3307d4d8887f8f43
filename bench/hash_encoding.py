"""Benchmark: hash-encoding forward + backward, fused embedding_bag path vs. alternatives.

Times 2^18 points, 16 levels x 2 features, T = 2^19 (Instant-NGP defaults) on the current device
and prints a table. Run: ``.venv/bin/python bench/hash_encoding.py [--points 18] [--log2-t 19]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from omnifield.cuda.reference.hash_encoding import (
    hash_encode,
    hash_encode_embedding_bag,
    hash_encode_gather,
    hash_encode_naive,
)
from omnifield.fields.encodings import HashGridConfig, hash_grid_layout


def _time(fn, x, table, res, off, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # first call warms up
        x.grad = None
        table.grad = None
        t0 = time.perf_counter()
        out = fn(x, table, res, off)
        out.backward(torch.ones_like(out))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--points", type=int, default=18, help="log2 of the number of points")
    p.add_argument("--log2-t", type=int, default=19, help="log2 of the table size per level")
    p.add_argument("--levels", type=int, default=16)
    p.add_argument("--features", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-position-grad", action="store_true", help="only the table needs a gradient")
    args = p.parse_args()
    cfg = HashGridConfig(n_levels=args.levels, n_features=args.features, log2_table_size=args.log2_t)
    res, off = hash_grid_layout(cfg)
    table = (torch.rand(int(off[-1]), args.features) * 2e-4 - 1e-4).requires_grad_(True)
    x = torch.rand(2**args.points, 3).requires_grad_(not args.no_position_grad)
    rows = []
    for name, fn in [("naive (loop over levels x corners)", hash_encode_naive),
                     ("vectorised gather + weighted sum", hash_encode_gather),
                     ("fused embedding_bag", hash_encode_embedding_bag),
                     ("gather + scatter-add autograd.Function (default)", hash_encode)]:
        rows.append((name, _time(fn, x, table, res, off, args.repeats)))
    base = rows[0][1]
    print(f"hash encoding fwd+bwd: N=2^{args.points}, L={args.levels}, F={args.features}, T=2^{args.log2_t}, "
          f"threads={torch.get_num_threads()}, position grad={not args.no_position_grad}")
    print(f"{'variant':50s} {'seconds':>9s} {'speed-up':>9s}")
    for name, sec in rows:
        print(f"{name:50s} {sec:9.3f} {base / sec:8.2f}x")


if __name__ == "__main__":
    main()
