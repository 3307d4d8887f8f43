"""Conversion benchmark (issue 7): PVD / PVD-AL and render distillation on lego, as tables and
``bench/results/convert.json``.

Protocol: NeRF-synthetic lego (``../shared/data/lego``), ``--downscale 4``, every 8th view held out.

Parts (select with ``--only teachers,matrix,speedup,al``):

- ``teachers``: each method of ``--methods`` trained from the images for ``--teacher-minutes``;
  held-out PSNR. The nerf teacher is, by default (``--nerf-teacher pvd``), the instant-ngp teacher
  converted into a nerf (PVD's shared heads) for ``--teacher-minutes``: a paper NeRF reaches ~14 dB in
  15 minutes on 2 cores, too weak to teach, and one trained from images with an occupancy grid
  (``--nerf-teacher images``, ``--nerf-teacher-set``) fills its grid and takes minutes per view.
- ``matrix``: every teacher x student pair of ``--pairs`` (default: all of ``--methods`` x
  ``--methods``) converted with ``omnifield.distill.convert`` for ``--convert-minutes``: held-out PSNR
  of the student against the ground truth, student-vs-teacher PSNR on the teacher's renders of the
  same held-out cameras, conversion wall time (teacher views and occupancy included), the route.
- ``speedup``: a paper NeRF trained from scratch for ``--scratch-minutes`` (or taken from a
  ``bench/cpu.py`` result with ``--scratch-json``) against instant-ngp -> nerf
  by PVD, evaluated every ``--speedup-eval-every`` steps: the conversion time at which the student
  first reaches the scratch NeRF's held-out PSNR, and the ratio of the two times (target >= 10x).
- ``al``: PVD-AL against plain PVD at the same budget (``--al-pairs``), held-out and
  student-vs-teacher PSNR; the difference.

Every part scores the same ``--eval-images`` evenly spaced held-out views (renders of an MLP NeRF
take tens of seconds per view on 2 cores). Results are merged into an existing JSON, so parts and
pairs can be run one at a time (``--pairs instant-ngp:nerf``). Runs go to ``--work``
(git-ignored). Smoke run: ``--teacher-minutes 0.1 --convert-minutes 0.1 --eval-images 1``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PARTS = ("teachers", "matrix", "speedup", "al")
METHODS = ("nerf", "instant-ngp", "tensorf", "plenoxels", "3dgs")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load, save_part, shared_data_root  # noqa: E402  (sibling benchmark modules)
from cpu import train_and_evaluate  # noqa: E402


def lego_root() -> Path | None:
    root = shared_data_root()
    if root is None or not (root / "lego" / "transforms_train.json").is_file():
        return None
    return root / "lego"


def teacher_run(args, method: str) -> Path:
    return args.work / f"lego-teacher-{method}"


def held_out(run, args):
    """The run's held-out data and the ``--eval-images`` indices every part scores."""
    from omnifield.scenes.evaluate import pick_evenly

    data = run.load_data(split="test")
    return data, pick_evenly(data.split("test"), args.eval_images)


def score_pair(student_run, teacher_run_, args) -> dict:
    """Held-out PSNR of the student (vs ground truth) and student-vs-teacher PSNR on the same views."""
    from omnifield.scenes.evaluate import render_image
    from omnifield.scenes.metrics import psnr

    data, indices = held_out(student_run, args)
    gt, vs_teacher, t_render = [], [], 0.0
    for i in indices:
        t0 = time.perf_counter()
        s = render_image(student_run.scene, data, i)
        t_render += time.perf_counter() - t0
        t = render_image(teacher_run_.scene, data, i)
        gt.append(psnr(s, data.images.rgb(i)))
        vs_teacher.append(psnr(s, t))
    return {"psnr": sum(gt) / len(gt), "psnr_vs_teacher": sum(vs_teacher) / len(vs_teacher),
            "test_images": len(indices), "student_render_seconds": t_render / len(indices)}


