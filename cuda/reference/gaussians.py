"""3D Gaussian splatting in pure PyTorch: the oracle and CPU fallback of the Gaussian rasterizer.

Implements the forward pass of Kerbl et al. 2023 ("3D Gaussian Splatting for Real-Time Radiance
Field Rendering") with the EWA projection of Zwicker et al. 2001, as pinned in the issue-4 spec:
covariances from quaternions and scales, perspective projection (with the 3DGS Jacobian clamp,
the 0.3 px blur and the optional Mip-Splatting 2D-filter compensation), view-dependent colour from
the real SH basis of 3DGS, tile binning sorted by (tile, depth, index), and front-to-back alpha
compositing with early termination. Every function is differentiable through autograd; autograd
of this file *is* the backward of the rasterizer (the C++/CUDA kernels must match it).

Conventions: OpenCV camera axes (x right, y down, z forward); pixel (x, y) has its centre at
(x + 0.5, y + 0.5); Gaussians ``N``, channels ``C``, intersections ``M``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
    -0.4570457994644658, 1.445305721320277, -0.5900435899266435,
)
ALPHA_MAX = 0.99  # alpha = min(0.99, opacity * exp(-sigma))
ALPHA_MIN = 1.0 / 255.0  # Gaussians with alpha < 1/255 are skipped at that pixel
T_MIN = 1e-4  # a pixel stops when its transmittance would drop to <= 1e-4
FRUSTUM_SLACK = 0.3  # the 3DGS Jacobian clamp lets means go 30% of the half field of view outside
# Pixel-Gaussian pairs evaluated at once by rasterize_to_pixels (bounds its temporary memory).
PAIRS_PER_CHUNK = 1 << 21


def _check(name: str, t: Tensor, shape: tuple) -> None:
    """Raise ValueError unless ``t`` has ``shape`` (``-1`` entries match anything)."""
    if t.ndim != len(shape) or any(s != -1 and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("*" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)} (cuda/reference/gaussians.py)")


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances ``Sigma = R S S^T R^T`` with ``S = diag(scales)``.

    Args:
        quats: ``[N, 4]`` quaternions (w, x, y, z), normalised here (need not be unit).
        scales: ``[N, 3]`` positive standard deviations along the rotated axes.

    Returns:
        ``[N, 3, 3]`` covariances. Differentiable w.r.t. quats and scales.
    """
    _check("quats", quats, (-1, 4))
    _check("scales", scales, (quats.shape[0], 3))
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    m = rot * scales[:, None, :]
    return m @ m.transpose(-1, -2)


