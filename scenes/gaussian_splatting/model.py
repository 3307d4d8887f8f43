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
from omnifield.scenes.gaussian_splatting.config import GaussianSplattingConfig
from omnifield.scenes.gaussian_splatting.losses import photometric_loss
from omnifield.scenes.gaussian_splatting.strategy import Densifier

PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")

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


def resolve_config(config: GaussianSplattingConfig, data) -> GaussianSplattingConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the data (extent, background)."""
    profile, values = profile_values(config, _PROFILES, "3dgs")
    extent = config.extent
    if extent is None:
        extent = camera_extent(data.cameras, train_indices(data))
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


class GaussianSplatting(GaussianScene):
    """3D Gaussian splatting (implements ``HasGaussians`` and ``HasPoints``). Trained on whole images
    (``batch_kind = "images"``), one view per step."""

    method = "3dgs"
    param_names = PARAM_NAMES

    def __init__(self, config: GaussianSplattingConfig, scene_box: Tensor, init: InitialGaussians):
        super().__init__(config, scene_box)
        c = config
        if c.extent is None or c.schedule_units is None or c.background is None:
            raise ConfigError("GaussianSplatting needs a resolved config (use resolve_config or build)")
        n = len(init.means)
        k_rest = (c.sh_degree + 1) ** 2 - 1
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        p = math.log(c.init_opacity / (1.0 - c.init_opacity))
        self.means = nn.Parameter(init.means.float().clone())
        self.log_scales = nn.Parameter(nearest_neighbour_scales(init.means).log()[:, None].repeat(1, 3))
        self.quats = nn.Parameter(quats)
        self.opacity_logits = nn.Parameter(torch.full((n,), p))
        self.sh_dc = nn.Parameter(initial_sh_dc(init.colors, n, c.init_seed))
        self.sh_rest = nn.Parameter(torch.zeros(n, k_rest, 3))
        self.densifier = Densifier(densify_params(c), n)
        self._init_training_state()

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
            depth = r.depth * ray_length_per_z(cameras, c, r.depth.device)
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
            self._views.append((None, r.means2d, r.radii, int(batch.cameras.width[v]), int(batch.cameras.height[v])))
            rgbs.append(r.rgb)
        pred = rgbs[0][None] if len(rgbs) == 1 else torch.stack(rgbs)
        loss, l1, s = photometric_loss(pred, batch.rgb, self.config.ssim_weight)
        mse = ((pred.detach() - batch.rgb) ** 2).mean()
        return {"loss": loss, "l1": l1.detach(), "ssim": s.detach(), "psnr": psnr(mse),
                "num_gaussians": torch.tensor(float(len(self)))}

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
        factors = [self._horizon] + [constant_lr] * (len(groups) - 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factors)


def build(config: GaussianSplattingConfig, data) -> GaussianSplatting:
    """Build from a SceneData (or a run's SceneInfo): resolve the profile, then initialise the Gaussians
    from the data's points or at random in the scene box (a loaded checkpoint resizes them)."""
    resolved = resolve_config(config, data)
    return GaussianSplatting(resolved, data.scene_box, initial_gaussians(resolved, data))