def part_teachers(args) -> dict:
    root = lego_root()
    if root is None:
        return {"skipped": "lego data absent (../shared/data/lego)"}
    out = {}
    for method in args.methods:
        if method == "nerf" and args.nerf_teacher == "pvd":
            if not (teacher_run(args, "instant-ngp") / "config.json").is_file():
                out[method] = {"skipped": "the nerf teacher is converted from the instant-ngp teacher: train it first"}
                continue
            r = convert_once("instant-ngp", "nerf", args, minutes=args.teacher_minutes, out=teacher_run(args, "nerf"))
            r.update(method="nerf", source="instant-ngp teacher converted by PVD", train_seconds=r["convert_seconds"])
            out[method] = r
            continue
        overrides = tuple(args.nerf_teacher_set) if method == "nerf" else ()
        r = train_and_evaluate(method, root, teacher_run(args, method), downscale=4, minutes=args.teacher_minutes,
                               max_steps=None, device=args.device, progress=not args.quiet,
                               max_images=args.eval_images, overrides=overrides)
        r["overrides"] = list(overrides)
        r["threads"] = torch.get_num_threads()
        out[method] = r
    return {"downscale": 4, "holdout_every": 8, "runs": out}


def convert_once(teacher: str, student: str, args, *, minutes: float, tag: str = "", active_learning: bool = True,
                 trainer_overrides: dict | None = None, out: Path | None = None) -> dict:
    """Convert the teacher run into ``student``; returns the scores, the route and the wall time."""
    from omnifield.distill.convert import ConvertOptions, convert, plan_conversion
    from omnifield.errors import ConversionRefused
    from omnifield.scenes import runs
    from omnifield.scenes.trainer import pick_device

    t_dir = teacher_run(args, teacher)
    if not (t_dir / runs.CONFIG_FILE).is_file():
        return {"skipped": f"no {teacher} teacher run in {t_dir} (run --only teachers first)"}
    dev = pick_device(args.device)
    t_run = runs.load_run(t_dir, device=dev)
    try:
        plan = plan_conversion(t_run.scene, student)
    except ConversionRefused as e:
        return {"refused": str(e)}
    out = out or args.work / f"convert-{teacher}-to-{student}{tag}"
    if out.exists():
        shutil.rmtree(out)
    options = ConvertOptions(max_minutes=minutes, active_learning=active_learning, progress=not args.quiet,
                             device=args.device, trainer_overrides=dict(trainer_overrides or {}))
    t0 = time.perf_counter()
    convert(t_run, student, out=out, options=options)
    wall = time.perf_counter() - t0
    s_run = runs.load_run(out, device=dev)
    row = {"route": plan.kind, "convert_seconds": wall, "steps": s_run.step, "run": str(out),
           "threads": torch.get_num_threads()}
    row.update(score_pair(s_run, t_run, args))
    return row


def parse_pairs(text: str | None, methods) -> list[tuple[str, str]]:
    if not text:
        return [(t, s) for t in methods for s in methods]
    pairs = []
    for item in text.split(","):
        t, _, s = item.strip().partition(":")
        if not t or not s:
            raise SystemExit(f"bad pair {item!r}: use TEACHER:STUDENT")
        pairs.append((t, s))
    return pairs


def part_matrix(args) -> dict:
    if lego_root() is None:
        return {"skipped": "lego data absent (../shared/data/lego)"}
    rows = {}
    for t, s in parse_pairs(args.pairs, args.methods):
        rows[f"{t}->{s}"] = convert_once(t, s, args, minutes=args.convert_minutes)
        print(f"{t} -> {s}: {rows[f'{t}->{s}']}", flush=True)
    return {"convert_minutes": args.convert_minutes, "pairs": rows}