def _jacobian(t: Tensor, z: Tensor, K: Tensor, width: int, height: int) -> Tensor:
    """The EWA Jacobian ``[N, 2, 3]`` of the perspective projection, with the 3DGS clamp of x/z, y/z."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + FRUSTUM_SLACK * tan_fovx, cx / fx + FRUSTUM_SLACK * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + FRUSTUM_SLACK * tan_fovy, cy / fy + FRUSTUM_SLACK * tan_fovy
    tx = z * torch.minimum(torch.maximum(t[:, 0] / z, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(t[:, 1] / z, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    row0 = torch.stack([fx / z, zero, -fx * tx / (z * z)], dim=-1)
    row1 = torch.stack([zero, fy / z, -fy * ty / (z * z)], dim=-1)
    return torch.stack([row0, row1], dim=-2)


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
    """EWA perspective projection of 3D Gaussians (3DGS / gsplat ``persp_proj``).

    ``t = R x + T`` (``viewmat`` world-to-camera, OpenCV); ``mean2d = (fx t.x / z + cx, fy t.y / z + cy)``;
    ``cov2d = J R Sigma R^T J^T + eps2d I`` (J with the 3DGS clamp); conic = inverse of the blurred
    ``cov2d`` stored as ``(a, b, c)`` for ``[[a, b], [b, c]]``; radius ``ceil(3 sqrt(lambda_max))`` with
    ``lambda_max = mid + sqrt(max(mid^2 - det, 0))``, ``mid = (A + C) / 2`` of the blurred covariance.
    Culled (radius 0): ``z <= near``, ``z >= far``, ``det <= 0``, radius box wholly off the image,
    ``radius <= radius_clip``. Culled Gaussians get zero ``means2d``, ``conics``, ``compensations``.

    Args:
        means: ``[N, 3]`` world means; covars: ``[N, 3, 3]`` world covariances.
        viewmat: ``[4, 4]`` world-to-camera; K: ``[3, 3]`` pinhole intrinsics.
        width, height: image size in pixels.
        antialias: return the Mip-Splatting compensation ``sqrt(max(det(cov2d) / det(cov2d + eps2d I), 0))``.

    Returns:
        ``means2d [N, 2]``, ``conics [N, 3]``, ``depths [N]`` (t.z, also for culled Gaussians),
        ``radii [N]`` int32, ``compensations [N]`` or None. Differentiable w.r.t. means, covars,
        viewmat (and K); radii are not.
    """
    n = means.shape[0]
    _check("means", means, (-1, 3))
    _check("covars", covars, (n, 3, 3))
    _check("viewmat", viewmat, (4, 4))
    _check("K", K, (3, 3))
    rot, trans = viewmat[:3, :3], viewmat[:3, 3]
    t = means @ rot.transpose(0, 1) + trans
    depths = t[:, 2]
    in_depth = (depths > near) & (depths < far)
    z = torch.where(in_depth, depths, torch.ones_like(depths))  # safe: no inf/NaN gradients when culled
    jac = _jacobian(t, z, K, width, height)
    cov2d = jac @ (rot @ covars @ rot.transpose(0, 1)) @ jac.transpose(-1, -2)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([K[0, 0] * t[:, 0] / z + K[0, 2], K[1, 1] * t[:, 1] / z + K[1, 2]], dim=-1)
    with torch.no_grad():
        mid = 0.5 * (a + c)
        radius = torch.ceil(3.0 * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp_min(0.0))))
        mx, my = means2d[:, 0], means2d[:, 1]
        off = (mx + radius <= 0) | (mx - radius >= width) | (my + radius <= 0) | (my - radius >= height)
        valid = valid & ~off & (radius > radius_clip)
        radii = torch.where(valid, radius, torch.zeros_like(radius)).to(torch.int32)
    zero = torch.zeros((), dtype=means2d.dtype, device=means2d.device)
    means2d = torch.where(valid[:, None], means2d, zero)
    conics = torch.where(valid[:, None], conics, zero)
    compensations = None
    if antialias:
        ratio = torch.where(valid, det_orig / det_safe, zero)
        compensations = torch.sqrt(ratio.clamp_min(0.0))
    return means2d, conics, depths, radii, compensations


def _sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """The 3DGS real SH basis ``[N, (degree + 1)^2]`` at unit ``dirs [N, 3]``."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2.0 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """View-dependent colour ``SH(dir) . coeffs`` in the basis of the original 3DGS code (no +0.5).

    Args:
        degree: 0..3; only the first ``(degree + 1)^2`` coefficients are used.
        dirs: ``[N, 3]`` viewing directions (mean - camera centre), normalised here.
        coeffs: ``[N, K, 3]`` with ``K >= (degree + 1)^2``; coefficient 0 is the DC term.

    Returns:
        ``[N, 3]``. Differentiable w.r.t. dirs and coeffs.
    """
    if not 0 <= int(degree) <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree} (cuda/reference/gaussians.py)")
    k = (int(degree) + 1) ** 2
    _check("dirs", dirs, (-1, 3))
    _check("coeffs", coeffs, (dirs.shape[0], -1, -1))
    if coeffs.shape[1] < k:
        raise ValueError(f"coeffs [N, K, C] needs K >= {k} for degree {degree}, got {tuple(coeffs.shape)}")
    basis = _sh_basis(int(degree), torch.nn.functional.normalize(dirs, dim=-1))
    return torch.einsum("nk,nkc->nc", basis, coeffs[:, :k])


def isect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Bin projected Gaussians into screen tiles and sort the (tile, Gaussian) intersections.

    A Gaussian with ``radius r > 0`` covers tiles ``x in [clamp(floor((mx - r) / ts), 0, tile_w),
    clamp(ceil((mx + r) / ts), 0, tile_w))`` (same for y; computed in the dtype of ``means2d``).
    Intersections are sorted by tile id ``ty * tile_w + tx``, then depth, then Gaussian index.

    Args:
        means2d: ``[N, 2]`` pixel means; radii: ``[N]`` integer radii (0 = culled); depths: ``[N]``.
        width, height, tile_size: image and tile size in pixels.

    Returns:
        ``isect_offsets [tile_h, tile_w]`` int32 (first intersection of each tile; a tile's range is
        ``offsets[t] : offsets[t + 1]``, the last ends at M) and ``flatten_ids [M]`` int64. Not differentiable.
    """
    n = means2d.shape[0]
    _check("means2d", means2d, (-1, 2))
    _check("radii", radii, (n,))
    _check("depths", depths, (n,))
    tile_w, tile_h = math.ceil(width / tile_size), math.ceil(height / tile_size)
    with torch.no_grad():
        m, r = means2d.detach(), radii.to(means2d.dtype)
        x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, tile_w).long()
        x1 = torch.ceil((m[:, 0] + r) / tile_size).clamp(0, tile_w).long()
        y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, tile_h).long()
        y1 = torch.ceil((m[:, 1] + r) / tile_size).clamp(0, tile_h).long()
        span_x = (x1 - x0).clamp_min(0)
        counts = torch.where(radii > 0, span_x * (y1 - y0).clamp_min(0), torch.zeros_like(span_x))
        gauss = torch.repeat_interleave(torch.arange(n, device=m.device), counts)
        local = torch.arange(gauss.shape[0], device=m.device) - (torch.cumsum(counts, 0) - counts)[gauss]
        span_g = span_x[gauss]
        tile = (y0[gauss] + torch.div(local, span_g.clamp_min(1), rounding_mode="floor")) * tile_w
        tile = tile + x0[gauss] + local % span_g.clamp_min(1)
        # Lexicographic (tile, depth, index): `gauss` is ascending, so stable sorts keep index ties.
        order = torch.sort(depths.detach()[gauss], stable=True).indices
        order = order[torch.sort(tile[order], stable=True).indices]
        flatten_ids = gauss[order]
        tiles = torch.arange(tile_h * tile_w, device=m.device)
        offsets = torch.searchsorted(tile[order].contiguous(), tiles).to(torch.int32)
    return offsets.reshape(tile_h, tile_w), flatten_ids


