"""Gaussian splatting rasterizer (3DGS, Kerbl et al. 2023) on the C++ CPU kernel: tile binning and compositing.

:func:`rasterize_to_pixels_cpu` and :func:`isect_tiles_cpu` have the signatures and semantics of the oracles
:func:`omnifield.cuda.reference.gaussians.rasterize_to_pixels` and
:func:`~omnifield.cuda.reference.gaussians.isect_tiles` (pinned in the issue-4 spec) and run
``cuda/csrc/gaussians/gaussians_cpu.cpp`` (OpenMP over tiles with a dynamic schedule, SIMD over the pixels of
a tile row, ``torch.get_num_threads()`` threads), built on first use by :mod:`omnifield.cuda.native`.

Forward: the reference's float operations in the same order, except ``exp`` (the kernel's own SIMD ``exp``,
within ~2 ulp of torch's) and the transmittance product (in the input dtype; torch's ``cumprod`` rounds a
double accumulator): outputs agree to a few ulp. Backward: first order, the 3DGS back-to-front recurrence
(transmittance recovered by division), w.r.t. means2d, conics, colors, opacities and backgrounds, for upstream
gradients on either output; deterministic and independent of the thread count. ``isect_tiles_cpu`` is
bit-identical to the reference. Supported: CPU tensors of one float32/float64 dtype (see :func:`supports`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native

_OP = "gaussians"


def available() -> bool:
    """True when the C++ kernel is built (or can be built now) and loads; builds on first call."""
    return native.load_cpu_extension(_OP) is not None


def supports(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, backgrounds: Tensor | None = None
) -> bool:
    """Whether :func:`rasterize_to_pixels_cpu` handles these inputs: CPU tensors of one float32/float64 dtype."""
    tensors = [means2d, conics, colors, opacities] + ([] if backgrounds is None else [backgrounds])
    return means2d.dtype in (torch.float32, torch.float64) and all(
        t.device.type == "cpu" and t.dtype == means2d.dtype for t in tensors
    )


def isect_supports(means2d: Tensor, radii: Tensor, depths: Tensor) -> bool:
    """Whether :func:`isect_tiles_cpu` handles these inputs: CPU float32/float64 ``means2d`` and ``depths``,
    CPU integer ``radii``."""
    return (
        all(t.device.type == "cpu" for t in (means2d, radii, depths))
        and means2d.dtype in (torch.float32, torch.float64)
        and depths.dtype in (torch.float32, torch.float64)
        and not radii.dtype.is_floating_point
        and radii.dtype != torch.bool
    )


def _extension():
    return native.require_cpu_extension(_OP, "Gaussian rasterizer")


def _check(name: str, t: Tensor, shape: tuple) -> None:
    """Raise ValueError unless ``t`` has ``shape`` (``-1`` entries match anything)."""
    if t.ndim != len(shape) or any(s != -1 and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)} (cuda/cpu_gaussians.py)")


class _RasterizeToPixelsCPU(torch.autograd.Function):
    """Forward and first-order backward (means2d, conics, colors, opacities, backgrounds) on the C++ kernel."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, ids):
        ctx.set_materialize_grads(False)  # an unused output gets a None upstream gradient: skipped in C++
        out_colors, out_alphas, trans, last, packed = _extension().forward(
            means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, ids
        )
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, offsets, ids, packed, trans, last)
        ctx.image = (width, height, tile_size)
        return out_colors, out_alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_colors, grad_alphas):
        means2d, conics, colors, opacities, backgrounds, offsets, ids, packed, trans, last = ctx.saved_tensors
        nothing = (None,) * 10
        if not any(ctx.needs_input_grad[:5]) or (grad_colors is None and grad_alphas is None):
            return nothing
        grads = _extension().backward(
            means2d, conics, colors, opacities, backgrounds, *ctx.image, offsets, ids, packed, trans, last,
            grad_colors, grad_alphas,
        )
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5])) + nothing[5:]


