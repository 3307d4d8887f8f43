"""The ``3dgs`` scene: 3D Gaussians rendered by the tile rasterizer, trained on whole images.

Kerbl, Kopanas, Leimkuehler, Drettakis 2023, "3D Gaussian Splatting for Real-Time Radiance Field
Rendering". Parameters per Gaussian: mean, log-scales, quaternion (w, x, y, z), opacity logit, SH
coefficients (DC and the rest, degree 3). Loss ``0.8 L1 + 0.2 (1 - SSIM)``; Adam with the paper's
learning rates (exponentially decaying position LR scaled by the scene extent); adaptive density
control by :class:`~omnifield.scenes.gaussian_splatting.strategy.Densifier`; one SH degree more every
``sh_degree_every``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from omnifield.errors import ConfigError
from omnifield.renderers.gaussians import GaussianPrimitives, GaussianRenderSettings, render_gaussians
from omnifield.renderers.types import RenderOutput
from omnifield.scenes._common import ExponentialDecay, adam, default_profile, psnr, scene_extent
from omnifield.scenes.base import ImageBatch, RenderOptions, Scene
from omnifield.scenes.gaussian_splatting.config import GaussianSplattingConfig
from omnifield.scenes.gaussian_splatting.losses import photometric_loss
from omnifield.scenes.gaussian_splatting.strategy import Densifier, DensifyParams

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
EXTRA_PREFIX = "densify."

_PROFILES = {
    "paper": dict(num_random_points=100_000, schedule_units="steps", sh_degree_every=1000.0, densify_start=500.0,
                  densify_stop=15000.0, densify_every=100.0, opacity_reset_every=3000.0, max_gaussians=0),
    "cpu": dict(num_random_points=20_000, schedule_units="fraction", sh_degree_every=0.05, densify_start=0.02,
                densify_stop=0.6, densify_every=0.01, opacity_reset_every=0.2, max_gaussians=300_000),
}


def camera_extent(cameras, indices: list[int]) -> float:
    """3DGS's ``cameras_extent``: 1.1 x the largest distance of the cameras' centres from their mean (0 for one camera)."""
    centres = cameras.c2w[torch.as_tensor(indices, dtype=torch.long), :3, 3].double()
    return float(1.1 * (centres - centres.mean(0)).norm(dim=-1).max()) if len(indices) else 0.0


def _train_indices(data) -> list[int]:
    split = (getattr(data, "splits", None) or {}).get("train")
    return list(split) if split else list(range(len(data.cameras)))


def resolve_config(config: GaussianSplattingConfig, data) -> GaussianSplattingConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the data (extent, background)."""
    profile = default_profile() if config.profile == "auto" else config.profile
    if profile not in _PROFILES:
        raise ConfigError(f"3dgs: unknown profile {config.profile!r} (choose auto, paper or cpu)")
    values = {k: (v if getattr(config, k) is None else getattr(config, k)) for k, v in _PROFILES[profile].items()}
    if values["schedule_units"] not in ("steps", "fraction"):
        raise ConfigError(f"3dgs: schedule_units must be 'steps' or 'fraction', got {values['schedule_units']!r}")
    if not 0 <= config.sh_degree <= 3:
        raise ConfigError(f"3dgs: sh_degree must be 0..3, got {config.sh_degree}")
    extent = config.extent
    if extent is None:
        extent = camera_extent(data.cameras, _train_indices(data))
        if not extent > 0:
            extent = scene_extent(torch.as_tensor(data.scene_box))
    background = config.background if config.background is not None else tuple(float(b) for b in data.background)
    return replace(config, profile=profile, extent=float(extent), background=tuple(background), **values)


@dataclass(frozen=True)
class InitialGaussians:
    """Starting points: ``means [N, 3]`` world and ``colors [N, 3]`` in [0, 1] or None (random SH)."""

    means: Tensor
    colors: Tensor | None


