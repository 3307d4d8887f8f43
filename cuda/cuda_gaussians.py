"""Gaussian splatting on the CUDA kernels of ``cuda/csrc/gaussians`` (3DGS, Kerbl et al. 2023; 4DGS,
Yang et al. 2024): the GPU twins of :mod:`omnifield.cuda.reference.gaussians` and
:mod:`omnifield.cuda.reference.gaussians4d`.

Every public function has the signature and semantics of its reference (same float operations in
the same order where it matters; see the ``.cu`` headers) and a first-order backward on the GPU.
The extension is built on first use by :func:`omnifield.cuda.native.load_cuda_extension`, never at
import time. Inputs: CUDA tensors, float32 for floating ones (:func:`supports`).

Public: :func:`quat_scale_to_covar`, :func:`project_gaussians`, :func:`isect_tiles`,
:func:`rasterize_to_pixels`, :func:`spherical_harmonics`, :func:`spherindrical_harmonics`,
:func:`slice_gaussians_4d`; :func:`available` (builds on first call) and :func:`supports`.

Differences from the references, all outside what the renderer and the scenes use:

- ``project_gaussians``: no gradient w.r.t. ``K``; the ``covars`` gradient is the symmetric one
  (the reference, reading only ``cov2d[0, 1]``, puts the off-diagonal gradient on one triangle:
  both give the same directional derivative along symmetric perturbations, hence the same
  gradients through ``quat_scale_to_covar`` or the 4D slice).
- ``rasterize_to_pixels``: ``tile_size`` in 1..32 (one thread per pixel of a tile).
- ``spherical_harmonics``: ``coeffs`` must have 3 channels (``[N, K, 3]``, as the spec says).
- ``slice_gaussians_4d``: ``t`` is read once on the host (a tensor ``t`` costs one sync); its gradient
  is ``-sum(v_means4[:, 3])``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native
from omnifield.cuda.reference.gaussians4d import temporal_basis

_OP = "gaussians"


def available() -> bool:
    """True when a CUDA device is present and the extension builds (or is cached) and loads."""
    return native.load_cuda_extension(_OP) is not None


def supports(*tensors: Tensor | None) -> bool:
    """Whether these inputs can run here: at least one tensor, every tensor (``None`` skipped) on a
    CUDA device, every floating one float32 (integer index tensors are fine)."""
    return native.cuda_float32_tensors(*tensors)


_loaded: list = []  # the extension once loaded (skips the loader's checks on every op call)


def _ext():
    if not _loaded:
        _loaded.append(native.require_cuda_extension(_OP, "Gaussian splatting"))
    return _loaded[0]


def _require(fn: str, *tensors: Tensor | None) -> None:
    if not supports(*tensors):
        found = ", ".join(f"{t.dtype} on {t.device}" for t in tensors if isinstance(t, Tensor))
        raise TypeError(f"{fn} (cuda/cuda_gaussians.py) needs CUDA float32 tensors, got {found}")


# ----------------------------------------------------------------------------------------------
# Covariances and projection


class _QuatScaleToCovar(torch.autograd.Function):
    @staticmethod
    def forward(ctx, quats: Tensor, scales: Tensor) -> Tensor:
        ctx.save_for_backward(quats, scales)
        return _ext().quat_scale_to_covar_forward(quats, scales)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_covars: Tensor):
        quats, scales = ctx.saved_tensors
        v_quats, v_scales = _ext().quat_scale_to_covar_backward(quats, scales, v_covars)
        return v_quats, v_scales


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``R S S^T R^T`` ``[N, 3, 3]`` from ``quats [N, 4]`` (w, x, y, z; normalised
    inside) and ``scales [N, 3]``. Differentiable w.r.t. both."""
    _require("quat_scale_to_covar", quats, scales)
    return _QuatScaleToCovar.apply(quats, scales)


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, covars, viewmat, K, width, height, near, far, eps2d, radius_clip, antialias):
        cfg = (int(width), int(height), float(near), float(far), float(eps2d), float(radius_clip), bool(antialias))
        means2d, conics, depths, radii, comps = _ext().project_forward(means, covars, viewmat, K, *cfg)
        ctx.cfg = cfg
        ctx.save_for_backward(means, covars, viewmat, K, radii)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, comps

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_comps):
        means, covars, viewmat, K, radii = ctx.saved_tensors
        antialias = ctx.cfg[-1]
        v_means, v_covars, v_viewmat = _ext().project_backward(
            means, covars, viewmat, K, *ctx.cfg, radii, v_means2d, v_conics, v_depths,
            v_comps if antialias else None, bool(ctx.needs_input_grad[2]),
        )
        return (v_means if ctx.needs_input_grad[0] else None, v_covars if ctx.needs_input_grad[1] else None,
                v_viewmat, None, None, None, None, None, None, None, None)