def part_speedup(args) -> dict:
    """Scratch NeRF (paper model) vs instant-ngp -> nerf by PVD: time to the same held-out PSNR."""
    root = lego_root()
    if root is None:
        return {"skipped": "lego data absent (../shared/data/lego)"}
    if args.scratch_json is not None:  # a scratch NeRF measured by bench/cpu.py on this machine
        saved = json.loads(args.scratch_json.read_text())["parts"]["lego"]
        scratch = dict(saved["nerf"], source=f"{args.scratch_json.name} ({saved.get('date', '?')})")
    else:
        scratch = train_and_evaluate("nerf", root, args.work / "lego-nerf-scratch", downscale=4,
                                     minutes=args.scratch_minutes, max_steps=None, device=args.device,
                                     progress=not args.quiet, max_images=args.eval_images)
        scratch["source"] = "this run"
    target = scratch["psnr"]
    budget = scratch["train_seconds"] / 60.0 / 10.0 * args.speedup_slack
    row = convert_once("instant-ngp", "nerf", args, minutes=budget, tag="-speedup",
                       trainer_overrides={"eval_every": args.speedup_eval_every, "eval_max_images": args.eval_images,
                                          "log_every": 1})
    if "run" not in row:
        return {"scratch": scratch, "student": row}
    curve = speedup_curve(Path(row["run"]))
    reached = next((c for c in curve if c["psnr"] >= target), None)
    return {"scratch": scratch, "student": row, "curve": curve, "target_psnr": target,
            "seconds_to_target": None if reached is None else reached["seconds"],
            "speedup": None if reached is None else scratch["train_seconds"] / max(reached["seconds"], 1e-9)}


def speedup_curve(run_dir: Path) -> list[dict]:
    """Held-out PSNR against training seconds of a run evaluated during training.

    Seconds are the Trainer's training time at that step, the clock of the scratch run's
    ``train_seconds`` too: both exclude loading the dataset and held-out evaluation; the conversion's
    include seeding the occupancy grid from the teacher (step 0 of the objective). The first eval's
    step bounds the crossing from above (the student may have crossed earlier)."""
    from omnifield.scenes import runs

    records = runs.read_jsonl(run_dir / runs.METRICS_FILE)
    elapsed = {r["step"]: r["elapsed_seconds"] for r in records if r.get("type") == "train"}
    return [{"step": r["step"], "seconds": elapsed.get(r["step"], float("nan")), "psnr": r["psnr"]}
            for r in records if r.get("type") == "eval"]


def part_al(args) -> dict:
    if lego_root() is None:
        return {"skipped": "lego data absent (../shared/data/lego)"}
    rows = {}
    for t, s in parse_pairs(args.al_pairs, args.methods):
        with_al = convert_once(t, s, args, minutes=args.convert_minutes, tag="-al", active_learning=True)
        without = convert_once(t, s, args, minutes=args.convert_minutes, tag="-pvd", active_learning=False)
        diff = None
        if "psnr" in with_al and "psnr" in without:
            diff = {"psnr": with_al["psnr"] - without["psnr"],
                    "psnr_vs_teacher": with_al["psnr_vs_teacher"] - without["psnr_vs_teacher"]}
        rows[f"{t}->{s}"] = {"pvd_al": with_al, "pvd": without, "al_minus_pvd": diff}
    return {"convert_minutes": args.convert_minutes, "pairs": rows}


