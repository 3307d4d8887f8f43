"""Occupancy-grid ray marching (Instant-NGP; nerfacc ``OccGridEstimator``) on the C++ CPU kernel.

:func:`march_occupancy_grid_cpu` and :func:`grid_lookup_cpu` have the signatures and semantics of
the oracles :func:`omnifield.cuda.reference.occupancy.march_occupancy_grid` and
:func:`~omnifield.cuda.reference.occupancy.grid_lookup` (cascade convention: see that module) and
run ``cuda/csrc/ray_marching/ray_marching_cpu.cpp`` (two passes over rays, count then fill,
``torch.get_num_threads()`` threads), built on first use by :mod:`omnifield.cuda.native`.

The kernel repeats the reference's float operations one for one in the input dtype, so samples,
their order and ``packed_info`` are bit-identical (the cascade level uses libm's ``log2`` where the
reference uses torch's SIMD one; they agree within a few ulps of every level boundary, tested).
Supported: CPU tensors, rays of one float32/float64 dtype, bool ``binaries`` (see :func:`supports`).
Outputs are not differentiable (as in the reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnifield.cuda import native

_OP = "ray_marching"


def available() -> bool:
    """True when the C++ kernel is built (or can be built now) and loads; builds on first call."""
    return native.load_cpu_extension(_OP) is not None


def supports(
    origins: Tensor, directions: Tensor, t_min: Tensor, t_max: Tensor, binaries: Tensor, t_offset: Tensor | None = None
) -> bool:
    """Whether :func:`march_occupancy_grid_cpu` handles these inputs: CPU tensors, ``origins``,
    ``directions``, ``t_min``, ``t_max`` (and ``t_offset``) of one float32/float64 dtype, bool ``binaries``."""
    rays = [origins, directions, t_min, t_max] + ([] if t_offset is None else [t_offset])
    return (
        origins.dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == origins.dtype for t in rays)
        and binaries.device.type == "cpu"
        and binaries.dtype == torch.bool
    )


def lookup_supports(points: Tensor, binaries: Tensor) -> bool:
    """Whether :func:`grid_lookup_cpu` handles these inputs: CPU float32/float64 points, CPU bool binaries."""
    return (
        points.device.type == "cpu"
        and points.dtype in (torch.float32, torch.float64)
        and binaries.device.type == "cpu"
        and binaries.dtype == torch.bool
    )


def _extension():
    return native.require_cpu_extension(_OP, "ray-marching")


def _validate_grid(binaries: Tensor, aabb: Tensor) -> None:
    if binaries.ndim != 4 or len(set(binaries.shape[1:])) != 1 or 0 in binaries.shape:
        raise ValueError(f"binaries must be [Lv, G, G, G], got {tuple(binaries.shape)}")
    if aabb.numel() != 6:
        raise ValueError(f"aabb must be [2, 3] or [6], got {tuple(aabb.shape)}")


def march_occupancy_grid_cpu(
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
    """March ``R`` rays (constant steps, or cone steps growing with distance); keep the samples
    whose midpoint cell is occupied.

    Args:
        origins, directions: ``[R, 3]``; t_min, t_max: ``[R]`` segment to march (empty when
            ``t_max <= t_min``); all of one float dtype.
        binaries: ``[Lv, G, G, G]`` bool cascaded occupancy; aabb: ``[2, 3]`` level-0 box.
        step_size: interval length along the ray (world units), > 0.
        t_offset: optional ``[R]`` in ``[0, 1)``: stratified jitter of the first interval, in steps.
        cone_angle: 0 for constant steps; else the step at distance ``t`` is
            ``min(max(t * cone_angle, step_size), max_step)`` (Instant-NGP: 1/256 for unbounded scenes).
        max_step: the largest cone step (>= step_size).

    Returns:
        packed ``ray_indices [S]`` int64, ``t_starts [S]``, ``t_ends [S]`` (dtype of the rays) and
        ``packed_info [R, 2]`` int64 (first, count); bit-identical to the reference. Not differentiable.

    Raises:
        RuntimeError: the extension is unavailable (build failed or ``$OMNIFIELD_NO_NATIVE``).
        ValueError / TypeError: bad shapes or step, or inputs outside :func:`supports`.
    """
    if origins.ndim != 2 or origins.shape[1] != 3 or directions.shape != origins.shape:
        raise ValueError(f"origins and directions must be [R, 3], got {tuple(origins.shape)}, {tuple(directions.shape)}")
    n_rays = origins.shape[0]
    for name, t in (("t_min", t_min), ("t_max", t_max), ("t_offset", t_offset)):
        if t is not None and t.shape != (n_rays,):
            raise ValueError(f"{name} must be [R] = [{n_rays}], got {tuple(t.shape)}")
    _validate_grid(binaries, aabb)
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not (cone_angle >= 0 and max_step >= step_size):
        raise ValueError(f"need cone_angle >= 0 and max_step >= step_size, got {cone_angle}, {max_step}")
    if not supports(origins, directions, t_min, t_max, binaries, t_offset):
        raise TypeError(
            "march_occupancy_grid_cpu needs CPU rays of one dtype (float32 or float64) and bool binaries, got "
            f"origins {origins.dtype}, directions {directions.dtype}, t_min {t_min.dtype}, t_max {t_max.dtype}, "
            f"t_offset {None if t_offset is None else t_offset.dtype}, binaries {binaries.dtype} on {binaries.device}"
        )
    box = aabb.reshape(2, 3).to(origins)  # the reference converts the box to the rays' dtype first
    with torch.no_grad():
        ray_ids, t0, t1, info = _extension().march(
            origins.detach(), directions.detach(), t_min.detach(), t_max.detach(), binaries, box, float(step_size),
            None if t_offset is None else t_offset.detach(), float(cone_angle), float(max_step),
        )
    return ray_ids, t0, t1, info


def grid_lookup_cpu(points: Tensor, binaries: Tensor, aabb: Tensor) -> Tensor:
    """Occupancy ``[N]`` bool of world ``points [N, 3]`` (float32/float64, CPU) in a cascaded grid
    ``binaries [Lv, G, G, G]`` bool; the reference's ``grid_lookup`` on the C++ kernel."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got {tuple(points.shape)}")
    _validate_grid(binaries, aabb)
    if not lookup_supports(points, binaries):
        raise TypeError(
            f"grid_lookup_cpu needs CPU float32/float64 points and CPU bool binaries, got {points.dtype} on "
            f"{points.device}, {binaries.dtype} on {binaries.device}"
        )
    with torch.no_grad():
        return _extension().grid_lookup(points.detach(), binaries, aabb.reshape(2, 3).to(points))
