"""Volume compositing of packed samples (emission-absorption, Max 1995; NeRF eq. 3)."""

from __future__ import annotations

from torch import Tensor

from omnifield.cuda import ops
from omnifield.renderers.types import PackedSamples, RenderOutput


def composite(
    samples: PackedSamples,
    rgb: Tensor,
    sigma: Tensor,
    n_rays: int,
    background: Tensor,
    normals: Tensor | None = None,
    early_stop_eps: float = 0.0,
) -> RenderOutput:
    """Composite ragged samples into per-ray outputs.

    Args:
        samples: packed samples (rays with no samples are allowed).
        rgb: ``[S, 3]`` sample colours; sigma: ``[S]`` densities (>= 0).
        n_rays: ``R``.
        background: ``[3]`` or ``[R, 3]`` colour behind the scene.
        normals: optional ``[S, 3]`` sample normals.
        early_stop_eps: a sample contributes while its transmittance is ``>= early_stop_eps``
            (Instant-NGP's early ray termination; 0, the default, keeps every sample).

    Returns:
        :class:`RenderOutput` with ``rgb = sum w c + (1 - acc) * background``, ``alpha = acc = sum w``,
        ``depth = sum w t_mid / max(acc, 1e-10)``, ``normals = sum w n`` (when given), and
        ``extras["num_samples"]`` ``[R, 1]`` float, ``extras["weights"]`` ``[S]`` is not returned
        (use :func:`omnifield.cuda.ops.render_weights`). Differentiable w.r.t. rgb, sigma, normals, background.

    Without normals this is one fused :func:`omnifield.cuda.ops.composite_rays` call (one CUDA kernel
    per direction on the GPU); with normals, weights then per-ray sums.
    """
    if rgb.shape != (len(samples), 3) or sigma.shape != (len(samples),):
        raise ValueError(f"composite needs rgb [S, 3] and sigma [S] with S={len(samples)}, got {tuple(rgb.shape)}, {tuple(sigma.shape)}")
    ri = samples.ray_indices
    out_normals = None
    if normals is None:
        color, depth_sum, acc = ops.composite_rays(sigma, rgb, samples.t_starts, samples.t_ends, ri, samples.packed_info,
                                                   early_stop_eps)
        acc, depth_sum = acc[:, None], depth_sum[:, None]
    else:
        weights, trans, _ = ops.render_weights(sigma, samples.t_starts, samples.t_ends, ri, samples.packed_info)
        if early_stop_eps > 0:
            weights = weights * (trans.detach() >= early_stop_eps).to(weights.dtype)
        color = ops.accumulate_along_rays(weights, rgb, ri, n_rays)
        acc = ops.accumulate_along_rays(weights, None, ri, n_rays)
        depth_sum = ops.accumulate_along_rays(weights, samples.t_mid[:, None].detach(), ri, n_rays)
        out_normals = ops.accumulate_along_rays(weights, normals, ri, n_rays)
    depth = depth_sum / acc.clamp_min(1e-10)
    bg = background.to(color).expand(n_rays, 3) if background.ndim == 1 else background.to(color)
    counts = samples.packed_info[:, 1:2].to(color.dtype)
    return RenderOutput(rgb=color + (1.0 - acc) * bg, alpha=acc, depth=depth, normals=out_normals, extras={"num_samples": counts})
