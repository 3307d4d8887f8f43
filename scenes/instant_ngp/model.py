"""The ``instant-ngp`` scene: hash grid + tiny MLPs + occupancy grid, rendered by ray marching."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifield.errors import ConfigError
from omnifield.fields import MLP, HashGridConfig, HashGridEncoding, SHEncoding, trunc_exp
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput
from omnifield.renderers.volume import composite
from omnifield.scenes._common import WarmupMultiStep, adam, chosen_profile, pick, psnr, scene_extent
from omnifield.scenes.base import FieldOutputs, RayBatch, RenderOptions, Scene
from omnifield.scenes.instant_ngp.config import InstantNGPConfig
from omnifield.scenes.marching import (GridMarched, crop_box_tensor, crop_density, keep_unterminated, march_grid,
                                       midpoint_density, render_range, resolve_marching)

_PROFILES = {
    "paper": dict(log2_hashmap_size=19, max_res_per_extent=2048, grid_resolution=128, steps_per_diag=1024, target=2**18,
                  grid_warmup_steps=256, grid_update_fraction=0.25),
    "cpu": dict(log2_hashmap_size=17, max_res_per_extent=512, grid_resolution=64, steps_per_diag=512, target=2**15,
                grid_warmup_steps=64, grid_update_fraction=0.125),
}


def resolve_config(config: InstantNGPConfig, scene_box: Tensor, unbounded: bool = False, near=None, far=None,
                   background=(1.0, 1.0, 1.0)) -> InstantNGPConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the scene (box extent, bounds, background)."""
    profile = chosen_profile(config.profile, _PROFILES, "instant-ngp")
    p = _PROFILES[profile]
    extent = scene_extent(scene_box)
    return replace(
        config,
        profile=profile,
        log2_hashmap_size=pick(config.log2_hashmap_size, p["log2_hashmap_size"]),
        max_resolution=pick(config.max_resolution, max(config.base_resolution, int(round(p["max_res_per_extent"] * extent)))),
        **resolve_marching(config, p, scene_box, unbounded=unbounded, near=near, far=far, background=background),
    )


