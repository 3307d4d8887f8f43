"""Occupancy-grid marching shared by the grid-marched radiance fields (``instant-ngp``, ``tensorf``,
``plenoxels``): the render range, the crop box, marching, the grid update, early termination in one
density pass, and the adaptive ray count (Instant-NGP, Mueller et al. 2022; nerfacc's estimator).

Functions, which take the scene's grid and config, and :class:`GridMarched`, the mixin that gives a
scene its ray count (adapted per step, saved with the run) and its grid update. ``config`` is
the scene's resolved config, read by its flat field names (``near``, ``far``, ``render_step_size``,
``alpha_thre``, ``early_stop_eps``, ``cone_angle`` (0 where a scene has none), ``grid_*``,
``target_samples_per_batch``, ``max_rays_per_batch``): the fields of :class:`GridMarchingConfig`, which
the scenes' configs subclass, and :func:`resolve_marching` fills the ones left at ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from omnifield.cuda import ops
from omnifield.renderers.occupancy import OccupancyGrid
from omnifield.renderers.types import PackedSamples, RayBundle
from omnifield.scenes._common import pick, scene_extent
from omnifield.scenes.base import RenderOptions, SceneConfig

MIN_RAYS = 64
"""The fewest rays :func:`adapted_rays` asks for, and a first batch has (:func:`resolve_marching`)."""


@dataclass(frozen=True)
class GridMarchingConfig(SceneConfig):
    """The occupancy-grid, marching and ray-budget fields of a grid-marched scene (flat ``--set`` keys).
    Fields left at ``None`` are filled by :func:`resolve_marching` from the scene's profile (paper: the
    Instant-NGP / nerfacc values for a GPU; cpu: coarser and smaller, what trains best per CPU second) and
    from the scene; each scene's config names its profile values."""

    grid_resolution: int | None = None
    """Occupancy-grid cells per side. Paper 128; cpu 64 (a grid update costs a density evaluation per cell)."""
    grid_update_every: int = 16
    """Occupancy-grid update interval in steps."""
    grid_warmup_steps: int | None = None
    """Steps during which every cell is updated. Paper 256; cpu 64."""
    grid_update_fraction: float | None = None
    """After warmup, this fraction of cells is updated at random, plus as many occupied ones. Paper 1/4; cpu 1/8."""
    grid_threshold: float = 0.01
    """Occupancy threshold on density x step size."""
    grid_ema_decay: float = 0.95
    """EMA decay of cell values."""
    render_step_size: float | None = None
    """Marching step in world units; None: from the profile and the scene's size (each scene's config says how)."""
    alpha_thre: float = 0.0
    """Samples with lower opacity are skipped by the sampler."""
    early_stop_eps: float = 1e-4
    """Rays stop once transmittance falls below this."""
    target_samples_per_batch: int | None = None
    """Samples per training batch the ray count adapts to. Paper 2^18; cpu 2^15."""
    init_rays_per_batch: int | None = None
    """Rays in the first batch; None: target_samples_per_batch / the scene's samples per ray guess (128; plenoxels 64)."""
    max_rays_per_batch: int = 2**16
    """Upper bound of the adapted ray count."""
    near: float | None = None
    """Ray start; None: the dataset's near plane (or 0)."""
    far: float | None = None
    """Ray end; None: the dataset's far plane (or the box exit)."""
    background: tuple[float, float, float] | None = None
    """Render background; None: the dataset's."""


@dataclass(frozen=True)
class CascadedMarchingConfig(GridMarchingConfig):
    """:class:`GridMarchingConfig` plus occupancy cascades and cone marching for unbounded scenes
    (Instant-NGP), for the scenes whose field spans the cascades."""

    grid_levels: int | None = None
    """Occupancy cascades: 1 for bounded scenes, 4 for unbounded ones when None."""
    cone_angle: float | None = None
    """Cone marching: the step at distance t is max(t * cone_angle, render_step_size). None: 0 (constant
    steps) for bounded scenes, 1/256 for unbounded ones (Instant-NGP / nerfacc)."""


