"""The ``plenoxels`` scene: a dense SH voxel grid (Fridovich-Keil et al., CVPR 2022) rendered by occupancy-grid
marching, as PVD (Fang et al. 2023) uses it: ``sigma = trunc_exp(clamp(v_0))``, colour ``sigmoid(SH(d) . c)``."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from omnifield.cuda import ops
from omnifield.errors import ConfigError
from omnifield.fields import trunc_exp
from omnifield.fields.voxel_grid import VoxelGrid, sh_color
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput
from omnifield.renderers.volume import composite
from omnifield.scenes._common import ExponentialDecay, adam, chosen_profile, pick, psnr, scene_extent
from omnifield.scenes.base import FieldOutputs, RayBatch, RenderOptions, Scene
from omnifield.scenes.marching import (GridMarched, crop_box_tensor, crop_density, keep_unterminated, march_grid,
                                       midpoint_density, render_range, resolve_marching)
from omnifield.scenes.plenoxels.config import PlenoxelsConfig

_PROFILES = {
    "paper": dict(resolution=128, upsample_resolutions=(), upsample_at=(), init_density=0.0, lr=1e-2, tv_voxels=2**15,
                  grid_resolution=128, voxels_per_step=0.5, target=2**18, grid_warmup_steps=256,
                  grid_update_fraction=0.25),
    "cpu": dict(resolution=64, upsample_resolutions=(96,), upsample_at=(0.5,), init_density=-1.0, lr=0.3,
                tv_voxels=2**14, grid_resolution=64, voxels_per_step=1.0, target=2**15, grid_warmup_steps=64,
                grid_update_fraction=0.125),
}


def resolve_config(config: PlenoxelsConfig, scene_box: Tensor, unbounded: bool = False, near=None, far=None,
                   background=(1.0, 1.0, 1.0)) -> PlenoxelsConfig:
    """Fill the ``None`` fields of ``config`` from its profile and the scene (box extent, bounds, background)."""
    profile = chosen_profile(config.profile, _PROFILES, "plenoxels")
    if not 1 <= config.sh_degree <= 4:
        raise ConfigError(f"plenoxels: sh_degree must be 1..4, got {config.sh_degree}")
    p = _PROFILES[profile]
    res = int(pick(config.resolution, p["resolution"]))
    ups = tuple(int(r) for r in pick(config.upsample_resolutions, p["upsample_resolutions"]))
    at = tuple(float(a) for a in pick(config.upsample_at, p["upsample_at"]))
    if len(ups) != len(at):
        raise ConfigError(f"plenoxels: upsample_resolutions {ups} and upsample_at {at} need one entry each")
    if any(b <= a for a, b in zip((res,) + ups, ups)) or res < 2:
        raise ConfigError(f"plenoxels: resolutions must increase from resolution >= 2, got {res} then {ups}")
    final = ups[-1] if ups else res
    step = p["voxels_per_step"] * scene_extent(scene_box) / (final - 1)
    return replace(
        config,
        profile=profile,
        resolution=res,
        upsample_resolutions=ups,
        upsample_at=at,
        init_density=float(pick(config.init_density, p["init_density"])),
        lr=float(pick(config.lr, p["lr"])),
        tv_voxels=pick(config.tv_voxels, p["tv_voxels"]),
        **resolve_marching(config, {**p, "render_step_size": step}, scene_box, near=near, far=far,
                           background=background, samples_per_ray=64),
    )


def _sparse_rows(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows [U], values [U, C])`` of a sparse ``[V, C]`` gradient with unique rows. Autograd drops the
    coalesced flag when it stores a gradient, so strictly increasing rows (what ``fields.voxel_grid`` makes)
    are taken as they are instead of being sorted again."""
    if g.sparse_dim() != 1:  # element-sparse: make it row-sparse
        g = g.coalesce().to_dense().to_sparse(1)
    rows = g._indices()[0]
    if g.is_coalesced() or bool((rows[1:] > rows[:-1]).all()):
        return rows, g._values()
    g = g.coalesce()
    return g.indices()[0], g.values()


class RowSparseAdam(torch.optim.Optimizer):
    """Adam that, given a sparse gradient, updates only its rows (and their moments): the lazy Adam of
    ``torch.optim.SparseAdam``, without its re-coalescing when the rows are unique already
    (``fields.voxel_grid`` makes them so). Dense gradients get the ordinary Adam update. Bias correction
    uses the parameter's step count."""

    def __init__(self, params, lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-15):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = float(st["step"])
                bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
                m_all, v_all, g = st["exp_avg"], st["exp_avg_sq"], p.grad
                if g.is_sparse:
                    rows, gv = _sparse_rows(g)
                    m = m_all.index_select(0, rows).mul_(b1).add_(gv, alpha=1.0 - b1)
                    v = v_all.index_select(0, rows).mul_(b2).addcmul_(gv, gv, value=1.0 - b2)
                    m_all.index_copy_(0, rows, m)
                    v_all.index_copy_(0, rows, v)
                    p.index_add_(0, rows, m.div_(v.div_(bc2).sqrt_().add_(eps)), alpha=-lr / bc1)
                else:
                    m_all.mul_(b1).add_(g, alpha=1.0 - b1)
                    v_all.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                    p.addcdiv_(m_all, (v_all / bc2).sqrt_().add_(eps), value=-lr / bc1)
        return loss