def _alpha(dx: Tensor, dy: Tensor, conic: Tensor, opacity: Tensor, listed: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, keep)`` of pixel offsets ``dx, dy`` (broadcast with ``conic [..., 3]``, ``opacity``).

    ``keep``: listed, ``sigma >= 0`` and ``alpha >= 1/255``; ``alpha`` is 0 where not kept (and its
    gradient too: the exponent is masked first so skipped entries never produce inf).
    """
    a, b, c = conic.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    keep = listed & (sigma >= 0)
    alpha = (opacity * torch.exp(-torch.where(keep, sigma, 0.0))).clamp(max=ALPHA_MAX)
    keep = keep & (alpha >= ALPHA_MIN)
    return torch.where(keep, alpha, 0.0), keep


def _compact_hits(dx: Tensor, dy: Tensor, conic: Tensor, opacity: Tensor, listed: Tensor) -> tuple[Tensor, Tensor]:
    """Phase 1 (no autograd) over ``[B, P, L]``: the list positions of the Gaussians that contribute.

    T after each entry is a cumprod in which skipped entries multiply by exactly 1, so T is
    non-increasing and the entries before the first ``T_next <= 1e-4`` are exactly those with
    ``T_next > 1e-4``. Returns ``positions [B, P, K]`` (K = most hits of a pixel; contributing
    entries first, in list order) and ``valid [B, P, K]``.
    """
    with torch.no_grad():
        alpha, keep = _alpha(dx, dy, conic, opacity, listed)
        hit = keep & (torch.cumprod(1.0 - alpha, dim=-1) > T_MIN)
        n_hits = hit.sum(-1)
        k = int(n_hits.max()) if n_hits.numel() else 0
        b, p, pos = hit.nonzero(as_tuple=True)  # row-major: each pixel's hits are consecutive
        firsts = (torch.cumsum(n_hits.reshape(-1), 0) - n_hits.reshape(-1))[b * hit.shape[1] + p]
        slot = torch.arange(b.shape[0], device=hit.device) - firsts
        positions = torch.zeros(*hit.shape[:2], k, dtype=torch.long, device=hit.device)
        positions[b, p, slot] = pos
        valid = torch.arange(k, device=hit.device) < n_hits[..., None]
    return positions, valid


def _rasterize_tiles(
    tiles: Tensor, starts: Tensor, counts: Tensor, length: int, tile_w: int, tile_size: int,
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, flatten_ids: Tensor,
) -> tuple[Tensor, Tensor]:
    """Composite ``B`` tiles at once, each list padded to ``length``: -> ``out [B, P, C]``, ``T [B, P]``.

    ``P = tile_size^2`` pixels per tile (row-major); ``starts``/``counts`` ``[B]`` index ``flatten_ids``.
    Phase 1 finds each pixel's contributing Gaussians without autograd; phase 2 recomputes only those
    (the same float operations, in the same order) with autograd and composites them.
    """
    j = torch.arange(length, device=tiles.device)
    listed = j[None] < counts[:, None]  # [B, L]
    gid = flatten_ids[(starts[:, None] + j).clamp(max=flatten_ids.shape[0] - 1)]
    p = torch.arange(tile_size * tile_size, device=tiles.device)
    px = ((tiles % tile_w) * tile_size)[:, None] + (p % tile_size)[None]
    py = (torch.div(tiles, tile_w, rounding_mode="floor") * tile_size)[:, None] + (p // tile_size)[None]
    cx, cy = (px.to(means2d.dtype) + 0.5)[..., None], (py.to(means2d.dtype) + 0.5)[..., None]  # [B, P, 1]
    m = means2d.detach()[gid]
    positions, valid = _compact_hits(
        cx - m[:, None, :, 0], cy - m[:, None, :, 1], conics.detach()[gid][:, None],
        opacities.detach()[gid][:, None], listed[:, None],
    )
    g = torch.gather(gid[:, None, :].expand(-1, positions.shape[1], -1), 2, positions)  # [B, P, K]
    # One gather of every attribute (its backward is a single index_add over N).
    packed = torch.cat([means2d, conics, opacities[:, None], colors], dim=-1)
    rows = packed.index_select(0, g.reshape(-1)).reshape(*g.shape, packed.shape[-1])
    mx, my, conic, opacity, color = rows.split([1, 1, 3, 1, colors.shape[1]], dim=-1)  # backward: one cat
    alpha, _ = _alpha(cx - mx[..., 0], cy - my[..., 0], conic, opacity[..., 0], valid)
    t_after = torch.cumprod(1.0 - alpha, dim=-1)
    t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
    out = ((alpha * t_before)[..., None] * color).sum(-2)
    t_final = t_after[..., -1] if t_after.shape[-1] else torch.ones_like(cx[..., 0])
    return out, t_final


def _tile_chunks(counts: Tensor, pixels: int) -> list[tuple[Tensor, int]]:
    """Group the non-empty tiles, most intersections first, into chunks of about PAIRS_PER_CHUNK pairs.

    A chunk also ends where a tile's list is shorter than 3/4 of the chunk's longest (less padding).
    Returns ``(tile ids [B], padded list length)`` per chunk.
    """
    order = torch.sort(counts, descending=True, stable=True).indices
    sorted_counts = counts[order].tolist()
    n_busy = sum(1 for c in sorted_counts if c > 0)
    chunks, i = [], 0
    while i < n_busy:
        length = sorted_counts[i]
        end = min(n_busy, i + max(1, PAIRS_PER_CHUNK // (pixels * length)))
        end = next((e for e in range(i + 1, end) if 4 * sorted_counts[e] < 3 * length), end)
        chunks.append((order[i:end], length))
        i = end
    return chunks


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
    """Front-to-back alpha compositing of the sorted tile lists (3DGS forward pass).

    Per pixel centre ``(x + 0.5, y + 0.5)``, over its tile's Gaussians in list order, with ``d = centre - mean``:
    ``sigma = 0.5 * (a*dx*dx + c*dy*dy) + b*dx*dy`` (skip if ``sigma < 0``);
    ``alpha = min(0.99, opacity * exp(-sigma))`` (skip if ``alpha < 1/255``); ``T_next = T * (1 - alpha)``;
    stop (without this Gaussian) when ``T_next <= 1e-4``; else ``out += alpha * T * color``, ``T = T_next``.
    Vectorised over chunks of tiles: lists padded per chunk, ``cumprod`` for T, masks for the rules.

    Args:
        means2d: ``[N, 2]``; conics: ``[N, 3]`` (a, b, c); colors: ``[N, C]``; opacities: ``[N]``.
        width, height, tile_size: image and tile size; isect_offsets ``[tile_h, tile_w]``,
        flatten_ids ``[M]``: from :func:`isect_tiles`.
        backgrounds: optional ``[C]``, composited as ``out + T * background``.

    Returns:
        ``colors [H, W, C]`` and ``alphas [H, W, 1] = 1 - T``. Differentiable w.r.t. means2d, conics,
        colors, opacities and backgrounds.
    """
    n = means2d.shape[0]
    _check("means2d", means2d, (-1, 2))
    _check("conics", conics, (n, 3))
    _check("colors", colors, (n, -1))
    _check("opacities", opacities, (n,))
    _check("isect_offsets", isect_offsets, (math.ceil(height / tile_size), math.ceil(width / tile_size)))
    _check("flatten_ids", flatten_ids, (-1,))
    if backgrounds is not None:
        _check("backgrounds", backgrounds, (colors.shape[1],))
    tile_h, tile_w = isect_offsets.shape
    offsets = isect_offsets.reshape(-1).long()
    counts = torch.diff(offsets, append=offsets.new_tensor([flatten_ids.shape[0]]))
    pixels = tile_size * tile_size
    outs, trans, done = [], [], []
    for tiles, length in _tile_chunks(counts, pixels):
        out, t = _rasterize_tiles(
            tiles, offsets[tiles], counts[tiles], length, tile_w, tile_size,
            means2d, conics, colors, opacities, flatten_ids,
        )
        outs, trans, done = outs + [out], trans + [t], done + [tiles]
    # Empty tiles read one extra row (out 0, T 1), kept in the graph so gradients are always defined.
    link = colors[:0].sum() + opacities[:0].sum()
    outs.append(colors.new_zeros(1, pixels, colors.shape[1]) + link)
    trans.append(colors.new_ones(1, pixels) + link)
    slot = torch.full((tile_h * tile_w,), sum(t.shape[0] for t in done), dtype=torch.long, device=offsets.device)
    if done:
        ids = torch.cat(done)
        slot[ids] = torch.arange(ids.shape[0], device=ids.device)
    out = _untile(torch.cat(outs)[slot], tile_h, tile_w, tile_size)[:height, :width]
    t_final = _untile(torch.cat(trans)[slot][..., None], tile_h, tile_w, tile_size)[:height, :width]
    if backgrounds is not None:
        out = out + t_final * backgrounds
    return out, 1.0 - t_final


def _untile(x: Tensor, tile_h: int, tile_w: int, tile_size: int) -> Tensor:
    """``[tile_h * tile_w, tile_size^2, C]`` per-tile pixels -> ``[tile_h * ts, tile_w * ts, C]`` image."""
    c = x.shape[-1]
    x = x.reshape(tile_h, tile_w, tile_size, tile_size, c).permute(0, 2, 1, 3, 4)
    return x.reshape(tile_h * tile_size, tile_w * tile_size, c)
