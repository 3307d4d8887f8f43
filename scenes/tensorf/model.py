"""The ``tensorf`` scene: TensoRF's VM-decomposed density and appearance grids (Chen et al., ECCV 2022),
PVD's shared colour head, an occupancy grid, ray marching, coarse-to-fine upsampling."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnifield.errors import ConfigError
from omnifield.fields import MLP, SHEncoding, trunc_exp
from omnifield.fields.tensor_grids import TensorVM, vm_resolution, voxel_schedule
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput
from omnifield.renderers.volume import composite
from omnifield.scenes._common import ExponentialDecay, adam, chosen_profile, pick, psnr
from omnifield.scenes.base import FieldOutputs, RayBatch, RenderOptions, Scene
from omnifield.scenes.marching import (GridMarched, crop_box_tensor, crop_density, keep_unterminated, march_grid,
                                       render_range, resolve_marching)
from omnifield.scenes.tensorf.config import TensoRFConfig

_PAPER_UPSAMPLE = (2000.0, 3000.0, 4000.0, 5500.0, 7000.0)
_PROFILES = {
    "paper": dict(density_components=16, app_components=48, n_voxels_init=128**3, n_voxels_final=300**3,
                  upsample_at=_PAPER_UPSAMPLE, schedule_units="steps", grid_resolution=128, steps_per_diag=1024,
                  target=2**18, grid_warmup_steps=256, grid_update_fraction=0.25),
    "cpu": dict(density_components=8, app_components=24, n_voxels_init=64**3, n_voxels_final=160**3,
                upsample_at=tuple(s / 30000.0 for s in _PAPER_UPSAMPLE), schedule_units="fraction",
                grid_resolution=64, steps_per_diag=512, target=2**15, grid_warmup_steps=64,
                grid_update_fraction=0.125),
}
_DEFAULT_HORIZON = 30000  # the horizon "fraction" schedules assume before configure_optimizers


def resolve_config(config: TensoRFConfig, scene_box: Tensor, unbounded: bool = False, near=None, far=None,
                   background=(1.0, 1.0, 1.0)) -> TensoRFConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the scene (box extent, bounds, background)."""
    profile = chosen_profile(config.profile, _PROFILES, "tensorf")
    p = _PROFILES[profile]
    resolved = replace(
        config,
        profile=profile,
        **{k: pick(getattr(config, k), p[k]) for k in ("density_components", "app_components", "n_voxels_init",
                                                         "n_voxels_final", "schedule_units")},
        upsample_at=tuple(float(s) for s in pick(config.upsample_at, p["upsample_at"])),
        **resolve_marching(config, p, scene_box, unbounded=unbounded, near=near, far=far, background=background),
    )
    if resolved.schedule_units not in ("steps", "fraction"):
        raise ConfigError(f"tensorf: schedule_units must be 'steps' or 'fraction', got {resolved.schedule_units!r}")
    if list(resolved.upsample_at) != sorted(resolved.upsample_at):
        raise ConfigError(f"tensorf: upsample_at must be increasing, got {resolved.upsample_at}")
    if resolved.density_clamp is not None and not resolved.density_clamp[0] < resolved.density_clamp[1]:
        raise ConfigError(f"tensorf: density_clamp must be (lo, hi) with lo < hi, got {resolved.density_clamp}")
    return resolved