def initial_gaussians(config: GaussianSplattingConfig, data) -> InitialGaussians:
    """The data's points with their colours (COLMAP ``points3D``) when it has any, else
    ``num_random_points`` uniform in the scene box (the 3DGS synthetic protocol). Deterministic
    (``init_seed``)."""
    gen = torch.Generator().manual_seed(int(config.init_seed))
    points = getattr(data, "points", None)
    if points is not None and len(points) > 0:
        means = torch.as_tensor(points, dtype=torch.float32).cpu()
        colors = getattr(data, "point_colors", None)
        if colors is not None:
            colors = torch.as_tensor(colors).cpu()
            colors = colors.float() / (255.0 if colors.dtype == torch.uint8 else 1.0)
        if config.max_init_points is not None and len(means) > config.max_init_points:
            keep = torch.randperm(len(means), generator=gen)[: config.max_init_points]
            means, colors = means[keep], None if colors is None else colors[keep]
        return InitialGaussians(means, colors)
    box = torch.as_tensor(data.scene_box, dtype=torch.float32).cpu()
    u = torch.rand(int(config.num_random_points), 3, generator=gen)
    return InitialGaussians(box[0] + u * (box[1] - box[0]), None)


def nearest_neighbour_scales(means: Tensor, k: int = 3) -> Tensor:
    """``[N]`` initial scale: sqrt of the mean squared distance to the ``k`` nearest other points (3DGS)."""
    n = len(means)
    if n < 2:
        return torch.full((n,), 0.01)
    from scipy.spatial import cKDTree

    pts = means.double().numpy()
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)
    d2 = np.mean(np.asarray(dist).reshape(n, -1)[:, 1:] ** 2, axis=1)
    return torch.from_numpy(np.sqrt(np.maximum(d2, 1e-7))).float()


def _constant(step: int) -> float:
    return 1.0


