"""The ``nerf`` scene: positional encoding + 8x256 MLP, coarse/fine hierarchical sampling (NeRF, 2020).

Two heads: ``"paper"`` (the NeRF MLP) and ``"shared"`` (PVD's split, Fang et al. 2023: the trunk
ends in PVD's 16-channel intermediate feature, followed by the density and colour heads every PVD
architecture shares, so the scene can be a PVD student).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnifield.cuda import ops
from omnifield.errors import ConfigError
from omnifield.fields import MLP, FrequencyEncoding, SHEncoding, trunc_exp
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.sampling import edges_to_packed, pdf_edges, stratified_edges
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput
from omnifield.renderers.volume import composite
from omnifield.scenes._common import ExponentialDecay, adam, psnr, scene_extent
from omnifield.scenes.base import FieldOutputs, RayBatch, RenderOptions, Scene
from omnifield.scenes.marching import midpoint_density
from omnifield.scenes.nerf.config import NeRFConfig

GEO_FEATURES = 15
"""Geometry features of PVD's shared intermediate (after sigma_pre): 1 + 15 = 16 channels."""
HEADS = ("paper", "shared")


class NeRFField(nn.Module):
    """NeRF MLP: ``sigma = relu(.)`` after 8 layers (skip at ``skip_layer``), colour from a 128-wide head
    on [feature, encoded direction]."""

    def __init__(self, c: NeRFConfig):
        super().__init__()
        self.pos_enc = FrequencyEncoding(3, c.pos_frequencies)
        self.dir_enc = FrequencyEncoding(3, c.dir_frequencies)
        self.trunk = MLP(self.pos_enc.out_dim, None, c.hidden_dim, c.n_layers, skip_connections=(c.skip_layer,))
        self.sigma_head = nn.Linear(c.hidden_dim, 1)
        self.feature = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.color_head = MLP(c.hidden_dim + self.dir_enc.out_dim, 3, c.color_hidden_dim, 1, output_activation="sigmoid")

    def forward(self, x: Tensor, d: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``x [N, 3]`` in [-1, 1] box coordinates, ``d [N, 3]`` -> ``sigma [N]``, ``rgb [N, 3]`` (None without d)."""
        h = self.trunk(self.pos_enc(x))
        sigma = F.relu(self.sigma_head(h)[:, 0])
        if d is None:
            return sigma, None
        return sigma, self.color_head(torch.cat([self.feature(h), self.dir_enc(d)], dim=-1))

    def outputs(self, x: Tensor, d: Tensor | None) -> FieldOutputs:
        """:class:`FieldOutputs` with ``sigma_pre = log(sigma)`` (floored at 1e-10) and no features:
        a paper-mode NeRF can teach PVD's density and colour stages but has no shared feature."""
        sigma, rgb = self(x, d)
        return FieldOutputs(torch.log(sigma.clamp_min(1e-10)), None, rgb)


class NeRFSharedField(nn.Module):
    """PVD's NeRF (Fang et al. 2023): the NeRF trunk (positional encoding, ``n_layers`` x ``hidden_dim``,
    skip) ends in ``Linear(hidden_dim, 16)`` = [sigma_pre, 15 geometry features]; density
    ``trunc_exp(clamp(sigma_pre))``; colour ``sigmoid(MLP([SH_4(d), geo_15]))`` (64 wide, 2 hidden
    layers: the instant-ngp colour MLP shared by every PVD architecture)."""

    def __init__(self, c: NeRFConfig):
        super().__init__()
        self.pos_enc = FrequencyEncoding(3, c.pos_frequencies)
        self.trunk = MLP(self.pos_enc.out_dim, None, c.hidden_dim, c.n_layers, skip_connections=(c.skip_layer,))
        self.features = nn.Linear(c.hidden_dim, 1 + GEO_FEATURES)
        self.dir_enc = SHEncoding(4)
        self.color_mlp = MLP(self.dir_enc.out_dim + GEO_FEATURES, 3, 64, 2, output_activation="sigmoid")
        self.density_clamp = c.density_clamp

    def _density(self, sigma_pre: Tensor) -> Tensor:
        if self.density_clamp is not None:
            sigma_pre = sigma_pre.clamp(*self.density_clamp)
        return trunc_exp(sigma_pre)

    def outputs(self, x: Tensor, d: Tensor | None) -> FieldOutputs:
        """``x [N, 3]`` in [-1, 1] box coordinates (``d [N, 3]`` or None) -> :class:`FieldOutputs`
        (``features [N, 16]``, column 0 the unclamped ``sigma_pre``). Differentiable."""
        f = self.features(self.trunk(self.pos_enc(x)))
        rgb = None if d is None else self.color_mlp(torch.cat([self.dir_enc(d), f[:, 1:]], dim=-1))
        return FieldOutputs(f[:, 0], f, rgb)

    def forward(self, x: Tensor, d: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Same contract as :meth:`NeRFField.forward`: ``sigma [N]``, ``rgb [N, 3]`` (None without d)."""
        out = self.outputs(x, d)
        return self._density(out.sigma_pre), out.rgb


class NeRF(Scene):
    """NeRF radiance field (implements ``HasDensity`` and ``HasFieldFeatures``, evaluated with the fine network).

    ``heads="paper"``: coarse + fine NeRF MLPs (or one MLP and an occupancy grid). ``heads="shared"``:
    one :class:`NeRFSharedField` marched through the occupancy grid (PVD student / teacher).
    """

    method = "nerf"

    def __init__(self, config: NeRFConfig, scene_box: Tensor):
        super().__init__(config, scene_box)
        c = config
        if c.heads not in HEADS:
            raise ConfigError(f"nerf: heads must be one of {', '.join(HEADS)}, got {c.heads!r}")
        if c.heads == "shared" and not c.use_occupancy_grid:
            raise ConfigError("nerf: heads='shared' needs use_occupancy_grid=True (set use_occupancy_grid=true)")
        if c.density_clamp is not None:
            if c.heads != "shared":
                raise ConfigError("nerf: density_clamp applies to heads='shared' only (the paper head is relu)")
            if len(c.density_clamp) != 2 or not c.density_clamp[0] < c.density_clamp[1]:
                raise ConfigError(f"nerf: density_clamp must be (low, high) with low < high, got {c.density_clamp}")
        self.fine = NeRFSharedField(c) if c.heads == "shared" else NeRFField(c)
        self.coarse = None if c.use_occupancy_grid else NeRFField(c)
        self.grid = OccupancyGrid(self.scene_box, c.grid_resolution) if c.use_occupancy_grid else None
        self.step_size = c.render_step_size or math.sqrt(3.0) * scene_extent(self.scene_box) / 512
        centre = self.scene_box.mean(0)
        self.register_buffer("centre", centre.clone(), persistent=False)
        self.half = 0.5 * scene_extent(self.scene_box)

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.centre) / self.half

    def density(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` -> ``[N]`` density of the fine network. Differentiable."""
        return self.fine(self._normalise(x), None)[0]

    def color(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]``, unit ``d [N, 3]`` -> ``[N, 3]`` colour of the fine network."""
        return self.fine(self._normalise(x), d)[1]

    def field_outputs(self, x: Tensor, d: Tensor | None = None) -> FieldOutputs:
        """``x [N, 3]`` world points (``d [N, 3]`` or None) -> PVD's :class:`FieldOutputs` of the fine
        network. heads="shared": ``features [N, 16]``; heads="paper": ``sigma_pre = log(sigma)``
        (floored at 1e-10) and ``features=None``. Differentiable."""
        return self.fine.outputs(self._normalise(x), d)

    def march(self, rays: RayBundle, stratified: bool = False) -> PackedSamples:
        """The occupancy-grid samples of ``rays`` (constant steps, no density-based termination);
        needs ``use_occupancy_grid``. Not differentiable."""
        if self.grid is None:
            raise ConfigError("nerf: march() needs use_occupancy_grid=True")
        c = self.config
        return self.grid.sample(rays, 0.0 if c.near is None else c.near, 1e10 if c.far is None else c.far,
                                self.step_size, None, stratified=stratified)

    def _bounds(self, rays: RayBundle, options: RenderOptions | None) -> tuple[Tensor, Tensor]:
        c = self.config
        near = c.near if options is None or options.near is None else options.near
        far = c.far if options is None or options.far is None else options.far
        t0, t1, hit = ops.ray_aabb_intersect(rays.origins, rays.directions, self.scene_box)
        t0 = t0.clamp_min(0.0) if near is None else torch.maximum(t0, torch.full_like(t0, near))
        t1 = t1 if far is None else torch.minimum(t1, torch.full_like(t1, far))
        t1 = torch.where(hit & (t1 > t0), t1, t0)  # missing rays get empty intervals
        return t0, t1

    def _shade(self, net: nn.Module, rays: RayBundle, samples, background: Tensor,
               early_stop_eps: float = 0.0) -> RenderOutput:
        x = samples.positions(rays)
        sigma, rgb = net(self._normalise(x), rays.directions[samples.ray_indices])
        return composite(samples, rgb, sigma, len(rays), background, early_stop_eps=early_stop_eps)

    def _render(self, rays: RayBundle, background: Tensor, options: RenderOptions | None) -> tuple[RenderOutput, RenderOutput | None]:
        c = self.config
        if self.grid is not None:
            near = c.near if options is None or options.near is None else options.near
            far = c.far if options is None or options.far is None else options.far

            near, far = 0.0 if near is None else near, 1e10 if far is None else far
            if not torch.is_grad_enabled():  # inference: one field evaluation, early termination in compositing
                samples = self.grid.sample(rays, near, far, self.step_size, None, stratified=self.training)
                return self._shade(self.fine, rays, samples, background, early_stop_eps=1e-4), None

            samples = self.grid.sample(rays, near, far, self.step_size, midpoint_density(self.density, rays),
                                       stratified=self.training)
            return self._shade(self.fine, rays, samples, background), None
        t0, t1 = self._bounds(rays, options)
        edges = stratified_edges(t0, t1, c.n_coarse, perturb=self.training)
        coarse_samples = edges_to_packed(edges)
        coarse = self._shade(self.coarse, rays, coarse_samples, background)
        with torch.no_grad():
            sig = self.coarse(self._normalise(coarse_samples.positions(rays)), None)[0]
            w, _, _ = ops.render_weights(sig, coarse_samples.t_starts, coarse_samples.t_ends,
                                         coarse_samples.ray_indices, coarse_samples.packed_info)
        fine_edges = pdf_edges(edges, w.reshape(len(rays), c.n_coarse), c.n_fine, perturb=self.training)
        fine = self._shade(self.fine, rays, edges_to_packed(fine_edges), background)
        return fine, coarse

    def render_rays(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None) -> RenderOutput:
        """Coarse + fine (or grid-marched) rendering of ``R`` rays; returns the fine output ``[R, k]``."""
        return self._render(rays, background, options)[0]

    def training_step(self, batch: RayBatch, step: int) -> dict[str, Tensor]:
        """MSE of the fine (and coarse) renders against the target."""
        fine, coarse = self._render(batch.rays, batch.background, None)
        mse = F.mse_loss(fine.rgb, batch.rgb)
        loss = mse if coarse is None else mse + F.mse_loss(coarse.rgb, batch.rgb)
        return {"loss": loss, "psnr": psnr(mse)}

    def on_step_begin(self, step: int) -> None:
        """Occupancy-grid update (only with ``use_occupancy_grid``)."""
        if self.grid is not None and self.training and step % self.config.grid_update_every == 0:
            self.grid.update(step, self.density, self.step_size)

    def configure_optimizers(self, max_steps: int):
        """Adam lr 5e-4 decaying exponentially to 5e-5 at ``max_steps``."""
        c = self.config
        opt = adam([{"params": [p for p in self.parameters() if p.requires_grad]}], lr=c.lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, ExponentialDecay(max_steps, c.lr_final / c.lr))

    def rays_per_batch(self) -> int:
        return int(self.config.batch_rays)


def build(config: NeRFConfig, data) -> NeRF:
    """Build from a SceneData (near/far and background default to the dataset's)."""
    resolved = replace(
        config,
        near=config.near if config.near is not None else data.near,
        far=config.far if config.far is not None else data.far,
        background=tuple(config.background if config.background is not None else data.background),
    )
    return NeRF(resolved, data.scene_box)
