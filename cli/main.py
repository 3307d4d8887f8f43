"""The ``omnifield`` command: parse the arguments, call the library, print.

Heavy modules (torch, the scenes) are imported inside the command functions so ``omnifield --help``
is instant. Every user error (an :class:`~omnifield.errors.OmnifieldError`, a missing or unreadable
file, malformed JSON) becomes one line ``omnifield: error: <file>: <problem>`` on stderr and exit
code 2; ``--debug`` also prints the traceback. Ctrl-C exits with 130 (the trainer saves first).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

from omnifield.errors import ConfigError, OmnifieldError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
SPLITS = ("test", "val", "train", "all")
ENV_BACKEND = "OMNIFIELD_BACKEND"


# -- commands ------------------------------------------------------------------------------------
def cmd_methods(args) -> int:
    from omnifield.scenes.registry import available_methods, get_method

    for name in available_methods():
        desc = get_method(name).description
        print(f"{name:<16} {desc}".rstrip())
    return 0


def cmd_data_info(args) -> int:
    from omnifield.datasets.info import describe, format_info
    from omnifield.datasets.load import load_scene

    info = describe(load_scene(args.path, downscale=args.downscale))
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_data_synth(args) -> int:
    from omnifield.scenes.configs import apply_overrides

    if args.dynamic and args.lidar:
        raise ConfigError("choose one of --dynamic and --lidar")
    if args.lidar:
        from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar

        config = apply_overrides(LidarSynthConfig(), args.set or [])
        out = synthesize_lidar(args.out, config, overwrite=args.overwrite)
    elif args.dynamic:
        from omnifield.datasets.synth_dynamic import DynamicSynthConfig, write_dynamic_scene

        config = apply_overrides(DynamicSynthConfig(), args.set or [])
        out = write_dynamic_scene(args.out, config, overwrite=args.overwrite, progress=True)
    else:
        from omnifield.datasets.synth import SynthConfig, synthesize

        config = apply_overrides(SynthConfig(), args.set or [])
        out = synthesize(args.out, config, overwrite=args.overwrite, progress=True)
    print(f"wrote {out}")
    return 0


def cmd_train(args) -> int:
    from omnifield.scenes.trainer import train_method

    trainer = {k: v for k, v in {
        "max_steps": args.max_steps, "max_minutes": args.max_minutes, "seed": args.seed,
        "eval_every": args.eval_every, "checkpoint_every": args.checkpoint_every,
        "num_threads": args.threads,
    }.items() if v is not None}
    if args.no_progress:
        trainer["progress"] = False
    kwargs = dict(out=args.out, downscale=args.downscale, scene_overrides=args.set or [],
                  trainer_overrides=trainer, resume=args.resume, device=args.device)
    if args.max_frames is not None or args.frame_stride != 1:
        kwargs.update(max_frames=args.max_frames, frame_stride=args.frame_stride)
    if args.view:
        if (code := _require_viewer()) is not None:
            return code
        from omnifield.viewer.app import train_with_viewer

        result = train_with_viewer(args.method, args.data, **kwargs)
    else:
        result = train_method(args.method, args.data, **kwargs)
    line = f"{result.status}: {result.step} steps in {result.elapsed_seconds:.1f} s"
    if result.loss is not None:
        line += f", loss {result.loss:.4g}"
    if result.eval_psnr is not None:
        line += f", held-out PSNR {result.eval_psnr:.2f} dB"
    print(line)
    print(f"run: {result.run_dir}")
    return 0


def cmd_eval(args) -> int:
    from omnifield.scenes.evaluate import evaluate
    from omnifield.scenes.runs import RENDERS_DIR, atomic_write_json, load_run
    from omnifield.scenes.trainer import pick_device

    run = load_run(args.run, device=pick_device(args.device))
    data = run.load_data(args.data, args.downscale, split=args.split)
    out_dir = None if args.no_renders else Path(args.run) / RENDERS_DIR / f"eval-{args.split}-step{run.step}"
    result = evaluate(run, data, split=args.split, out_dir=out_dir, max_images=args.max_images)
    if args.out is not None:
        atomic_write_json(args.out, result)
    rows = [(str(r["index"]), r["name"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}") for r in result["per_image"]]
    if args.per_image:
        _print_table(["index", "image", "PSNR", "SSIM"], rows)
    _print_table(["split", "images", "PSNR", "SSIM", "render s"], [(
        result["split"], str(result["num_images"]), f"{result['psnr']:.2f}", f"{result['ssim']:.4f}",
        f"{result['render_seconds']:.1f}")])
    if out_dir is not None:
        print(f"renders: {out_dir}")
    if args.out is not None:
        print(f"metrics: {args.out}")
    return 0


def cmd_render(args) -> int:
    from omnifield.scenes.runs import load_run
    from omnifield.scenes.trainer import pick_device
    from omnifield.scenes.video import render_path

    run = load_run(args.run, device=pick_device(args.device))
    out = render_path(run, args.path, out=args.out, frames_dir=args.frames, num_frames=args.frames_count,
                      downscale=args.downscale, fps=args.fps, channel=args.channel, time=args.time)
    print(f"wrote {out}")
    return 0


def _float_arg(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number or 'auto', got {text!r}") from None


def cmd_export(args) -> int:
    from omnifield.scenes.export import export_mesh, export_pointcloud, export_splat
    from omnifield.scenes.runs import load_run
    from omnifield.scenes.trainer import pick_device

    run = load_run(args.run, device=pick_device(args.device))
    if args.kind == "mesh":
        threshold = args.threshold if args.threshold in (None, "auto") else _float_arg(args.threshold, "--threshold")
        out = export_mesh(run, args.out, resolution=args.resolution, threshold=threshold,
                          cull_unseen=args.cull_unseen, min_component_fraction=args.min_component)
    elif args.kind == "splat":
        out = export_splat(run.scene, args.out, time=args.time, world_from_dataset=run.world_from_dataset)
    else:
        out = export_pointcloud(run, args.out)
    print(f"wrote {out}")
    return 0


def cmd_convert(args) -> int:
    from omnifield.distill.convert import FILE_TARGETS, ConvertOptions, convert_run

    _set_threads(args)
    if args.resume and args.set:
        raise ConfigError("--set cannot change the student config of a conversion being resumed")
    options = ConvertOptions(max_steps=args.steps, max_minutes=args.max_minutes,
                             active_learning=not args.no_active_learning, mix_gt=args.mix_gt, time=args.time,
                             n_views=args.views, seed=args.seed, scene_overrides=tuple(args.set or ()),
                             progress=not args.no_progress, device=args.device)
    out = convert_run(args.run, args.to, args.out, options, resume=args.resume)
    print(f"wrote {out}" if args.to in FILE_TARGETS else f"run: {out}")
    return 0


def _require_viewer() -> int | None:
    """Exit code 2 with one line when the viewer cannot open here (no display, no dearpygui), else None."""
    from omnifield.viewer.display import viewer_unavailable_reason

    why = viewer_unavailable_reason()
    if why is None:
        return None
    print(f"omnifield: error: {why}", file=sys.stderr)
    return EXIT_USAGE


def cmd_view(args) -> int:
    if (code := _require_viewer()) is not None:
        return code
    from omnifield.viewer.app import ViewerConfig, open_viewer

    config = ViewerConfig(width=args.width, height=args.height, channel=args.channel, camera=args.camera,
                          time=args.time)
    out = open_viewer(args.path, config=config, device=args.device, screenshot=args.screenshot, flow=args.flow)
    if out is not None:
        print(f"wrote {out}")
    return 0


def cmd_demo(args) -> int:
    from omnifield.scenes.demo import run_demo

    summary = run_demo(args.out, train_minutes=args.minutes)  # prints its own table
    print(f"summary: {Path(summary.get('run', args.out)) / 'summary.json'}")
    return 0


def cmd_doctor(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from omnifield.cuda.doctor import NONE, diagnose

    report = diagnose(getattr(args, "backend", None), build=args.build)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0 if report.ok else 1
    console = Console()
    _print_table(["", "environment", "note"], [(r.name, r.value, r.note) for r in report.environment])
    if report.builds:
        _print_table(["extension", "build", "details"], [(r.name, r.value, r.note) for r in report.builds])
    choice = report.backend
    console.print(f"backend: [bold]{choice.selected}[/bold] ({choice.reason})", highlight=False)
    no_cuda = {r.cuda_why for r in report.ops if r.cuda == NONE}
    table = Table("op", "CPU tensors", "why")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    if not no_cuda:
        table.add_column("CUDA tensors", no_wrap=True)
        table.add_column("why")
    for r in report.ops:
        table.add_row(r.op, r.cpu, r.cpu_why, *(() if no_cuda else (r.cuda, r.cuda_why)))
    console.print(table)
    if no_cuda:
        console.print(f"CUDA tensors: none here ({'; '.join(sorted(no_cuda))})", highlight=False)
    if not report.ok:
        print(f"omnifield: error: backend {choice.requested!r} is unusable here: {choice.reason}", file=sys.stderr)
    return 0 if report.ok else 1


def _set_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_flow_estimate(args) -> int:
    from omnifield.scenes.nsfp.pipeline import estimate_pair_flow, load_flow_pair, nsfp_config, save_flow_npz

    _set_threads(args)
    seq = load_flow_pair(args.pc1, args.pc2)
    result = estimate_pair_flow(seq, nsfp_config(args.set or []), points=args.points, ground=args.ground,
                                max_range=args.max_range, device=_flow_device(args.device), progress=not args.no_progress)
    out = save_flow_npz(args.out, result)
    print(f"{len(result.points)} points, loss {result.loss:.4g}, {result.iterations} iterations "
          f"(best {result.best_iteration}), {result.runtime_s:.1f} s")
    if result.rigid is not None:
        print(_rigid_line(result.rigid))
    print(f"wrote {out}")
    return 0


def cmd_flow_eval(args) -> int:
    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.scenes.nsfp.pipeline import METRIC_KEYS, evaluate_sequence, nsfp_config
    from omnifield.scenes.runs import atomic_write_json

    _set_threads(args)
    seq = load_point_clouds(args.data)
    result = evaluate_sequence(seq, nsfp_config(args.set or []), points=args.points, baselines=args.baselines,
                               ground=args.ground, max_pairs=args.max_pairs, device=_flow_device(args.device),
                               progress=not args.no_progress)
    if args.out is not None:
        atomic_write_json(args.out, result)
    rows = []
    methods = [("nsfp", result)] + [(name, r) for name, r in result.get("baselines", {}).items()]
    if "field_only" in result:  # the rigid refinement ran: the field's own flow, before it
        methods = [("nsfp+rigid", result), ("nsfp", dict(result["field_only"], runtime_s=math.nan))] + methods[1:]
    for name, r in methods:
        for subset in ("all", "static", "dynamic"):
            m = r if subset == "all" else r.get(subset)
            if m is None:
                continue
            rows.append((name, subset, str(m["n_points"]), *(f"{m[k]:.4f}" for k in METRIC_KEYS),
                         f"{r['runtime_s']:.1f}" if subset == "all" and math.isfinite(r['runtime_s']) else ""))
    _print_table(["method", "points", "n", "EPE3D m", "Acc3DS", "Acc3DR", "outliers", "angle rad", "runtime s"], rows)
    notes = [f"protocol: {result['protocol'] or 'none'}", f"{result['pairs']} pair(s)"] + result.get("notes", [])
    print("; ".join(notes))
    if args.out is not None:
        print(f"metrics: {args.out}")
    return 0


def cmd_flow_accumulate(args) -> int:
    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.scenes.configs import apply_overrides
    from omnifield.scenes.nsfp.accumulate import accumulate, accumulate_ego_only, write_accumulated_ply
    from omnifield.scenes.nsfp.trajectory import TrajectoryConfig

    _set_threads(args)
    out = Path(args.out)
    if out.suffix.lower() != ".ply":
        raise ConfigError(f"the accumulated cloud is written as .ply, got {out.suffix!r}", out)
    seq = load_point_clouds(args.seq)
    if len(seq) < 2:
        raise ConfigError(f"accumulation needs at least 2 sweeps, found {len(seq)}", args.seq)
    if args.ref is not None and not -len(seq) <= args.ref < len(seq):
        raise ConfigError(f"--ref {args.ref} is outside the sequence's {len(seq)} frames", args.seq)
    if args.ego_only:
        cloud = accumulate_ego_only(seq, ref=args.ref)
    else:
        config = apply_overrides(TrajectoryConfig(), args.set or [])
        with warnings.catch_warnings():  # its assumptions come back as cloud.notes, printed below
            warnings.simplefilter("ignore", UserWarning)
            cloud = accumulate(seq, config, ref=args.ref, progress=not args.no_progress, device=_flow_device(args.device))
    write_accumulated_ply(out, cloud, frames=len(seq))
    line = f"{len(cloud)} points from {len(seq)} sweeps at frame {cloud.ref} (t = {cloud.time:.3f} s), world coordinates"
    if cloud.fit is not None:
        line += f"; fit loss {cloud.fit.loss:.4g}, {cloud.fit.iterations} iterations, {cloud.fit.runtime_s:.1f} s"
    print(line)
    if cloud.rigid is not None:
        print(_rigid_line(cloud.rigid.summary()))
    for note in cloud.notes or []:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


def _rigid_line(summary: dict) -> str:
    """One line of a rigid refinement's summary (clusters, sweeps per status, points refined, seconds)."""
    frames = ", ".join(f"{n} {status}" for status, n in sorted(summary["frames"].items()))
    return (f"rigid refinement: {summary['clusters']} moving cluster(s) ({frames or 'none'}), "
            f"{summary['points_refined']} points refined, {summary['runtime_s']:.1f} s")