def rasterize_to_pixels_cpu(
    means2d: Tensor,
    conics: Tensor,
    colors: Tensor,
    opacities: Tensor,
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of the sorted tile lists (3DGS forward pass) on the C++ kernel.

    Per pixel centre ``(x + 0.5, y + 0.5)``, over its tile's Gaussians in list order, with ``d = centre - mean``:
    ``sigma = 0.5 * (a*dx*dx + c*dy*dy) + b*dx*dy`` (skip if ``sigma < 0``);
    ``alpha = min(0.99, opacity * exp(-sigma))`` (skip if ``alpha < 1/255``); ``T_next = T * (1 - alpha)``;
    stop (without this Gaussian) when ``T_next <= 1e-4``; else ``out += alpha * T * color``, ``T = T_next``.

    Args:
        means2d: ``[N, 2]``; conics: ``[N, 3]`` (a, b, c); colors: ``[N, C]`` (any ``C >= 1``);
            opacities: ``[N]``; all CPU, one dtype (float32 or float64).
        width, height, tile_size: image and tile size; isect_offsets ``[tile_h, tile_w]``,
            flatten_ids ``[M]``: from :func:`isect_tiles_cpu` (or the reference's ``isect_tiles``).
        backgrounds: optional ``[C]``, composited as ``out + T * background``.

    Returns:
        ``colors [H, W, C]`` and ``alphas [H, W, 1] = 1 - T``. Differentiable (first order) w.r.t. means2d,
        conics, colors, opacities and backgrounds.

    Raises:
        ValueError: bad shapes or sizes. TypeError: inputs outside :func:`supports`.
        RuntimeError: the extension is unavailable, or the intersection lists are malformed.
    """
    n = means2d.shape[0]
    _check("means2d", means2d, (-1, 2))
    _check("conics", conics, (n, 3))
    _check("colors", colors, (n, -1))
    _check("opacities", opacities, (n,))
    if colors.shape[1] < 1:
        raise ValueError(f"colors must have at least one channel, got {tuple(colors.shape)} (cuda/cpu_gaussians.py)")
    if min(width, height, tile_size) <= 0:
        raise ValueError(f"width, height, tile_size must be positive, got {width}, {height}, {tile_size}")
    _check("isect_offsets", isect_offsets, (math.ceil(height / tile_size), math.ceil(width / tile_size)))
    _check("flatten_ids", flatten_ids, (-1,))
    if backgrounds is not None:
        _check("backgrounds", backgrounds, (colors.shape[1],))
    if not supports(means2d, conics, colors, opacities, backgrounds):
        raise TypeError(
            "rasterize_to_pixels_cpu needs CPU means2d, conics, colors, opacities (and backgrounds) of one dtype "
            f"(float32 or float64), got {means2d.dtype}, {conics.dtype}, {colors.dtype}, {opacities.dtype} on "
            f"{means2d.device} (cuda/cpu_gaussians.py)"
        )
    if isect_offsets.device.type != "cpu" or flatten_ids.device.type != "cpu":
        raise TypeError("rasterize_to_pixels_cpu needs CPU isect_offsets and flatten_ids (cuda/cpu_gaussians.py)")
    offsets = isect_offsets.to(torch.int32).contiguous()
    ids = flatten_ids.to(torch.int64).contiguous()
    bg = None if backgrounds is None else backgrounds.contiguous()
    return _RasterizeToPixelsCPU.apply(
        means2d.contiguous(), conics.contiguous(), colors.contiguous(), opacities.contiguous(), bg,
        int(width), int(height), int(tile_size), offsets, ids,
    )


def isect_tiles_cpu(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Bin projected Gaussians into screen tiles and sort the (tile, Gaussian) intersections, on the C++ kernel.

    A Gaussian with ``radius r > 0`` covers tiles ``x in [clamp(floor((mx - r) / ts), 0, tile_w),
    clamp(ceil((mx + r) / ts), 0, tile_w))`` (same for y; in the dtype of ``means2d``). Intersections are
    sorted by tile id ``ty * tile_w + tx``, then depth, then Gaussian index; bit-identical to the reference.

    Args:
        means2d: ``[N, 2]`` pixel means; radii: ``[N]`` integer radii (0 = culled); depths: ``[N]``.
        width, height, tile_size: image and tile size in pixels.

    Returns:
        ``isect_offsets [tile_h, tile_w]`` int32 and ``flatten_ids [M]`` int64. Not differentiable.
    """
    n = means2d.shape[0]
    _check("means2d", means2d, (-1, 2))
    _check("radii", radii, (n,))
    _check("depths", depths, (n,))
    if min(width, height, tile_size) <= 0:
        raise ValueError(f"width, height, tile_size must be positive, got {width}, {height}, {tile_size}")
    if not isect_supports(means2d, radii, depths):
        raise TypeError(
            "isect_tiles_cpu needs CPU float32/float64 means2d and depths and integer radii, got "
            f"{means2d.dtype}, {depths.dtype}, {radii.dtype} (cuda/cpu_gaussians.py)"
        )
    radii32 = radii.clamp(-(2**31), 2**31 - 1).to(torch.int32) if radii.dtype != torch.int32 else radii
    with torch.no_grad():
        return tuple(
            _extension().isect_tiles(means2d.detach(), radii32, depths.detach(), int(width), int(height),
                                     int(tile_size))
        )