class InstantNGP(GridMarched, Scene):
    """Instant-NGP radiance field (implements ``HasDensity`` and ``HasFieldFeatures``).

    Density: ``trunc_exp(clamp(h_0 + density_bias))`` of a 1-hidden-layer MLP on the hash encoding of
    the position normalised to the grid box (clamped only with ``density_clamp``); colour: sigmoid of
    a 2-hidden-layer MLP on [SH(view direction), 15 geometry features]. PVD's shared intermediate is
    ``[h_0 + density_bias, h_1..15]``.
    """

    method = "instant-ngp"

    def __init__(self, config: InstantNGPConfig, scene_box: Tensor, unbounded: bool = False):
        super().__init__(config, scene_box)
        c = config
        if c.max_resolution is None or c.render_step_size is None:
            raise ConfigError("InstantNGP needs a resolved config (use resolve_config or build)")
        if c.density_clamp is not None and (len(c.density_clamp) != 2 or not c.density_clamp[0] < c.density_clamp[1]):
            raise ConfigError(f"instant-ngp: density_clamp must be (low, high) with low < high, got {c.density_clamp}")
        self.grid = OccupancyGrid(self.scene_box, c.grid_resolution, c.grid_levels)
        self.register_buffer("field_box", self.grid.outer_aabb().clone())
        self.encoding = HashGridEncoding(HashGridConfig(
            n_levels=c.n_levels, n_features=c.n_features_per_level, log2_table_size=c.log2_hashmap_size,
            base_resolution=c.base_resolution, max_resolution=c.max_resolution))
        self.density_mlp = MLP(self.encoding.out_dim, 1 + c.geo_feat_dim, c.hidden_dim, c.density_hidden_layers)
        self.dir_encoding = SHEncoding(c.sh_degree)
        self.color_mlp = MLP(self.dir_encoding.out_dim + c.geo_feat_dim, 3, c.hidden_dim, c.color_hidden_layers,
                             output_activation="sigmoid")
        self.init_ray_count(c.init_rays_per_batch)

    # -- field ---------------------------------------------------------------------------------
    def _mlp(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density-MLP output ``h [N, 16]`` (``h_0 + density_bias`` is sigma_pre) and the mask ``[N]`` of
        points inside the field box."""
        lo, hi = self.field_box[0], self.field_box[1]
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        return self.density_mlp(self.encoding(u)), inside

    def _activate(self, sigma_pre: Tensor) -> Tensor:
        clamp = self.config.density_clamp
        return trunc_exp(sigma_pre if clamp is None else sigma_pre.clamp(*clamp))

    def _geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, inside = self._mlp(x)
        sigma = self._activate(h[:, 0] + self.config.density_bias) * inside.to(h.dtype)
        return sigma, h[:, 1:]

    def density(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` world points -> ``[N]`` density (zero outside the field box). Differentiable."""
        return self._geometry(x)[0]

    def _color(self, geo: Tensor, d: Tensor) -> Tensor:
        return self.color_mlp(torch.cat([self.dir_encoding(d), geo], dim=-1))

    def color(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]``, unit ``d [N, 3]`` -> ``[N, 3]`` colour in [0, 1]."""
        return self._color(self._geometry(x)[1], d)

    def field_outputs(self, x: Tensor, d: Tensor | None = None) -> FieldOutputs:
        """``x [N, 3]`` world points (``d [N, 3]`` unit directions or None) -> PVD's :class:`FieldOutputs`:
        ``sigma_pre = h_0 + density_bias``, ``features = [sigma_pre, geo_15]`` ``[N, 16]``, ``rgb``.
        Inside the field box ``density(x) == trunc_exp(clamp(sigma_pre))``; outside, ``density`` is 0
        whatever ``sigma_pre`` (the marcher never samples there). Differentiable."""
        h, _ = self._mlp(x)
        sigma_pre = h[:, 0] + self.config.density_bias
        features = torch.cat([sigma_pre[:, None], h[:, 1:]], dim=-1)
        return FieldOutputs(sigma_pre, features, None if d is None else self._color(h[:, 1:], d))

    def march(self, rays: RayBundle, stratified: bool = False) -> PackedSamples:
        """The occupancy-grid samples :meth:`render_rays` marches (constant or cone steps, near/far of
        the config), without density-based termination. Records the sample count for the adaptive
        batch size (:meth:`on_step_end`). Not differentiable."""
        samples = march_grid(self.grid, rays, self.config, stratified)
        self._last_samples = len(samples)
        return samples

    # -- rendering -----------------------------------------------------------------------------
    def render_rays(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None) -> RenderOutput:
        """Occupancy-grid marching with early termination, then compositing ``[R, k]``."""
        c = self.config
        o, d = rays.origins, rays.directions
        crop = crop_box_tensor(options, o)
        sigma_fn = midpoint_density(self.density, rays, crop)

        single_pass = not torch.is_grad_enabled()
        samples = march_grid(self.grid, rays, c, self.training, render_range(c, options),
                             None if single_pass else sigma_fn)
        if single_pass:  # inference: one field evaluation, then drop what early termination would
            samples, sigma, geo = self._terminate_early(samples, rays, crop)
        self._last_samples = len(samples)
        if len(samples) == 0:
            empty = torch.zeros(0, device=o.device)
            return composite(samples, empty.reshape(0, 3), empty, len(rays), background)
        x = samples.positions(rays)
        if not single_pass:
            sigma, geo = self._geometry(x)
        sigma = crop_density(sigma, x, crop)
        sh = self.dir_encoding(d)  # per ray, then gathered per sample: 10-30x fewer SH evaluations
        rgb = self.color_mlp(torch.cat([sh[samples.ray_indices], geo], dim=-1))
        # Inference: the fused compositing applies early termination itself (a no-op on samples that
        # _terminate_early kept); training composites every sample the sampler kept.
        return composite(samples, rgb, sigma, len(rays), background,
                         early_stop_eps=c.early_stop_eps if single_pass else 0.0)

    def _terminate_early(self, samples: PackedSamples, rays: RayBundle,
                         crop: Tensor | None = None) -> tuple[PackedSamples, Tensor, Tensor]:
        """Without grad: evaluate the geometry of every marched sample once and keep the samples the
        sampler's early termination (``alpha_thre``, ``early_stop_eps``) would keep, with their density
        (zero outside the ``[2, 3]`` ``crop`` box) and features, so inference skips the sampler's separate
        density pass (about 40 % less work)."""
        c = self.config
        if len(samples) == 0:
            return samples, samples.t_starts, samples.t_starts.reshape(0, c.geo_feat_dim)
        x = samples.positions(rays)
        sigma, geo = self._geometry(x)
        sigma = crop_density(sigma, x, crop)  # what the crop removes must not stop a ray
        kept, keep = keep_unterminated(samples, sigma, len(rays), c.alpha_thre, c.early_stop_eps)
        return kept, sigma[keep], geo[keep]

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: RayBatch, step: int) -> dict[str, Tensor]:
        """MSE to the target composited on the batch's (per-ray, possibly random) background."""
        out = self.render_rays(batch.rays, batch.background)
        mse = F.mse_loss(out.rgb, batch.rgb)
        loss = mse
        if self._last_samples == 0:  # keep a graph so backward() works when every ray missed
            loss = loss + 0.0 * self.encoding.table.sum()
        return {
            "loss": loss,
            "psnr": psnr(mse),
            "num_samples": torch.tensor(float(self._last_samples)),
            "num_rays": torch.tensor(float(len(batch.rays))),
        }

    def on_step_end(self, step: int) -> None:
        """Adapt the ray count so the next batch holds about ``target_samples_per_batch`` samples."""
        self.adapt_ray_count()

    def configure_optimizers(self, max_steps: int):
        """Adam (lr 1e-2, betas (0.9, 0.99), eps 1e-15; weight decay on the MLPs), warmup + multi-step decay."""
        c = self.config
        mlps = [p for m in (self.density_mlp, self.color_mlp) for p in m.parameters()]
        opt = adam([{"params": list(self.encoding.parameters()), "weight_decay": 0.0},
                    {"params": mlps, "weight_decay": c.weight_decay}], lr=c.lr, betas=c.betas, eps=c.eps)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, WarmupMultiStep(max_steps, c.lr_warmup_steps))


def build(config: InstantNGPConfig, data) -> InstantNGP:
    """Build from a SceneData: resolves the profile and the scene-dependent defaults."""
    resolved = resolve_config(config, data.scene_box, data.unbounded, data.near, data.far, data.background)
    return InstantNGP(resolved, data.scene_box, data.unbounded)
