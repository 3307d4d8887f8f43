"""The Gaussian rasterizer: render 3D Gaussian primitives from one camera (3DGS, Kerbl et al. 2023).

Composes the ops of :mod:`omnifield.cuda.ops` (pure-PyTorch references, C++/CUDA kernels where
built): covariances -> EWA projection -> SH colours -> tile binning -> alpha compositing of colour
and depth in one pass. Differentiable w.r.t. every Gaussian tensor and the camera pose ``c2w``.
Semantics (culling, blur, compositing rules) are documented in ``cuda/reference/gaussians.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from omnifield.cuda import ops
from omnifield.datasets.cameras import Cameras
from omnifield.renderers.types import RenderOutput


@dataclass(frozen=True)
class GaussianPrimitives:
    """``N`` activated 3D Gaussians, as the rasterizer consumes them.

    Attributes:
        means: ``[N, 3]`` world positions.
        opacities: ``[N]`` in [0, 1] (already through the sigmoid).
        quats: ``[N, 4]`` rotations (w, x, y, z), normalised by the renderer; None when ``covars`` is given.
        scales: ``[N, 3]`` positive standard deviations (already through the exp); None with ``covars``.
        covars: ``[N, 3, 3]`` world covariances (e.g. 4DGS slices), or None with quats and scales.
        sh: ``[N, K, 3]`` SH coefficients in the 3DGS basis, K = (degree + 1)^2, coefficient 0 = DC ...
        colors: ... or ``[N, 3]`` precomputed colours (exactly one of ``sh`` / ``colors``).
    """

    means: Tensor
    opacities: Tensor
    quats: Tensor | None = None
    scales: Tensor | None = None
    covars: Tensor | None = None
    sh: Tensor | None = None
    colors: Tensor | None = None

    def __len__(self) -> int:
        return self.means.shape[0]


@dataclass(frozen=True)
class GaussianRenderSettings:
    """Rasterizer options.

    Attributes:
        near, far: camera-space depth range; Gaussians with ``z <= near`` or ``z >= far`` are culled.
        eps2d: screen-space blur added to every 2D covariance (pixels^2).
        antialias: Mip-Splatting 2D filter: opacity times ``sqrt(det(cov2d) / det(cov2d + eps2d I))``.
        tile_size: side of the square screen tiles (pixels).
        radius_clip: Gaussians with a radius (pixels) ``<= radius_clip`` are culled.
        sh_degree: SH degree to evaluate (0..3); None uses every coefficient of ``sh``.
    """

    near: float = 0.01
    far: float = 1e10
    eps2d: float = 0.3
    antialias: bool = False
    tile_size: int = 16
    radius_clip: float = 0.0
    sh_degree: int | None = None


@dataclass(frozen=True)
class GaussianRender:
    """One rendered image.

    Attributes:
        rgb: ``[H, W, 3]`` colour composited on the background.
        alpha: ``[H, W, 1]`` accumulated opacity.
        depth: ``[H, W, 1]`` expected camera-space depth (accumulated z / alpha; 0 where alpha is 0).
        means2d: ``[N, 2]`` projected means, in the graph: call ``retain_grad()`` before backward to
            read the screen-space gradients used by densification.
        radii: ``[N]`` int32 screen radii in pixels (0 = culled).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor

    def to_output(self) -> RenderOutput:
        """The common :class:`RenderOutput` (rgb, alpha, depth; no extras)."""
        return RenderOutput(rgb=self.rgb, alpha=self.alpha, depth=self.depth)


def _check_shape(name: str, t: Tensor | None, shape: tuple, device: torch.device) -> None:
    if t is None:
        return
    if t.ndim != len(shape) or any(s != -1 and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"GaussianPrimitives.{name} must be {want}, got {tuple(t.shape)} (renderers/gaussians.py)")
    if t.device != device:
        raise ValueError(f"GaussianPrimitives.{name} is on {t.device}, means on {device} (renderers/gaussians.py)")