class Plenoxels(GridMarched, Scene):
    """Plenoxels radiance field (implements ``HasDensity`` and ``HasFieldFeatures``).

    A :class:`~omnifield.fields.voxel_grid.VoxelGrid` of ``1 + 3 K`` values per vertex over the scene box
    (``K = sh_degree^2``): column 0 is the density pre-activation, then the ``K`` SH coefficients of red,
    green and blue. No MLP. Coarse-to-fine: the grid is resampled trilinearly at ``upsample_at`` (fractions
    of the run) and the optimiser state of the grid restarts. The grid covers the scene box: for unbounded
    data nothing is modelled outside it (Plenoxels' background model is not implemented).
    """

    method = "plenoxels"

    def __init__(self, config: PlenoxelsConfig, scene_box: Tensor, unbounded: bool = False):
        super().__init__(config, scene_box)
        c = config
        if c.resolution is None or c.render_step_size is None or c.upsample_at is None or c.lr is None \
                or c.init_density is None:
            raise ConfigError("Plenoxels needs a resolved config (use resolve_config or build)")
        self.grid = OccupancyGrid(self.scene_box, c.grid_resolution, 1)
        self.register_buffer("field_box", self.grid.outer_aabb().clone())
        k = c.sh_degree**2
        mean = torch.zeros(1 + 3 * k)
        mean[0] = c.init_density
        self.voxels = VoxelGrid(c.resolution, 1 + 3 * k, c.init_std, mean, c.sparse_grad)
        self.init_ray_count(c.init_rays_per_batch)
        self._optimizer: torch.optim.Optimizer | None = None
        self._schedule: ExponentialDecay | None = None
        self._tv_generator = torch.Generator().manual_seed(0)

    # -- field ---------------------------------------------------------------------------------
    def _unit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.field_box[0], self.field_box[1]
        u = (x - lo) / (hi - lo)
        return u, ((u >= 0) & (u <= 1)).all(dim=-1)

    def _sigma(self, sigma_pre: Tensor) -> Tensor:
        clamp = self.config.density_clamp
        return trunc_exp(sigma_pre if clamp is None else sigma_pre.clamp(clamp[0], clamp[1]))

    def field_outputs(self, x: Tensor, d: Tensor | None = None) -> FieldOutputs:
        """``x [N, 3]`` world points (``d [N, 3]`` unit directions) -> ``sigma_pre [N]`` (the interpolated
        column 0, unclamped; points outside the box read the nearest face), ``rgb [N, 3]`` when ``d`` is given,
        ``features=None``. Differentiable in the grid."""
        u, _ = self._unit(x)
        v = self.voxels(u)
        rgb = None if d is None else sh_color(v[:, 1:], ops.sh_encode(d, self.config.sh_degree))
        return FieldOutputs(sigma_pre=v[:, 0], features=None, rgb=rgb)

    def density(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` world points -> ``[N]`` density ``trunc_exp(clamp(v_0))``, zero outside the box.
        Differentiable in the grid."""
        u, inside = self._unit(x)
        v0 = self.voxels(u)[:, 0] if torch.is_grad_enabled() else self.voxels(u, slice(0, 1))[:, 0]
        return self._sigma(v0) * inside.to(v0.dtype)

    def color(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]``, unit ``d [N, 3]`` -> ``[N, 3]`` colour in [0, 1]."""
        return self.field_outputs(x, d).rgb

    # -- rendering -----------------------------------------------------------------------------
    def march(self, rays: RayBundle, stratified: bool = False) -> PackedSamples:
        """Occupancy-grid marching with the constant ``render_step_size`` (no early termination). Not differentiable."""
        return march_grid(self.grid, rays, self.config, stratified)

    def render_rays(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None) -> RenderOutput:
        """Occupancy-grid marching with early termination, then compositing ``[R, k]``."""
        return self._render(rays, background, options)[0]

    def _render(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None,
                with_tv: bool = False) -> tuple[RenderOutput, Tensor | None]:
        """:meth:`render_rays`, and with ``with_tv`` the ``[C]`` total variation of ``tv_voxels`` random cells,
        gathered together with the samples (one sparse gradient)."""
        c = self.config
        o, d = rays.origins, rays.directions
        crop = crop_box_tensor(options, o)
        sigma_fn = midpoint_density(self.density, rays, crop)

        single_pass = not torch.is_grad_enabled()
        samples = march_grid(self.grid, rays, c, self.training, render_range(c, options),
                             None if single_pass else sigma_fn)
        if single_pass and len(samples):  # inference: density of every sample, drop what early termination would
            x = samples.positions(rays)
            sigma = crop_density(self.density(x), x, crop)
            samples, _ = keep_unterminated(samples, sigma, len(rays), c.alpha_thre, c.early_stop_eps)
        self._last_samples = len(samples)
        x = samples.positions(rays)
        u, inside = self._unit(x)
        tv = None
        if with_tv:
            v, tv = self.voxels.interpolate_with_tv(u, c.tv_voxels, self._tv_generator)
        else:
            v = self.voxels(u)
        sigma = crop_density(self._sigma(v[:, 0]) * inside.to(v.dtype), x, crop)
        sh = ops.sh_encode(d, c.sh_degree)  # per ray, gathered per sample
        rgb = sh_color(v[:, 1:], sh[samples.ray_indices])
        out = composite(samples, rgb, sigma, len(rays), background,
                        early_stop_eps=c.early_stop_eps if single_pass else 0.0)
        return out, tv

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: RayBatch, step: int) -> dict[str, Tensor]:
        """MSE to the target (composited on the batch's background) + total variation of density and SH
        (``tv_density * TV_0 + tv_sh * sum_c TV_c`` on ``tv_voxels`` random cells)."""
        c = self.config
        with_tv = c.tv_density > 0 or c.tv_sh > 0
        out, per_channel = self._render(batch.rays, batch.background, with_tv=with_tv)
        mse = F.mse_loss(out.rgb, batch.rgb)
        loss = mse
        tv = mse.new_zeros(())
        if with_tv:
            tv = c.tv_density * per_channel[0] + c.tv_sh * per_channel[1:].sum()
            loss = loss + tv
        if not loss.requires_grad:  # no samples and no regulariser: keep a graph so backward() works
            loss = loss + 0.0 * self.voxels.values.sum()
        return {
            "loss": loss,
            "psnr": psnr(mse),
            "tv": tv.detach(),
            "num_samples": torch.tensor(float(self._last_samples)),
            "num_rays": torch.tensor(float(len(batch.rays))),
        }

    def on_step_end(self, step: int) -> None:
        """Adapt the ray count to ``target_samples_per_batch``; upsample the grid when its time has come."""
        c = self.config
        self.adapt_ray_count()
        horizon = self._schedule.max_steps if self._schedule is not None else None
        if horizon is None or not self.training:
            return
        for res, at in zip(c.upsample_resolutions, c.upsample_at):
            if self.voxels.res < res and step + 1 >= at * horizon:
                self.upsample(res)

    def upsample(self, resolution: int) -> None:
        """Resample the grid to ``resolution`` vertices per side; the optimiser's moments of the grid restart."""
        self.voxels.upsample(resolution)
        if self._optimizer is not None:
            self._optimizer.state.pop(self.voxels.values, None)

    def configure_optimizers(self, max_steps: int):
        """Adam on every value (fused, or :class:`RowSparseAdam` with ``sparse_grad``) at ``lr``, decaying
        exponentially to ``lr * lr_final_ratio`` over the run. The schedule's horizon also times the upsampling."""
        c = self.config
        if c.sparse_grad:
            opt = RowSparseAdam([self.voxels.values], lr=c.lr, betas=c.betas, eps=c.eps)
        else:
            opt = adam([{"params": [self.voxels.values]}], lr=c.lr, betas=c.betas, eps=c.eps)
        self._optimizer = opt
        self._schedule = ExponentialDecay(max_steps, c.lr_final_ratio)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, self._schedule)

    def prepare_load(self, weights: dict[str, Tensor]) -> None:
        """Resize the grid to the checkpoint's resolution (``voxels.resolution``) before the strict load."""
        r = weights.get("voxels.resolution")
        if r is not None and int(r) != self.voxels.res:
            self.voxels.resize(int(r))
            if self._optimizer is not None:
                self._optimizer.state.pop(self.voxels.values, None)

    def extra_state(self) -> dict[str, Tensor]:
        return {**super().extra_state(), "tv_generator": self._tv_generator.get_state()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        super().load_extra_state(state)
        if "tv_generator" in state:
            self._tv_generator.set_state(state["tv_generator"].to(torch.uint8).cpu())


def build(config: PlenoxelsConfig, data) -> Plenoxels:
    """Build from a SceneData (or SceneInfo): resolves the profile and the scene-dependent defaults."""
    resolved = resolve_config(config, data.scene_box, data.unbounded, data.near, data.far, data.background)
    return Plenoxels(resolved, data.scene_box, data.unbounded)


__all__ = ["Plenoxels", "RowSparseAdam", "build", "resolve_config"]
