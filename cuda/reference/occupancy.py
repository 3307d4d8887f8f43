"""Occupancy-grid ray marching and EMA update (Instant-NGP / nerfacc ``OccGridEstimator``), pure PyTorch.

Grid convention: ``binaries [Lv, G, G, G]`` bool, cascade level ``i`` covers the box ``aabb`` scaled
by ``2^i`` about its centre; cell ``(ix, iy, iz)`` of a level covers
``[lo + ix * size / G, lo + (ix + 1) * size / G)`` on x (and likewise y, z). A point is assigned to
the finest level whose box holds it; points outside the coarsest box are empty.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .compositing import packed_info_from_ray_indices


def cell_indices(points: Tensor, levels: int, res: int, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """The cell of each world point ``[N, 3]`` in a cascade of ``levels`` grids of ``res^3``: ``(flat [N]
    long, level * G^3 + (ix * G + iy) * G + iz, of the finest level whose box holds the point; inside [N]
    bool, False outside the coarsest box)``. Outside points get a valid index of the coarsest level."""
    box = aabb.reshape(2, 3).to(points)
    centre, half = 0.5 * (box[0] + box[1]), 0.5 * (box[1] - box[0])
    u = (points - centre) / half  # level-0 box is [-1, 1]^3
    extent = u.abs().amax(dim=-1)
    level = torch.ceil(torch.log2(extent.clamp_min(1e-12))).clamp_min(0).long()
    inside = level < levels
    level = level.clamp(max=levels - 1)
    scale = torch.exp2(level.to(points.dtype))[:, None]
    g = ((u / scale + 1.0) * 0.5 * res).floor().long().clamp(0, res - 1)
    return ((level * res + g[:, 0]) * res + g[:, 1]) * res + g[:, 2], inside


def grid_lookup(points: Tensor, binaries: Tensor, aabb: Tensor) -> Tensor:
    """Occupancy ``[N]`` bool of world ``points [N, 3]`` in a cascaded grid ``binaries [Lv, G, G, G]``."""
    flat, inside = cell_indices(points, binaries.shape[0], binaries.shape[1], aabb)
    return binaries.reshape(-1)[flat] & inside


def march_occupancy_grid(
    origins: Tensor,
    directions: Tensor,
    t_min: Tensor,
    t_max: Tensor,
    binaries: Tensor,
    aabb: Tensor,
    step_size: float,
    t_offset: Tensor | None = None,
    cone_angle: float = 0.0,
    max_step: float = 1e10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """March ``R`` rays and keep the samples whose midpoint cell is occupied.

    The step is constant (``step_size``) when ``cone_angle == 0``; otherwise it grows with distance,
    ``dt(t) = min(max(t * cone_angle, step_size), max_step)`` (Instant-NGP / nerfacc cone marching for
    unbounded scenes: a sample's footprint follows the pixel cone).

    Args:
        origins, directions: ``[R, 3]``; t_min, t_max: ``[R]`` ray segment to march (empty when
            ``t_max <= t_min``).
        binaries: ``[Lv, G, G, G]`` bool occupancy; aabb: ``[2, 3]`` level-0 box.
        step_size: interval length along the ray (world units).
        t_offset: optional ``[R]`` in ``[0, 1)``: stratified jitter of the first interval, in steps.
        cone_angle: step growth with distance (0: constant steps; Instant-NGP uses 1/256 unbounded).
        max_step: the largest step when ``cone_angle > 0``.

    Float32 operation order (kernels match it bit for bit): constant steps ``t_i = start + i * step``
    with ``start = t_min + offset * step`` and ``ceil((t_max - start) / step)`` intervals (a true
    division, also on CUDA where dividing by a Python scalar multiplies by its reciprocal); cone steps
    ``t_{i+1} = t_i + dt(t_i)`` from ``start = t_min + offset * dt(t_min)``, while ``t_i < t_max`` and
    the step makes progress (``t_{i+1} > t_i``: a ray stops where ``t + dt`` rounds back to ``t``). An
    interval ends at ``min(t_i + dt, t_max)``. Scalars (step, cone_angle, max_step) are rounded to the
    rays' dtype first.

    Returns:
        packed ``ray_indices [S]``, ``t_starts [S]``, ``t_ends [S]``, ``packed_info [R, 2]``. Not differentiable.
    """
    if cone_angle < 0 or step_size <= 0 or max_step < step_size:
        raise ValueError(f"need step_size > 0, cone_angle >= 0 and max_step >= step_size; got {step_size}, {cone_angle}, {max_step}")
    if cone_angle > 0:
        return _march_cone(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset, cone_angle, max_step)
    n_rays = origins.shape[0]
    start = t_min if t_offset is None else t_min + t_offset * step_size
    length = (t_max - start).clamp_min(0.0)
    counts = torch.ceil(length / torch.full_like(length, step_size)).long()  # true division on every device
    counts = torch.where(t_max > start, counts, torch.zeros_like(counts))
    total = int(counts.sum())
    device = origins.device
    ray_ids = torch.repeat_interleave(torch.arange(n_rays, device=device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - first[ray_ids]
    t0 = start[ray_ids] + local.to(origins.dtype) * step_size
    t1 = torch.minimum(t0 + step_size, t_max[ray_ids])
    mid = 0.5 * (t0 + t1)
    pts = origins[ray_ids] + directions[ray_ids] * mid[:, None]
    keep = grid_lookup(pts, binaries, aabb)
    ray_ids, t0, t1 = ray_ids[keep], t0[keep], t1[keep]
    return ray_ids, t0, t1, packed_info_from_ray_indices(ray_ids, n_rays)


def _march_cone(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset, cone_angle, max_step):
    """Cone marching (see :func:`march_occupancy_grid`): all rays step together, one step per loop."""
    n_rays, device = origins.shape[0], origins.device

    def dt(t: Tensor) -> Tensor:
        return torch.clamp(t * cone_angle, min=step_size, max=max_step)

    t = t_min.clone() if t_offset is None else t_min + t_offset * dt(t_min)
    ids, starts, ends = [], [], []
    active = torch.nonzero(t < t_max).squeeze(-1)
    while active.numel():
        t0 = t[active]
        t_next = t0 + dt(t0)
        ids.append(active)
        starts.append(t0)
        ends.append(torch.minimum(t_next, t_max[active]))
        t[active] = t_next
        active = active[(t_next < t_max[active]) & (t_next > t0)]  # no progress: the ray stops
    if not ids:
        empty = t_min.new_zeros(0)
        return torch.zeros(0, dtype=torch.long, device=device), empty, empty.clone(), \
            packed_info_from_ray_indices(torch.zeros(0, dtype=torch.long, device=device), n_rays)
    ray_ids = torch.cat(ids)
    order = torch.sort(ray_ids, stable=True).indices  # ray-major, steps in order within a ray
    ray_ids, t0, t1 = ray_ids[order], torch.cat(starts)[order], torch.cat(ends)[order]
    mid = 0.5 * (t0 + t1)
    keep = grid_lookup(origins[ray_ids] + directions[ray_ids] * mid[:, None], binaries, aabb)
    ray_ids, t0, t1 = ray_ids[keep], t0[keep], t1[keep]
    return ray_ids, t0, t1, packed_info_from_ray_indices(ray_ids, n_rays)


def cell_points(cell_ids: Tensor, levels: int, resolution: int, aabb: Tensor, jitter: Tensor | None = None) -> Tensor:
    """World positions ``[N, 3]`` inside flat cell ids ``[N]`` (``level * G^3 + (ix * G + iy) * G + iz``).

    ``jitter [N, 3]`` in ``[0, 1)`` places the point in the cell (centre when None).
    """
    g = resolution
    level = cell_ids // (g**3)
    rem = cell_ids % (g**3)
    ijk = torch.stack([rem // (g * g), (rem // g) % g, rem % g], dim=-1).to(aabb.dtype)
    frac = torch.full_like(ijk, 0.5) if jitter is None else jitter.to(aabb.dtype)
    u = (ijk + frac) / g * 2.0 - 1.0  # [-1, 1] in the level's box
    box = aabb.reshape(2, 3)
    centre, half = 0.5 * (box[0] + box[1]), 0.5 * (box[1] - box[0])
    return centre + u * half * torch.exp2(level.to(aabb.dtype))[:, None]


def occupancy_ema_update(occs: Tensor, cell_ids: Tensor, values: Tensor, decay: float) -> Tensor:
    """``occs[c] = max(occs[c] * decay, value)`` for the updated cells (in place); returns ``occs``.

    Duplicate ``cell_ids`` keep the largest value.
    """
    new = torch.full_like(occs, -1.0).scatter_reduce(0, cell_ids, values.to(occs.dtype), reduce="amax", include_self=True)
    touched = torch.zeros_like(occs, dtype=torch.bool)
    touched[cell_ids] = True
    occs[touched] = torch.maximum(occs[touched] * decay, new[touched])
    return occs


def occupancy_binarize(occs: Tensor, threshold: float) -> Tensor:
    """Occupied cells: ``occs > min(mean(occs), threshold)`` (nerfacc's rule), bool like ``occs``."""
    valid = occs[occs >= 0]
    thre = min(float(valid.mean()) if valid.numel() else 0.0, threshold)
    return occs > thre
