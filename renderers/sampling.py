"""Samplers for NeRF: stratified uniform samples and hierarchical (inverse-CDF) resampling.

Both return bin edges ``[R, n + 1]`` (sorted along each ray); :func:`edges_to_packed` turns them
into :class:`PackedSamples` with ``n`` intervals per ray, so NeRF shares :func:`composite` with
every other volume renderer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnifield.cuda import ops
from omnifield.renderers.types import PackedSamples


def stratified_edges(near: Tensor, far: Tensor, n_samples: int, perturb: bool) -> Tensor:
    """``n_samples`` intervals between ``near [R]`` and ``far [R]``: edges ``[R, n + 1]``.

    With ``perturb`` the interior edges are jittered uniformly within their stratum (NeRF sec. 4).
    """
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device, dtype=near.dtype)
    if perturb:
        step = 1.0 / n_samples
        jitter = (torch.rand(near.shape[0], n_samples + 1, device=near.device) - 0.5) * step
        jitter[:, 0] = 0.0
        jitter[:, -1] = 0.0
        u = (u + jitter).clamp(0.0, 1.0)
    else:
        u = u.expand(near.shape[0], -1)
    return near[:, None] + (far - near)[:, None] * u


def pdf_edges(edges: Tensor, weights: Tensor, n_samples: int, perturb: bool, include_original: bool = True) -> Tensor:
    """Hierarchical sampling (NeRF sec. 5.2): draw ``n_samples`` points from the piecewise-constant
    PDF of ``weights [R, n]`` over ``edges [R, n + 1]`` by inverse transform sampling.

    Returns sorted edges ``[R, n_samples (+ n + 1)]`` (the coarse edges merged in when
    ``include_original``). Not differentiable (weights are detached).
    """
    w = weights.detach() + 1e-5
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1.0)
    if perturb:
        u = torch.rand(edges.shape[0], n_samples, device=edges.device)
    else:
        u = torch.linspace(0.0, 1.0, n_samples, device=edges.device).expand(edges.shape[0], -1).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    above = idx.clamp(0, cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    e_lo, e_hi = edges.gather(1, below), edges.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    t = e_lo + (u - cdf_lo) / denom * (e_hi - e_lo)
    if include_original:
        t = torch.cat([t, edges.detach()], dim=-1)
    return torch.sort(t, dim=-1).values


def edges_to_packed(edges: Tensor) -> PackedSamples:
    """Bin edges ``[R, n + 1]`` -> :class:`PackedSamples` with ``n`` intervals per ray (ray-major)."""
    n_rays, n = edges.shape[0], edges.shape[1] - 1
    ray_ids = torch.arange(n_rays, device=edges.device).repeat_interleave(n)
    info = ops.packed_info_from_ray_indices(ray_ids, n_rays)
    return PackedSamples(ray_ids, edges[:, :-1].reshape(-1), edges[:, 1:].reshape(-1), info)