def _flow_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- printing ------------------------------------------------------------------------------------
def _print_table(header: list[str], rows: list[tuple]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for i, name in enumerate(header):
        table.add_column(name, no_wrap=i == 0)  # the row's name stays whole in a narrow terminal
    for row in rows:
        table.add_row(*row)
    Console().print(table)


# -- the parser ----------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``omnifield`` (also used to document the commands)."""
    from omnifield.cuda.backend import BACKENDS  # no torch import

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument("--backend", choices=BACKENDS, default=argparse.SUPPRESS,
                         help="kernels to use: torch (references), cpp (C++ CPU kernels), cuda, tcnn "
                              "(sets $OMNIFIELD_BACKEND; default: automatic)")
    parser = argparse.ArgumentParser(prog="omnifield", description="Neural 3D scenes: train, evaluate, render, export.",
                                     parents=[common, backend])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    with_backend = [common, backend]

    p = sub.add_parser("methods", parents=[common], help="list the registered methods")
    p.set_defaults(func=cmd_methods)
    _add_data_commands(sub, common)
    _add_train_command(sub, with_backend)
    _add_run_commands(sub, with_backend)
    _add_convert_command(sub, with_backend)
    _add_view_command(sub, with_backend)
    _add_flow_commands(sub, common)
    p = sub.add_parser("doctor", parents=with_backend,
                       help="which implementation (reference, C++, CUDA, tcnn) each op runs here, and why")
    p.add_argument("--build", action="store_true", help="build the kernels that can be built here and report")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_doctor)
    return parser


