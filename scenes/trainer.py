"""The generic Trainer: random-pixel ray batches from any SceneData, any Scene, checkpoints and resume.

One loop for every representation (nerfstudio's ``Trainer`` / instant-ngp's training loop):
``scene.on_step_begin -> training_step -> backward -> optimizer.step -> scheduler.step ->
scene.on_step_end``. Ray batches are drawn uniformly over every training pixel (images may differ
in size), with a random background per ray when the images have alpha; scenes with
``batch_kind == "images"`` (Gaussian splatting) get whole images instead, walked in a seeded
random order, with a random background per image. Runs are deterministic for
a seed, and ``--resume`` reaches the same state as an uninterrupted run.

An *objective* (see :class:`Objective`) replaces the batch drawing and ``training_step`` of the
scene (distillation draws its own rays and asks a teacher); the Trainer keeps everything else.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from omnifield.cuda import native
from omnifield.errors import CheckpointError, ConfigError, TrainingDiverged
from omnifield.scenes import runs
from omnifield.scenes.base import ImageBatch, RayBatch
from omnifield.scenes.configs import apply_overrides
from omnifield.scenes.samplers import ImageSampler, PixelSampler


@dataclass(frozen=True)
class TrainerConfig:
    """How long and how to train; independent of the representation."""

    max_steps: int = 30000
    """Number of optimiser steps of the whole run (the schedule is built for it)."""
    max_minutes: float | None = None
    """Wall-clock training budget in minutes, summed over resumes; training stops cleanly when reached."""
    eval_every: int = 2500
    """Evaluate PSNR on a few held-out images every this many steps (0: never; also once at the end)."""
    eval_max_images: int = 3
    """Held-out images used by the periodic evaluation."""
    checkpoint_every: int = 5000
    """Save a checkpoint every this many steps (0: only at the end / on interrupt)."""
    checkpoint_minutes: float | None = 10.0
    """Also save a checkpoint when this many minutes passed since the last one (None: never)."""
    log_every: int = 100
    """Append a training record (loss, PSNR, rays/s, lr) to metrics.jsonl every this many steps."""
    seed: int = 0
    """Seed of the ray sampler and of torch's global RNG at the start of a fresh run."""
    num_threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    random_background: bool = True
    """With alpha images, composite each target ray on a random colour (the scene learns transparency)."""
    pixel_jitter: bool = True
    """Jitter ray positions uniformly within the pixel (False: pixel centres)."""
    progress: bool = True
    """Show a progress bar (rich) on stderr."""

    def __post_init__(self):
        for name in ("max_steps", "eval_every", "eval_max_images", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"trainer option {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_minutes", "checkpoint_minutes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"trainer option {name} must be > 0 or None, got {v}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"trainer option num_threads must be >= 1, got {self.num_threads}")


@dataclass(frozen=True)
class TrainResult:
    """How a call to :meth:`Trainer.train` ended.

    Attributes:
        run_dir: the run directory (None when training in memory).
        step: completed steps.
        status: "finished" (max_steps), "time_budget" (max_minutes) or "stopped" (:meth:`Trainer.stop`).
        elapsed_seconds: training time summed over resumes.
        loss, psnr: last training values (psnr None when the scene does not report it).
        eval_psnr: last held-out PSNR, or None.
    """

    run_dir: Path | None
    step: int
    status: str
    elapsed_seconds: float
    loss: float | None = None
    psnr: float | None = None
    eval_psnr: float | None = None


class Objective(Protocol):
    """What a Trainer optimises instead of ``scene.training_step`` (e.g. PVD's distillation).

    ``training_step(trainer, step)`` draws its own batch (``trainer.generator``,
    ``trainer.sample_batch`` for ground-truth rays), calls the scene hooks it wants before the
    forward pass (``scene.on_step_begin`` is *not* called by the Trainer) and returns the losses:
    ``"loss"`` (the differentiable total), scalars to log (``"psnr"`` shows in the progress bar) and
    optionally ``"num_rays"`` (for the rays/s rate). The Trainer then does zero_grad, backward, the
    optimiser and scheduler steps, ``scene.on_step_end(step)``, the non-finite check, logging,
    evaluation, checkpoints and the budget.

    Optional members: ``state_dict() -> dict`` (JSON values; saved in the checkpoint's trainer state
    under ``"objective"``), ``load_state_dict(d)`` (called on resume), and an int attribute
    ``horizon``: the Trainer sets it to ``config.max_steps`` at construction and, with a time budget,
    to the projected final step (as it does with the ``max_steps`` of LR factors).
    """

    def training_step(self, trainer: "Trainer", step: int) -> dict[str, Tensor]: ...


