"""Volume-rendering weights and per-ray accumulation on packed (ragged) samples, pure PyTorch.

Packed format (nerfacc): samples of one ray are contiguous; ``ray_indices [S]`` says which ray
each sample belongs to, ``packed_info [R, 2]`` holds (first sample, count) per ray. Rays with zero
samples are allowed everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


def packed_exclusive_cumsum(values: Tensor, ray_indices: Tensor, packed_info: Tensor) -> Tensor:
    """Per-ray exclusive prefix sum of ``values [S]`` -> ``[S]`` (accumulated in float64). Differentiable."""
    if values.numel() == 0:
        return values.clone()
    v = values.double()
    inclusive = torch.cumsum(v, dim=0)
    exclusive = inclusive - v
    first = packed_info[:, 0].clamp(max=values.shape[0] - 1)[ray_indices]
    return (exclusive - exclusive[first]).to(values.dtype)


def render_weights(
    sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, packed_info: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Max (1995) emission-absorption weights of packed samples.

    ``alpha_i = 1 - exp(-sigma_i * delta_i)``, ``T_i = prod_{j<i} (1 - alpha_j) = exp(-sum_{j<i} sigma_j delta_j)``,
    ``w_i = T_i * alpha_i``. Inputs ``[S]``; returns ``(weights, transmittance, alphas)``, each ``[S]``,
    differentiable w.r.t. ``sigmas`` (and the interval ends).
    """
    sigma_delta = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-sigma_delta)
    trans = torch.exp(-packed_exclusive_cumsum(sigma_delta, ray_indices, packed_info))
    return trans * alphas, trans, alphas


def accumulate_along_rays(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """``sum_i w_i v_i`` per ray: ``weights [S]``, ``values [S, k]`` (or None for ``sum w``) -> ``[R, k]``. Differentiable."""
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def composite_rays(
    sigmas: Tensor,
    values: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    ray_indices: Tensor,
    packed_info: Tensor,
    early_stop_eps: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused emission-absorption compositing of packed samples with early ray termination.

    A sample contributes ``w_i = T_i alpha_i`` while ``T_i >= early_stop_eps`` (Instant-NGP's
    termination; 0 keeps every sample). Inputs ``sigmas [S]``, ``values [S, C]``, intervals ``[S]``,
    packed ``ray_indices``/``packed_info [R, 2]``. Returns ``(out [R, C] = sum w v``, ``depth [R] = sum
    w t_mid`` (not normalised), ``acc [R] = sum w)``, differentiable w.r.t. ``sigmas`` and ``values``.
    """
    n_rays = packed_info.shape[0]
    weights, trans, _ = render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info)
    if early_stop_eps > 0:
        weights = weights * (trans.detach() >= early_stop_eps).to(weights.dtype)
    out = accumulate_along_rays(weights, values, ray_indices, n_rays)
    t_mid = (0.5 * (t_starts + t_ends)).detach()
    depth = accumulate_along_rays(weights, t_mid[:, None], ray_indices, n_rays)[:, 0]
    acc = accumulate_along_rays(weights, None, ray_indices, n_rays)[:, 0]
    return out, depth, acc


def packed_info_from_ray_indices(ray_indices: Tensor, n_rays: int) -> Tensor:
    """``[R, 2]`` (first sample, count) from sorted ``ray_indices [S]``."""
    counts = torch.bincount(ray_indices, minlength=n_rays) if ray_indices.numel() else torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device)
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, counts], dim=-1)