def _add_data_commands(sub, common) -> None:
    data = sub.add_parser("data", parents=[common], help="inspect or synthesise datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("info", parents=[common], help="what a dataset folder holds")
    p.add_argument("path", help="dataset folder (or its transforms.json / poses_bounds.npy / cameras.npz)")
    p.add_argument("--downscale", type=_positive_int, default=1, help="image downscale factor")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_data_info)
    p = dsub.add_parser("synth", parents=[common], help="write the procedural scene with ground truth")
    p.add_argument("out", help="output folder (absent or empty)")
    p.add_argument("--dynamic", action="store_true",
                   help="moving objects seen by a fixed camera rig, in the D-NeRF layout (per-frame time)")
    p.add_argument("--lidar", action="store_true",
                   help="a lidar sequence with ground-truth flow (moving ego sensor, moving objects, one npz per sweep)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="SynthConfig options (DynamicSynthConfig with --dynamic: n_cameras, n_times, width, "
                        "height, seed, ...; LidarSynthConfig with --lidar: frames, beams, azimuths, seed, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(func=cmd_data_synth)


def _add_flow_commands(sub, common) -> None:
    flow = sub.add_parser("flow", parents=[common], help="scene flow between lidar sweeps (Neural Scene Flow Prior)")
    fsub = flow.add_subparsers(dest="flow_command", required=True, metavar="ACTION")
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                        help="config options (NSFPConfig; TrajectoryConfig for accumulate), e.g. --set max_iterations=500")
    shared.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    shared.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    shared.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = fsub.add_parser("estimate", parents=[common, shared], help="flow from sweep PC1 to sweep PC2 -> flow.npz")
    p.add_argument("pc1", help="first sweep (.bin, .ply, .pcd, .npy), or a scene-flow .npz pair (then omit PC2)")
    p.add_argument("pc2", nargs="?", help="second sweep")
    p.add_argument("--out", required=True, help="output .npz: flow, points, indices, loss, iterations, runtime_s")
    p.add_argument("--points", type=_positive_int,
                   help="random N points of each sweep (default: all; full sweeps: --set fit_points=8192 "
                        "rigid.enabled=true fits the field on a sample, queries it everywhere, refines movers)")
    p.add_argument("--ground", choices=("none", "grid", "height", "ransac"), default="none",
                   help="remove ground points first (default none)")
    p.add_argument("--max-range", type=float, help="drop points farther than R metres from the sensor")
    p.set_defaults(func=cmd_flow_estimate)

    p = fsub.add_parser("eval", parents=[common, shared], help="NSFP against ground-truth flow (EPE3D, Acc3DS/R, ...)")
    p.add_argument("data", help="scene-flow data with labels: a pair .npz, an AV2 log, a synth_lidar folder ...")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--points", type=_positive_int, help="random N non-ground points of each sweep (default: all)")
    p.add_argument("--baselines", action="store_true", help="also score zero flow and nearest-neighbour flow")
    p.add_argument("--ground", choices=("auto", "none", "labels", "grid", "height", "ransac"), default="auto",
                   help="ground removed before the fit: auto = the labels when present (an unlabelled sweep of "
                        "a labelled pair: the grid cut), else none")
    p.add_argument("--max-pairs", type=_positive_int, help="evaluate at most the first N labelled pairs")
    p.set_defaults(func=cmd_flow_eval)

    p = fsub.add_parser("accumulate", parents=[common, shared],
                        help="motion-compensate a sequence of sweeps into one cloud (.ply)")
    p.add_argument("seq", help="a sequence of sweeps: folder of sweeps, synth_lidar folder, AV2 log ...")
    p.add_argument("--out", required=True, help="output .ply (world coordinates, coloured by sweep)")
    p.add_argument("--ref", type=int, help="frame whose time every point is moved to (default: the middle one)")
    p.add_argument("--ego-only", action="store_true", help="no motion compensation: ego poses only (the baseline)")
    p.set_defaults(func=cmd_flow_accumulate)


def _add_train_command(sub, parents) -> None:
    p = sub.add_parser("train", parents=parents, help="train a method on a dataset")
    p.add_argument("method", help="method name (see `omnifield methods`)")
    p.add_argument("--data", help="dataset folder (on --resume: defaults to the run's data)")
    p.add_argument("--out", help="run directory (default runs/<data>-<method>-<time>)")
    p.add_argument("--downscale", type=_positive_int, help="image downscale factor (default 1)")
    p.add_argument("--max-frames", type=_positive_int,
                   help="multi-view video (N3V): keep at most this many frames of each video (the first ones)")
    p.add_argument("--frame-stride", type=_positive_int, default=1,
                   help="multi-view video (N3V): keep every N-th frame (default 1)")
    p.add_argument("--max-steps", type=_positive_int, help="optimiser steps of the run")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget in minutes (stops cleanly)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="scene config options, typed by the method's config (e.g. --set batch_rays=1024)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--eval-every", type=int, help="held-out PSNR every N steps (0: only at the end)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every N steps")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--view", action="store_true",
                   help="show the live model in the viewer while training (closing the window stops and saves)")
    p.set_defaults(func=cmd_train)