class GaussianSplatting(Scene):
    """3D Gaussian splatting (implements ``HasGaussians`` and ``HasPoints``). Trained on whole images
    (``batch_kind = "images"``), one view per step."""

    method = "3dgs"
    batch_kind = "images"

    def __init__(self, config: GaussianSplattingConfig, scene_box: Tensor, init: InitialGaussians):
        super().__init__(config, scene_box)
        c = config
        if c.extent is None or c.schedule_units is None or c.background is None:
            raise ConfigError("GaussianSplatting needs a resolved config (use resolve_config or build)")
        n = len(init.means)
        k_rest = (c.sh_degree + 1) ** 2 - 1
        gen = torch.Generator().manual_seed(int(c.init_seed) + 1)
        if init.colors is None:
            dc = torch.rand(n, 1, 3, generator=gen) / 255.0  # 3DGS: random SH near zero (grey)
        else:
            dc = ((init.colors.float() - 0.5) / SH_C0)[:, None, :]
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        p = math.log(c.init_opacity / (1.0 - c.init_opacity))
        self.means = nn.Parameter(init.means.float().clone())
        self.log_scales = nn.Parameter(nearest_neighbour_scales(init.means).log()[:, None].repeat(1, 3))
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(torch.full((n,), p))
        self.sh_dc = nn.Parameter(dc.contiguous())
        self.sh_rest = nn.Parameter(torch.zeros(n, k_rest, 3))
        self.register_buffer("active_sh_degree", torch.zeros((), dtype=torch.long))
        self.densifier = Densifier(DensifyParams(
            grad_threshold=c.densify_grad_threshold, percent_dense=c.percent_dense, split_count=c.split_count,
            split_scale_divisor=c.split_scale_divisor, prune_opacity=c.prune_opacity,
            prune_world_size=c.prune_world_size, prune_screen_size=c.prune_screen_size,
            opacity_reset_value=c.opacity_reset_value, max_gaussians=int(c.max_gaussians or 0)), n)
        self._optimizer: torch.optim.Optimizer | None = None
        self._horizon: ExponentialDecay | None = None
        self._views: list[tuple[Tensor, Tensor, int, int]] = []
        self.last_densify: dict[str, int] = {}

    def __len__(self) -> int:
        return self.means.shape[0]

    def param_dict(self) -> dict[str, nn.Parameter]:
        """The per-Gaussian parameters by name (rows are Gaussians), as the densifier edits them."""
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        st = self.densifier.state
        st.grad_accum, st.count, st.max_radii = fn(st.grad_accum), fn(st.count), fn(st.max_radii)
        return out

    # -- primitives ----------------------------------------------------------------------------------
    def _sh(self, degree: int) -> Tensor:
        k = (degree + 1) ** 2
        return self.sh_dc if k == 1 else torch.cat([self.sh_dc, self.sh_rest[:, : k - 1]], dim=1)

    def gaussians(self, t: float | None = None) -> GaussianPrimitives:
        """The activated primitives (opacity = sigmoid, scales = exp, SH up to the active degree).
        Differentiable w.r.t. the parameters; ``t`` is ignored (static scene)."""
        return GaussianPrimitives(means=self.means, opacities=torch.sigmoid(self.opacity_logits), quats=self.quats,
                                  scales=self.log_scales.exp(), covars=None,
                                  sh=self._sh(int(self.active_sh_degree)), colors=None)

    @torch.no_grad()
    def points(self) -> tuple[Tensor, Tensor]:
        """``(means [N, 3], colours [N, 3])``: the Gaussians' centres and their view-independent (DC) colour."""
        return self.means.detach().clone(), (SH_C0 * self.sh_dc[:, 0] + 0.5).clamp(0.0, 1.0)

    def _settings(self, options: RenderOptions | None = None) -> GaussianRenderSettings:
        c = self.config
        near = c.near if options is None or options.near is None else float(options.near)
        far = c.far if options is None or options.far is None else float(options.far)
        return GaussianRenderSettings(near=near, far=far, antialias=c.antialias,
                                      sh_degree=int(self.active_sh_degree))

    # -- rendering ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def render(self, cameras, time: float | None = None, options: RenderOptions | None = None) -> list[RenderOutput]:
        """Rasterize every camera: ``[H, W, k]`` rgb (on ``options.background`` or the config's), alpha
        and depth (distance along the unit pixel ray, as the volume renderers report it). With
        ``options.crop_box``, Gaussians whose means lie outside the box are dropped."""
        prims = self.gaussians()
        if options is not None and options.crop_box is not None:
            box = torch.tensor(options.crop_box, dtype=self.means.dtype, device=self.means.device)
            inside = ((self.means >= box[0]) & (self.means <= box[1])).all(-1)
            prims = GaussianPrimitives(means=prims.means[inside], opacities=prims.opacities[inside],
                                       quats=prims.quats[inside], scales=prims.scales[inside], covars=None,
                                       sh=prims.sh[inside], colors=None)
        bg = self.background_tensor(options)
        settings = self._settings(options)
        outs = []
        for c in range(len(cameras)):
            r = render_gaussians(prims, cameras, c, bg, settings)
            depth = r.depth * _ray_length_per_z(cameras, c, r.depth.device)
            outs.append(RenderOutput(rgb=r.rgb, alpha=r.alpha, depth=depth))
        return outs

    # -- training ------------------------------------------------------------------------------------------
    def views_per_batch(self) -> int:
        return 1

    def training_step(self, batch: ImageBatch, step: int) -> dict[str, Tensor]:
        """Render the batch's views and score them with ``(1 - lambda) L1 + lambda (1 - SSIM)``.

        Keeps each view's ``means2d`` (with ``retain_grad``) and radii for the densification statistics
        of :meth:`on_step_end`.
        """
        prims = self.gaussians()
        settings = self._settings()
        rgbs, self._views = [], []
        for v in range(len(batch.cameras)):
            r = render_gaussians(prims, batch.cameras, v, batch.background[v], settings)
            if r.means2d.requires_grad:
                r.means2d.retain_grad()
            self._views.append((r.means2d, r.radii, int(batch.cameras.width[v]), int(batch.cameras.height[v])))
            rgbs.append(r.rgb)
        pred = rgbs[0][None] if len(rgbs) == 1 else torch.stack(rgbs)
        loss, l1, s = photometric_loss(pred, batch.rgb, self.config.ssim_weight)
        mse = ((pred.detach() - batch.rgb) ** 2).mean()
        return {"loss": loss, "l1": l1.detach(), "ssim": s.detach(), "psnr": psnr(mse),
                "num_gaussians": torch.tensor(float(len(self)))}

    def _steps(self, value: float) -> float:
        """A schedule value in steps (``schedule_units``: steps, or a fraction of the run's horizon)."""
        if self.config.schedule_units == "steps":
            return float(value)
        horizon = self._horizon.max_steps if self._horizon is not None else 30000
        return float(value) * horizon

    def _every(self, step: int, period: float) -> bool:
        """True when the 1-based iteration ``step + 1`` completes a period (``step + 1 % period == 0`` for integers)."""
        p = max(1.0, self._steps(period))
        return math.floor((step + 1) / p) > math.floor(step / p)

    def on_step_begin(self, step: int) -> None:
        """SH degree ramp: one degree more every ``sh_degree_every`` (never decreasing)."""
        c = self.config
        degree = min(c.sh_degree, int((step + 1) // max(1.0, self._steps(c.sh_degree_every))))
        if degree > int(self.active_sh_degree):
            self.active_sh_degree.fill_(degree)

    def on_step_end(self, step: int) -> None:
        """Densification statistics, then clone/split/prune every ``densify_every`` after ``densify_start``
        and the opacity reset every ``opacity_reset_every``, until ``densify_stop`` (3DGS's schedule)."""
        c = self.config
        views, self._views = self._views, []
        if not self.training or step + 1 >= self._steps(c.densify_stop):
            return
        for means2d, radii, w, h in views:
            self.densifier.accumulate(means2d.grad, radii, w, h)
        if step + 1 > self._steps(c.densify_start) and self._every(step, c.densify_every):
            prune_large = step + 1 > self._steps(c.opacity_reset_every)
            self.last_densify = self.densifier.densify_and_prune(self.param_dict(), self._optimizer, c.extent, prune_large)
        if self._every(step, c.opacity_reset_every):
            self.densifier.reset_opacity(self.param_dict(), self._optimizer)

    def configure_optimizers(self, max_steps: int):
        """Adam (eps 1e-15) with the paper's per-parameter learning rates; the means' LR decays
        exponentially from ``position_lr_init`` to ``position_lr_final`` (x extent) over the run. That
        factor's ``max_steps`` is the horizon the ``"fraction"`` schedule follows."""
        c = self.config
        groups = [
            {"params": [self.means], "lr": c.position_lr_init * c.extent, "name": "means"},
            {"params": [self.sh_dc], "lr": c.sh_dc_lr, "name": "sh_dc"},
            {"params": [self.sh_rest], "lr": c.sh_dc_lr / c.sh_rest_lr_divisor, "name": "sh_rest"},
            {"params": [self.opacity_logits], "lr": c.opacity_lr, "name": "opacity_logits"},
            {"params": [self.log_scales], "lr": c.scaling_lr, "name": "log_scales"},
            {"params": [self.quats], "lr": c.rotation_lr, "name": "quats"},
        ]
        opt = adam(groups, lr=c.position_lr_init * c.extent, eps=c.adam_eps)
        self._horizon = ExponentialDecay(max_steps, c.position_lr_final / c.position_lr_init)
        self._optimizer = opt
        factors = [self._horizon] + [_constant] * (len(groups) - 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def prepare_load(self, weights: dict[str, Tensor]) -> None:
        """Resize the parameters to the checkpoint's Gaussian count (same Parameter objects, new ``.data``)."""
        for name in PARAM_NAMES:
            w = weights.get(name)
            p = getattr(self, name)
            if w is not None and tuple(w.shape[1:]) == tuple(p.shape[1:]) and w.shape[0] != p.shape[0]:
                p.data = torch.zeros(w.shape, dtype=p.dtype, device=p.device)
                p.grad = None
        if len(self.densifier.state) != len(self):
            self.densifier.reset_statistics(len(self))

    def extra_state(self) -> dict[str, Tensor]:
        return {EXTRA_PREFIX + k: v for k, v in self.densifier.state_dict().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        own = {k[len(EXTRA_PREFIX):]: v for k, v in state.items() if k.startswith(EXTRA_PREFIX)}
        if own:
            self.densifier.load_state_dict(own)
        if len(self.densifier.state) != len(self):
            self.densifier.reset_statistics(len(self))


def _ray_length_per_z(cameras, c: int, device) -> Tensor:
    """``[H, W, 1]`` length of the pixel ray per unit camera depth: ``|((u - cx) / fx, (v - cy) / fy, 1)|``."""
    h, w = int(cameras.height[c]), int(cameras.width[c])
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5 - cameras.cx[c]) / cameras.fx[c]
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5 - cameras.cy[c]) / cameras.fy[c]
    return torch.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)[..., None]


def build(config: GaussianSplattingConfig, data) -> GaussianSplatting:
    """Build from a SceneData (or a run's SceneInfo): resolve the profile, then initialise the Gaussians
    from the data's points or at random in the scene box (a loaded checkpoint resizes them)."""
    resolved = resolve_config(config, data)
    return GaussianSplatting(resolved, data.scene_box, initial_gaussians(resolved, data))