class Trainer:
    """Trains a Scene on a SceneData, writing checkpoints and metrics to ``run_dir``.

    Thread-safe controls for a live viewer: :meth:`pause`, :meth:`resume_training`, :meth:`stop`,
    and :attr:`lock` (held during each step; hold it to render a consistent scene).

    ``objective`` (an :class:`Objective`) replaces the scene's own batches and ``training_step``.
    ``record_data`` is the SceneData written to ``config.json`` / ``cameras.safetensors`` (default
    ``data``): a converter trains on teacher renders but records the real dataset, so evaluation,
    rendering and export of the run use the real cameras and splits. Held-out evaluation during
    training uses ``data``.
    """

    def __init__(self, scene, data, config: TrainerConfig | None = None, run_dir: str | Path | None = None,
                 *, downscale: int | None = None, method: str | None = None, objective: Objective | None = None,
                 record_data=None):
        self.scene = scene
        self.data = data
        self.record_data = data if record_data is None else record_data
        self.objective = objective
        self.config = config or TrainerConfig()
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.method = method or str(getattr(scene, "method", "") or getattr(scene.config, "method", ""))
        self.downscale = int(downscale if downscale is not None else self.record_data.metadata.get("downscale", 1))
        self.device = scene.scene_box.device if hasattr(scene, "scene_box") else torch.device("cpu")
        self.cameras = data.cameras.to(self.device)
        self.batch_kind = str(getattr(scene, "batch_kind", "rays"))
        if self.batch_kind not in ("rays", "images"):
            raise ConfigError(f"scene batch_kind must be 'rays' or 'images', got {self.batch_kind!r}")
        self._sampler = None
        if objective is None:  # an objective may never need the training images: load them on first use
            self._sampler = self._make_sampler()
        elif not callable(getattr(objective, "training_step", None)):
            raise ConfigError(f"objective {type(objective).__name__} has no training_step(trainer, step)")
        self.eval_indices = self._eval_split()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.optimizer, self.scheduler = scene.configure_optimizers(self.config.max_steps)
        if objective is not None and hasattr(objective, "horizon"):
            objective.horizon = int(self.config.max_steps)
        self.global_step = 0
        self.elapsed_seconds = 0.0
        self.last_checkpoint_step: int | None = None
        self.lock = threading.RLock()
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._sigint = False
        self._mutating = False
        self._resumed = False
        self.resume_hint: str | None = None
        """What Ctrl-C prints after "resume with:" (None: the ``omnifield train ... --resume`` command;
        "": nothing, the caller prints its own, as ``omnifield convert`` does)."""
        self._last_eval_step: int | None = None
        self._step_seconds: float | None = None
        self._last = {"loss": None, "psnr": None, "eval_psnr": None}

    # -- controls (any thread) ------------------------------------------------------------------
    def pause(self) -> None:
        """Pause before the next step (the current one finishes)."""
        self._running.clear()

    def resume_training(self) -> None:
        """Continue after :meth:`pause`."""
        self._running.set()

    def stop(self) -> None:
        """Stop after the current step; :meth:`train` saves a checkpoint and returns status "stopped"."""
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # -- one step -------------------------------------------------------------------------------
    def _make_sampler(self):
        if self.batch_kind == "images":
            return ImageSampler(self.data, self.data.split("train"))
        return PixelSampler(self.data, self.data.split("train"))

    @property
    def sampler(self) -> PixelSampler | ImageSampler:
        """The training-image sampler (built on first use when an objective drives the training)."""
        if self._sampler is None:
            self._sampler = self._make_sampler()
        return self._sampler

    def sample_batch(self, num_rays: int) -> RayBatch:
        """A :class:`RayBatch` of ``num_rays`` random training pixels (uses the trainer's generator)."""
        from omnifield.renderers.rays import camera_rays

        cams, pixels, rgb, bg, alpha = self.sampler.sample(
            num_rays, self.generator, jitter=self.config.pixel_jitter, random_background=self.config.random_background)
        rays = camera_rays(self.cameras, cams.to(self.device), pixels.to(self.device))
        return RayBatch(rays=rays, rgb=rgb.to(self.device), background=bg.to(self.device),
                        alpha=None if alpha is None else alpha.to(self.device))

    def sample_images(self, num_views: int) -> ImageBatch:
        """An :class:`ImageBatch` of the next ``num_views`` training images (uses the trainer's generator)."""
        cams, rgb, bg, alpha = self.sampler.sample(num_views, self.generator,
                                                   random_background=self.config.random_background)
        cameras = self.cameras[cams.to(self.device)]
        return ImageBatch(cameras=cameras, indices=cams.to(self.device), rgb=rgb.to(self.device),
                          background=bg.to(self.device), alpha=None if alpha is None else alpha.to(self.device),
                          times=cameras.times)

    def step(self) -> dict[str, float]:
        """Run one optimisation step; returns the scalar losses. Raises TrainingDiverged on a non-finite loss."""
        with self.lock:
            step = self.global_step
            self.scene.train()
            batch = None
            if self.objective is not None:
                losses = self.objective.training_step(self, step)
            else:
                self.scene.on_step_begin(step)
                if self.batch_kind == "images":
                    batch = self.sample_images(int(self.scene.views_per_batch()))
                else:
                    batch = self.sample_batch(int(self.scene.rays_per_batch()))
                losses = self.scene.training_step(batch, step)
            loss = losses["loss"]
            value = float(loss.detach())
            if not math.isfinite(value):
                raise self._diverged(step, value)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._mutating = True
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.scene.on_step_end(step)
            self.global_step = step + 1
            self._mutating = False
        out = {k: float(v.detach()) if isinstance(v, Tensor) else float(v)
               for k, v in losses.items() if isinstance(v, (Tensor, int, float)) and (not isinstance(v, Tensor) or v.numel() == 1)}
        if batch is None:
            out["rays"] = float(out.get("num_rays", 0.0))
        else:
            out["rays"] = float(len(batch) if isinstance(batch, ImageBatch) else len(batch.rays))  # pixels
        return out

    def _diverged(self, step: int, value: float) -> TrainingDiverged:
        kept = (f"the last good checkpoint (step {self.last_checkpoint_step}) is kept"
                if self.last_checkpoint_step is not None else "no checkpoint had been saved yet")
        return TrainingDiverged(f"loss became {value} at step {step}; training stopped, {kept}",
                                self.run_dir)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write a checkpoint of the current (consistent) state to the run directory."""
        if self.run_dir is None:
            return
        with self.lock:
            runs.save_checkpoint(self.run_dir, self.scene, self.global_step, optimizer=self.optimizer,
                                 scheduler=self.scheduler, generator=self.generator,
                                 trainer_extra=self._trainer_extra())
            self.last_checkpoint_step = self.global_step

    def _trainer_extra(self) -> dict:
        extra = {"elapsed_seconds": self.elapsed_seconds}
        if isinstance(self._sampler, ImageSampler):
            extra["image_sampler"] = self._sampler.state_dict()
        if self.objective is not None and callable(getattr(self.objective, "state_dict", None)):
            extra["objective"] = self.objective.state_dict()
        return extra

    def resume(self) -> int:
        """Load weights, optimizer, scheduler, RNG states and step from the run directory; returns the step."""
        if self.run_dir is None:
            raise ConfigError("cannot resume without a run directory")
        model_path = self.run_dir / runs.MODEL_FILE
        step = runs.load_weights(self.scene, model_path, method=self.method or None)
        state = runs.load_trainer_state(self.run_dir)
        if state.step != step:
            raise CheckpointError(f"weights are from step {step} but the trainer state from step {state.step} "
                                  "(interrupted while saving?)", model_path)
        state_path = self.run_dir / runs.STATE_JSON_FILE
        try:
            self.optimizer.load_state_dict(state.optimizer)
            if self.scheduler is not None and state.scheduler is not None:
                self.scheduler.load_state_dict(state.scheduler)
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state does not fit this scene ({e})", state_path) from None
        runs.restore_rng(state.rng_tensors, state.rng, self.generator)
        if self.batch_kind == "images" and "image_sampler" in state.trainer:
            self.sampler.load_state_dict(state.trainer["image_sampler"])
        if self.objective is not None and callable(getattr(self.objective, "load_state_dict", None)):
            if "objective" not in state.trainer:
                raise CheckpointError("the checkpoint holds no objective state (not a run of this objective?)",
                                      state_path)
            self.objective.load_state_dict(state.trainer["objective"])
        self.global_step = step
        self.elapsed_seconds = float(state.trainer.get("elapsed_seconds", 0.0))
        self.last_checkpoint_step = step
        self._resumed = True
        runs.truncate_metrics(self.run_dir / runs.METRICS_FILE, step)
        return step

    # -- evaluation and logging -----------------------------------------------------------------
    def _eval_split(self) -> list[int]:
        if getattr(self.data, "images", None) is None:  # a SceneInfo (no images): nothing to score against
            return []
        for name in ("test", "val"):
            if self.data.splits.get(name):
                return list(self.data.splits[name])
        return []

    def evaluate(self) -> float | None:
        """Mean PSNR on up to ``eval_max_images`` held-out images (RNG-neutral); None without held-out images."""
        from omnifield.scenes.evaluate import pick_evenly, score_images

        if not self.eval_indices or self.config.eval_max_images == 0:
            return None
        indices = pick_evenly(self.eval_indices, self.config.eval_max_images)
        devices = [self.device] if self.device.type == "cuda" else []
        with self.lock, torch.random.fork_rng(devices=devices):
            self.scene.eval()
            rows, seconds = score_images(self.scene, self.data, indices, with_ssim=False)
            self.scene.train()
        value = sum(r["psnr"] for r in rows) / len(rows)
        self._log({"type": "eval", "step": self.global_step, "split": "test" if self.data.splits.get("test") else "val",
                   "psnr": value, "num_images": len(rows), "render_seconds": seconds})
        self._last["eval_psnr"] = value
        self._last_eval_step = self.global_step
        return value

    def _log(self, record: dict) -> None:
        if self.run_dir is not None:
            runs.append_jsonl(self.run_dir / runs.METRICS_FILE, record)

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        """Train until ``max_steps`` or ``max_minutes``, or until :meth:`stop`.

        Ctrl-C finishes the current step, saves a checkpoint, prints how to resume and re-raises
        KeyboardInterrupt. A non-finite loss raises TrainingDiverged without touching the last checkpoint.
        """
        cfg = self.config
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if self.global_step == 0 and not self._resumed:
            torch.manual_seed(cfg.seed)
        if self.run_dir is not None:
            runs.write_run_config(self.run_dir, method=self.method, scene_config=self.scene.config,
                                  trainer_config=cfg, data=self.record_data, downscale=self.downscale)
        restore_sigint = self._install_sigint()
        bar = _ProgressBar(cfg, self.global_step)
        status = "finished"
        last_save = time.perf_counter()
        rate = None
        try:
            while self.global_step < cfg.max_steps:
                if self._sigint:
                    raise KeyboardInterrupt
                self._running.wait()
                if self._stop.is_set():
                    status = "stopped"
                    break
                if cfg.max_minutes is not None and self.elapsed_seconds >= cfg.max_minutes * 60:
                    status = "time_budget"
                    break
                t0, loading = time.perf_counter(), native.load_seconds()
                logs = self.step()
                loading = native.load_seconds() - loading
                s = self.global_step
                self._last["loss"], self._last["psnr"] = logs.get("loss"), logs.get("psnr")
                if cfg.log_every and s % cfg.log_every == 0:
                    self._log({"type": "train", "step": s, **{k: v for k, v in logs.items() if k != "rays"},
                               "lr": self.optimizer.param_groups[0]["lr"], "elapsed_seconds": self.elapsed_seconds})
                t_eval = 0.0
                if cfg.eval_every and s % cfg.eval_every == 0:
                    t_eval = time.perf_counter()
                    self.evaluate()
                    t_eval = time.perf_counter() - t_eval
                now = time.perf_counter()
                # Neither held-out evaluation nor a kernel's first-use build is training time.
                dt = now - t0 - t_eval - loading
                self.elapsed_seconds += dt
                self._fit_schedule_to_budget(s, dt)
                rate = logs["rays"] / max(dt, 1e-9) if rate is None else 0.9 * rate + 0.1 * logs["rays"] / max(dt, 1e-9)
                if (cfg.checkpoint_every and s % cfg.checkpoint_every == 0) or (
                        cfg.checkpoint_minutes is not None and now - last_save >= cfg.checkpoint_minutes * 60):
                    self.save()
                    last_save = time.perf_counter()
                bar.update(s, logs, rate, self.elapsed_seconds, dt)
            if status != "stopped" and cfg.eval_every and self.global_step > 0 \
                    and self._last_eval_step != self.global_step:
                self.evaluate()
            if self.last_checkpoint_step != self.global_step:
                self.save()
        except KeyboardInterrupt:
            bar.close()
            self._on_interrupt()
            raise
        finally:
            bar.close()
            restore_sigint()
        return TrainResult(self.run_dir, self.global_step, status, self.elapsed_seconds,
                           self._last["loss"], self._last["psnr"], self._last["eval_psnr"])

    def _fit_schedule_to_budget(self, step: int, dt: float) -> None:
        """With ``max_minutes``, stretch or shrink the LR schedule to the steps the budget will allow.

        Schedules are built for ``max_steps``; a wall-clock budget usually ends earlier, which would
        leave the learning rate undecayed. At steps 10, 20, 30, 40, then every 50 steps, the projected
        final step (``step + remaining_seconds / seconds_per_step``, capped at ``max_steps``) becomes the
        horizon of every LR factor that has a ``max_steps`` attribute, and the objective's ``horizon``
        (the early projections matter to short budgets of slow steps: a few dozen steps in all).
        """
        cfg = self.config
        has_horizon = self.objective is not None and hasattr(self.objective, "horizon")
        if cfg.max_minutes is None or (self.scheduler is None and not has_horizon):
            return
        self._step_seconds = dt if self._step_seconds is None else 0.95 * self._step_seconds + 0.05 * dt
        if step < 10 or step % (10 if step < 50 else 50):
            return
        remaining = max(0.0, cfg.max_minutes * 60 - self.elapsed_seconds)
        horizon = min(cfg.max_steps, step + int(remaining / max(self._step_seconds, 1e-6)))
        for fn in getattr(self.scheduler, "lr_lambdas", []):
            if hasattr(fn, "max_steps"):
                fn.max_steps = max(horizon, 1)
        if has_horizon:
            self.objective.horizon = max(horizon, 1)

    def _on_interrupt(self) -> None:
        if self._mutating:
            kept = self.last_checkpoint_step
            print(f"omnifield: interrupted in the middle of step {self.global_step}; not saving a half-updated state"
                  + (f" (the checkpoint of step {kept} is kept)" if kept is not None else ""), file=sys.stderr)
            return
        if self.run_dir is None:
            return
        self.save()
        hint = self.resume_hint
        if hint is None:
            hint = f"omnifield train {self.method} --data {self.record_data.root} --out {self.run_dir} --resume"
        print(f"omnifield: interrupted at step {self.global_step}; checkpoint saved in {self.run_dir}"
              + (f"\nresume with: {hint}" if hint else ""), file=sys.stderr)

    def _install_sigint(self):
        """First Ctrl-C: finish the step, save and raise KeyboardInterrupt. Second: raise at once."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._sigint:
                raise KeyboardInterrupt
            self._sigint = True
            self._running.set()

        signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)


