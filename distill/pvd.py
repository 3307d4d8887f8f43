"""PVD and PVD-AL: distil one radiance field into another of a different architecture.

PVD ("One is All", Fang et al., AAAI 2023) splits every radiance field into its own volume part,
which yields a shared intermediate feature ``[sigma_pre, 15 geometry features]``, and heads that
all architectures share (``density = trunc_exp(clamp(sigma_pre, -2, 7))``, colour from an SH-encoded
direction and the features). The student is trained in three stages on the teacher's values at the
student's own ray samples: (1) the intermediate feature, (2) + per-point density and colour, (3) +
the volume-rendered colour; every loss is PVD's ``normL2`` (``torch.norm(pred - target)``). No
ground-truth image is needed: the rays come from poses around the dataset cameras.

PVD-AL (Fang et al. 2023) adds active learning on three levels: a pool of hard poses (the worst of
regularly scored candidates; batches draw part of their views from small rotations of them), a pool
of hard rays (the highest-error rays of recent batches, replayed), and point losses restricted to the
samples that matter for the teacher's render (teacher weight above a threshold).

:class:`PVDObjective` is a :class:`omnifield.scenes.trainer.Objective`: the ordinary Trainer runs it
(checkpoints, resume, budget, progress, held-out evaluation against the ground truth).
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from omnifield.cuda import ops
from omnifield.datasets.cameras import Cameras
from omnifield.distill.poses import look_at_centre, perturb_poses, sample_poses
from omnifield.errors import CheckpointError, ConfigError, ConversionRefused
from omnifield.fields import trunc_exp
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.rays import camera_rays
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput
from omnifield.renderers.volume import composite
from omnifield.scenes.base import FieldOutputs, HasDensity, HasFieldFeatures
from omnifield.scenes.trainer import Trainer, TrainerConfig, TrainResult

PVD_DENSITY_CLAMP = (-2.0, 7.0)


@dataclass(frozen=True)
class PVDConfig:
    """Options of PVD / PVD-AL (defaults: the papers' values, stage boundaries as fractions of the run)."""

    stage1_fraction: float = 2000 / 30000
    """Feature loss only until this fraction of the run (PVD: 2000 of 30000 iterations)."""
    stage2_fraction: float = 5000 / 30000
    """+ per-point density and colour losses until here (PVD: 5000 of 30000), then + rendered colour."""
    w_feature: float = 0.002
    """Weight of the intermediate-feature loss ..."""
    w_feature_decay: float = 0.995
    """... multiplied by this every step (PVD)."""
    w_density: float = 0.002
    """Weight of the per-point density (clamped pre-activation) loss."""
    w_color: float = 0.002
    """Weight of the per-point colour loss."""
    w_rgb: float = 1.0
    """Weight of the rendered-colour loss."""
    loss: str = "normL2"
    """PVD's loss: "normL2" (``torch.norm(pred - target)``) or "mse"."""
    density_clamp: tuple[float, float] = PVD_DENSITY_CLAMP
    """Clamp of the density pre-activation of the teacher (and of both sides in the losses)."""
    rays_per_batch: int | None = None
    """Rays per step; None: the student's ``rays_per_batch()``."""
    views_per_step: int = 4
    """Poses whose random pixels make a batch."""
    pose_max_angle_deg: float = 20.0
    """New poses: dataset cameras rotated about the scene centre by up to this angle."""
    pose_radius_jitter: float = 0.1
    """... and their distance to the centre scaled by 1 + U(-jitter, jitter)."""
    mix_gt: float = 0.0
    """Fraction of rays from real training images, with the ground truth as the rendered-colour target."""
    active_learning: bool = True
    """PVD-AL: hard poses, hard rays, point losses on high-weight samples."""
    hard_pose_pool: int = 32
    """Hard poses kept."""
    hard_pose_every: int = 50
    """Score candidate poses (and re-score the pool) every this many steps."""
    hard_pose_fraction: float = 0.5
    """Fraction of a batch's views drawn from perturbed hard poses."""
    hard_pose_angle_deg: float = 5.0
    """Rotation of a hard pose's neighbours about the scene centre."""
    hard_pose_candidates: int = 8
    """New candidate poses scored at each update."""
    hard_pose_rays: int = 64
    """Random rays per pose when scoring (student vs teacher colour error)."""
    hard_ray_pool: int = 4096
    """Highest-error rays of recent batches kept."""
    hard_ray_fraction: float = 0.25
    """Fraction of each batch replayed from the hard-ray pool."""
    point_weight_threshold: float = 1e-3
    """PVD-AL: point losses on the samples whose teacher weight is at least this."""

    def __post_init__(self):
        if not 0.0 <= self.stage1_fraction <= self.stage2_fraction <= 1.0:
            raise ConfigError(f"PVD: need 0 <= stage1_fraction <= stage2_fraction <= 1, got "
                              f"{self.stage1_fraction}, {self.stage2_fraction}")
        if self.loss not in _LOSSES:
            raise ConfigError(f"PVD: loss must be one of {', '.join(_LOSSES)}, got {self.loss!r}")
        for name in ("mix_gt", "hard_pose_fraction", "hard_ray_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"PVD: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.mix_gt + self.hard_ray_fraction >= 1.0:
            raise ConfigError("PVD: mix_gt + hard_ray_fraction must leave rays for new poses (< 1)")
        for name in ("views_per_step", "hard_pose_candidates", "hard_pose_rays"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"PVD: {name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.density_clamp
        if not lo < hi:
            raise ConfigError(f"PVD: density_clamp must be (low, high) with low < high, got {self.density_clamp}")


def norm_l2(pred: Tensor, target: Tensor) -> Tensor:
    """PVD's ``normL2`` loss: ``torch.norm(pred - target)`` (the Frobenius norm over every element)."""
    return torch.norm(pred - target)


_LOSSES = {"normL2": norm_l2, "mse": lambda a, b: torch.mean((a - b) ** 2)}


def stage_of(step: int, horizon: int, config: PVDConfig, *, features: bool = True) -> int:
    """PVD's stage (1, 2 or 3) at ``step`` of a run of ``horizon`` steps.

    Stage 1 ends at ``round(stage1_fraction * horizon)``, stage 2 at ``round(stage2_fraction * horizon)``
    (2000 and 5000 for PVD's 30000). Without features on either side (plenoxels) stage 1 is skipped:
    it becomes stage 2.
    """
    if step < round(config.stage1_fraction * horizon) and features:
        return 1
    if step < round(config.stage2_fraction * horizon):
        return 2
    return 3


def activate_density(sigma_pre: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    """``trunc_exp(clamp(sigma_pre, *clamp))`` (no clamp when ``clamp`` is None). Differentiable."""
    return trunc_exp(sigma_pre if clamp is None else sigma_pre.clamp(*clamp))


def field_outputs(scene, x: Tensor, d: Tensor | None) -> FieldOutputs:
    """:class:`FieldOutputs` of any radiance field: ``scene.field_outputs`` (``HasFieldFeatures``) or,
    for a ``HasDensity`` scene without it, ``sigma_pre = log(density)`` (floored at 1e-10),
    ``rgb = color`` and no features."""
    if callable(getattr(scene, "field_outputs", None)):
        return scene.field_outputs(x, d)
    sigma = scene.density(x)
    return FieldOutputs(torch.log(sigma.clamp_min(1e-10)), None, None if d is None else scene.color(x, d))


@torch.no_grad()
def teacher_occupancy(teacher, grid: OccupancyGrid, step_size: float, threshold: float = 0.01, *,
                      passes: int = 2, seed: int = 0, cone_angle: float = 0.0, chunk: int = 2**16) -> None:
    """Fill ``grid`` (the student's) from the teacher's density, in place and deterministically.

    Every cell of every level gets the largest ``density * dt`` of ``passes`` random points in it
    (points from a generator seeded with ``seed``; ``dt = step_size``, or ``step_size * 2^level`` with
    cone marching as in :meth:`OccupancyGrid.update`), then ``binaries`` is recomputed with
    ``threshold`` (nerfacc's ``min(mean, threshold)`` rule). Where the teacher has its own occupancy
    grid, its empty cells count as empty (the teacher never renders them).
    """
    own = getattr(teacher, "grid", None)
    device = grid.occs.device
    gen = torch.Generator().manual_seed(int(seed))
    n = grid.occs.numel()
    occs = torch.zeros(n, device=device)
    for _ in range(max(1, int(passes))):
        jitter = torch.rand(n, 3, generator=gen).to(device)
        for i in range(0, n, chunk):
            ids = torch.arange(i, min(i + chunk, n), device=device)
            x = ops.cell_points(ids, grid.levels, grid.resolution, grid.aabb, jitter[i : i + chunk])
            sigma = teacher.density(x).reshape(-1).float()
            if isinstance(own, OccupancyGrid):
                sigma = sigma * ops.grid_lookup(x, own.binaries, own.aabb).to(sigma.dtype)
            dt = step_size
            if cone_angle > 0:
                dt = step_size * torch.exp2(torch.div(ids, grid.cells_per_level, rounding_mode="floor").float())
            occs[i : i + chunk] = torch.maximum(occs[i : i + chunk], sigma * dt)
    grid.occs.copy_(occs)
    grid.binaries.copy_(ops.occupancy_binarize(grid.occs, threshold).view_as(grid.binaries))


def march_step_size(scene) -> float:
    """The marching step of a radiance-field scene: ``scene.step_size`` or ``scene.config.render_step_size``."""
    step = getattr(scene, "step_size", None)
    if step is None:
        step = getattr(getattr(scene, "config", None), "render_step_size", None)
    if step is None:
        raise ConfigError(f"{type(scene).__name__} exposes no marching step (step_size or config.render_step_size)")
    return float(step)


@torch.no_grad()
def render_psnr(student, teacher, cameras: Cameras, options=None) -> float:
    """Mean PSNR (dB) of the student's renders of ``cameras`` against the teacher's renders (both in eval
    mode, the scene's background)."""
    from omnifield.scenes.metrics import psnr

    modes = student.training, teacher.training
    student.eval(), teacher.eval()
    try:
        values = [float(psnr(a.rgb.clamp(0, 1), b.rgb.clamp(0, 1)))
                  for a, b in zip(student.render(cameras, options=options), teacher.render(cameras, options=options))]
    finally:
        student.train(modes[0]), teacher.train(modes[1])
    return sum(values) / len(values)


# -- JSON-safe tensors ----------------------------------------------------------------------------------
def _pack(t: Tensor) -> dict:
    a = t.detach().cpu().contiguous().numpy()
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _unpack(d: dict, device) -> Tensor:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(a.copy()).to(device)


_CAMERA_FIELDS = ("c2w", "fx", "fy", "cx", "cy", "width", "height", "distortion", "model")


def _cat_cameras(parts: list[Cameras]) -> Cameras:
    parts = [p for p in parts if len(p)]
    times = None if any(p.times is None for p in parts) else torch.cat([p.times for p in parts])
    return Cameras(**{k: torch.cat([getattr(p, k) for p in parts]) for k in _CAMERA_FIELDS}, times=times)


def _cat_rays(parts: list[RayBundle]) -> RayBundle:
    return RayBundle(torch.cat([r.origins for r in parts]), torch.cat([r.directions for r in parts]))


@dataclass
class _Pair:
    """Student and teacher evaluated on the student's samples of one ray batch."""

    samples: PackedSamples
    student: FieldOutputs
    teacher: FieldOutputs
    student_render: RenderOutput
    teacher_render: RenderOutput
    teacher_weights: Tensor


class PVDObjective:
    """The Trainer objective of PVD / PVD-AL (see the module docstring).

    Args:
        teacher: a ``HasFieldFeatures`` or ``HasDensity`` scene (kept in eval mode, never updated).
        student: a ``HasFieldFeatures`` scene (built with ``student_overrides``: density clamp, shared heads).
        data: the SceneData whose training cameras the poses are drawn around (and whose images
            ``mix_gt`` uses).
        config: :class:`PVDConfig`.
        generator_seed: seed of the objective's own generator (poses, pixels, backgrounds, pools).

    ``horizon`` (steps of the run) is set by the Trainer; the stage boundaries scale with it.
    """

    def __init__(self, teacher, student, data, config: PVDConfig = PVDConfig(), generator_seed: int = 0):
        if not isinstance(student, HasFieldFeatures) or getattr(student, "grid", None) is None:
            raise ConversionRefused(f"{type(student).__name__} cannot be a PVD student: it needs field_outputs, "
                                    "march and an occupancy grid (HasFieldFeatures)")
        if getattr(student.config, "heads", "shared") != "shared":
            raise ConversionRefused(f"{type(student).__name__} with heads={student.config.heads!r} has no shared "
                                    "heads: build the student with heads='shared' (see student_overrides)")
        if not isinstance(teacher, (HasFieldFeatures, HasDensity)):
            raise ConversionRefused(f"{type(teacher).__name__} cannot be a PVD teacher: it has no density and colour")
        self.teacher, self.student, self.data, self.config = teacher.eval(), student, data, config
        self.horizon = 30000
        self.generator = torch.Generator().manual_seed(int(generator_seed))
        self.device = student.scene_box.device
        self.cameras = data.cameras.to(self.device)
        self.train_indices = data.split("train")
        self.center = look_at_centre(self.cameras[self.train_indices], data.scene_box).to(self.device)
        self.student_clamp = getattr(student.config, "density_clamp", None)
        self.has_features = self._probe_features()
        self._teacher_cells: Tensor | None = None  # the student grid's cells the teacher fills (step 0)
        self.hard_poses: Cameras | None = None  # PVD-AL pools
        self.hard_pose_scores = torch.zeros(0)
        self.hard_rays = torch.zeros(0, 6, device=self.device)  # origins | directions
        self.hard_ray_errors = torch.zeros(0, device=self.device)

    def _fill_from_teacher(self, grid: OccupancyGrid) -> None:
        c = self.student.config
        teacher_occupancy(self.teacher, grid, march_step_size(self.student), float(getattr(c, "grid_threshold", 0.01)),
                          cone_angle=float(getattr(c, "cone_angle", 0.0) or 0.0))
        self._teacher_cells = grid.binaries.clone()

    def _probe_features(self) -> bool:
        x = self.data.scene_box.to(self.device).mean(0, keepdim=True)
        with torch.no_grad():
            s = self.student.field_outputs(x, None).features
            t = field_outputs(self.teacher, x, None).features
        if s is not None and t is not None and s.shape[-1] != t.shape[-1]:
            raise ConversionRefused(f"teacher and student features differ in width ({t.shape[-1]} vs {s.shape[-1]})")
        return s is not None and t is not None

    # -- one step ------------------------------------------------------------------------------------
    def training_step(self, trainer: Trainer, step: int) -> dict[str, Tensor]:
        """One PVD step: rays, the student's samples, teacher values there, the losses of the stage."""
        cfg = self.config
        grid = self.student.grid
        if step == 0:  # the student marches where the teacher has matter
            self._fill_from_teacher(grid)
        elif self._teacher_cells is None:  # resumed: the same (deterministic) teacher occupancy
            self._fill_from_teacher(OccupancyGrid(grid.aabb, grid.resolution, grid.levels).to(self.device))
        stage = stage_of(step, self.horizon, cfg, features=self.has_features)
        if stage == 3:  # the student's density is trained: its grid follows it from now on, ...
            self.student.on_step_begin(step)
            grid.binaries &= self._teacher_cells  # ... but never where the teacher is empty (unsupervised there)
        if cfg.active_learning and cfg.hard_pose_every and step % cfg.hard_pose_every == 0:
            self._update_hard_poses()
        n = int(cfg.rays_per_batch or self.student.rays_per_batch())
        rays, background, gt_rgb, n_teacher = self._draw_rays(trainer, n)
        pair = self._evaluate(rays, background)
        target = pair.teacher_render.rgb if gt_rgb is None else torch.cat([pair.teacher_render.rgb[:n_teacher], gt_rgb])
        losses = self._losses(pair, target, stage, step)
        with torch.no_grad():
            err = ((pair.student_render.rgb - pair.teacher_render.rgb) ** 2).mean(-1)[:n_teacher]
            mse = err.mean() if n_teacher else torch.zeros((), device=self.device)
        if cfg.active_learning and n_teacher:
            self._update_hard_rays(rays[:n_teacher], err)
        losses.update(psnr=-10.0 * torch.log10(mse.clamp_min(1e-10)), stage=stage,
                      num_samples=float(len(pair.samples)), num_rays=float(len(rays)))
        return losses

    def _losses(self, pair: _Pair, target: Tensor, stage: int, step: int) -> dict[str, Tensor]:
        cfg = self.config
        loss_fn = _LOSSES[cfg.loss]
        s, t = pair.student, pair.teacher
        keep = slice(None)
        if cfg.active_learning:
            keep = pair.teacher_weights >= cfg.point_weight_threshold
        lo, hi = cfg.density_clamp
        zero = torch.zeros((), device=self.device)
        l_feat = zero
        if self.has_features:
            fs = torch.cat([s.features[:, :1].clamp(lo, hi), s.features[:, 1:]], dim=-1)
            ft = torch.cat([t.features[:, :1].clamp(lo, hi), t.features[:, 1:]], dim=-1)
            l_feat = loss_fn(fs[keep], ft[keep])
        l_density = loss_fn(s.sigma_pre.clamp(lo, hi)[keep], t.sigma_pre.clamp(lo, hi)[keep])
        l_color = loss_fn(s.rgb[keep], t.rgb[keep])
        l_rgb = loss_fn(pair.student_render.rgb, target)
        w_feature = cfg.w_feature * cfg.w_feature_decay ** step
        loss = w_feature * l_feat if self.has_features else zero
        if stage >= 2:
            loss = loss + cfg.w_density * l_density + cfg.w_color * l_color
        if stage >= 3:
            loss = loss + cfg.w_rgb * l_rgb
        if not loss.requires_grad:  # no samples at all: keep a graph so backward() works
            loss = loss + 0.0 * sum(p.sum() for p in self.student.parameters() if p.requires_grad)
        return {"loss": loss, "loss_feature": l_feat.detach(), "loss_density": l_density.detach(),
                "loss_color": l_color.detach(), "loss_rgb": l_rgb.detach()}

    def _evaluate(self, rays: RayBundle, background: Tensor, stratified: bool = True) -> _Pair:
        """March the student, evaluate both fields on its samples, composite both on ``background``."""
        samples = self.student.march(rays, stratified=stratified)
        x = samples.positions(rays)
        d = rays.directions[samples.ray_indices]
        with torch.no_grad():
            t = field_outputs(self.teacher, x, d)
            t_sigma = activate_density(t.sigma_pre, self.config.density_clamp)
            t_render = composite(samples, t.rgb, t_sigma, len(rays), background)
            weights = ops.render_weights(t_sigma, samples.t_starts, samples.t_ends, samples.ray_indices,
                                         samples.packed_info)[0]
        s = self.student.field_outputs(x, d)
        s_render = composite(samples, s.rgb, activate_density(s.sigma_pre, self.student_clamp), len(rays), background)
        return _Pair(samples, s, t, s_render, t_render, weights)

    # -- rays and poses ------------------------------------------------------------------------------
    def _draw_rays(self, trainer: Trainer, n: int) -> tuple[RayBundle, Tensor, Tensor | None, int]:
        """``(rays, background [R, 3], ground-truth rgb of the last rays or None, number of teacher rays)``:
        new-pose rays, then replayed hard rays, then ground-truth rays (``mix_gt``)."""
        cfg, g = self.config, self.generator
        n_gt = int(round(cfg.mix_gt * n))
        n_hard = min(int(round(cfg.hard_ray_fraction * n)), len(self.hard_rays)) if cfg.active_learning else 0
        n_pose = max(1, n - n_gt - n_hard)
        parts = [self._pose_rays(n_pose)]
        if n_hard:
            pick = torch.randperm(len(self.hard_rays), generator=g)[:n_hard].to(self.device)
            rest = torch.ones(len(self.hard_rays), dtype=torch.bool, device=self.device)
            rest[pick] = False
            chosen = self.hard_rays[pick]
            self.hard_rays, self.hard_ray_errors = self.hard_rays[rest], self.hard_ray_errors[rest]
            parts.append(RayBundle(chosen[:, :3].contiguous(), chosen[:, 3:].contiguous()))
        n_teacher = n_pose + n_hard
        background = torch.rand(n_teacher, 3, generator=g).to(self.device)
        gt_rgb = None
        if n_gt:
            batch = trainer.sample_batch(n_gt)
            parts.append(batch.rays)
            background = torch.cat([background, batch.background.expand(n_gt, 3).to(self.device)])
            gt_rgb = batch.rgb.to(self.device)
        return _cat_rays(parts), background, gt_rgb, n_teacher

    def _views(self) -> Cameras:
        """``views_per_step`` cameras: new poses around the dataset, part of them (PVD-AL) perturbed hard poses."""
        cfg, g = self.config, self.generator
        v = int(cfg.views_per_step)
        n_hard = 0
        if cfg.active_learning and self.hard_poses is not None and len(self.hard_poses):
            n_hard = int(round(cfg.hard_pose_fraction * v))
        parts = [self._new_poses(v - n_hard)] if v - n_hard else []
        if n_hard:
            pick = torch.randint(len(self.hard_poses), (n_hard,), generator=g)
            parts.append(perturb_poses(self.hard_poses[pick.to(self.hard_poses.device)], g, cfg.hard_pose_angle_deg,
                                       center=self.center))
        return _cat_cameras(parts)

    def _new_poses(self, n: int) -> Cameras:
        cfg = self.config
        return sample_poses(self.cameras, self.train_indices, n, self.generator, max_angle_deg=cfg.pose_max_angle_deg,
                            radius_jitter=cfg.pose_radius_jitter, center=self.center)

    def _pose_rays(self, n: int, cameras: Cameras | None = None) -> RayBundle:
        """``n`` rays through uniformly random points of the images of ``cameras`` (default :meth:`_views`)."""
        cams = self._views() if cameras is None else cameras
        g = self.generator
        k = torch.randint(len(cams), (n,), generator=g)
        uv = torch.rand(n, 2, generator=g)
        uv = uv * torch.stack([cams.width[k.to(cams.device)], cams.height[k.to(cams.device)]], -1).float().cpu()
        return camera_rays(cams, k.to(cams.device), uv.to(cams.device))

    @torch.no_grad()
    def _update_hard_poses(self) -> None:
        """PVD-AL: score new candidate poses and the pool by student-vs-teacher colour error; keep the worst."""
        cfg = self.config
        cands = self._new_poses(cfg.hard_pose_candidates)
        poses = cands if self.hard_poses is None else _cat_cameras([self.hard_poses, cands])
        m = cfg.hard_pose_rays
        k = torch.arange(len(poses)).repeat_interleave(m)
        uv = torch.rand(len(k), 2, generator=self.generator)
        uv = uv * torch.stack([poses.width[k], poses.height[k]], -1).float().cpu()
        rays = camera_rays(poses, k.to(poses.device), uv.to(poses.device))
        background = torch.rand(len(rays), 3, generator=self.generator).to(self.device)
        pair = self._evaluate(rays, background, stratified=False)
        err = ((pair.student_render.rgb - pair.teacher_render.rgb) ** 2).mean(-1).reshape(len(poses), m).mean(-1)
        keep = torch.argsort(err.cpu(), descending=True, stable=True)[: cfg.hard_pose_pool]
        self.hard_poses, self.hard_pose_scores = poses[keep.to(poses.device)], err.cpu()[keep]

    def _update_hard_rays(self, rays: RayBundle, err: Tensor) -> None:
        """PVD-AL: merge the batch's teacher rays into the hard-ray pool, keep the highest errors."""
        rays_t = torch.cat([rays.origins, rays.directions], -1).detach()
        allr = torch.cat([self.hard_rays, rays_t])
        alle = torch.cat([self.hard_ray_errors, err.detach()])
        keep = torch.argsort(alle, descending=True, stable=True)[: self.config.hard_ray_pool]
        self.hard_rays, self.hard_ray_errors = allr[keep], alle[keep]

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-ready state: horizon, current feature weight, the generator, the PVD-AL pools."""
        poses = None
        if self.hard_poses is not None:
            poses = {k: _pack(getattr(self.hard_poses, k)) for k in _CAMERA_FIELDS}
            poses["times"] = None if self.hard_poses.times is None else _pack(self.hard_poses.times)
            poses["scores"] = _pack(self.hard_pose_scores)
        return {"horizon": int(self.horizon), "generator": _pack(self.generator.get_state()), "hard_poses": poses,
                "hard_rays": _pack(self.hard_rays), "hard_ray_errors": _pack(self.hard_ray_errors)}

    def load_state_dict(self, state: dict) -> None:
        try:
            self.horizon = int(state["horizon"])
            self.generator.set_state(_unpack(state["generator"], "cpu"))
            poses = state["hard_poses"]
            if poses is None:
                self.hard_poses, self.hard_pose_scores = None, torch.zeros(0)
            else:
                times = poses.get("times")
                self.hard_poses = Cameras(**{k: _unpack(poses[k], self.device) for k in _CAMERA_FIELDS},
                                          times=None if times is None else _unpack(times, self.device))
                self.hard_pose_scores = _unpack(poses["scores"], "cpu")
            self.hard_rays = _unpack(state["hard_rays"], self.device)
            self.hard_ray_errors = _unpack(state["hard_ray_errors"], self.device)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"bad PVD objective state ({type(e).__name__}: {e})") from None


def distill_fields(teacher, student, data, *, run_dir=None, trainer_config: TrainerConfig = TrainerConfig(),
                   config: PVDConfig = PVDConfig(), method: str | None = None, record_data=None,
                   resume: bool = False, resume_hint: str | None = None) -> TrainResult:
    """Distil ``teacher`` into ``student`` with PVD / PVD-AL, as an ordinary training run.

    ``data``: the SceneData the poses are drawn around (its held-out images are what the Trainer's
    evaluation scores against); ``record_data``: what the run records (default ``data``); ``method``:
    the student's registry name (stored in the run); ``resume``: continue the run in ``run_dir``.
    The optimiser and schedule are the student's own (``configure_optimizers``). Returns the
    :class:`~omnifield.scenes.trainer.TrainResult`; its ``psnr`` is student vs teacher on the last batch.
    """
    objective = PVDObjective(teacher, student, data, config, generator_seed=trainer_config.seed)
    trainer = Trainer(student, data, trainer_config, run_dir, method=method, objective=objective,
                      record_data=record_data)
    trainer.resume_hint = resume_hint  # what Ctrl-C prints after "resume with:" (see Trainer.resume_hint)
    if resume:
        trainer.resume()
    return trainer.train()


def student_overrides(method: str, config_cls) -> dict:
    """Config overrides that make ``config_cls`` a PVD student: ``density_clamp=(-2, 7)`` for every
    config with that field, ``heads="shared"`` and ``use_occupancy_grid=True`` where those exist (nerf),
    and for such an MLP student the learning rate, batch and grid below.
    ``method`` names the student in errors."""
    if not dataclasses.is_dataclass(config_cls):
        raise ConfigError(f"{method}: the config class {config_cls!r} is not a dataclass")
    names = {f.name for f in fields(config_cls)}
    out: dict = {}
    if "density_clamp" in names:
        out["density_clamp"] = PVD_DENSITY_CLAMP
    if "heads" in names:
        out["heads"] = "shared"
        # An MLP student (PVD trains it at a tenth of the hash grid's rate, 1e-3). Measured on lego,
        # --downscale 4, 3 minutes on one CPU thread: lr 2e-3 -> 2e-4 with 512 rays per step and a 64^3
        # occupancy grid (a 128^3 update costs ~2 TFLOP through the 8x256 MLP) reached 21.0 dB against
        # the teacher's 27.5 dB, the nerf defaults (5e-4 -> 5e-5, 1024 rays) 16.6 dB.
        for name, value in (("lr", 2e-3), ("lr_final", 2e-4)):
            if name in names:
                out[name] = value
        if not torch.cuda.is_available():
            for name, value in (("batch_rays", 512), ("grid_resolution", 64)):
                if name in names:
                    out[name] = value
    if "use_occupancy_grid" in names:
        out["use_occupancy_grid"] = True
    return out


__all__ = ["PVDConfig", "PVDObjective", "stage_of", "teacher_occupancy", "distill_fields", "student_overrides",
           "activate_density", "field_outputs", "norm_l2", "march_step_size", "render_psnr", "PVD_DENSITY_CLAMP"]