def project_gaussians(
    means: Tensor,
    covars: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    far: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    antialias: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """EWA projection (3DGS / gsplat ``persp_proj``, the 3DGS Jacobian clamp, ``eps2d`` blur, optional
    Mip-Splatting compensation): see :func:`omnifield.cuda.reference.gaussians.project_gaussians`.

    Args:
        means ``[N, 3]``, covars ``[N, 3, 3]`` (symmetric), viewmat ``[4, 4]`` world-to-camera (OpenCV),
        K ``[3, 3]``; width, height in pixels.

    Returns:
        ``means2d [N, 2]``, ``conics [N, 3]``, ``depths [N]`` (t.z for every Gaussian), ``radii [N]``
        int32 (0 = culled; culled Gaussians get zero means2d, conics, compensations),
        ``compensations [N]`` or None. Differentiable w.r.t. means, covars and viewmat (not K).
    """
    _require("project_gaussians", means, covars, viewmat, K)
    out = _ProjectGaussians.apply(means, covars, viewmat, K, width, height, near, far, eps2d, radius_clip, antialias)
    means2d, conics, depths, radii, comps = out
    return means2d, conics, depths, radii, comps if antialias else None


# ----------------------------------------------------------------------------------------------
# Tiles and rasterization


def isect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Sorted (tile, Gaussian) intersections: see :func:`omnifield.cuda.reference.gaussians.isect_tiles`.

    Args:
        means2d ``[N, 2]``, radii ``[N]`` integer (0 = culled), depths ``[N]``; image and tile size.

    Returns:
        ``isect_offsets [tile_h, tile_w]`` int32 and ``flatten_ids [M]`` int64, ordered by tile, depth,
        Gaussian index (CUB radix sort, stable). Not differentiable; synchronises once to read M.
    """
    _require("isect_tiles", means2d, radii, depths)
    return _ext().isect_tiles(
        means2d.detach(), radii.to(torch.int32), depths.detach(), int(width), int(height), int(tile_size)
    )


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, width, height, tile_size, offsets, flatten_ids):
        cfg = (int(width), int(height), int(tile_size))
        image, alphas, trans, last = _ext().rasterize_forward(
            means2d, conics, colors, opacities, backgrounds, *cfg, offsets, flatten_ids
        )
        ctx.cfg = cfg
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, trans, last)
        return image, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, v_image, v_alphas):
        means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids, trans, last = ctx.saved_tensors
        v_means2d, v_conics, v_colors, v_opacities = _ext().rasterize_backward(
            means2d, conics, colors, opacities, backgrounds, *ctx.cfg, offsets, flatten_ids, trans, last,
            v_image, v_alphas,
        )
        v_backgrounds = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_backgrounds = (v_image * trans[..., None]).sum(dim=(0, 1))
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None, None


def rasterize_to_pixels(
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
    """Front-to-back alpha compositing of the sorted tile lists with early termination (3DGS):
    see :func:`omnifield.cuda.reference.gaussians.rasterize_to_pixels`.

    Args:
        means2d ``[N, 2]``, conics ``[N, 3]``, colors ``[N, C]`` (any C; 1..4 in one pass),
        opacities ``[N]``; width, height; tile_size in 1..32; isect_offsets ``[tile_h, tile_w]``,
        flatten_ids ``[M]`` from :func:`isect_tiles`; backgrounds ``[C]`` or None.

    Returns:
        ``colors [H, W, C]`` and ``alphas [H, W, 1]``. Differentiable w.r.t. means2d, conics, colors,
        opacities and backgrounds.
    """
    _require("rasterize_to_pixels", means2d, conics, colors, opacities, backgrounds, isect_offsets, flatten_ids)
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
        isect_offsets.to(torch.int32), flatten_ids.to(torch.int64),
    )


# ----------------------------------------------------------------------------------------------
# Colour


class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dirs: Tensor, coeffs: Tensor, degree: int) -> Tensor:
        ctx.degree = degree
        ctx.save_for_backward(dirs, coeffs)
        return _ext().sh_forward(degree, dirs, coeffs)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_colors: Tensor):
        dirs, coeffs = ctx.saved_tensors
        v_dirs, v_coeffs = _ext().sh_backward(
            ctx.degree, dirs, coeffs, v_colors, bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
        )
        return v_dirs, v_coeffs, None


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """``SH(normalise(dirs)) . coeffs`` ``[N, 3]`` in the 3DGS basis, degree 0..3, no +0.5: see
    :func:`omnifield.cuda.reference.gaussians.spherical_harmonics`. ``coeffs [N, K, 3]`` with
    ``K >= (degree + 1)^2``. Differentiable w.r.t. dirs and coeffs."""
    if not 0 <= int(degree) <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree} (cuda/cuda_gaussians.py)")
    if coeffs.ndim != 3 or coeffs.shape[-1] != 3:
        raise ValueError(f"coeffs must be [N, K, 3] (cuda/cuda_gaussians.py), got {tuple(coeffs.shape)}")
    _require("spherical_harmonics", dirs, coeffs)
    return _SphericalHarmonics.apply(dirs, coeffs, int(degree))


def spherindrical_harmonics(degree: int, n_time: int, dirs: Tensor, dt: Tensor, period: float,
                            coeffs: Tensor) -> Tensor:
    """4DGS colour ``sum_n cos(2 pi n dt / period) SH_n(dirs)`` ``[N, 3]``: see
    :func:`omnifield.cuda.reference.gaussians4d.spherindrical_harmonics`. The temporal mix of the
    coefficients runs in PyTorch, the SH on the CUDA kernel. Differentiable w.r.t. dirs, dt, coeffs."""
    if not 0 <= degree <= 3 or n_time < 1 or not period > 0:
        raise ValueError(f"need degree in 0..3, n_time >= 1, period > 0; got {degree}, {n_time}, {period}")
    n, k = dirs.shape[0], (degree + 1) ** 2
    if coeffs.ndim != 3 or coeffs.shape[0] != n or coeffs.shape[2] != 3 or coeffs.shape[1] % n_time \
            or coeffs.shape[1] // n_time < k or dt.shape != (n,):
        raise ValueError(f"coeffs must be [{n}, K' * {n_time}, 3] with K' >= {k} and dt [{n}] "
                         f"(cuda/cuda_gaussians.py), got {tuple(coeffs.shape)} and {tuple(dt.shape)}")
    per_n = coeffs.reshape(n, n_time, -1, 3)[:, :, :k]
    mixed = per_n[:, 0] if n_time == 1 else (temporal_basis(n_time, dt, period)[:, :, None, None] * per_n).sum(1)
    return spherical_harmonics(degree, dirs, mixed)


# ----------------------------------------------------------------------------------------------
# 4D slicing


class _Slice4D(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means4, scales4, q_left, q_right, t_tensor, t: float):
        ctx.t = t
        ctx.t_like = None if t_tensor is None else (t_tensor.device, t_tensor.dtype)
        ctx.save_for_backward(means4, scales4, q_left, q_right)
        return _ext().slice_forward(means4, scales4, q_left, q_right, t)

    @staticmethod
    @once_differentiable
    def backward(ctx, v_means3, v_covars3, v_marginal):
        means4, scales4, q_left, q_right = ctx.saved_tensors
        v_means4, v_scales4, v_ql, v_qr = _ext().slice_backward(
            means4, scales4, q_left, q_right, ctx.t, v_means3, v_covars3, v_marginal
        )
        v_t = None
        if ctx.needs_input_grad[4]:
            device, dtype = ctx.t_like
            v_t = (-v_means4[:, 3].sum()).to(device=device, dtype=dtype)
        return v_means4, v_scales4, v_ql, v_qr, v_t, None


def slice_gaussians_4d(means4: Tensor, scales4: Tensor, q_left: Tensor, q_right: Tensor,
                       t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Condition 4D Gaussians on time ``t`` (Yang et al. 2024, eq. 5-6): see
    :func:`omnifield.cuda.reference.gaussians4d.slice_gaussians_4d` (same rotation convention
    ``R4 = L(q_l) R(q_r)``, quaternions normalised inside, ``s_tt`` clamped at 1e-12).

    Args:
        means4, scales4, q_left, q_right: ``[N, 4]``; t: a number or a 0-d tensor (read on the host).

    Returns:
        ``means3 [N, 3]``, ``covars3 [N, 3, 3]``, ``marginal [N]`` (unnormalised p(t)). Differentiable
        w.r.t. every tensor input, ``t`` included.
    """
    if isinstance(t, Tensor):
        if t.ndim != 0:
            raise ValueError(f"t must be a number or a 0-d tensor (cuda/cuda_gaussians.py), got {tuple(t.shape)}")
        t_value, t_tensor = float(t.detach()), t
    elif isinstance(t, (int, float)) and math.isfinite(float(t)):
        t_value, t_tensor = float(t), None
    else:
        raise TypeError(f"t must be a finite number or a 0-d tensor, got {t!r}")
    _require("slice_gaussians_4d", means4, scales4, q_left, q_right)
    return _Slice4D.apply(means4, scales4, q_left, q_right, t_tensor, t_value)