class _ProgressBar:
    """rich progress: loss, PSNR, rays/s and ETA (by steps or by the time budget, whichever is closer)."""

    def __init__(self, cfg: TrainerConfig, start: int):
        self.cfg = cfg
        self.progress = None
        if not cfg.progress:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), console=Console(stderr=True))
        self.task = self.progress.add_task("train", total=cfg.max_steps, completed=start, info="")
        self.progress.start()
        self.step_time = None

    def update(self, step: int, logs: dict, rays_per_second: float, elapsed: float, dt: float) -> None:
        if self.progress is None:
            return
        self.step_time = dt if self.step_time is None else 0.9 * self.step_time + 0.1 * dt
        eta = (self.cfg.max_steps - step) * self.step_time
        if self.cfg.max_minutes is not None:
            eta = min(eta, max(0.0, self.cfg.max_minutes * 60 - elapsed))
        psnr = logs.get("psnr")
        info = (f"loss {logs['loss']:.4g}  psnr {psnr:.2f}" if psnr is not None else f"loss {logs['loss']:.4g}")
        info += f"  {rays_per_second / 1000:.1f}k rays/s  ETA {_hms(eta)}"
        self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# -- the whole thing, as the CLI calls it --------------------------------------------------------------
def default_run_dir(method: str, data_path: str | Path) -> Path:
    """``runs/<data folder name>-<method>-<YYYYmmdd-HHMMSS>`` in the current directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{Path(data_path).resolve().name}-{method}-{stamp}"


def pick_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_trainer(
    method: str,
    data_path: str | Path | None,
    *,
    out: str | Path | None = None,
    downscale: int | None = None,
    scene_overrides: list[str] | tuple[str, ...] = (),
    trainer_overrides: dict | None = None,
    resume: bool = False,
    device: str = "auto",
    max_frames: int | None = None,
    frame_stride: int = 1,
) -> Trainer:
    """The :class:`Trainer` for ``method`` on the dataset at ``data_path``, ready to ``train()``.

    ``scene_overrides`` are ``key=value`` strings typed by the method's config dataclass;
    ``trainer_overrides`` are TrainerConfig fields. With ``resume`` the run at ``out`` is loaded
    with its stored configs (trainer overrides such as max_steps still apply) and its last
    checkpoint restored. Used by ``omnifield train`` and by the viewer's live training.
    ``max_frames`` / ``frame_stride`` choose the frames of multi-view video data (see
    :func:`~omnifield.datasets.load.load_scene`); the run records them, and eval, render and resume reuse them.
    """
    from omnifield.datasets.load import load_scene
    from omnifield.scenes.registry import get_method

    spec = get_method(method)
    trainer_overrides = dict(trainer_overrides or {})
    dev = pick_device(device)
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN (the run directory to continue)")
        if scene_overrides:
            raise ConfigError("--set cannot change the scene config of an existing run")
        run = runs.load_run(out, device=dev, expect_method=method)
        if downscale is not None and downscale != run.downscale:
            raise ConfigError(f"the run was trained with --downscale {run.downscale}, not {downscale}", out)
        if max_frames is not None or frame_stride != 1:
            raise ConfigError("--max-frames and --frame-stride cannot change the frames of an existing run")
        data = run.load_data(data_path)  # the frames it was trained on (a video run records them)
        trainer = Trainer(run.scene, data, replace(run.trainer_config, **trainer_overrides), out,
                          downscale=run.downscale, method=method)
        trainer.resume()
        return trainer
    if data_path is None:
        raise ConfigError("train needs --data PATH")
    out = Path(out) if out is not None else default_run_dir(method, data_path)
    if (out / runs.CONFIG_FILE).exists():
        raise ConfigError("already holds a run; pass --resume to continue it or choose another --out", out)
    scene_config = apply_overrides(spec.config_cls(), list(scene_overrides))
    trainer_config = TrainerConfig(**trainer_overrides)
    data = load_scene(data_path, downscale=downscale or 1, max_frames=max_frames, frame_stride=frame_stride)
    torch.manual_seed(trainer_config.seed)
    scene = spec.build(scene_config, data).to(dev)
    return Trainer(scene, data, trainer_config, out, downscale=downscale or 1, method=method)


def train_method(method: str, data_path: str | Path | None, **kwargs) -> TrainResult:
    """Train ``method`` on the dataset at ``data_path`` (what ``omnifield train`` does).

    ``kwargs``: those of :func:`build_trainer` (out, downscale, scene_overrides, trainer_overrides,
    resume, device).
    """
    return build_trainer(method, data_path, **kwargs).train()


__all__ = ["TrainerConfig", "TrainResult", "Trainer", "Objective", "PixelSampler", "ImageSampler", "build_trainer", "train_method", "default_run_dir",
           "pick_device"]
