"""CPU benchmark: the demo, lego (instant-ngp, nerf, 3dgs), fox, fern, 4dgs and the hash encoding, as
tables and ``bench/results/cpu.json``.

Parts (select with ``--only demo,lego,fox,hash,lego3dgs,dynamic,fern``):

- ``demo``: :func:`omnifield.scenes.demo.run_demo` (wall time, PSNR, SSIM, Chamfer ratio);
- ``lego``: NeRF-synthetic lego (``../shared/data/lego``, ``--downscale 4``, every 8th view held
  out): instant-ngp for ``--minutes``, then nerf for the same wall time; held-out PSNR / SSIM;
- ``fox``: instant-ngp's fox (``../shared/data/fox``, ``--downscale 8``) for ``--fox-minutes``;
  held-out PSNR / SSIM;
- ``hash``: the reference hash encoding forward + backward against its naive baseline;
- ``lego3dgs``: 3D Gaussian splatting on lego (same data and protocol as ``lego``) for
  ``--splat-minutes``; held-out PSNR / SSIM, Gaussian count;
- ``fern``: LLFF fern (``../shared/data/fern``, 504x378, every 8th view held out), a real
  forward-facing capture: instant-ngp and 3dgs (from the COLMAP points) for ``--fern-minutes`` each;
- ``dynamic``: the synthetic dynamic scene (``omnifield data synth --dynamic``, default size:
  12 cameras, 20 times; the test split is held-out cameras at held-out times) with ``4dgs`` for
  ``--dynamic-minutes``.

Parts whose data folder is absent are skipped (recorded as such). Results of the parts that ran are
merged into an existing ``cpu.json``, so parts can be run one at a time. Smoke run (seconds per part):
``.venv/bin/python bench/cpu.py --minutes 0.2 --fox-minutes 0.2 --demo-minutes 0.2``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load, save_part, shared_data_root  # noqa: E402  (sibling benchmark module)

PARTS = ("demo", "lego", "fox", "hash", "lego3dgs", "dynamic", "fern")


def train_and_evaluate(method: str, data: Path, run_dir: Path, *, downscale: int, minutes: float,
                       max_steps: int | None, device: str, progress: bool, max_images: int | None = None,
                       overrides: tuple[str, ...] = ()) -> dict:
    """Train ``method`` for a wall-clock budget, then score the held-out split of the run."""
    from omnifield.scenes import runs
    from omnifield.scenes.evaluate import evaluate
    from omnifield.scenes.trainer import pick_device, train_method

    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # the benchmark's own previous run
    trainer = {"max_minutes": minutes, "eval_every": 0, "checkpoint_every": 0, "checkpoint_minutes": None,
               "progress": progress}
    if max_steps is not None:
        trainer["max_steps"] = max_steps
    result = train_method(method, data, out=run_dir, downscale=downscale, scene_overrides=list(overrides),
                          trainer_overrides=trainer, device=device)
    run = runs.load_run(run_dir, device=pick_device(device))
    ev = evaluate(run, run.load_data(split="test"), "test", max_images=max_images)
    return {"method": method, "steps": int(result.step), "train_seconds": float(result.elapsed_seconds),
            "status": result.status, "psnr": float(ev["psnr"]), "ssim": float(ev["ssim"]),
            "test_images": int(ev["num_images"]), "render_seconds": float(ev["render_seconds"]), "run": str(run_dir)}


def part_demo(args) -> dict:
    """``omnifield demo`` as a user runs it: the installed console script in a fresh process."""
    import shutil
    import subprocess
    import sys

    out = args.work / "demo"
    if out.exists():
        shutil.rmtree(out)  # time the whole demo, synthesis included
    exe = Path(sys.executable).with_name("omnifield")
    cmd = [str(exe) if exe.exists() else "omnifield", "demo", "--out", str(out), "--minutes", str(args.demo_minutes)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if args.quiet else None)
    s = json.loads((out / "run" / "summary.json").read_text())
    return {"wall_seconds": time.perf_counter() - t0, "train_seconds": s["train_seconds"], "steps": s["step"],
            "psnr": s["psnr"], "ssim": s["ssim"], "chamfer": s["chamfer"], "chamfer_ratio": s["chamfer_ratio"],
            "timings": s["timings"]}


def part_lego(args) -> dict:
    root = shared_data_root()
    if root is None or not (root / "lego" / "transforms_train.json").is_file():
        return {"skipped": "lego data absent (../shared/data/lego)"}
    common = dict(downscale=4, device=args.device, progress=not args.quiet, max_images=args.eval_images)
    ngp = train_and_evaluate("instant-ngp", root / "lego", args.work / "lego-instant-ngp", minutes=args.minutes,
                             max_steps=args.ngp_steps, **common)
    # nerf gets the wall time instant-ngp actually used (or --nerf-minutes; 0 keeps the nerf row
    # already in --out, with its own date).
    # Rendering one 200x200 view with NeRF's 64 + 128 samples per ray takes minutes on 2 cores, so
    # nerf is scored on --nerf-eval-images evenly spaced held-out views (instant-ngp on those too).
    common["max_images"] = args.nerf_eval_images or None
    if args.nerf_minutes == 0:
        old = load(args.out)["parts"].get("lego", {})
        nerf = dict(old.get("nerf") or {"skipped": "--nerf-minutes 0 and no earlier nerf row"})
        nerf.setdefault("date", old.get("date"))
    else:
        minutes = ngp["train_seconds"] / 60 if args.nerf_minutes is None else args.nerf_minutes
        nerf = train_and_evaluate("nerf", root / "lego", args.work / "lego-nerf", minutes=minutes,
                                  max_steps=args.nerf_steps, **common)
    if args.nerf_eval_images:
        from omnifield.scenes import runs
        from omnifield.scenes.evaluate import evaluate
        from omnifield.scenes.trainer import pick_device

        run = runs.load_run(ngp["run"], device=pick_device(args.device))
        ev = evaluate(run, run.load_data(split="test"), "test", max_images=args.nerf_eval_images)
        ngp["psnr_on_nerf_views"], ngp["ssim_on_nerf_views"] = float(ev["psnr"]), float(ev["ssim"])
    return {"downscale": 4, "holdout_every": 8, "instant-ngp": ngp, "nerf": nerf}


def part_fox(args) -> dict:
    root = shared_data_root()
    if root is None or not (root / "fox" / "transforms.json").is_file():
        return {"skipped": "fox data absent (../shared/data/fox)"}
    ngp = train_and_evaluate("instant-ngp", root / "fox", args.work / "fox-instant-ngp", downscale=8,
                             minutes=args.fox_minutes, max_steps=args.ngp_steps, device=args.device,
                             progress=not args.quiet, max_images=args.eval_images)
    return {"downscale": 8, "holdout_every": 8, "instant-ngp": ngp}


def part_fern(args) -> dict:
    """LLFF fern: a real forward-facing capture (504x378, 20 views, the LLFF hold-out: every 8th view),
    instant-ngp and 3dgs (seeded from the capture's COLMAP points) for ``--fern-minutes`` each."""
    root = shared_data_root()
    if root is None or not (root / "fern" / "poses_bounds.npy").is_file():
        return {"skipped": "fern data absent (../shared/data/fern)"}
    out = {"downscale": 8, "holdout_every": 8}
    for method in ("instant-ngp", "3dgs"):
        r = train_and_evaluate(method, root / "fern", args.work / f"fern-{method}", downscale=8,
                               minutes=args.fern_minutes, max_steps=args.ngp_steps if method == "instant-ngp"
                               else args.splat_steps, device=args.device, progress=not args.quiet,
                               max_images=args.eval_images)
        if method == "3dgs":
            r["gaussians"] = _gaussian_count(r["run"], args.device)
        out[method] = r
    return out


def part_lego3dgs(args) -> dict:
    root = shared_data_root()
    if root is None or not (root / "lego" / "transforms_train.json").is_file():
        return {"skipped": "lego data absent (../shared/data/lego)"}
    r = train_and_evaluate("3dgs", root / "lego", args.work / "lego-3dgs", downscale=4, minutes=args.splat_minutes,
                           max_steps=args.splat_steps, device=args.device, progress=not args.quiet,
                           max_images=args.eval_images)
    r["gaussians"] = _gaussian_count(r["run"], args.device)
    return {"downscale": 4, "holdout_every": 8, "3dgs": r}


def part_dynamic(args) -> dict:
    from omnifield.datasets.synth_dynamic import DynamicSynthConfig, write_dynamic_scene

    data = args.work / "dynamic-data"
    if not (data / "transforms_train.json").is_file():
        write_dynamic_scene(data, DynamicSynthConfig())
    r = train_and_evaluate("4dgs", data, args.work / "dynamic-4dgs", downscale=1, minutes=args.dynamic_minutes,
                           max_steps=args.splat_steps, device=args.device, progress=not args.quiet,
                           max_images=args.eval_images)
    r["gaussians"] = _gaussian_count(r["run"], args.device)
    return {"downscale": 1, "4dgs": r}


def _gaussian_count(run_dir: str, device: str) -> int:
    from omnifield.scenes import runs
    from omnifield.scenes.trainer import pick_device

    scene = runs.load_run(run_dir, device=pick_device(device)).scene
    return int(len(scene.gaussians(0.5 if hasattr(scene, "time_range") else None)))


def part_hash(args) -> dict:
    """Time the reference hash encoding fwd+bwd vs the naive loop: bench/hash_encoding.py's
    ``benchmark(...)`` when it offers one, else the reference functions directly."""
    n = 2**args.hash_points
    path = REPO / "bench" / "hash_encoding.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("omnifield_bench_hash_encoding", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if callable(getattr(module, "benchmark", None)):
            rows = module.benchmark(points=args.hash_points, log2_t=args.hash_log2_t, repeats=2)
            return {"points": n, "log2_table": args.hash_log2_t, "source": "bench/hash_encoding.py",
                    "variants": {str(name): float(sec) for name, sec in rows}}
    from omnifield.cuda.reference.hash_encoding import hash_encode, hash_encode_naive
    from omnifield.fields.encodings import HashGridConfig, hash_grid_layout

    res, off = hash_grid_layout(HashGridConfig(n_levels=16, n_features=2, log2_table_size=args.hash_log2_t))
    gen = torch.Generator().manual_seed(0)
    table = (torch.rand(int(off[-1]), 2, generator=gen) * 2e-4 - 1e-4).requires_grad_(True)
    x = torch.rand(n, 3, generator=gen).requires_grad_(True)

    def best_of(fn, repeats=2) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # the first call warms up
            x.grad, table.grad = None, None
            t0 = time.perf_counter()
            out = fn(x, table, res, off)
            out.backward(torch.ones_like(out))
            best = min(best, time.perf_counter() - t0)
        return best

    variants = {"naive (loop over levels x corners)": best_of(hash_encode_naive), "reference (default)": best_of(hash_encode)}
    from omnifield.cuda import cpu_hash_grid

    if cpu_hash_grid.available():
        variants["C++ CPU kernel (cpp backend)"] = best_of(cpu_hash_grid.hash_encode_cpu)
    return {"points": n, "log2_table": args.hash_log2_t, "source": "omnifield.cuda", "variants": variants}


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    parts = results["parts"]
    t = Table(title=f"omnifield CPU benchmark ({results['machine']['cpus']} CPUs, torch {results['machine']['torch']})")
    for col in ("part", "method", "train s", "steps", "PSNR", "SSIM", "other"):
        t.add_column(col, justify="left" if col in ("part", "method", "other") else "right")

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    if "demo" in parts:
        d = parts["demo"]
        if "skipped" in d:
            t.add_row("demo", "", "", "", "", "", d["skipped"])
        else:
            t.add_row("demo", "instant-ngp", f(d["train_seconds"], ".0f"), str(d["steps"]), f(d["psnr"], ".2f"),
                      f(d["ssim"], ".4f"), f"wall {d['wall_seconds']:.0f} s, Chamfer {100 * d['chamfer_ratio']:.2f}% of diag")
    for name in ("lego", "fox", "lego3dgs", "dynamic", "fern"):
        if name not in parts:
            continue
        p = parts[name]
        if "skipped" in p:
            t.add_row(name, "", "", "", "", "", p["skipped"])
            continue
        for method in ("instant-ngp", "nerf", "3dgs", "4dgs"):
            if method in p:
                r = p[method]
                if "skipped" in r:
                    t.add_row(name, method, "", "", "", "", r["skipped"])
                    continue
                other = f"downscale {p['downscale']}, {r['test_images']} held-out views"
                if "date" in r:
                    other += f"; kept from {r['date']}"
                if "gaussians" in r:
                    other += f"; {r['gaussians']} Gaussians"
                if "psnr_on_nerf_views" in r:
                    other += f"; {r['psnr_on_nerf_views']:.2f} dB / {r['ssim_on_nerf_views']:.4f} on nerf's views"
                t.add_row(name, method, f(r["train_seconds"], ".0f"), str(r["steps"]), f(r["psnr"], ".2f"),
                          f(r["ssim"], ".4f"), other)
    if any(name in parts for name in ("demo", "lego", "fox", "lego3dgs", "dynamic", "fern")):
        console.print(t)
    if "hash" in parts:
        h = parts["hash"]
        ht = Table(title=f"hash encoding fwd+bwd, {h['points']} points, T=2^{h['log2_table']} ({h['source']})")
        ht.add_column("variant")
        ht.add_column("seconds", justify="right")
        ht.add_column("speed-up", justify="right")
        base = next(iter(h["variants"].values()))
        for name, sec in h["variants"].items():
            ht.add_row(name, f"{sec:.3f}", f"{base / sec:.2f}x")
        console.print(ht)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    p.add_argument("--minutes", type=float, default=15.0, help="lego instant-ngp budget (nerf gets the same wall time)")
    p.add_argument("--nerf-minutes", type=float, default=None,
                   help="lego nerf budget (default: instant-ngp's; 0: keep the nerf row already in --out)")
    p.add_argument("--fox-minutes", type=float, default=3.0, help="fox instant-ngp budget")
    p.add_argument("--splat-minutes", type=float, default=15.0, help="lego 3dgs budget")
    p.add_argument("--fern-minutes", type=float, default=5.0, help="fern budget of instant-ngp and of 3dgs, each")
    p.add_argument("--dynamic-minutes", type=float, default=15.0, help="synthetic dynamic scene 4dgs budget")
    p.add_argument("--splat-steps", type=int, default=None, help="3dgs / 4dgs max_steps (the schedule's length)")
    p.add_argument("--demo-minutes", type=float, default=2.0, help="demo training budget")
    p.add_argument("--nerf-eval-images", type=int, default=3,
                   help="held-out views scored for nerf (its renders are slow on CPU); 0: all")
    p.add_argument("--ngp-steps", type=int, default=None, help="instant-ngp max_steps (the LR schedule's length)")
    p.add_argument("--nerf-steps", type=int, default=None, help="nerf max_steps (the LR schedule's length)")
    p.add_argument("--eval-images", type=int, default=None, help="held-out images scored per run (default: all)")
    p.add_argument("--hash-points", type=int, default=18, help="log2 of the points of the hash benchmark")
    p.add_argument("--hash-log2-t", type=int, default=19, help="log2 of the hash table size per level")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "runs", help="where runs are written")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    results = load(args.out)
    runners = {"demo": part_demo, "lego": part_lego, "fox": part_fox, "hash": part_hash, "lego3dgs": part_lego3dgs,
               "dynamic": part_dynamic, "fern": part_fern}
    for name in PARTS:
        if name in only:
            t0 = time.perf_counter()
            res = runners[name](args)
            res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
            res["part_seconds"] = time.perf_counter() - t0
            res["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            results = save_part(args.out, name, res)  # after every part, so a long run keeps what it measured
    print_tables(results)
    print(f"results: {args.out}")
    return results


if __name__ == "__main__":
    main()
