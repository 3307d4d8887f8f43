"""The ``4dgs`` scene: 4D Gaussians sliced at time t and splatted by the tile rasterizer.

Yang, Yang, Pan, Zhang 2024 (ICLR), "Real-time Photorealistic Dynamic Scene Representation and
Rendering with 4D Gaussian Splatting". Parameters per Gaussian: the 4D mean (``means [N, 3]`` and
``times [N, 1]``), 4D log-scales (``log_scales [N, 3]`` and ``log_scale_t [N, 1]``), the left and
right isoclinic quaternions of the 4D rotation (``q_left``, ``q_right [N, 4]``), an opacity logit and
4D spherindrical-harmonic coefficients (DC ``sh_dc [N, 1, 3]`` and the rest ``sh_rest``, ``K * n_time``
in all, n major). At time t every Gaussian is conditioned on t
(:func:`~omnifield.cuda.reference.gaussians4d.slice_gaussians_4d`); those whose temporal marginal is
at most ``marginal_threshold`` are culled, the others are rendered as 3D Gaussians with covariance
``Sigma_3|t``, opacity ``sigmoid(logit) * p(t)`` and colour ``max(SH4D(dir, t - mu_t) + 0.5, 0)``.

Training renders ``views_per_batch`` views per step, each at its own time, with the 3DGS loss
``0.8 L1 + 0.2 (1 - SSIM)``; Adam with the 3DGS learning rates for the spatial terms (and our choice
for the temporal ones, see the config); adaptive density control by
:class:`~omnifield.scenes.gaussians_4d.strategy.Densifier4D`; SH degree ramp as 3DGS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from omnifield.cuda import ops
from omnifield.cuda.reference import gaussians4d as ref4d
from omnifield.cuda.reference.gaussians import SH_C0
from omnifield.errors import ConfigError
from omnifield.renderers.gaussians import GaussianPrimitives, GaussianRenderSettings, render_gaussians
from omnifield.renderers.types import RenderOutput
from omnifield.scenes._common import ExponentialDecay, adam, psnr, scene_extent
from omnifield.scenes.base import ImageBatch, RenderOptions
from omnifield.scenes.gaussian_splatting.base import (
    GaussianScene,
    constant_lr,
    densify_params,
    initial_sh_dc,
    profile_values,
    ray_length_per_z,
    train_indices,
)
from omnifield.scenes.gaussian_splatting.losses import photometric_loss
from omnifield.scenes.gaussian_splatting.model import camera_extent, nearest_neighbour_scales
from omnifield.scenes.gaussians_4d.config import Gaussians4DConfig
from omnifield.scenes.gaussians_4d.strategy import Densifier4D

PARAM_NAMES = ("means", "times", "log_scales", "log_scale_t", "q_left", "q_right", "opacity_logits", "sh_dc", "sh_rest")

_PROFILES = {
    "paper": dict(num_random_points=100_000, schedule_units="steps", sh_degree_every=1000.0, densify_start=500.0,
                  densify_stop=15000.0, densify_every=100.0, opacity_reset_every=3000.0, max_gaussians=0,
                  views_per_batch=4),
    "cpu": dict(num_random_points=20_000, max_init_points=20_000, schedule_units="fraction", sh_degree_every=0.05,
                densify_start=0.02, densify_stop=0.6, densify_every=0.01, opacity_reset_every=0.25,
                max_gaussians=150_000, views_per_batch=2),
}


def time_spacing(times: Tensor) -> float | None:
    """Median gap between consecutive distinct values of ``times [C]`` (None with fewer than two)."""
    u = torch.unique(times.double())
    return float((u[1:] - u[:-1]).median()) if len(u) > 1 else None


def resolve_config(config: Gaussians4DConfig, data) -> Gaussians4DConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the data (extent, times, background)."""
    profile, values = profile_values(config, _PROFILES, "4dgs")
    if config.n_time < 1 or int(values["views_per_batch"]) < 1:
        raise ConfigError(f"4dgs: n_time and views_per_batch must be >= 1, got {config.n_time}, {values['views_per_batch']}")
    if not 0.0 <= config.marginal_threshold < 1.0:
        raise ConfigError(f"4dgs: marginal_threshold must be in [0, 1), got {config.marginal_threshold}")
    times = data.cameras.times
    if times is None:
        raise ConfigError("4dgs needs views with times (D-NeRF, N3V, `omnifield data synth --dynamic`); "
                          "use 3dgs for static data")
    train_times = times[torch.as_tensor(train_indices(data), dtype=torch.long)]
    t0, t1 = config.time_range or (float(times.min()), float(times.max()))
    if not t1 >= t0:
        raise ConfigError(f"4dgs: time_range must have t0 <= t1, got {(t0, t1)}")
    span = t1 - t0 if t1 > t0 else 1.0
    period = span if config.time_period is None else float(config.time_period)
    if not period > 0:
        raise ConfigError(f"4dgs: time_period must be > 0, got {period}")
    time_scale = config.init_time_scale
    if time_scale is None:
        spacing = time_spacing(train_times)
        time_scale = config.init_time_scale_spacings * (spacing if spacing is not None else span)
    if not time_scale > 0:
        raise ConfigError(f"4dgs: init_time_scale must be > 0, got {time_scale}")
    extent = config.extent
    if extent is None:
        extent = camera_extent(data.cameras, train_indices(data))
        if not extent > 0:
            extent = scene_extent(torch.as_tensor(data.scene_box))
    background = config.background if config.background is not None else tuple(float(b) for b in data.background)
    return replace(config, profile=profile, extent=float(extent), background=tuple(background),
                   time_range=(float(t0), float(t1)), time_period=float(period), init_time_scale=float(time_scale),
                   **values)


