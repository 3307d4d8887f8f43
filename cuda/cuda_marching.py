"""Ray marching and volume-rendering compositing on the CUDA kernels of ``cuda/csrc/ray_marching`` and
``cuda/csrc/compositing`` (Instant-NGP, Mueller et al. 2022; nerfacc): the GPU twins of
:mod:`omnifield.cuda.reference.ray_aabb`, :mod:`~omnifield.cuda.reference.occupancy` and
:mod:`~omnifield.cuda.reference.compositing`.

Every public function has the signature and semantics of its reference. Marching repeats the
reference's float32 operations one for one (bit-identical samples on the same device); compositing
accumulates along each ray in float64 like the reference (equal to float32 rounding). Packed samples
are nerfacc's (``ray_indices [S]``, ``packed_info [R, 2]`` = first, count). The extension
(``"marching"``) is built on first use by :func:`omnifield.cuda.native.load_cuda_extension`, never at
import time. Inputs: CUDA tensors, float32 for floating ones (:func:`supports`).

Public: :func:`ray_aabb_intersect`, :func:`march_occupancy_grid`, :func:`occupancy_ema_update`,
:func:`render_weights`, :func:`composite_rays`; :func:`available` (builds on first call), :func:`supports`.

Differences from the references, all outside what the renderers use:

- ``composite_rays`` stops a ray at its first sample with ``T < early_stop_eps``; the reference masks
  every such sample. They agree when ``sigma * (t_end - t_start) >= 0`` (``T`` never increases).
- ``occupancy_ema_update`` ignores NaN values and cell ids outside ``[0, occs.numel())`` (the
  reference propagates NaN and raises on bad ids); ``occs`` must be a contiguous 1-D tensor.
- ``packed_info`` ranges outside ``[0, S)`` are treated as empty rays (no bounds check on the host).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native

_OP = "marching"


def available() -> bool:
    """True when a CUDA device is present and the extension builds (or is cached) and loads."""
    return native.load_cuda_extension(_OP) is not None


def supports(*tensors: Tensor | None) -> bool:
    """Whether these inputs can run here: at least one tensor, every tensor (``None`` skipped) on a
    CUDA device, every floating one float32 (bool and integer tensors are fine)."""
    return native.cuda_float32_tensors(*tensors)


_loaded: list = []  # the extension once loaded (skips the loader's checks on every op call)


def _ext():
    if not _loaded:
        _loaded.append(native.require_cuda_extension(_OP, "ray-marching"))
    return _loaded[0]


def _require(fn: str, *tensors: Tensor | None) -> None:
    if not supports(*tensors):
        found = ", ".join(f"{t.dtype} on {t.device}" for t in tensors if isinstance(t, Tensor))
        raise TypeError(f"{fn} (cuda/cuda_marching.py) needs CUDA float32 tensors, got {found}")


# ----------------------------------------------------------------------------------------------
# Rays, grids, marching (not differentiable)


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of ``R`` rays against one box (:func:`omnifield.cuda.reference.ray_aabb.ray_aabb_intersect`).

    Args:
        origins, directions ``[R, 3]`` (zero direction components allowed); aabb ``[2, 3]`` or ``[6]``.

    Returns:
        ``t_min [R]``, ``t_max [R]`` and ``hit [R]`` bool (``t_max > max(t_min, 0)``). Not differentiable.
    """
    _require("ray_aabb_intersect", origins, directions)
    box = aabb.reshape(2, 3).to(origins)
    return _ext().ray_aabb_intersect(origins.detach(), directions.detach(), box)


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
    """March ``R`` rays through a cascaded occupancy grid; keep the samples whose midpoint cell is
    occupied (:func:`omnifield.cuda.reference.occupancy.march_occupancy_grid`, bit for bit).

    Args:
        origins, directions ``[R, 3]``; t_min, t_max ``[R]``; binaries ``[Lv, G, G, G]`` bool; aabb
        ``[2, 3]`` level-0 box; step_size > 0; t_offset ``[R]`` in ``[0, 1)`` or None (jitter);
        cone_angle >= 0 (0: constant steps, else ``dt(t) = clamp(t * cone_angle, step_size, max_step)``).

    Returns:
        ``ray_indices [S]`` int64, ``t_starts [S]``, ``t_ends [S]``, ``packed_info [R, 2]`` int64. Not
        differentiable; one host synchronisation (to read S).
    """
    if cone_angle < 0 or step_size <= 0 or max_step < step_size:
        raise ValueError(f"need step_size > 0, cone_angle >= 0 and max_step >= step_size; got {step_size}, "
                         f"{cone_angle}, {max_step}")
    _require("march_occupancy_grid", origins, directions, t_min, t_max, binaries, t_offset)
    if binaries.dtype != torch.bool:
        raise TypeError(f"march_occupancy_grid: binaries must be bool, got {binaries.dtype}")
    box = aabb.reshape(2, 3).to(origins)
    offset = None if t_offset is None else t_offset.detach()
    return _ext().march(origins.detach(), directions.detach(), t_min.detach(), t_max.detach(), binaries, box,
                        float(step_size), offset, float(cone_angle), float(max_step))