def _validate(prims: GaussianPrimitives, cameras: Cameras, index: int, background: Tensor | None) -> None:
    """Raise ValueError naming the offending tensor."""
    n, dev = len(prims), prims.means.device
    _check_shape("means", prims.means, (n, 3), dev)
    _check_shape("opacities", prims.opacities, (n,), dev)
    _check_shape("quats", prims.quats, (n, 4), dev)
    _check_shape("scales", prims.scales, (n, 3), dev)
    _check_shape("covars", prims.covars, (n, 3, 3), dev)
    _check_shape("sh", prims.sh, (n, -1, 3), dev)
    _check_shape("colors", prims.colors, (n, 3), dev)
    if (prims.sh is None) == (prims.colors is None):
        raise ValueError("GaussianPrimitives needs exactly one of sh [N, K, 3] and colors [N, 3]")
    has_qs = prims.quats is not None and prims.scales is not None
    if has_qs == (prims.covars is not None) or (prims.quats is None) != (prims.scales is None):
        raise ValueError("GaussianPrimitives needs either quats [N, 4] and scales [N, 3], or covars [N, 3, 3]")
    if not -len(cameras) <= index < len(cameras):
        raise ValueError(f"camera index {index} out of range for {len(cameras)} cameras")
    if cameras.device != dev:
        raise ValueError(f"cameras are on {cameras.device}, GaussianPrimitives.means on {dev}")
    if background is not None and (background.shape != (3,) or background.device != dev):
        raise ValueError(f"background must be [3] on {dev}, got {tuple(background.shape)} on {background.device}")


def _sh_degree(sh: Tensor, requested: int | None) -> int:
    """The SH degree to evaluate: all of ``sh [N, K, 3]`` (K a square), or ``requested`` <= that."""
    available = math.isqrt(sh.shape[1]) - 1
    if (available + 1) ** 2 != sh.shape[1] or available > 3:
        raise ValueError(f"GaussianPrimitives.sh must be [N, K, 3] with K in (1, 4, 9, 16), got {tuple(sh.shape)}")
    if requested is None:
        return available
    if not 0 <= requested <= available:
        raise ValueError(f"sh_degree {requested} needs K >= {(requested + 1) ** 2}, sh is {tuple(sh.shape)}")
    return requested


def render_gaussians(
    prims: GaussianPrimitives,
    cameras: Cameras,
    index: int,
    background: Tensor | None,
    settings: GaussianRenderSettings = GaussianRenderSettings(),
    backend: str | None = None,
) -> GaussianRender:
    """Render ``prims`` from camera ``index`` of ``cameras`` (3DGS tile rasterizer).

    Colour from SH: ``max(SH(normalise(mean - camera centre)) . sh + 0.5, 0)``. The depth ``t.z`` rides as
    a fourth channel through the same compositing pass; expected depth = accumulated z / alpha.
    The background (``[3]`` or None = black) is composited on rgb only.

    Returns:
        :class:`GaussianRender` with ``rgb [H, W, 3]``, ``alpha [H, W, 1]``, ``depth [H, W, 1]``,
        ``means2d [N, 2]`` and ``radii [N]``. Differentiable w.r.t. the Gaussian tensors, ``background``
        and ``cameras.c2w`` (intrinsics are constants).
    """
    _validate(prims, cameras, index, background)
    s = settings
    width, height = int(cameras.width[index]), int(cameras.height[index])
    covars = prims.covars
    if covars is None:
        covars = ops.quat_scale_to_covar(prims.quats, prims.scales, backend=backend)
    c2w = cameras.c2w[index]
    viewmat = torch.linalg.inv(c2w)
    K = cameras.intrinsics_matrix()[index].to(prims.means.dtype)
    means2d, conics, depths, radii, comp = ops.project_gaussians(
        prims.means, covars, viewmat, K, width, height, s.near, s.far, s.eps2d, s.radius_clip, s.antialias,
        backend=backend,
    )
    if prims.sh is not None:
        dirs = prims.means - c2w[:3, 3]
        colors = ops.spherical_harmonics(_sh_degree(prims.sh, s.sh_degree), dirs, prims.sh, backend=backend)
        colors = (colors + 0.5).clamp_min(0.0)
    else:
        colors = prims.colors
    opacities = prims.opacities if comp is None else prims.opacities * comp
    features = torch.cat([colors, depths[:, None]], dim=-1)  # [N, 4]: rgb + z
    offsets, flatten_ids = ops.isect_tiles(means2d, radii, depths, width, height, s.tile_size, backend=backend)
    bg = None if background is None else torch.cat([background.to(features.dtype), features.new_zeros(1)])
    image, alpha = ops.rasterize_to_pixels(
        means2d, conics, features, opacities, width, height, s.tile_size, offsets, flatten_ids, bg, backend=backend
    )
    acc_depth = image[..., 3:]
    depth = torch.where(alpha > 0, acc_depth / torch.where(alpha > 0, alpha, torch.ones_like(alpha)), 0.0)
    return GaussianRender(rgb=image[..., :3], alpha=alpha, depth=depth, means2d=means2d, radii=radii)