@dataclass(frozen=True)
class InitialGaussians4D:
    """Starting points: ``means [N, 3]`` world, ``times [N]`` and ``colors [N, 3]`` in [0, 1] or None (random SH)."""

    means: Tensor
    times: Tensor
    colors: Tensor | None


def initial_gaussians_4d(config: Gaussians4DConfig, data) -> InitialGaussians4D:
    """The data's points with their colours when it has any (at ``data.point_times`` when it has them,
    else at times uniform over the time range), subsampled to ``max_init_points``; else
    ``num_random_points`` uniform in the scene box x time range (4DGS). Deterministic (``init_seed``)."""
    gen = torch.Generator().manual_seed(int(config.init_seed))
    t0, t1 = config.time_range
    points = getattr(data, "points", None)
    if points is not None and len(points) > 0:
        means = torch.as_tensor(points, dtype=torch.float32).cpu()
        colors = getattr(data, "point_colors", None)
        if colors is not None:
            colors = torch.as_tensor(colors).cpu()
            colors = colors.float() / (255.0 if colors.dtype == torch.uint8 else 1.0)
        times = getattr(data, "point_times", None)
        if times is None:
            times = t0 + torch.rand(len(means), generator=gen) * (t1 - t0)
        else:
            times = torch.as_tensor(times, dtype=torch.float32).cpu().reshape(-1)
            if len(times) != len(means):
                raise ConfigError(f"4dgs: data.point_times has {len(times)} values for {len(means)} points")
        if config.max_init_points is not None and len(means) > config.max_init_points:
            keep = torch.randperm(len(means), generator=gen)[: config.max_init_points]
            means, times, colors = means[keep], times[keep], None if colors is None else colors[keep]
        return InitialGaussians4D(means, times, colors)
    box = torch.as_tensor(data.scene_box, dtype=torch.float32).cpu()
    n = int(config.num_random_points)
    u = torch.rand(n, 4, generator=gen)
    return InitialGaussians4D(box[0] + u[:, :3] * (box[1] - box[0]), t0 + u[:, 3] * (t1 - t0), None)