def _add_run_commands(sub, parents) -> None:
    p = sub.add_parser("eval", parents=parents, help="PSNR / SSIM of a run on a split")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="dataset folder in the training data's original coordinates (default: the training data)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--downscale", type=_positive_int, help="image downscale (default: the run's)")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--max-images", type=_positive_int, help="evaluate at most N evenly spaced images")
    p.add_argument("--per-image", action="store_true", help="print one row per image")
    p.add_argument("--no-renders", action="store_true", help="do not save the renders under RUN/renders/")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("render", parents=parents, help="render a camera path to a video or frames")
    p.add_argument("run", help="run directory")
    p.add_argument("--path", default="orbit",
                   help="orbit (default), spiral, dataset, train/val/test, or a camera-path JSON")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", help="output video (.mp4); default RUN/renders/<path>_<channel>.mp4")
    g.add_argument("--frames", help="write PNG frames into this folder instead of a video")
    p.add_argument("--frames-count", type=_positive_int, default=120, help="frames of generated paths")
    p.add_argument("--downscale", type=float, help="divide the path's resolution by this factor")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--channel", default="rgb", help="rgb, depth, alpha, normals ...")
    p.add_argument("--time", type=float,
                   help="render every frame of a dynamic scene at this time (default: the path's own times, "
                        "else a sweep over the scene's time range)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("export", parents=parents, help="export a mesh, a point cloud or Gaussian splats")
    p.add_argument("run", help="run directory")
    p.add_argument("kind", choices=("mesh", "pointcloud", "splat"))
    p.add_argument("--out", required=True,
                   help="output file (.ply, .obj, .glb for meshes; .ply for points and splats (the 3DGS layout))")
    p.add_argument("--time", type=float, help="splat: normalised time in [0, 1] of a dynamic scene (4dgs)")
    p.add_argument("--resolution", type=_positive_int, default=256, help="marching-cubes grid resolution")
    p.add_argument("--threshold", default=None,
                   help="density level of the surface (default: the scene's, 10 for NeRFs; 'auto': from the density histogram)")
    p.add_argument("--cull-unseen", action="store_true", help="drop mesh faces no training camera sees")
    p.add_argument("--min-component", type=float, default=0.0,
                   help="drop connected components with fewer faces than this fraction (floaters)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", parents=parents, help="synthesise a scene, train, evaluate, export (no data needed)")
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--minutes", type=float, default=2.0, help="training budget in minutes")
    p.set_defaults(func=cmd_demo)


def _add_convert_command(sub, parents) -> None:
    p = sub.add_parser("convert", parents=parents,
                       help="convert a run into another representation (PVD, render distillation, slice, mesh, points)")
    p.add_argument("run", help="the teacher's run directory")
    p.add_argument("--to", required=True, metavar="METHOD",
                   help="target method (see `omnifield methods`), or mesh / pointcloud")
    p.add_argument("--out", help="the student's run directory (default runs/<run>-to-<method>-<time>); "
                                 "the .ply / .obj / .glb file for --to mesh, the .ply for --to pointcloud")
    p.add_argument("--steps", "--max-steps", dest="steps", type=_positive_int,
                   help="optimiser steps of the student (default: the Trainer's 30000)")
    p.add_argument("--max-minutes", type=float, help="training-time budget in minutes (stops cleanly)")
    p.add_argument("--time", type=float,
                   help="normalised time of a dynamic teacher (4dgs); required to make a radiance field of one, "
                        "slice / mesh / pointcloud default to the middle of its time range")
    p.add_argument("--no-active-learning", action="store_true",
                   help="PVD without PVD-AL (no hard poses, hard rays or high-weight point selection)")
    p.add_argument("--mix-gt", type=float, default=0.0,
                   help="fraction of PVD rays taken from the real training images (default 0: teacher only)")
    p.add_argument("--views", type=_positive_int, default=100,
                   help="render distillation: teacher views rendered around the dataset cameras (default 100)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="student config options, typed by the target's config (e.g. --set sh_degree=2)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted conversion in --out (its distill.json and last checkpoint)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_convert)


def _add_view_command(sub, parents) -> None:
    p = sub.add_parser("view", parents=parents, help="open a run, a .ply / mesh or a dataset in the desktop viewer")
    p.add_argument("path", help="run directory, .ply / .obj / .glb file, or dataset folder")
    p.add_argument("--screenshot", metavar="FILE.png",
                   help="render the view fully, save it as a PNG and exit (scripting)")
    p.add_argument("--channel", default="rgb", help="rgb, depth, alpha, normals ...")
    p.add_argument("--camera", type=int, help="start at this dataset camera (default: a view of the whole scene)")
    p.add_argument("--time", type=float, help="time of a dynamic scene")
    p.add_argument("--flow", metavar="FLOW.npz",
                   help="flow vectors of `omnifield flow estimate` shown as the flow channel of a point-cloud sequence")
    p.add_argument("--width", type=_positive_int, default=512, help="render width in pixels")
    p.add_argument("--height", type=_positive_int, default=512, help="render height in pixels")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_view)


# -- errors --------------------------------------------------------------------------------------
def error_line(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, OmnifieldError):
        text = str(exc)
    elif isinstance(exc, json.JSONDecodeError):
        text = f"malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    elif isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                          NotADirectoryError)):
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    else:
        return None
    return "omnifield: error: " + " ".join(text.split())


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the user sees it: ``omnifield: warning: <message>`` (``--debug`` keeps Python's
    form, with the file and line that warned)."""
    print(f"omnifield: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    backend = getattr(args, "backend", None)
    previous = os.environ.get(ENV_BACKEND)
    if backend is not None:  # the ops read it per call (omnifield.cuda.backend.resolve_backend)
        os.environ[ENV_BACKEND] = backend
    try:
        with warnings.catch_warnings():  # restored for in-process callers (tests)
            if not debug:
                warnings.showwarning = _warning_line
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("omnifield: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        line = error_line(exc)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(line, file=sys.stderr)
        return EXIT_USAGE
    finally:
        if backend is not None:  # restore for in-process callers (tests); a process ends here anyway
            if previous is None:
                os.environ.pop(ENV_BACKEND, None)
            else:
                os.environ[ENV_BACKEND] = previous


if __name__ == "__main__":
    sys.exit(main())
