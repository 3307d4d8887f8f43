"""Scene-flow benchmark (issue 6): Neural Scene Flow Prior against zero and nearest-neighbour flow, and
sweep accumulation with the continuous-time field, as tables and ``bench/results/flow.json``.

Parts (select with ``--only rigid,lidar,av2,accumulate``):

- ``rigid``: synthetic rigid pairs: non-ground points of a synthetic lidar sweep
  (``omnifield data synth --lidar``) and the same points moved by a random rigid motion (3 pairs,
  2,048 points): EPE3D, Acc3DS ... (target EPE3D < 0.05 m, Acc3DS > 0.9);
- ``lidar``: consecutive sweeps of the synthetic lidar sequence (the lidar resamples the scene, cars
  move, the ego moves; labels from the simulator), 8,192 non-ground points;
- ``av2``: the Argoverse 2 pair (``../shared/data/av2_flow_pair``) under the AV2 protocol (non-ground,
  |x|, |y| <= 50 m, static / dynamic apart) at 8,192 sampled points and at all points; NSFP with the
  known ego motion, zero flow, NN flow, and the ego-motion-only and ego+NN baselines, all in one run;
  the runtime per 8,192-point pair (target <= 30 s on CPU) with the device's default profile (``cpu``:
  200 iterations), and the released schedule (``profile=paper``) next to it; at all points the field
  is fitted on ``--all-points-fit`` sampled rows of each sweep, queried at every row (``nsfp``), then moving objects
  are refined rigidly against the whole second sweep (``nsfp+rigid``, ``NSFPConfig.rigid``);
- ``accumulate``: a synthetic 10-sweep sequence integrated to its middle frame by the fitted field
  (``trajectory``), then with the rigid refinement of moving objects (``trajectory_rigid``, the default
  of ``accumulate``), against the ego-poses-only accumulation: median / 90th percentile error and the
  fraction within 5 cm, static and moving points apart (``true_positions`` is the oracle; target:
  within 5 cm).

Every timing says the torch thread count (``--threads``, default 1). ``--quick``: fewer iterations
and points (a smoke run of a minute or two). Results of the parts that ran are merged into the JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load, save_part, shared_data_root  # noqa: E402  (sibling benchmark module)

PARTS = ("rigid", "lidar", "av2", "accumulate")
METRICS = ("epe3d", "acc3d_strict", "acc3d_relax", "outliers", "angle_error")




def nsfp_config(args, **extra):
    from omnifield.scenes.nsfp.pipeline import nsfp_config as make

    overrides = [f"{k}={v}" for k, v in extra.items()]
    if args.quick:
        overrides.append("max_iterations=150")
    return make(overrides + list(args.set or []))


def synth_sequence(args, frames: int = 10):
    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar

    out = args.work / f"synth_lidar_{frames}"
    if not (out / "synth_lidar.json").is_file():
        synthesize_lidar(out, LidarSynthConfig(frames=frames), overwrite=True)
    return load_point_clouds(out)


def _score(pred, frame, protocol=None) -> dict:
    from omnifield.scenes.flow_metrics import evaluate_flow

    return evaluate_flow(pred, frame, protocol)


def _pooled(rows: list[dict]) -> dict:
    from omnifield.scenes.nsfp.pipeline import _combine

    return _combine(rows)


def part_rigid(args) -> dict:
    """NSFP / zero / NN on a cloud and its rigidly moved copy (exact correspondences exist)."""
    from omnifield.datasets.pointclouds import PointCloudFrame
    from omnifield.scenes.nsfp.estimate import estimate_flow, nn_flow, zero_flow
    from scipy.spatial.transform import Rotation

    seq = synth_sequence(args)
    rng = np.random.default_rng(0)
    n = 1024 if args.quick else 2048
    results = {"nsfp": [], "zero": [], "nn": []}
    runtime = []
    for k in range(3):
        f = seq.frames[3 * k]
        rows = np.flatnonzero(~f.is_ground)
        p1 = f.points[np.sort(rng.choice(rows, n, replace=False))]
        # one 10 Hz frame of a vehicle: up to 2 deg of yaw and 1 m of travel (2 deg is 1 m at 30 m range)
        rot = Rotation.from_euler("z", rng.uniform(-2, 2), degrees=True).as_matrix()
        t = np.array([rng.uniform(-1, 1), rng.uniform(-0.3, 0.3), rng.uniform(-0.05, 0.05)])
        p2 = (p1 @ rot.T + t).astype(np.float32)
        frame = PointCloudFrame(points=p1, flow=p2 - p1)
        est = estimate_flow(p1, p2[rng.permutation(n)], nsfp_config(args), device=args.device)
        runtime.append(est.runtime_s)
        results["nsfp"].append(_score(est.flow, frame))
        results["zero"].append(_score(zero_flow(p1, p2), frame))
        results["nn"].append(_score(nn_flow(p1, p2), frame))
    out = {name: _pooled(rows) for name, rows in results.items()}
    out["nsfp"]["runtime_s"] = float(np.mean(runtime))
    return {"pairs": 3, "points": n, "methods": out}


def part_lidar(args) -> dict:
    from omnifield.scenes.nsfp.pipeline import evaluate_sequence

    seq = synth_sequence(args)
    points = 2048 if args.quick else 8192
    r = evaluate_sequence(seq, nsfp_config(args), points=points, baselines=True, max_pairs=3, ground="labels",
                          device=args.device)
    return {"pairs": r["pairs"], "points": points, "methods": _methods(r)}


def _methods(r: dict) -> dict:
    keep = ("static", "dynamic", "n_points", "runtime_s", *METRICS)
    name = "nsfp+rigid" if "field_only" in r else "nsfp"
    out = {}
    if "field_only" in r:  # the same fit before the rigid refinement
        out["nsfp"] = dict(r["field_only"], runtime_s=None)
    out[name] = {k: r[k] for k in keep if k in r}
    out[name]["per_pair_runtime_s"] = [p["runtime_s"] for p in r["per_pair"]]
    out[name]["iterations"] = [p["iterations"] for p in r["per_pair"]]
    for name, b in r.get("baselines", {}).items():
        out[name] = b
    return out


def part_av2(args) -> dict:
    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.scenes.nsfp.pipeline import evaluate_sequence

    root = shared_data_root()
    path = None if root is None else root / "av2_flow_pair" / "pair.npz"
    if path is None or not path.is_file():
        return {"skipped": "AV2 pair absent (../shared/data/av2_flow_pair/pair.npz)"}
    seq = load_point_clouds(path)
    out = {"path": str(path), "settings": {}}
    sample = 2048 if args.quick else 8192
    settings = [(str(sample), sample, {})]  # the default profile of this device (cpu: 200 iterations)
    if not args.quick:
        settings += [
            (f"{sample}-paper", sample, {"profile": "paper"}),  # the released schedule: up to 5,000, early stopping
            # all points (~80k): the field is fitted on --all-points-fit sampled rows of each sweep and
            # queried at every row, then moving objects are refined rigidly against the whole second sweep
            ("all", None, {"fit_points": args.all_points_fit, "rigid.enabled": "true"}),
            ("all-paper", None, {"fit_points": args.all_points_fit, "rigid.enabled": "true", "profile": "paper"}),
        ]
    for key, points, extra in settings:
        r = evaluate_sequence(seq, nsfp_config(args, **extra), points=points, baselines=True, device=args.device)
        out["settings"][key] = {"points": r["n_points"], "methods": _methods(r), "profile": r["config"]["profile"]}
    return out


def part_accumulate(args) -> dict:
    from dataclasses import asdict

    from omnifield.datasets.synth_lidar import true_positions
    from omnifield.scenes.configs import apply_overrides
    from omnifield.scenes.nsfp.accumulate import accumulate, accumulate_ego_only
    from omnifield.scenes.nsfp.trajectory import TrajectoryConfig

    seq = synth_sequence(args)
    config = TrajectoryConfig()
    if args.quick:
        config = apply_overrides(config, ["max_iterations=150", "points_per_frame=1024"])
    config = apply_overrides(config, list(args.traj_set or []))
    ours = accumulate(seq, config, device=args.device)
    base = accumulate_ego_only(seq, ref=ours.ref)
    true = np.concatenate([true_positions(seq, k, ours.ref) for k in range(len(seq))])
    dyn = np.concatenate([f.dynamic for f in seq.frames])
    ground = np.concatenate([f.is_ground for f in seq.frames])
    not_ref = ours.frame_index != ours.ref

    def stats(points) -> dict:
        err = np.linalg.norm(points - true, axis=1)
        res = {}
        for name, m in (("static", ~dyn & not_ref), ("static_non_ground", ~dyn & ~ground & not_ref), ("moving", dyn & not_ref)):
            e = err[m]
            res[name] = {"median_m": float(np.median(e)), "p90_m": float(np.percentile(e, 90)),
                         "within_5cm": float((e < 0.05).mean()), "n_points": int(m.sum())}
        return res

    fit = ours.fit
    methods = {}
    if ours.rigid is not None:  # the refined cloud, and the flow-field result it started from (no extra cost)
        methods["trajectory_rigid"] = stats(ours.points)
        methods["trajectory"] = stats(ours.flow_points)
    else:
        methods["trajectory"] = stats(ours.points)
    methods["ego_only"] = stats(base.points)
    return {"frames": len(seq), "ref": ours.ref, "config": asdict(config),
            "fit_seconds": fit.runtime_s, "fit_iterations": fit.iterations, "fit_loss": fit.loss,
            "rigid": ours.rigid.summary() if ours.rigid is not None else None, "methods": methods}


# -- printing --------------------------------------------------------------------------------------------
def print_tables(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    parts = results["parts"]
    threads = results["machine"]["torch_threads"]

    def f(v, fmt=".4f"):
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    flow_rows = []
    def on(part: str) -> str:  # where NSFP ran, when not on the CPU
        device = parts[part].get("device", "cpu")
        return "" if device == "cpu" else f", on {device}"

    for part, label in (("rigid", "synthetic rigid pairs"), ("lidar", "synthetic lidar pairs")):
        if part in parts and "methods" in parts[part]:
            flow_rows.append((f"{label} ({parts[part]['points']} pts{on(part)})", parts[part]["methods"]))
    if "av2" in parts and "settings" in parts["av2"]:
        for key, s in parts["av2"]["settings"].items():
            label = f"AV2 pair, {key.split('-')[0]} non-ground pts ({s['points']}), {s.get('profile', '?')} profile{on('av2')}"
            flow_rows.append((label, s["methods"]))
    elif "av2" in parts:
        console.print(f"av2: {parts['av2'].get('skipped')}")
    if flow_rows:
        t = Table(title=f"scene flow: NSFP vs baselines ({threads} torch CPU thread(s))")
        for col in ("data", "method", "EPE3D all", "EPE3D static", "EPE3D dyn", "Acc3DS", "Acc3DR", "Outliers",
                    "angle rad", "runtime s"):
            t.add_column(col, justify="left" if col in ("data", "method") else "right")
        for label, methods in flow_rows:
            for name, m in methods.items():
                t.add_row(label, name, f(m["epe3d"]), f(m.get("static", {}).get("epe3d")),
                          f(m.get("dynamic", {}).get("epe3d")), f(m["acc3d_strict"]), f(m["acc3d_relax"]),
                          f(m["outliers"]), f(m["angle_error"]), f(m.get("runtime_s"), ".2f"))
                label = ""
        console.print(t)
    if "accumulate" in parts:
        a = parts["accumulate"]
        rigid = a.get("rigid") or {}
        rigid_note = f", rigid refinement {rigid['runtime_s']:.1f} s" if "runtime_s" in rigid else ""
        t = Table(title=f"accumulation of a synthetic {a['frames']}-sweep sequence to frame {a['ref']} "
                        f"(fit {a['fit_seconds']:.0f} s, {a['fit_iterations']} iterations{rigid_note}, {threads} thread(s))")
        for col in ("method", "points", "median m", "p90 m", "within 5 cm"):
            t.add_column(col, justify="left" if col in ("method", "points") else "right")
        for name, m in a["methods"].items():
            for subset, s in m.items():
                t.add_row(name, f"{subset} ({s['n_points']})", f(s["median_m"]), f(s["p90_m"]), f(s["within_5cm"], ".3f"))
        console.print(t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    p.add_argument("--quick", action="store_true", help="fewer iterations and points (smoke run)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="where NSFP fits (cpu or cuda; default cpu). With cuda the "
                   "default profile is the released schedule")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="NSFPConfig overrides")
    p.add_argument("--traj-set", nargs="+", action="extend", metavar="KEY=VALUE", help="TrajectoryConfig overrides")
    p.add_argument("--all-points-fit", type=int, default=8192,
                   help="AV2 pair at all points: rows of each sweep the field is fitted on (default 8192)")
    p.add_argument("--work", type=Path, default=None, help="where the synthetic data is written (default: a temp folder)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "flow.json")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    torch.set_num_threads(args.threads)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="omnifield-flow-bench-")
        args.work = Path(tmp.name)
    results = load(args.out)
    runners = {"rigid": part_rigid, "lidar": part_lidar, "av2": part_av2, "accumulate": part_accumulate}
    try:
        for name in PARTS:
            if name in only:
                t0 = time.perf_counter()
                res = runners[name](args)
                res["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
                res["part_seconds"] = time.perf_counter() - t0
                res["quick"] = args.quick
                res["threads"] = torch.get_num_threads()
                res["device"] = args.device
                results = save_part(args.out, name, res)  # after every part, so a long run keeps what it measured
    finally:
        if tmp is not None:
            tmp.cleanup()
    print_tables(results)
    print(f"results: {args.out}")
    return results



if __name__ == "__main__":
    main()