def resolve_marching(config: GridMarchingConfig, profile: dict, scene_box: Tensor, *, unbounded: bool = False,
                     near=None, far=None, background=(1.0, 1.0, 1.0), samples_per_ray: int = 128) -> dict:
    """The values of ``config``'s marching fields with those left at ``None`` filled, for
    ``dataclasses.replace``. ``profile`` holds ``grid_resolution``, ``grid_warmup_steps``,
    ``grid_update_fraction``, ``target`` (samples per batch) and the default marching step, as
    ``render_step_size`` (world units) or ``steps_per_diag`` (``sqrt(3) x extent / steps_per_diag``).
    ``near``, ``far``, ``background`` are the dataset's; the first batch has ``target / samples_per_ray``
    rays (at least 64)."""
    step = profile.get("render_step_size")
    if step is None:
        step = math.sqrt(3.0) * scene_extent(scene_box) / profile["steps_per_diag"]
    target = config.target_samples_per_batch or profile["target"]
    values = dict(
        grid_resolution=pick(config.grid_resolution, profile["grid_resolution"]),
        grid_warmup_steps=pick(config.grid_warmup_steps, profile["grid_warmup_steps"]),
        grid_update_fraction=pick(config.grid_update_fraction, profile["grid_update_fraction"]),
        render_step_size=pick(config.render_step_size, step),
        target_samples_per_batch=target,
        init_rays_per_batch=pick(config.init_rays_per_batch, max(MIN_RAYS, target // samples_per_ray)),
        near=pick(config.near, 0.0 if near is None else float(near)),
        far=pick(config.far, 1e10 if far is None else float(far)),
        background=tuple(pick(config.background, tuple(background))),
    )
    if isinstance(config, CascadedMarchingConfig):
        values.update(grid_levels=pick(config.grid_levels, 4 if unbounded else 1),
                      cone_angle=pick(config.cone_angle, 1.0 / 256.0 if unbounded else 0.0))
    return values



def _cone_angle(config) -> float:
    return getattr(config, "cone_angle", None) or 0.0


def render_range(config, options: RenderOptions | None) -> tuple[float, float, float]:
    """``(near, far, step)`` of a render: the options' ``near`` / ``far`` where set, else the config's;
    the config's ``render_step_size`` times the options' ``step_scale``."""
    near = config.near if options is None or options.near is None else options.near
    far = config.far if options is None or options.far is None else options.far
    step = config.render_step_size * (1.0 if options is None else float(options.step_scale))
    return near, far, step


def crop_box_tensor(options: RenderOptions | None, like: Tensor) -> Tensor | None:
    """The options' ``crop_box`` as a ``[2, 3]`` (min, max) tensor of ``like``'s dtype and device, or None."""
    if options is None or options.crop_box is None:
        return None
    return torch.tensor(options.crop_box, dtype=like.dtype, device=like.device)


def crop_density(sigma: Tensor, x: Tensor, crop: Tensor | None) -> Tensor:
    """``sigma [S]`` at ``x [S, 3]``, zero outside the ``crop [2, 3]`` box (unchanged when ``crop`` is None).
    Differentiable in ``sigma``."""
    return sigma if crop is None else sigma * ((x >= crop[0]) & (x <= crop[1])).all(-1).to(sigma.dtype)


def midpoint_density(density_fn: Callable[[Tensor], Tensor], rays: RayBundle,
                     crop: Tensor | None = None) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The sampler's ``sigma_fn(t_starts [S], t_ends [S], ray_indices [S]) -> [S]``: ``density_fn`` at each
    interval's midpoint on its ray, zero outside the ``crop [2, 3]`` box (:func:`crop_density`)."""
    o, d = rays.origins, rays.directions

    def sigma_fn(ts: Tensor, te: Tensor, ri: Tensor) -> Tensor:
        x = o[ri] + d[ri] * (0.5 * (ts + te))[:, None]
        return crop_density(density_fn(x), x, crop)

    return sigma_fn


def march_grid(
    grid: OccupancyGrid,
    rays: RayBundle,
    config,
    stratified: bool = False,
    span: tuple[float, float, float] | None = None,
    sigma_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> PackedSamples:
    """The occupancy-grid samples of ``R`` rays: constant steps, or cone steps with ``config.cone_angle``.

    ``span`` is ``(near, far, step)`` (:func:`render_range`; default the config's ``near``, ``far`` and
    ``render_step_size``). With ``sigma_fn(t_starts [S], t_ends [S], ray_indices [S]) -> [S]`` the sampler
    drops what early termination would (``config.alpha_thre``, ``config.early_stop_eps``). ``stratified``
    jitters the first sample of each ray. Not differentiable.
    """
    near, far, step = (config.near, config.far, config.render_step_size) if span is None else span
    return grid.sample(rays, near, far, step, sigma_fn, config.alpha_thre, config.early_stop_eps,
                       stratified=stratified, cone_angle=_cone_angle(config))


def update_grid(grid: OccupancyGrid, step: int, density_fn: Callable[[Tensor], Tensor], config) -> None:
    """Instant-NGP's occupancy-grid update from ``density_fn(x [N, 3]) -> [N]`` on the steps that are
    multiples of ``config.grid_update_every`` (threshold, EMA decay, warm-up, fraction of cells and cone
    angle of the config); other steps do nothing."""
    if step % config.grid_update_every == 0:
        grid.update(step, density_fn, config.render_step_size, config.grid_threshold, config.grid_ema_decay,
                    config.grid_warmup_steps, config.grid_update_fraction, cone_angle=_cone_angle(config))


def adapted_rays(current: int, last_samples: int, config) -> int:
    """The ray count for the next batch: ``current`` scaled so the batch holds about
    ``config.target_samples_per_batch`` samples (the last one held ``last_samples``), clamped to
    ``[64, config.max_rays_per_batch]``; ``current`` when the last batch had no samples."""
    if last_samples <= 0:
        return current
    n = current * config.target_samples_per_batch / last_samples
    return int(min(max(n, MIN_RAYS), config.max_rays_per_batch))


def keep_unterminated(samples: PackedSamples, sigma: Tensor, n_rays: int, alpha_thre: float,
                      early_stop_eps: float) -> tuple[PackedSamples, Tensor]:
    """Early termination from densities already evaluated: of the ``S`` samples of ``n_rays`` rays with
    density ``sigma [S]``, keep those with ``alpha >= alpha_thre`` and transmittance ``>= early_stop_eps``
    (what ``OccupancyGrid.sample`` keeps with a ``sigma_fn``). Returns the kept samples, repacked, and the
    ``keep [S]`` bool mask (to select the caller's per-sample tensors). Not differentiable."""
    _, trans, alphas = ops.render_weights(sigma, samples.t_starts, samples.t_ends, samples.ray_indices,
                                          samples.packed_info)
    keep = (alphas >= alpha_thre) & (trans >= early_stop_eps)
    ri = samples.ray_indices[keep]
    kept = PackedSamples(ri, samples.t_starts[keep], samples.t_ends[keep], ops.packed_info_from_ray_indices(ri, n_rays))
    return kept, keep


class GridMarched:
    """The per-scene state of grid marching, as a mixin before :class:`~omnifield.scenes.base.Scene`
    (``class InstantNGP(GridMarched, Scene)``): the ray count of the next batch, adapted after every
    step to ``target_samples_per_batch`` and saved with the run, and the occupancy-grid update from the
    scene's own density. The scene has ``grid``, ``config`` and ``density``, calls
    :meth:`init_ray_count` in its constructor and records ``_last_samples`` (samples of its last
    training batch); its ``on_step_end`` calls :meth:`adapt_ray_count`."""

    def init_ray_count(self, initial: int) -> None:
        self._rays_per_batch, self._last_samples = int(initial), 0

    def on_step_begin(self, step: int) -> None:
        """Occupancy-grid update every ``grid_update_every`` steps from the scene's own density (Instant-NGP)."""
        if self.training:
            update_grid(self.grid, step, self.density, self.config)

    def adapt_ray_count(self) -> None:
        """Scale the ray count so the next batch holds about ``target_samples_per_batch`` samples."""
        self._rays_per_batch = adapted_rays(self._rays_per_batch, self._last_samples, self.config)

    def rays_per_batch(self) -> int:
        return self._rays_per_batch

    def extra_state(self) -> dict[str, Tensor]:
        return {"rays_per_batch": torch.tensor(self._rays_per_batch)}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        if "rays_per_batch" in state:
            self._rays_per_batch = int(state["rays_per_batch"])