def occupancy_ema_update(occs: Tensor, cell_ids: Tensor, values: Tensor, decay: float) -> Tensor:
    """In place ``occs[c] = max(occs[c] * decay, v)`` for ``cell_ids [N]`` and ``values [N]``;
    duplicates keep the largest ``v`` (float atomic max). ``occs``: contiguous ``[cells]``. Returns ``occs``."""
    _require("occupancy_ema_update", occs, cell_ids, values)
    if cell_ids.dtype.is_floating_point or cell_ids.dtype == torch.bool:
        raise TypeError(f"occupancy_ema_update: cell_ids must be integer, got {cell_ids.dtype}")
    with torch.no_grad():
        _ext().occupancy_ema_update(occs, cell_ids.to(torch.int64), values.detach(), float(decay))
    return occs


# ----------------------------------------------------------------------------------------------
# Compositing (differentiable)


class _RenderWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, t_starts, t_ends, packed_info):
        ctx.set_materialize_grads(False)  # unused outputs get None upstream: skipped in the kernel
        weights, trans, alphas = _ext().render_weights_forward(sigmas, t_starts, t_ends, packed_info)
        ctx.save_for_backward(sigmas, t_starts, t_ends, packed_info, trans)
        return weights, trans, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, v_weights, v_trans, v_alphas):
        sigmas, t_starts, t_ends, packed_info, trans = ctx.saved_tensors
        need_sigmas, need_times = ctx.needs_input_grad[0], ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if v_weights is None and v_trans is None and v_alphas is None:
            return None, None, None, None
        g_sig, g_start, g_end = _ext().render_weights_backward(
            sigmas, t_starts, t_ends, packed_info, trans, v_weights, v_trans, v_alphas, need_sigmas, need_times
        )
        return (g_sig if need_sigmas else None, g_start if ctx.needs_input_grad[1] else None,
                g_end if ctx.needs_input_grad[2] else None, None)


def _check_packed(fn: str, sigmas: Tensor, ray_indices: Tensor, packed_info: Tensor) -> None:
    if sigmas.ndim != 1 or ray_indices.shape != sigmas.shape:
        raise ValueError(f"{fn}: sigmas and ray_indices must be [S], got {tuple(sigmas.shape)}, "
                         f"{tuple(ray_indices.shape)}")
    if packed_info.ndim != 2 or packed_info.shape[1] != 2 or packed_info.dtype.is_floating_point:
        raise ValueError(f"{fn}: packed_info must be integer [R, 2], got {packed_info.dtype} "
                         f"{tuple(packed_info.shape)}")


def render_weights(
    sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, packed_info: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Max (1995) emission-absorption weights of packed samples
    (:func:`omnifield.cuda.reference.compositing.render_weights`).

    Args:
        sigmas, t_starts, t_ends ``[S]``; ray_indices ``[S]`` (shape-checked; the kernel reads
        ``packed_info``); packed_info ``[R, 2]`` (first, count).

    Returns:
        ``(weights, transmittance, alphas)``, each ``[S]``, differentiable (first order) w.r.t.
        ``sigmas``, ``t_starts`` and ``t_ends``.
    """
    _require("render_weights", sigmas, t_starts, t_ends, ray_indices, packed_info)
    _check_packed("render_weights", sigmas, ray_indices, packed_info)
    return _RenderWeights.apply(sigmas, t_starts, t_ends, packed_info.to(torch.int64))


class _CompositeRays(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sigmas, values, t_starts, t_ends, packed_info, early_stop_eps):
        ctx.set_materialize_grads(False)
        out, depth, acc = _ext().composite_forward(sigmas, values, t_starts, t_ends, packed_info, early_stop_eps)
        ctx.eps = early_stop_eps
        ctx.save_for_backward(sigmas, values, t_starts, t_ends, packed_info, out, depth, acc)
        return out, depth, acc

    @staticmethod
    @once_differentiable
    def backward(ctx, v_out, v_depth, v_acc):
        sigmas, values, t_starts, t_ends, packed_info, out, depth, acc = ctx.saved_tensors
        need = ctx.needs_input_grad
        if v_out is None and v_depth is None and v_acc is None:
            return None, None, None, None, None, None
        g_sig, g_val, g_start, g_end = _ext().composite_backward(
            sigmas, values, t_starts, t_ends, packed_info, ctx.eps, out, depth, acc, v_out, v_depth, v_acc,
            need[0], need[1], need[2] or need[3],
        )
        return (g_sig if need[0] else None, g_val if need[1] else None, g_start if need[2] else None,
                g_end if need[3] else None, None, None)


def composite_rays(
    sigmas: Tensor,
    values: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    packed_info: Tensor,
    early_stop_eps: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused emission-absorption compositing with early ray termination (Instant-NGP;
    :func:`omnifield.cuda.reference.compositing.composite_rays`).

    Args:
        sigmas ``[S]``, values ``[S, C]``, t_starts, t_ends ``[S]``, ray_indices ``[S]``, packed_info
        ``[R, 2]``; a sample contributes while its transmittance ``T >= early_stop_eps`` (0: all).

    Returns:
        ``out [R, C] = sum w v``, ``depth [R] = sum w t_mid`` (not normalised), ``acc [R] = sum w``;
        differentiable w.r.t. ``sigmas``, ``values`` (and the interval ends; ``t_mid`` is not).
    """
    _require("composite_rays", sigmas, values, t_starts, t_ends, ray_indices, packed_info)
    _check_packed("composite_rays", sigmas, ray_indices, packed_info)
    if values.ndim != 2 or values.shape[0] != sigmas.shape[0]:
        raise ValueError(f"composite_rays: values must be [S, C] with S = {sigmas.shape[0]}, got {tuple(values.shape)}")
    return _CompositeRays.apply(sigmas, values, t_starts, t_ends, packed_info.to(torch.int64), float(early_stop_eps))
