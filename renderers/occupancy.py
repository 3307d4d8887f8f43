"""Occupancy grid for empty-space skipping (Instant-NGP; nerfacc ``OccGridEstimator``).

:class:`OccupancyGrid` is an explicit state object (an ``nn.Module`` holding only buffers): a
cascade of ``levels`` grids of ``resolution^3`` cells, level ``i`` covering ``aabb`` scaled by
``2^i`` about its centre (one level for bounded scenes). Each cell stores an exponential moving
maximum of ``density * step_size`` (an opacity estimate of one marching step); ``binaries`` marks the
cells above ``min(mean, threshold)``. The sampler marches rays with a constant step (or, with a
``cone_angle``, a step growing with distance: Instant-NGP's cone marching for unbounded scenes) and
keeps only samples in occupied cells, then (given ``sigma_fn``) drops samples behind an opaque surface.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from omnifield.cuda import ops
from omnifield.renderers.types import PackedSamples, RayBundle


class OccupancyGrid(nn.Module):
    """Cascaded binary occupancy grid with EMA updates.

    Args:
        aabb: ``[2, 3]`` (min, max) box of level 0.
        resolution: cells per side of each level (Instant-NGP: 128).
        levels: cascade levels (1 for bounded scenes; more for unbounded ones).
    """

    def __init__(self, aabb: Tensor, resolution: int = 128, levels: int = 1):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if not bool((aabb[1] > aabb[0]).all()):
            raise ValueError(f"aabb must be (min, max) with max > min, got {aabb.tolist()}")
        self.resolution, self.levels = int(resolution), int(levels)
        self.register_buffer("aabb", aabb.clone())
        n = self.levels * self.resolution**3
        self.register_buffer("occs", torch.zeros(n))
        self.register_buffer("binaries", torch.ones(self.levels, self.resolution, self.resolution, self.resolution, dtype=torch.bool))
        self.register_buffer("limit", None, persistent=False)  # cells that may be occupied (restrict)

    @torch.no_grad()
    def cells_of(self, points: Tensor, dilation: int = 0) -> Tensor:
        """``[levels, G, G, G]`` bool: the cells holding ``points [N, 3]`` (each point in the finest level
        that contains it, the rule of the sampler), grown by ``dilation`` cells in every direction.
        Points outside the coarsest level are ignored."""
        g = self.resolution
        points = points.to(device=self.aabb.device, dtype=self.aabb.dtype)
        flat, inside = ops.cell_indices(points, self.levels, g, self.aabb)  # the sampler's own rule
        mask = torch.zeros(self.levels * g**3, dtype=torch.bool, device=points.device)
        mask[flat[inside & torch.isfinite(points).all(-1)]] = True
        mask = mask.view(self.levels, g, g, g)
        if dilation > 0:
            k = 2 * int(dilation) + 1
            mask = torch.nn.functional.max_pool3d(mask[:, None].float(), k, stride=1, padding=int(dilation))[:, 0] > 0
        return mask.to(self.binaries.device)

    @torch.no_grad()
    def restrict(self, cells: Tensor | None) -> None:
        """Keep the grid inside ``cells`` (``[levels, G, G, G]`` bool) from now on: ``binaries`` outside
        them is cleared now and after every :meth:`update`, which evaluates only those cells. ``None``
        lifts the limit. The limit is not part of the state dict (whoever set it sets it again on resume)."""
        if cells is None:
            self.limit = None
            return
        cells = cells.to(device=self.binaries.device, dtype=torch.bool)
        if cells.shape != self.binaries.shape:
            raise ValueError(f"restrict: cells must have shape {tuple(self.binaries.shape)}, got {tuple(cells.shape)}")
        self.limit = cells
        self.binaries &= cells

    @property
    def cells_per_level(self) -> int:
        return self.resolution**3

    def outer_aabb(self) -> Tensor:
        """``[2, 3]`` box of the coarsest level."""
        centre, half = self.aabb.mean(0), 0.5 * (self.aabb[1] - self.aabb[0])
        s = 2.0 ** (self.levels - 1)
        return torch.stack([centre - half * s, centre + half * s])

    def occupied_fraction(self) -> float:
        return float(self.binaries.float().mean())

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: Callable[[Tensor], Tensor],
        step_size: float,
        threshold: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        fraction: float = 0.25,
        chunk: int = 2**16,
        cone_angle: float = 0.0,
        max_step: float = 1e10,
    ) -> None:
        """One EMA update (nerfacc ``_update``): every cell before ``warmup_steps``, afterwards
        ``fraction`` of the cells at random plus as many occupied ones.

        ``density_fn(x [N, 3]) -> [N]`` is evaluated at a random point of each chosen cell; the cell
        value becomes ``max(decay * old, density * dt)`` and ``binaries`` is recomputed with
        threshold ``min(mean, threshold)``. ``dt`` is the marching step there: ``step_size``, or with cone
        marching (``cone_angle > 0``) ``min(step_size * 2^level, max_step)``, the step the sampler takes
        about that far out (Instant-NGP scales the step of cascade level ``l`` by ``2^l``).
        """
        device = self.occs.device
        if step < warmup_steps:  # every cell (inside the limit)
            ids = (torch.arange(self.occs.numel(), device=device) if self.limit is None
                   else self.limit.reshape(-1).nonzero().squeeze(-1))
        else:
            n = max(1, int(self.cells_per_level * fraction))
            parts = []
            for lvl in range(self.levels):
                base = lvl * self.cells_per_level
                parts.append(base + torch.randint(self.cells_per_level, (n,), device=device))
                occupied = self.binaries[lvl].reshape(-1).nonzero().squeeze(-1)
                if occupied.numel():
                    parts.append(base + occupied[torch.randint(occupied.numel(), (n,), device=device)])
            ids = torch.cat(parts)
            if self.limit is not None:
                ids = ids[self.limit.reshape(-1)[ids]]
        values = torch.empty(ids.shape[0], device=device)
        for i in range(0, ids.shape[0], chunk):
            sel = ids[i : i + chunk]
            x = ops.cell_points(sel, self.levels, self.resolution, self.aabb, torch.rand(sel.shape[0], 3, device=device))
            dt = step_size
            if cone_angle > 0:
                level = torch.div(sel, self.cells_per_level, rounding_mode="floor").float()
                dt = torch.clamp(step_size * torch.exp2(level), max=max_step)
            values[i : i + chunk] = density_fn(x).reshape(-1).float() * dt
        ops.occupancy_ema_update(self.occs, ids, values, ema_decay)
        self.binaries.copy_(ops.occupancy_binarize(self.occs, threshold).view_as(self.binaries))
        if self.limit is not None:
            self.binaries &= self.limit

    @torch.no_grad()
    def sample(
        self,
        rays: RayBundle,
        near: float | Tensor,
        far: float | Tensor,
        step_size: float,
        sigma_fn: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
        alpha_thre: float = 0.0,
        early_stop_eps: float = 1e-4,
        stratified: bool = False,
        cone_angle: float = 0.0,
        max_step: float = 1e10,
    ) -> PackedSamples:
        """Samples in occupied cells, packed: constant steps, or growing ones with ``cone_angle``.

        Args:
            rays: ``R`` rays; near, far: scalars or ``[R]`` bounds (clipped to the grid box).
            step_size: interval length (world units).
            sigma_fn: optional ``sigma_fn(t_starts, t_ends, ray_indices) -> [S]`` densities; when given,
                samples with ``alpha < alpha_thre`` or transmittance ``< early_stop_eps`` are dropped
                (early ray termination, evaluated without grad).
            stratified: jitter the first sample of each ray (training).
            cone_angle: 0 for constant steps; else the step at distance ``t`` is
                ``min(max(t * cone_angle, step_size), max_step)`` (Instant-NGP uses 1/256 for unbounded scenes).
            max_step: the largest step of cone marching.

        Returns:
            :class:`PackedSamples` (not differentiable: the model re-evaluates its fields on them).
        """
        o, d = rays.origins, rays.directions
        t0, t1, _ = ops.ray_aabb_intersect(o, d, self.outer_aabb())
        near_t = torch.as_tensor(near, dtype=o.dtype, device=o.device)
        far_t = torch.as_tensor(far, dtype=o.dtype, device=o.device)
        t_min = torch.maximum(t0, near_t)
        t_max = torch.minimum(t1, far_t)
        offset = torch.rand(len(rays), device=o.device) if stratified else None
        ray_ids, ts, te, info = ops.march_occupancy_grid(o, d, t_min, t_max, self.binaries, self.aabb, step_size, offset,
                                                        cone_angle, max_step)
        if sigma_fn is not None and ray_ids.numel() > 0:
            sigmas = sigma_fn(ts, te, ray_ids).reshape(-1)
            _, trans, alphas = ops.render_weights(sigmas, ts, te, ray_ids, info)
            keep = (alphas >= alpha_thre) & (trans >= early_stop_eps)
            ray_ids, ts, te = ray_ids[keep], ts[keep], te[keep]
            info = ops.packed_info_from_ray_indices(ray_ids, len(rays))
        return PackedSamples(ray_ids, ts, te, info)