@dataclass(frozen=True)
class SliceForm:
    """The time-independent parts of every Gaussian's slice (Yang et al. 2024, eq. 5-6): at time ``t``
    Gaussian ``i`` has mean ``mu_xyz + v (t - mu_t)`` with velocity ``v = S12 / s_tt``, covariance
    ``S11 - S12 S12^T / s_tt`` (the same at every t) and marginal ``exp(-0.5 (t - mu_t)^2 / s_tt)``, so a
    batch of views at different times shares one 4D covariance per Gaussian. Gives the same slices as
    ``slice_gaussians_4d`` (to float rounding).

    Attributes:
        packed: ``[N, 19]`` rows ``(mu_xyz 3, v 3, covariance 9, mu_t, s_tt, sigmoid(opacity logit))``, in the graph.
        coeffs: ``[N, K * n_time, 3]`` spherindrical coefficients, in the graph.
        time_var: ``[N]`` ``s_tt`` (detached), for the visibility test.
        mean_time: ``[N]`` ``mu_t`` (detached).
    """

    packed: Tensor
    coeffs: Tensor
    time_var: Tensor
    mean_time: Tensor

    @torch.no_grad()
    def visible_at(self, t: float, threshold: float) -> Tensor:
        """``[M]`` indices of the Gaussians with ``p(t) > threshold``."""
        dt = float(t) - self.mean_time
        return torch.nonzero(torch.exp(-0.5 * dt * dt / self.time_var) > threshold).squeeze(1)

    def slice(self, t: float, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(means3 [M, 3], covars3 [M, 3, 3], opacities [M], dt [M])`` of the Gaussians ``idx`` at ``t``."""
        mu, velocity, covars, mu_t, s_tt, opacity = self.packed[idx].split([3, 3, 9, 1, 1, 1], dim=1)
        dt = float(t) - mu_t[:, 0]
        marginal = torch.exp(-0.5 * dt * dt / s_tt[:, 0])
        return mu + velocity * dt[:, None], covars.reshape(-1, 3, 3), opacity[:, 0] * marginal, dt


class Gaussians4D(GaussianScene):
    """4D Gaussian splatting (implements ``TimeVarying``, ``HasGaussians`` and ``HasPoints``). Trained
    on whole images (``batch_kind = "images"``), ``views_per_batch`` views per step."""

    method = "4dgs"
    param_names = PARAM_NAMES

    def __init__(self, config: Gaussians4DConfig, scene_box: Tensor, init: InitialGaussians4D):
        super().__init__(config, scene_box)
        c = config
        if c.extent is None or c.schedule_units is None or c.time_range is None or c.init_time_scale is None:
            raise ConfigError("Gaussians4D needs a resolved config (use resolve_config or build)")
        self.time_range = (float(c.time_range[0]), float(c.time_range[1]))
        n = len(init.means)
        k_all = (c.sh_degree + 1) ** 2 * c.n_time
        identity = torch.zeros(n, 4)
        identity[:, 0] = 1.0
        p = math.log(c.init_opacity / (1.0 - c.init_opacity))
        self.means = nn.Parameter(init.means.float().clone())
        self.times = nn.Parameter(init.times.float().reshape(n, 1).clone())
        self.log_scales = nn.Parameter(nearest_neighbour_scales(init.means).log()[:, None].repeat(1, 3))
        self.log_scale_t = nn.Parameter(torch.full((n, 1), math.log(c.init_time_scale)))
        self.q_left = nn.Parameter(identity.clone())
        self.q_right = nn.Parameter(identity.clone())
        self.opacity_logits = nn.Parameter(torch.full((n,), p))
        self.sh_dc = nn.Parameter(initial_sh_dc(init.colors, n, c.init_seed))
        self.sh_rest = nn.Parameter(torch.zeros(n, k_all - 1, 3))
        self.densifier = Densifier4D(densify_params(c), n)
        self._init_training_state()

    # -- slicing -------------------------------------------------------------------------------------
    def _coefficients(self, idx: Tensor | None = None) -> Tensor:
        """``[M, K * n_time, 3]`` spherindrical coefficients of the Gaussians ``idx`` (all when None)."""
        coeffs = torch.cat([self.sh_dc, self.sh_rest], dim=1)
        return coeffs if idx is None else coeffs[idx]

    def slice_at(self, t: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Slice every Gaussian at ``t`` (``ops.slice_gaussians_4d``) and cull ``p(t) <= marginal_threshold``.

        Returns ``(idx [M] int64, means3 [M, 3], covars3 [M, 3, 3], opacities [M] = sigmoid(logit) p(t),
        dt [M] = t - mu_t)`` of the kept Gaussians. Differentiable w.r.t. the parameters.
        """
        means4 = torch.cat([self.means, self.times], dim=-1)
        scales4 = torch.cat([self.log_scales, self.log_scale_t], dim=-1).exp()
        means3, covars3, marginal = ops.slice_gaussians_4d(means4, scales4, self.q_left, self.q_right, float(t))
        idx = torch.nonzero(marginal.detach() > self.config.marginal_threshold).squeeze(1)
        opacities = torch.sigmoid(self.opacity_logits[idx]) * marginal[idx]
        return idx, means3[idx], covars3[idx], opacities, float(t) - self.times[idx, 0]

    @torch.no_grad()
    def visible_at(self, t: float) -> Tensor:
        """``[M]`` int64 indices of the Gaussians whose marginal ``p(t) > marginal_threshold``."""
        return self.slice_at(t)[0]

    def slice_form(self) -> SliceForm:
        """The time-independent parts of every Gaussian's slice, computed once for a batch of times."""
        scales4 = torch.cat([self.log_scales, self.log_scale_t], dim=-1).exp()
        sigma4 = ref4d.scale_rotation_to_covar4(scales4, self.q_left, self.q_right)
        s_tt = sigma4[:, 3, 3].clamp_min(ref4d.MIN_TIME_VARIANCE)
        s12 = sigma4[:, :3, 3]
        covars3 = sigma4[:, :3, :3] - s12.unsqueeze(-1) * s12.unsqueeze(-2) / s_tt[:, None, None]
        packed = torch.cat([self.means, s12 / s_tt[:, None], covars3.reshape(-1, 9), self.times, s_tt[:, None],
                            torch.sigmoid(self.opacity_logits)[:, None]], dim=1)
        return SliceForm(packed, self._coefficients(), s_tt.detach(), self.times.detach()[:, 0])

    def _colors(self, means3: Tensor, dt: Tensor, coeffs: Tensor, camera_centre: Tensor) -> Tensor:
        """``[M, 3]`` colours ``max(SH4D(normalise(mean - centre), dt) + 0.5, 0)`` at the active SH degree."""
        c = self.config
        rgb = ops.spherindrical_harmonics(int(self.active_sh_degree), c.n_time, means3 - camera_centre, dt,
                                         float(c.time_period), coeffs)
        return (rgb + 0.5).clamp_min(0.0)

    def primitives_at(self, t: float, camera_centre: Tensor, form: SliceForm | None = None) -> tuple[Tensor, GaussianPrimitives]:
        """The Gaussians visible at ``t``, sliced, with their colours seen from ``camera_centre [3]``.

        Returns ``(idx [M], primitives)`` with ``covars`` and ``colors``. Without ``form`` the slice is the
        op's (:meth:`slice_at`); with a :meth:`slice_form` (training: several views at several times
        share it) the same slice is assembled from it. Differentiable w.r.t. the parameters (the
        selection is not).
        """
        if form is None:
            idx, means3, covars3, opacities, dt = self.slice_at(t)
            coeffs = self._coefficients(idx)
        else:
            idx = form.visible_at(t, self.config.marginal_threshold)
            means3, covars3, opacities, dt = form.slice(t, idx)
            coeffs = form.coeffs[idx]
        prims = GaussianPrimitives(means=means3, opacities=opacities, covars=covars3,
                                   colors=self._colors(means3, dt, coeffs, camera_centre))
        return idx, prims

    # -- capabilities --------------------------------------------------------------------------------------
    @torch.no_grad()
    def gaussians(self, t: float | None = None) -> GaussianPrimitives:
        """The 3D Gaussians of the slice at time ``t`` (default: the start of ``time_range``): the visible
        slices with ``covars = Sigma_3|t``, ``opacity = sigmoid(logit) * p(t)`` and the SH coefficients of
        the active degree mixed at ``t`` (``sum_n cos(2 pi n (t - mu_t) / T) c_n``, view dependence kept),
        so that the rasterizer renders them like this scene renders time ``t`` and
        :func:`~omnifield.scenes.export.export_splat` writes them as a 3DGS file. Not differentiable."""
        t = self.time_range[0] if t is None else float(t)
        idx, means3, covars3, opacities, dt = self.slice_at(t)
        c = self.config
        k = (int(self.active_sh_degree) + 1) ** 2
        per_n = self._coefficients(idx).reshape(len(idx), c.n_time, -1, 3)[:, :, :k]  # [M, n_time, K, 3]
        basis = ref4d.temporal_basis(c.n_time, dt, float(c.time_period))  # [M, n_time]
        sh = (basis[:, :, None, None] * per_n).sum(1)
        return GaussianPrimitives(means=means3, opacities=opacities, covars=covars3, sh=sh)

    @torch.no_grad()
    def points(self) -> tuple[Tensor, Tensor]:
        """``(means [N, 3], colours [N, 3])``: the Gaussians' spatial centres (at their own mean time) and
        their DC colour."""
        return self.means.detach().clone(), (SH_C0 * self.sh_dc[:, 0] + 0.5).clamp(0.0, 1.0)

    # -- rendering -----------------------------------------------------------------------------------------
    def _settings(self, options: RenderOptions | None = None) -> GaussianRenderSettings:
        c = self.config
        near = c.near if options is None or options.near is None else float(options.near)
        far = c.far if options is None or options.far is None else float(options.far)
        return GaussianRenderSettings(near=near, far=far, antialias=c.antialias)

    def _time_of(self, cameras, c: int, time: float | None) -> float:
        if time is not None:
            return float(time)
        if cameras.times is not None:
            return float(cameras.times[c])
        return self.time_range[0]

    @torch.no_grad()
    def render(self, cameras, time: float | None = None, options: RenderOptions | None = None) -> list[RenderOutput]:
        """Rasterize every camera at ``time`` (default: each camera's own time, else the start of
        ``time_range``): ``[H, W, k]`` rgb (on ``options.background`` or the config's), alpha and depth
        (distance along the unit pixel ray). With ``options.crop_box``, slices whose means lie outside
        the box are dropped."""
        bg = self.background_tensor(options)
        settings = self._settings(options)
        outs = []
        for c in range(len(cameras)):
            t = self._time_of(cameras, c, time)
            _, prims = self.primitives_at(t, cameras.c2w[c, :3, 3])
            if options is not None and options.crop_box is not None:
                box = torch.tensor(options.crop_box, dtype=prims.means.dtype, device=prims.means.device)
                inside = ((prims.means >= box[0]) & (prims.means <= box[1])).all(-1)
                prims = GaussianPrimitives(means=prims.means[inside], opacities=prims.opacities[inside],
                                           covars=prims.covars[inside], colors=prims.colors[inside])
            r = render_gaussians(prims, cameras, c, bg, settings)
            depth = r.depth * ray_length_per_z(cameras, c, r.depth.device)
            outs.append(RenderOutput(rgb=r.rgb, alpha=r.alpha, depth=depth))
        return outs

    # -- training ------------------------------------------------------------------------------------------
    def views_per_batch(self) -> int:
        return int(self.config.views_per_batch)

    def training_step(self, batch: ImageBatch, step: int) -> dict[str, Tensor]:
        """Render the batch's views, each at its own time, and score them with ``(1 - lambda) L1 + lambda
        (1 - SSIM)``. Keeps each view's visible indices, ``means2d`` (with ``retain_grad``) and radii for
        the densification statistics of :meth:`on_step_end`."""
        times = batch.times if batch.times is not None else batch.cameras.times
        if times is None:
            raise ConfigError("4dgs: the training views carry no times")
        settings = self._settings()
        form = self.slice_form()
        rgbs, self._views = [], []
        for v in range(len(batch.cameras)):
            idx, prims = self.primitives_at(float(times[v]), batch.cameras.c2w[v, :3, 3], form)
            r = render_gaussians(prims, batch.cameras, v, batch.background[v], settings)
            if r.means2d.requires_grad:
                r.means2d.retain_grad()
            self._views.append((idx, r.means2d, r.radii, int(batch.cameras.width[v]), int(batch.cameras.height[v])))
            rgbs.append(r.rgb)
        pred = torch.stack(rgbs)
        loss, l1, s = photometric_loss(pred, batch.rgb, self.config.ssim_weight)
        mse = ((pred.detach() - batch.rgb) ** 2).mean()
        return {"loss": loss, "l1": l1.detach(), "ssim": s.detach(), "psnr": psnr(mse),
                "num_gaussians": torch.tensor(float(len(self)))}

    def configure_optimizers(self, max_steps: int):
        """Adam (eps 1e-15) with per-parameter learning rates: 3DGS's for the spatial terms; the temporal
        means learn ``time_lr_init x time span`` and decay with the spatial means (exponentially to
        ``position_lr_final / position_lr_init`` of the start); the temporal log-scale learns
        ``time_scaling_lr``, both quaternions ``rotation_lr``. The decay's ``max_steps`` is the horizon the
        ``"fraction"`` schedule follows."""
        c = self.config
        span = (self.time_range[1] - self.time_range[0]) or 1.0
        groups = [
            {"params": [self.means], "lr": c.position_lr_init * c.extent, "name": "means"},
            {"params": [self.times], "lr": c.time_lr_init * span, "name": "times"},
            {"params": [self.sh_dc], "lr": c.sh_dc_lr, "name": "sh_dc"},
            {"params": [self.sh_rest], "lr": c.sh_dc_lr / c.sh_rest_lr_divisor, "name": "sh_rest"},
            {"params": [self.opacity_logits], "lr": c.opacity_lr, "name": "opacity_logits"},
            {"params": [self.log_scales], "lr": c.scaling_lr, "name": "log_scales"},
            {"params": [self.log_scale_t], "lr": c.time_scaling_lr, "name": "log_scale_t"},
            {"params": [self.q_left], "lr": c.rotation_lr, "name": "q_left"},
            {"params": [self.q_right], "lr": c.rotation_lr, "name": "q_right"},
        ]
        opt = adam(groups, lr=c.position_lr_init * c.extent, eps=c.adam_eps)
        self._horizon = ExponentialDecay(max_steps, c.position_lr_final / c.position_lr_init)
        self._optimizer = opt
        factors = [self._horizon, self._horizon] + [constant_lr] * (len(groups) - 2)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)


def build(config: Gaussians4DConfig, data) -> Gaussians4D:
    """Build from a SceneData (or a run's SceneInfo): resolve the profile and times, then initialise the
    Gaussians from the data's points or at random in the scene box x time range (a loaded checkpoint
    resizes them)."""
    resolved = resolve_config(config, data)
    return Gaussians4D(resolved, data.scene_box, initial_gaussians_4d(resolved, data))