def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    parts = results["parts"]

    def f(v, fmt=".2f"):
        return "-" if v is None else format(v, fmt)

    if "teachers" in parts and "runs" in parts["teachers"]:
        t = Table(title="teachers (lego, downscale 4, trained from images)")
        for col in ("method", "threads", "train s", "steps", "held-out PSNR", "note"):
            t.add_column(col, justify="left" if col in ("method", "note") else "right")
        for m, r in parts["teachers"]["runs"].items():
            if "psnr" not in r:
                t.add_row(m, "-", "-", "-", "-", r.get("skipped", ""))
                continue
            t.add_row(m, str(r.get("threads", "-")), f(r["train_seconds"], ".0f"), str(r["steps"]), f(r["psnr"]),
                      r.get("source", ""))
        console.print(t)
    if "matrix" in parts and "pairs" in parts["matrix"]:
        t = Table(title=f"conversions ({parts['matrix']['convert_minutes']} min each)")
        for col in ("teacher -> student", "route", "threads", "seconds", "held-out PSNR", "vs teacher PSNR", "note"):
            t.add_column(col, justify="left" if col in ("teacher -> student", "route", "note") else "right")
        for pair, r in parts["matrix"]["pairs"].items():
            note = r.get("refused") or r.get("skipped") or ""
            t.add_row(pair, r.get("route", "-"), str(r.get("threads", "-")), f(r.get("convert_seconds"), ".0f"),
                      f(r.get("psnr")),
                      f(r.get("psnr_vs_teacher")), note)
        console.print(t)
    if "speedup" in parts and "scratch" in parts["speedup"]:
        p = parts["speedup"]
        s = p["scratch"]
        console.print(f"speed-up: scratch nerf {s['psnr']:.2f} dB after {s['train_seconds']:.0f} s ({s.get('source')}); "
                      f"instant-ngp -> nerf reached it after {f(p.get('seconds_to_target'), '.0f')} s "
                      f"(x{f(p.get('speedup'), '.1f')}); curve "
                      + ", ".join(f"{c['seconds']:.0f}s:{c['psnr']:.1f}" for c in p.get("curve", [])))
    if "al" in parts and "pairs" in parts["al"]:
        t = Table(title=f"PVD-AL vs PVD ({parts['al']['convert_minutes']} min each)")
        for col in ("pair", "PVD-AL held-out", "PVD held-out", "AL - PVD", "AL vs teacher", "PVD vs teacher"):
            t.add_column(col, justify="left" if col == "pair" else "right")
        for pair, r in parts["al"]["pairs"].items():
            a, b, d = r["pvd_al"], r["pvd"], r["al_minus_pvd"] or {}
            t.add_row(pair, f(a.get("psnr")), f(b.get("psnr")), f(d.get("psnr"), "+.2f"),
                      f(a.get("psnr_vs_teacher")), f(b.get("psnr_vs_teacher")))
        console.print(t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    p.add_argument("--methods", default=",".join(METHODS), help="teachers and students")
    p.add_argument("--pairs", default=None, help="TEACHER:STUDENT,... for the matrix (default: all pairs)")
    p.add_argument("--al-pairs", default="instant-ngp:nerf,instant-ngp:tensorf", help="pairs of the al part")
    p.add_argument("--teacher-minutes", type=float, default=5.0)
    p.add_argument("--convert-minutes", type=float, default=3.0)
    p.add_argument("--scratch-minutes", type=float, default=15.0, help="paper NeRF from scratch (speedup part)")
    p.add_argument("--scratch-json", type=Path, default=None,
                   help="take the scratch NeRF from a bench/cpu.py result (parts.lego.nerf) instead of training it")
    p.add_argument("--speedup-slack", type=float, default=2.0,
                   help="the speedup conversion trains for slack x the scratch NeRF's training time / 10")
    p.add_argument("--speedup-eval-every", type=int, default=25, help="steps between held-out evaluations")
    p.add_argument("--nerf-teacher", choices=("pvd", "images"), default="pvd",
                   help="pvd: convert the instant-ngp teacher into the nerf teacher; images: train it from images")
    p.add_argument("--nerf-teacher-set", nargs="*", default=["heads=shared", "use_occupancy_grid=true"],
                   help="overrides of a nerf teacher trained from images")
    p.add_argument("--eval-images", type=int, default=3, help="held-out views scored (evenly spaced)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "runs")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "convert.json")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    results = load(args.out)
    runners = {"teachers": part_teachers, "matrix": part_matrix, "speedup": part_speedup, "al": part_al}
    for name in PARTS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        res = runners[name](args)
        res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        res["part_seconds"] = time.perf_counter() - t0
        res["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        merge = {"teachers": "runs", "matrix": "pairs", "al": "pairs"}.get(name)  # keep rows measured before
        results = save_part(args.out, name, res, merge=merge)
    print_tables(results)
    print(f"results: {args.out}")
    return results


if __name__ == "__main__":
    main()
