"""Any-to-any conversion between representations: plan the route by capabilities, then run it.

Routes (chosen by :func:`plan_conversion` from capabilities only, never from concrete classes):

- ``pvd``: a static radiance field (``HasDensity``) into a PVD radiance field (a scene class with
  ``field_outputs`` and ``march``: nerf, instant-ngp, tensorf, plenoxels), by
  :func:`omnifield.distill.pvd.distill_fields` (PVD / PVD-AL, Fang et al., AAAI 2023).
- ``slice``: dynamic Gaussians (``TimeVarying`` + ``HasGaussians``) into static Gaussians, exactly: the
  Gaussians of ``teacher.gaussians(t)`` become the student's parameters.
- ``render``: anything that renders into any other static method: the student trains with its own loss
  on the teacher's renders (:mod:`omnifield.distill.render_distill`); Gaussian students are seeded from
  the teacher's rendered depth; a dynamic teacher is rendered at ``time``.
- ``mesh``: marching cubes on the density (``HasDensity``), else TSDF fusion of the rendered depth
  (:mod:`omnifield.distill.mesh_convert`).
- ``pointcloud``: the rendered depth of the training views lifted to coloured points.

Refused, with the reason (:class:`~omnifield.errors.ConversionRefused`): anything into a dynamic
method (a static teacher has no time; dynamic into the same dynamic method gains nothing), a static
Gaussian method into itself, a dynamic teacher into a radiance field without ``time`` (a static field
holds one instant). Dynamic teachers are sliced, meshed and turned into points at ``time``, by default
the middle of their time range.

A converted run is an ordinary run directory (``load_run``, ``omnifield eval/render/export/view``)
that records the real dataset, plus ``distill.json`` (teacher, route, options, student-vs-teacher PSNR
on held-out cameras, seconds), and resumes after an interruption (``resume=True``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time as _time
import types
import typing
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from omnifield.errors import CheckpointError, ConfigError, ConversionRefused, DataError
from omnifield.scenes import runs
from omnifield.scenes.base import HasDensity, HasGaussians, Scene, TimeVarying

FILE_TARGETS = ("mesh", "pointcloud")
DISTILL_FILE = "distill.json"
CACHE_DIR = "teacher_views"
COMPARE_MAX_VIEWS = 8


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert (every route reads the fields it needs)."""

    max_steps: int | None = None
    """Optimiser steps of the student (None: the Trainer's default, 30000, the students' usual run)."""
    max_minutes: float | None = None
    """Training-time budget in minutes (teacher rendering excluded); the LR schedule follows it."""
    active_learning: bool = True
    """PVD-AL's hard poses, hard rays and high-weight point losses (field -> field)."""
    mix_gt: float = 0.0
    """Fraction of PVD rays drawn from real training images with ground truth (field -> field)."""
    time: float | None = None
    """Normalised time of a dynamic teacher to convert at (required for dynamic -> radiance field;
    slice / mesh / point cloud default to the middle of its time range)."""
    n_views: int = 100
    """Render distillation: teacher views rendered around the dataset's training cameras."""
    seed: int = 0
    """Seed of the student's initialisation, the Trainer and the teacher views' poses."""
    scene_overrides: tuple[str, ...] = ()
    """``key=value`` overrides of the student's config (typed by its dataclass, like ``train --set``)."""
    progress: bool = True
    """Progress bars (teacher rendering, training) on stderr."""
    device: str = "auto"
    """Device of a teacher loaded from a run directory ("auto": cuda when available)."""
    trainer_overrides: dict = dataclasses.field(default_factory=dict)
    """Other :class:`~omnifield.scenes.trainer.TrainerConfig` fields of the student's run (e.g.
    ``{"eval_every": 100, "eval_max_images": 3}`` for a held-out PSNR curve)."""

    def __post_init__(self):
        if self.max_steps is not None and int(self.max_steps) < 1:
            raise ConfigError(f"convert: max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"convert: max_minutes must be > 0, got {self.max_minutes}")
        if not 0.0 <= float(self.mix_gt) <= 1.0:
            raise ConfigError(f"convert: mix_gt must be in [0, 1], got {self.mix_gt}")
        if int(self.n_views) < 1:
            raise ConfigError(f"convert: n_views must be >= 1, got {self.n_views}")
        object.__setattr__(self, "scene_overrides", tuple(self.scene_overrides))
        object.__setattr__(self, "trainer_overrides", dict(self.trainer_overrides or {}))


@dataclass(frozen=True)
class ConversionPlan:
    """The route of a conversion.

    Attributes:
        kind: ``"pvd"``, ``"render"``, ``"slice"``, ``"mesh"`` or ``"pointcloud"``.
        teacher: the teacher's method name.
        target: the target method (or ``"mesh"`` / ``"pointcloud"``).
        reason: one line: why this route.
    """

    kind: str
    teacher: str
    target: str
    reason: str

    def line(self) -> str:
        """``plan: <kind> (<teacher> -> <target>): <reason>``, what the CLI prints first."""
        return f"plan: {self.kind} ({self.teacher} -> {self.target}): {self.reason}"


# -- capabilities ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TargetKind:
    gaussians: bool
    field_student: bool
    dynamic: bool


def _method_name(scene) -> str:
    config = getattr(scene, "config", None)
    return str(getattr(scene, "method", "") or getattr(config, "method", "") or type(scene).__name__)


def _scene_class(spec) -> type | None:
    """The Scene class a method's builder returns: its return annotation, else the module's Scene
    subclass whose ``method`` is the method's name."""
    try:
        cls = typing.get_type_hints(spec.build).get("return")
    except Exception:  # unresolvable annotations: fall back to the module scan
        cls = None
    if isinstance(cls, type) and issubclass(cls, Scene):
        return cls
    module = sys.modules.get(getattr(spec.build, "__module__", ""), None)
    for obj in vars(module).values() if module is not None else ():
        if isinstance(obj, type) and issubclass(obj, Scene) and getattr(obj, "method", None) == spec.name:
            return obj
    return None


def _declares(cls: type, name: str) -> bool:
    return any(name in vars(k) or name in getattr(k, "__annotations__", {}) for k in cls.__mro__)


def _target_kind(spec) -> _TargetKind:
    """What a method's scenes can do, read from its class (protocol methods) and config: Gaussians
    (``gaussians``), a PVD student (``field_outputs``, ``march``, ``density``, ``color``), dynamic
    (``time_range`` declared on the scene, or a ``time_range`` field in its config)."""
    cls = _scene_class(spec)
    has = lambda *names: cls is not None and all(callable(getattr(cls, n, None)) for n in names)  # noqa: E731
    config_fields = {f.name for f in dataclasses.fields(spec.config_cls)} if dataclasses.is_dataclass(spec.config_cls) \
        else set()
    dynamic = (cls is not None and _declares(cls, "time_range")) or "time_range" in config_fields
    return _TargetKind(gaussians=has("gaussians"), field_student=has("field_outputs", "march", "density", "color"),
                       dynamic=dynamic)


def _get_target(target: str):
    from omnifield.scenes.registry import available_methods, get_method

    known = available_methods()
    if target not in known:
        try:
            return get_method(target)  # a broken built-in says why it failed to import
        except ConfigError as e:
            if "failed to import" in str(e):
                raise
        targets = ", ".join(known + list(FILE_TARGETS))
        raise ConfigError(f"unknown conversion target {target!r} (targets: {targets})")
    return get_method(target)


def default_time(teacher) -> float:
    """The middle of a dynamic teacher's time range."""
    t0, t1 = (float(v) for v in teacher.time_range)
    return 0.5 * (t0 + t1)


def _check_time(teacher, time: float | None) -> None:
    if time is None:
        return
    if not isinstance(teacher, TimeVarying):
        raise ConfigError(f"time {time} was given but the teacher ({_method_name(teacher)}) is static")
    t0, t1 = (float(v) for v in teacher.time_range)
    if not t0 - 1e-9 <= float(time) <= t1 + 1e-9:
        raise ConfigError(f"time {time} is outside the teacher's time range [{t0:g}, {t1:g}]")


# -- the plan ----------------------------------------------------------------------------------------
def plan_conversion(teacher_scene, target: str, *, time: float | None = None) -> ConversionPlan:
    """The route from ``teacher_scene`` to ``target`` (a registered method, ``"mesh"`` or ``"pointcloud"``).

    Decided by capabilities only (see the module docstring). Raises
    :class:`~omnifield.errors.ConversionRefused` with a one-line reason for pairs that make no sense,
    ConfigError for an unknown target (listing the targets) or a ``time`` that does not fit the teacher.
    """
    t_name = _method_name(teacher_scene)
    dynamic = isinstance(teacher_scene, TimeVarying)
    _check_time(teacher_scene, time)
    at = ""
    if dynamic:
        at = f" at time {time:g}" if time is not None else \
            f" at time {default_time(teacher_scene):g} (the middle of its time range)"
    plan = lambda kind, reason: ConversionPlan(kind, t_name, target, reason)  # noqa: E731
    if target == "mesh":
        if isinstance(teacher_scene, HasDensity) and not dynamic:
            return plan("mesh", "marching cubes on the teacher's density")
        return plan("mesh", f"TSDF fusion of the teacher's rendered depth (it has no density field){at}")
    if target == "pointcloud":
        return plan("pointcloud", f"surface points from the teacher's rendered depth of the training views{at}")
    kind = _target_kind(_get_target(target))
    if kind.dynamic:
        if dynamic and t_name == target:
            raise ConversionRefused(f"{t_name} -> {target}: the teacher already is a {target} scene, nothing to gain")
        if not dynamic:
            raise ConversionRefused(f"{t_name} -> {target}: a static teacher has no time, "
                                    "so it cannot teach a dynamic scene")
        raise ConversionRefused(f"{t_name} -> {target}: no route between two different dynamic representations")
    if kind.gaussians and t_name == target:
        raise ConversionRefused(f"{t_name} -> {target}: the teacher already is a {target} scene, nothing to gain "
                                "(export it with `omnifield export RUN splat`)")
    if dynamic and kind.gaussians and isinstance(teacher_scene, HasGaussians):
        return plan("slice", f"exact: the teacher's Gaussians sliced{at} become the {target} parameters")
    if dynamic and time is None:
        raise ConversionRefused(f"{t_name} -> {target}: the teacher is dynamic and a {target} scene holds one instant; "
                                "choose it with --time T (ConvertOptions.time)")
    if kind.field_student and isinstance(teacher_scene, HasDensity) and not dynamic:
        return plan("pvd", "both are radiance fields: progressive volume distillation (PVD"
                    " feature, density/colour and rendered-colour losses at the student's samples)")
    if kind.gaussians:
        return plan("render", f"Gaussians seeded from the teacher's rendered depth, then trained on its renders{at}")
    return plan("render", f"trained on the teacher's renders around the dataset cameras{at}")


# -- convert --------------------------------------------------------------------------------------
def convert(teacher, target: str, data=None, *, out=None, options: ConvertOptions = ConvertOptions(),
            resume: bool = False):
    """Convert ``teacher`` into ``target``; returns the trained student Scene (eval mode), or the
    written file's Path for ``"mesh"`` / ``"pointcloud"``.

    Args:
        teacher: a Scene, a :class:`~omnifield.scenes.runs.Run`, or a run directory path.
        target: a registered method, ``"mesh"`` or ``"pointcloud"``.
        data: the teacher's SceneData (default: the run's dataset, ``Run.load_data()``; a Scene
            teacher needs it). Its world, box, cameras and held-out images are the student's.
        out: the student's run directory (None: in memory), or the file of a mesh / point cloud.
        options: :class:`ConvertOptions`.
        resume: continue an interrupted conversion in ``out`` (its ``distill.json``, the Trainer's
            checkpoint and the cached teacher views); the stored options apply, except ``max_steps``,
            ``max_minutes``, ``progress`` and ``device`` when given.
    """
    run, scene = _teacher_of(teacher, options.device)
    if resume:
        options = _resumed_options(out, run, target, options)
    elif out is not None and target not in FILE_TARGETS:
        out = Path(out)
        if (out / runs.CONFIG_FILE).exists() or (out / DISTILL_FILE).exists():
            raise ConfigError("already holds a run; pass --resume to continue it or choose another --out", out)
    plan = plan_conversion(scene, target, time=options.time)
    t = options.time if options.time is not None or not isinstance(scene, TimeVarying) else default_time(scene)
    if plan.kind in FILE_TARGETS:
        return _export(plan, scene, run, data, out, t)
    if data is None:
        data = _run_data(run, need_images=plan.kind != "slice")
    start = _time.perf_counter()
    record = _distill_record(run, plan, options, t)
    if out is not None:
        record["seconds"] = _previous_seconds(out) if resume else 0.0
        runs.atomic_write_json(Path(out) / DISTILL_FILE, record)
    try:
        if plan.kind == "slice":
            student, result = slice_to_gaussians(scene, target, data, t, options, out), None
        elif plan.kind == "pvd":
            student, result = _convert_pvd(scene, target, data, options, out, resume)
        else:
            student, result = _convert_render(scene, target, data, options, out, resume, t)
    except KeyboardInterrupt:
        if out is not None:
            teacher_path = run.path if run is not None else "TEACHER_RUN"
            print(f"omnifield: conversion interrupted; resume with: omnifield convert {teacher_path} --to {target} "
                  f"--out {out} --resume", file=sys.stderr)
        raise
    student.eval()
    cams = _comparison_cameras(data, options.seed)
    from omnifield.distill.render_distill import student_teacher_psnr

    record.update(status="finished" if result is None else result.status,
                  steps=0 if result is None else int(result.step),
                  held_out_psnr=None if result is None else result.eval_psnr,
                  student_teacher_psnr=_finite(student_teacher_psnr(student, scene, cams, time=t,
                                                                    background=data.background)))
    if out is not None:
        record["seconds"] = float(record.get("seconds", 0.0)) + (_time.perf_counter() - start)
        runs.atomic_write_json(Path(out) / DISTILL_FILE, record)
    return student


def convert_run(run_path, target: str, out=None, options: ConvertOptions = ConvertOptions(), *,
                resume: bool = False) -> Path:
    """What ``omnifield convert`` runs: load the run, print the plan line, convert, print the result.

    ``out``: the student's run directory (default ``runs/<run>-to-<target>-<time>``), or the ``.ply``
    / ``.obj`` / ``.glb`` file for ``mesh`` / ``pointcloud`` (required). Returns ``out``.
    """
    from omnifield.scenes.trainer import pick_device

    run = runs.load_run(run_path, device=pick_device(options.device))
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN (the conversion to continue)")
        options = _resumed_options(out, run, target, options)
    if out is None:
        if target in FILE_TARGETS:
            formats = ".ply, .obj or .glb" if target == "mesh" else ".ply"
            raise ConfigError(f"--to {target} needs --out FILE ({formats})")
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{Path(run_path).resolve().name}-to-{target}-{stamp}"
    print(plan_conversion(run.scene, target, time=options.time).line(), flush=True)
    result = convert(run, target, out=out, options=options, resume=resume)
    if isinstance(result, Path):
        return result
    rec = runs.read_json(Path(out) / DISTILL_FILE)
    line = f"{rec.get('status', 'finished')}: {rec.get('steps', 0)} steps in {float(rec.get('seconds', 0.0)):.1f} s"
    if rec.get("student_teacher_psnr") is not None:
        line += f", student vs teacher {rec['student_teacher_psnr']:.2f} dB"
    if rec.get("held_out_psnr") is not None:
        line += f", held-out PSNR {rec['held_out_psnr']:.2f} dB"
    print(line)
    return Path(out)


# -- helpers of convert ---------------------------------------------------------------------------
def _teacher_of(teacher, device: str):
    """``(run or None, scene)`` of a Scene, a Run or a run directory."""
    if isinstance(teacher, (str, Path)):
        from omnifield.scenes.trainer import pick_device

        run = runs.load_run(teacher, device=pick_device(device))
        return run, run.scene
    if isinstance(teacher, runs.Run):
        return teacher, teacher.scene
    if isinstance(teacher, nn.Module) and hasattr(teacher, "render"):
        return None, teacher
    raise TypeError(f"convert: teacher must be a Scene, a Run or a run directory, got {type(teacher).__name__}")


def _run_data(run, need_images: bool):
    """The teacher run's dataset in its world; without the dataset folder, its stored SceneInfo (no images)."""
    if run is None:
        raise ConfigError("convert: a Scene teacher needs data= (its SceneData)")
    if not need_images:
        return run.info
    try:
        return run.load_data()
    except (DataError, OSError) as e:
        warnings.warn(f"the teacher's dataset cannot be read ({e}); converting without ground-truth images")
        return run.info


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _comparison_cameras(data, seed: int):
    from omnifield.distill.render_distill import comparison_cameras
    from omnifield.scenes.evaluate import pick_evenly

    cams = comparison_cameras(data, seed=seed)
    keep = pick_evenly(list(range(len(cams))), COMPARE_MAX_VIEWS)
    return cams[keep]


def _distill_record(run, plan: ConversionPlan, options: ConvertOptions, time) -> dict:
    return {"teacher_run": None if run is None else str(Path(run.path).resolve()), "teacher_method": plan.teacher,
            "target": plan.target, "plan": {"kind": plan.kind, "reason": plan.reason},
            "options": asdict(options), "time": time, "status": "running"}


def _previous_seconds(out) -> float:
    path = Path(out) / DISTILL_FILE
    return float(runs.read_json(path).get("seconds", 0.0)) if path.is_file() else 0.0


def _resumed_options(out, run, target: str, options: ConvertOptions) -> ConvertOptions:
    """The options stored in ``out/distill.json``, with this call's max_steps / max_minutes (when
    given), progress and device. ConfigError when there is nothing to resume or it is another conversion."""
    if out is None:
        raise ConfigError("resume needs out= (the conversion's run directory)")
    path = Path(out) / DISTILL_FILE
    if not path.is_file():
        raise ConfigError(f"nothing to resume (no {DISTILL_FILE})", out)
    rec = runs.read_json(path, error=CheckpointError)
    if rec.get("target") != target:
        raise ConfigError(f"the conversion in it targets {rec.get('target')!r}, not {target!r}", path)
    if run is not None and rec.get("teacher_run") and Path(rec["teacher_run"]) != Path(run.path).resolve():
        raise ConfigError(f"the conversion in it was made from {rec['teacher_run']}, not {run.path}", path)
    stored = dict(rec.get("options") or {})
    known = {f.name for f in dataclasses.fields(ConvertOptions)}
    stored = {k: v for k, v in stored.items() if k in known}
    stored["scene_overrides"] = tuple(stored.get("scene_overrides") or ())
    merged = ConvertOptions(**stored)
    return replace(merged, progress=options.progress, device=options.device,
                   max_steps=options.max_steps if options.max_steps is not None else merged.max_steps,
                   max_minutes=options.max_minutes if options.max_minutes is not None else merged.max_minutes)


def _trainer_config(options: ConvertOptions, data):
    """The student's TrainerConfig; without held-out images (a run's SceneInfo) no periodic evaluation."""
    from omnifield.scenes.trainer import TrainerConfig

    kw = {"seed": int(options.seed), "progress": bool(options.progress), "max_minutes": options.max_minutes}
    if options.max_steps is not None:
        kw["max_steps"] = int(options.max_steps)
    kw.update(options.trainer_overrides)
    if getattr(data, "images", None) is None:
        kw["eval_every"] = 0
    return TrainerConfig(**kw)


def _device_of(scene) -> torch.device:
    for t in list(scene.parameters()) + list(scene.buffers()):
        return t.device
    return torch.device("cpu")


def build_student(target: str, data, options: ConvertOptions, defaults: dict | None = None, out=None):
    """The student scene of ``target`` built on ``data`` (``build(config, data)``), ``defaults`` (e.g.
    PVD's :func:`~omnifield.distill.pvd.student_overrides`) then ``options.scene_overrides`` applied to
    its config; on resume (``out`` holds a ``config.json``) from the run's stored, resolved config."""
    from omnifield.scenes.configs import apply_overrides, config_from_dict
    from omnifield.scenes.registry import get_method

    spec = get_method(target)
    stored = None if out is None else Path(out) / runs.CONFIG_FILE
    if stored is not None and stored.is_file() and (Path(out) / runs.STATE_JSON_FILE).is_file():
        config = config_from_dict(spec.config_cls, runs.read_run_config(out)["scene_config"])
    else:
        config = apply_overrides(spec.config_cls(**(defaults or {})), list(options.scene_overrides))
    torch.manual_seed(int(options.seed))
    return spec.build(config, data)


def render_student_overrides(target: str) -> dict:
    """Config overrides of a student trained by render distillation: an MLP student (nerf) gets PVD's
    marched, shared-heads MLP and its CPU settings (:func:`~omnifield.distill.pvd.student_overrides`, the
    density clamp left out: no teacher density to match). The paper NeRF (coarse + fine, 192 samples
    per ray, no occupancy grid) made 7 steps in 2 minutes on one CPU thread and took 20 minutes to
    render 3 held-out views of lego at 200x200. Other students keep their defaults."""
    from omnifield.distill.pvd import student_overrides
    from omnifield.scenes.registry import get_method

    out = student_overrides(target, get_method(target).config_cls)
    return {k: v for k, v in out.items() if k != "density_clamp"} if "heads" in out else {}


def _downscale(data) -> int:
    return int((getattr(data, "metadata", None) or {}).get("downscale", 1))


def _has_checkpoint(out) -> bool:
    return out is not None and (Path(out) / runs.STATE_JSON_FILE).is_file()


# -- the routes -------------------------------------------------------------------------------------
def _convert_pvd(teacher, target: str, data, options: ConvertOptions, out, resume: bool):
    try:
        from omnifield.distill.pvd import PVDConfig, distill_fields, student_overrides
    except ImportError as e:
        raise ConfigError(f"PVD distillation is not available in this build ({e})") from None
    from omnifield.scenes.registry import get_method

    spec = get_method(target)
    student = build_student(target, data, options, student_overrides(target, spec.config_cls),
                            out if resume else None).to(_device_of(teacher))
    if options.mix_gt > 0 and getattr(data, "images", None) is None:
        raise ConfigError("mix_gt > 0 needs the teacher's dataset images (the dataset folder cannot be read)")
    config = PVDConfig(active_learning=bool(options.active_learning), mix_gt=float(options.mix_gt))
    result = distill_fields(teacher, student, data, run_dir=out, trainer_config=_trainer_config(options, data),
                            config=config, method=target, record_data=data, resume=resume and _has_checkpoint(out),
                            resume_hint="")  # convert prints its own "omnifield convert ... --resume" line
    return student, result


def _convert_render(teacher, target: str, data, options: ConvertOptions, out, resume: bool, time):
    from omnifield.distill import render_distill as rd
    from omnifield.scenes.trainer import Trainer

    cache = None if out is None else Path(out) / CACHE_DIR
    # Gaussian students start from the points; grid students take every lifted pixel to mark their cells
    gaussians = _target_kind(_get_target(target)).gaussians
    views = rd.teacher_views(teacher, data, options.n_views, options.seed, time=time, cache_dir=cache,
                             max_points=rd.DEFAULT_MAX_POINTS if gaussians else rd.SURFACE_POINTS,
                             progress=options.progress)
    resuming = resume and _has_checkpoint(out)
    student = build_student(target, views, options, render_student_overrides(target), out if resuming else None)
    student = student.to(_device_of(teacher))
    trainer = Trainer(student, views, _trainer_config(options, views), out, downscale=_downscale(data),
                      method=target, record_data=data)  # the run records the real dataset, not the teacher views
    trainer.resume_hint = ""  # convert prints its own "omnifield convert ... --resume" line
    if resuming:
        trainer.resume()  # the saved grid, limited again to the same (deterministic) cells below
    rd.seed_occupancy(student, views.points)
    return student, trainer.train()


def slice_to_gaussians(teacher, target: str, data, time: float, options: ConvertOptions = ConvertOptions(), out=None):
    """The ``slice`` route: the static Gaussians of ``teacher.gaussians(time)`` (a dynamic Gaussian
    scene) become the parameters of a ``target`` scene (3dgs) built on ``data``'s cameras and box.

    Exact up to float rounding: covariances are eigen-decomposed into scales and rotations, opacities
    (``sigmoid(logit) * p(t)``) turned back into logits and the SH coefficients mixed at ``time``
    copied (zero-padded to the student's degree), so the student renders what the teacher renders at
    ``time``. With ``out`` the student is written as a run (step 0, with an optimiser state so that
    ``omnifield train TARGET --out OUT --resume --max-steps N`` fine-tunes it).
    """
    from omnifield.scenes.export import splat_fields

    with torch.no_grad():
        prims = teacher.gaussians(time)
        fields = splat_fields(prims)
        degree_taught = int(round(math.sqrt(prims.sh.shape[1]))) - 1 if prims.sh is not None else 0
    if len(prims) == 0:
        raise ConfigError(f"no Gaussian of the teacher is visible at time {time:g}: nothing to slice")
    info = runs.SceneInfo.from_data(data)
    seed_data = replace(info, points=fields["means"].clone(), point_colors=None)
    student = build_student(target, seed_data, options).to(_device_of(teacher))
    params = dict(student.named_parameters())
    needed = {"means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"}
    if not needed <= set(params):
        raise ConversionRefused(f"{target}: its parameters are not the 3DGS ones ({', '.join(sorted(needed))})")
    k = 1 + params["sh_rest"].shape[1]
    with torch.no_grad():
        values = {"means": fields["means"], "log_scales": fields["log_scales"], "quats": fields["quats"],
                  "opacity_logits": fields["opacity_logits"], "sh_dc": fields["sh"][:, :1],
                  "sh_rest": fields["sh"][:, 1:k]}
        for name, v in values.items():
            params[name].copy_(v.to(params[name]))
        if hasattr(student, "active_sh_degree"):
            student.active_sh_degree.fill_(min(degree_taught, int(math.isqrt(k)) - 1))
    if out is not None:
        from omnifield.scenes.trainer import TrainerConfig

        config = TrainerConfig(seed=int(options.seed))
        optimizer, scheduler = student.configure_optimizers(config.max_steps)
        runs.write_run_config(out, method=target, scene_config=student.config, trainer_config=config, data=info,
                              downscale=_downscale(info))
        runs.save_checkpoint(out, student, 0, optimizer=optimizer, scheduler=scheduler,
                             generator=torch.Generator().manual_seed(int(options.seed)),
                             trainer_extra={"elapsed_seconds": 0.0})
    return student.eval()


class _AtTime(nn.Module):
    """A dynamic scene seen as a static one at a fixed time (for the exporters, which render without time)."""

    def __init__(self, scene, time: float):
        super().__init__()
        self.scene = scene
        self.time = float(time)
        self.scene_box = scene.scene_box

    def render(self, cameras, time=None, options=None):
        return self.scene.render(cameras, self.time, options)

    def background_tensor(self, options=None):
        return self.scene.background_tensor(options)


def _export(plan: ConversionPlan, scene, run, data, out, time) -> Path:
    """The ``mesh`` / ``pointcloud`` routes: the export path, in the dataset's original coordinates."""
    from omnifield.scenes.export import export_mesh, export_pointcloud, run_cameras

    if out is None:
        raise ConfigError(f"converting to {plan.kind} needs out= (the file to write)")
    if run is None and data is None:
        raise ConfigError("convert: a Scene teacher needs data= (its SceneData: cameras and world)")
    info = run.info if run is not None else runs.SceneInfo.from_data(data)
    dynamic = isinstance(scene, TimeVarying)
    # What the exporters read of a Run; a dynamic teacher is frozen at `time`.
    view = SimpleNamespace(scene=_AtTime(scene, time) if dynamic else scene, scene_box=info.scene_box,
                           world_from_dataset=info.world_from_dataset, info=info, method=plan.teacher,
                           downscale=run.downscale if run is not None else _downscale(info))
    if plan.kind == "pointcloud":
        return export_pointcloud(view, out)
    if isinstance(scene, HasDensity) and not dynamic:
        return export_mesh(view, out)
    from omnifield.distill.mesh_convert import export_fused_mesh

    return export_fused_mesh(view, out, cameras=run_cameras(view, "train"))


__all__ = ["ConvertOptions", "ConversionPlan", "plan_conversion", "convert", "convert_run", "build_student",
           "slice_to_gaussians", "default_time", "FILE_TARGETS", "DISTILL_FILE"]


class _CallableModule(types.ModuleType):
    """``omnifield.distill.convert`` names both this module and its :func:`convert`; once the module is
    imported the package attribute is the module, so the module forwards calls to the function and
    ``omnifield.distill.convert(teacher, target, data)`` works either way."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