class TensoRF(GridMarched, Scene):
    """TensoRF radiance field (implements ``HasDensity`` and ``HasFieldFeatures``).

    Density: ``sigma_pre = sum of the density VM's plane x line products + density_shift``,
    ``sigma = trunc_exp(clamp(sigma_pre, *density_clamp))`` (zero outside the field box). Colour: the
    appearance VM's ``3 x app_components`` products through ``basis = Linear(., 15, bias=False)`` give
    PVD's 15 geometry features; ``sigmoid(MLP([SH_4(d), geo]))`` (Instant-NGP's colour MLP shape) gives
    the colour. ``features = [sigma_pre, geo]``. Both VMs start at ``n_voxels_init`` voxels and are
    resampled log-linearly up to ``n_voxels_final`` at ``upsample_at``; the resolution reached is the
    buffer ``vm_resolution`` (so a checkpoint rebuilds the grids at that size, :meth:`prepare_load`).
    """

    method = "tensorf"

    def __init__(self, config: TensoRFConfig, scene_box: Tensor, unbounded: bool = False):
        super().__init__(config, scene_box)
        c = config
        if c.render_step_size is None or c.n_voxels_init is None or c.schedule_units is None:
            raise ConfigError("TensoRF needs a resolved config (use resolve_config or build)")
        self.grid = OccupancyGrid(self.scene_box, c.grid_resolution, c.grid_levels)
        self.register_buffer("field_box", self.grid.outer_aabb().clone())
        self._box_size = tuple(float(v) for v in self.field_box[1] - self.field_box[0])  # no device syncs per step
        res = self.resolution_for(0)
        self.register_buffer("vm_resolution", torch.tensor(res, dtype=torch.long))
        self.density_vm = TensorVM(c.density_components, res, c.init_scale)
        self.app_vm = TensorVM(c.app_components, res, c.init_scale)
        self.basis = nn.Linear(self.app_vm.out_dim, c.geo_feat_dim, bias=False)
        self.dir_encoding = SHEncoding(c.sh_degree)
        self.color_mlp = MLP(self.dir_encoding.out_dim + c.geo_feat_dim, 3, c.hidden_dim, c.color_hidden_layers,
                             output_activation="sigmoid")
        self.init_ray_count(c.init_rays_per_batch)
        self._optimizer: torch.optim.Optimizer | None = None
        self._horizon: ExponentialDecay | None = None

    # -- coarse to fine --------------------------------------------------------------------------
    def resolution_for(self, level: int) -> tuple[int, int, int]:
        """VM vertices per axis after ``level`` upsamplings (0: the initial grid) over the field box."""
        c = self.config
        counts = [c.n_voxels_init] + voxel_schedule(c.n_voxels_init, c.n_voxels_final, len(c.upsample_at))
        return vm_resolution(counts[min(level, len(counts) - 1)], self._box_size)

    def _schedule_step(self, value: float) -> float:
        if self.config.schedule_units == "steps":
            return float(value)
        horizon = self._horizon.max_steps if self._horizon is not None else _DEFAULT_HORIZON
        return float(value) * horizon

    def upsample_level(self, step: int) -> int:
        """How many of ``upsample_at`` have been reached once ``step`` (0-based) is done (TensoRF upsamples
        after iteration ``s`` for each ``s`` in its ``upsamp_list``)."""
        return sum(step >= self._schedule_step(a) for a in self.config.upsample_at)

    @torch.no_grad()
    def upsample(self, resolution: tuple[int, int, int]) -> None:
        """Resample both VMs to ``resolution`` (vertices per axis) and drop the optimiser state of the
        resized grids (TensoRF re-creates its optimiser after each upsampling)."""
        changed = self.density_vm.upsample(resolution) + self.app_vm.upsample(resolution)
        self.vm_resolution.copy_(torch.tensor(resolution, dtype=torch.long))
        if self._optimizer is not None:
            for p in changed:
                self._optimizer.state.pop(p, None)

    # -- field -----------------------------------------------------------------------------------
    def _normalise(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.field_box[0], self.field_box[1]
        u = (x - lo) / (hi - lo)
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        return u.clamp(0.0, 1.0), inside

    def _sigma_pre(self, u: Tensor) -> Tensor:
        return self.density_vm(u).sum(dim=-1) + self.config.density_shift

    def _activate(self, sigma_pre: Tensor) -> Tensor:
        clamp = self.config.density_clamp
        return trunc_exp(sigma_pre if clamp is None else sigma_pre.clamp(clamp[0], clamp[1]))

    def _geo(self, u: Tensor) -> Tensor:
        return self.basis(self.app_vm(u))

    def field_outputs(self, x: Tensor, d: Tensor | None = None) -> FieldOutputs:
        """``x [N, 3]`` world points (``d [N, 3]`` unit directions or None) -> ``sigma_pre [N]``,
        ``features [N, 16] = [sigma_pre, geo_15]``, ``rgb [N, 3]`` (None without ``d``). Differentiable.
        Points outside the field box read the box's border."""
        u, _ = self._normalise(x)
        sigma_pre = self._sigma_pre(u)
        geo = self._geo(u)
        rgb = None if d is None else self._color(geo, d)
        return FieldOutputs(sigma_pre, torch.cat([sigma_pre[:, None], geo], dim=-1), rgb)

    def density(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` world points -> ``[N]`` density ``trunc_exp(clamp(sigma_pre))``, zero outside the
        field box. Differentiable."""
        u, inside = self._normalise(x)
        return self._activate(self._sigma_pre(u)) * inside.to(x.dtype)

    def _color(self, geo: Tensor, d: Tensor) -> Tensor:
        return self.color_mlp(torch.cat([self.dir_encoding(d), geo], dim=-1))

    def color(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]``, unit ``d [N, 3]`` -> ``[N, 3]`` colour in [0, 1]. Differentiable."""
        return self._color(self._geo(self._normalise(x)[0]), d)

    # -- rendering -------------------------------------------------------------------------------
    def march(self, rays: RayBundle, stratified: bool = False) -> PackedSamples:
        """The occupancy-grid samples of ``rays`` (constant or cone steps, no density-based termination)."""
        return march_grid(self.grid, rays, self.config, stratified)

    @torch.no_grad()
    def _terminated(self, rays: RayBundle, near, far, step: float, crop: Tensor | None):
        """Grid marching, then the early termination of ``alpha_thre`` / ``early_stop_eps`` from one
        density pass without grad: ``(kept samples, their positions [S, 3], their density [S])``."""
        c = self.config
        samples = march_grid(self.grid, rays, c, self.training, (near, far, step))
        x = samples.positions(rays)
        if len(samples) == 0:
            return samples, x, x[:, 0]
        sigma = self._masked_density(x, crop)
        kept, keep = keep_unterminated(samples, sigma, len(rays), c.alpha_thre, c.early_stop_eps)
        return kept, x[keep], sigma[keep]

    def _masked_density(self, x: Tensor, crop: Tensor | None) -> Tensor:
        return crop_density(self.density(x), x, crop)

    def render_rays(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None) -> RenderOutput:
        """Occupancy-grid marching with early termination (one density pass without grad), then the
        density (with grad when training) and the appearance of the kept samples, composited ``[R, k]``."""
        o = rays.origins
        crop = crop_box_tensor(options, o)
        samples, x, sigma = self._terminated(rays, *render_range(self.config, options), crop)
        self._last_samples = len(samples)
        if len(samples) == 0:
            empty = torch.zeros(0, device=o.device)
            return composite(samples, empty.reshape(0, 3), empty, len(rays), background)
        if torch.is_grad_enabled():
            sigma = self._masked_density(x, crop)
        geo = self._geo(self._normalise(x)[0])
        sh = self.dir_encoding(rays.directions)  # per ray, gathered per sample
        rgb = self.color_mlp(torch.cat([sh[samples.ray_indices], geo], dim=-1))
        return composite(samples, rgb, sigma, len(rays), background)

    # -- training --------------------------------------------------------------------------------
    def training_step(self, batch: RayBatch, step: int) -> dict[str, Tensor]:
        """MSE to the target composited on the batch's background, plus ``l1_weight`` x the L1 norm of the
        density planes and lines (TensoRF / PVD)."""
        out = self.render_rays(batch.rays, batch.background)
        mse = F.mse_loss(out.rgb, batch.rgb)
        l1 = self.density_vm.l1()
        loss = mse + self.config.l1_weight * l1
        if self._last_samples == 0:  # keep a graph through every grid so backward() works when every ray missed
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters())
        return {
            "loss": loss,
            "mse": mse.detach(),
            "psnr": psnr(mse),
            "l1": l1.detach(),
            "num_samples": torch.tensor(float(self._last_samples)),
            "num_rays": torch.tensor(float(len(batch.rays))),
        }

    def on_step_end(self, step: int) -> None:
        """Upsample the VM grids when ``step`` reaches the next entry of ``upsample_at``; adapt the ray
        count so the next batch holds about ``target_samples_per_batch`` samples."""
        if self.training:
            res = self.resolution_for(self.upsample_level(step))
            if math.prod(res) > math.prod(self.density_vm.resolution):
                self.upsample(res)
        self.adapt_ray_count()

    def configure_optimizers(self, max_steps: int):
        """Adam (betas (0.9, 0.99)): lr 0.02 for the planes and lines, 1e-3 for the basis and the colour MLP,
        both decaying exponentially to ``lr_decay_ratio`` over the run (TensoRF). The decay's ``max_steps``
        is the horizon a ``"fraction"`` upsampling schedule follows."""
        c = self.config
        grids = list(self.density_vm.parameters()) + list(self.app_vm.parameters())
        network = list(self.basis.parameters()) + list(self.color_mlp.parameters())
        opt = adam([{"params": grids, "lr": c.lr_grid, "name": "grids"},
                    {"params": network, "lr": c.lr_network, "name": "network"}], lr=c.lr_grid, betas=c.betas)
        self._horizon = ExponentialDecay(max_steps, c.lr_decay_ratio)
        self._optimizer = opt
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, [self._horizon, self._horizon])

    # -- checkpoints -----------------------------------------------------------------------------
    def prepare_load(self, weights: dict[str, Tensor]) -> None:
        """Resize the VM grids to the checkpoint's ``vm_resolution`` (the loaded values then replace them)."""
        res = weights.get("vm_resolution")
        if res is not None and res.tolist() != self.vm_resolution.tolist():
            self.upsample(tuple(int(r) for r in res.tolist()))


def build(config: TensoRFConfig, data) -> TensoRF:
    """Build from a SceneData (or a run's SceneInfo): resolves the profile and the scene-dependent defaults."""
    resolved = resolve_config(config, data.scene_box, data.unbounded, data.near, data.far, data.background)
    return TensoRF(resolved, data.scene_box, data.unbounded)
