"""Dense voxel grids (Plenoxels, Fridovich-Keil et al., CVPR 2022): trilinear interpolation of per-vertex
values (dense or row-sparse gradients), SH colour, total variation and trilinear resampling.

Layout: a grid of ``R`` vertices per side spans the unit cube (``align_corners=True``: vertex ``i`` sits
at ``i / (R - 1)``); its values are one ``[R^3, C]`` tensor whose row ``(ix * R + iy) * R + iz`` holds the
``C`` channels of vertex ``(ix, iy, iz)`` (x slowest). Rows are contiguous, so interpolating gathers
8 rows of ``C`` floats per point.

Gradients: a batch of rays touches a part of the grid, but the dense gradient of a ``128^3 x 28`` grid is
235 MB to zero, fill and step each iteration. With ``sparse_grad=True`` the gradient is instead one
coalesced sparse COO tensor of the rows read (an optimiser that reads it row by row, such as
``scenes.plenoxels.RowSparseAdam``, updates only those, as Plenoxels does).

Measured on one thread of the shared 2-core CPU (C = 28; 32k random points for the first line, 65k points
along rays for the others; forward + backward [+ Adam step]), R = 64 / 96 / 128:

- ``F.grid_sample`` (align_corners) 143 / 267 / 1017 ms, a gather of the 8 corners 86 / 202 / 285 ms:
  hence the gather (:func:`interpolate`: 8 row gathers and ``index_add_`` scatters, no ``[N, 8, C]``
  intermediate);
- + step: dense gradient and fused Adam 167 / 289 / 444 ms, sparse gradient and row-sparse Adam
  219 / 272 / 347 ms; a whole lego training step at 96^3: 0.26 s dense, 0.42 s sparse (the row gathers
  and scatters of Adam's moments cost more than one fused pass over the grid); at 128^3 0.59 / 0.53 s.
  Dense is the default below ~128^3; sparse pays off on larger grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CORNERS = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.long)


def corner_weights(u: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """The 8 grid vertices around each point and their trilinear weights.

    Args:
        u: ``[N, 3]`` points in the unit cube (clamped to it).
        resolution: ``R`` vertices per side (>= 2).

    Returns:
        ``(rows [N, 8] int64, weights [N, 8])``: row indices into the ``[R^3, C]`` values (corner order
        ``(dx, dy, dz)`` with dz fastest) and weights that sum to 1. The weights are differentiable in ``u``.
    """
    if u.ndim != 2 or u.shape[1] != 3:
        raise ValueError(f"u must be [N, 3], got {tuple(u.shape)}")
    if resolution < 2:
        raise ValueError(f"a voxel grid needs at least 2 vertices per side, got {resolution}")
    p = u.clamp(0.0, 1.0) * (resolution - 1)
    base = p.detach().floor().clamp(max=resolution - 2).long()
    frac = p - base
    corners = _CORNERS.to(u.device)
    idx = base[:, None, :] + corners[None]  # [N, 8, 3]
    rows = (idx[..., 0] * resolution + idx[..., 1]) * resolution + idx[..., 2]
    w = torch.where(corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(-1)
    return rows, w


class _Interpolate(torch.autograd.Function):
    """``sum_k w[:, k] * values[rows[:, k]]`` and ``values[extra]`` in one op, without the ``[N, 8, C]``
    intermediate; the gradient w.r.t. ``values`` is dense or one coalesced sparse tensor of every row read."""

    @staticmethod
    def forward(ctx, values: Tensor, rows: Tensor, w: Tensor, extra: Tensor, sparse: bool):
        ctx.save_for_backward(rows, w, extra)
        ctx.shape, ctx.sparse = values.shape, sparse
        out = values.index_select(0, rows[:, 0]).mul_(w[:, :1])
        for k in range(1, rows.shape[1]):
            out.addcmul_(values.index_select(0, rows[:, k]), w[:, k : k + 1])
        return out, values.index_select(0, extra)

    @staticmethod
    def backward(ctx, grad: Tensor, grad_extra: Tensor):
        rows, w, extra = ctx.saved_tensors
        n, m = rows.numel(), extra.numel()
        if ctx.sparse:
            unique, inverse = torch.unique(torch.cat([rows.reshape(-1), extra]), return_inverse=True)
            target, index = grad.new_zeros(unique.shape[0], ctx.shape[1]), inverse[:n].view_as(rows)
            extra_index = inverse[n:]
        else:
            target, index, extra_index = grad.new_zeros(ctx.shape), rows, extra
        for k in range(rows.shape[1]):
            target.index_add_(0, index[:, k], grad * w[:, k : k + 1])
        if m:
            target.index_add_(0, extra_index, grad_extra)
        if ctx.sparse:
            target = torch.sparse_coo_tensor(unique[None], target, ctx.shape, is_coalesced=True, check_invariants=False)
        return target, None, None, None, None


def interpolate(values: Tensor, u: Tensor, resolution: int, extra_rows: Tensor | None = None,
                sparse_grad: bool = False) -> tuple[Tensor, Tensor]:
    """Trilinear interpolation of a vertex grid, and optionally a plain gather of more rows.

    Args:
        values: ``[R^3, C]`` per-vertex values (layout in the module docstring).
        u: ``[N, 3]`` points in the unit cube (clamped to it).
        resolution: ``R``.
        extra_rows: ``[M]`` int64 rows to return as they are (e.g. for :func:`total_variation`) or None.
        sparse_grad: the gradient w.r.t. ``values`` is a coalesced sparse COO ``[R^3, C]`` holding only the
            rows read (``values`` must then be a leaf, e.g. a Parameter); else dense.

    Returns:
        ``([N, C], [M, C])``: equals ``F.grid_sample(..., mode="bilinear", align_corners=True)`` of the same
        grid, and ``values[extra_rows]``. Differentiable in ``values`` only (not in ``u``).
    """
    if values.ndim != 2 or values.shape[0] != resolution**3:
        raise ValueError(f"values must be [R^3, C] with R={resolution}, got {tuple(values.shape)}")
    rows, w = corner_weights(u.detach(), resolution)
    extra = rows.new_zeros(0) if extra_rows is None else extra_rows.reshape(-1).to(rows)
    if not (values.requires_grad and torch.is_grad_enabled()):
        sparse_grad = False
    return _Interpolate.apply(values, rows, w.to(values.dtype), extra, bool(sparse_grad))


def trilinear(values: Tensor, u: Tensor, resolution: int, sparse_grad: bool = False) -> Tensor:
    """``values [R^3, C]``, ``u [N, 3]`` in the unit cube -> ``[N, C]`` trilinear interpolation
    (:func:`interpolate` without extra rows). Differentiable in ``values``."""
    return interpolate(values, u, resolution, None, sparse_grad)[0]


def sh_color(coeffs: Tensor, sh: Tensor) -> Tensor:
    """Plenoxels' view-dependent colour ``sigmoid(sum_k sh_k(d) c_k)`` per channel.

    Args:
        coeffs: ``[N, 3 * K]`` SH coefficients, channel-major (the ``K`` of red, then green, then blue).
        sh: ``[N, K]`` SH basis of the view directions (``omnifield.cuda.ops.sh_encode``: ``K = degree^2``).

    Returns:
        ``[N, 3]`` colour in [0, 1]; differentiable in both inputs.
    """
    k = sh.shape[-1]
    if coeffs.shape[-1] != 3 * k or coeffs.shape[0] != sh.shape[0]:
        raise ValueError(f"coeffs must be [N, 3*K] for sh [N, K]={tuple(sh.shape)}, got {tuple(coeffs.shape)}")
    return torch.sigmoid((coeffs.view(-1, 3, k) * sh[:, None, :]).sum(-1))


def tv_rows(resolution: int, n_voxels: int | None = None, generator: torch.Generator | None = None,
            device: torch.device | str = "cpu") -> Tensor:
    """``[4 * S]`` rows of the cells whose total variation is taken: each cell's lowest vertex, then its
    +x, +y and +z neighbours (all ``(R - 1)^3`` cells, or ``n_voxels`` drawn at random with ``generator``)."""
    r = resolution
    cells = (r - 1) ** 3
    if n_voxels is None or n_voxels >= cells:
        ids = torch.arange(cells)
    else:
        ids = torch.randint(cells, (int(n_voxels),), generator=generator)
    iz, iy, ix = ids % (r - 1), (ids // (r - 1)) % (r - 1), ids // ((r - 1) ** 2)
    base = (ix * r + iy) * r + iz
    return torch.cat([base, base + r * r, base + r, base + 1]).to(device)


def tv_from_rows(gathered: Tensor) -> Tensor:
    """``[4 * S, C]`` values at :func:`tv_rows` -> ``[C]`` mean over the cells of the summed squared differences."""
    v = gathered.view(4, -1, gathered.shape[1])
    return ((v[1:] - v[:1]) ** 2).sum(0).mean(0)


def total_variation(values: Tensor, resolution: int, n_voxels: int | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
    """Per-channel total variation: mean over voxels of the squared forward differences along x, y, z.

    ``TV_c = 1 / |S| sum_{v in S} sum_{axis} (values[v + e_axis, c] - values[v, c])^2`` over voxels ``S``
    (the ``(R - 1)^3`` cells, each named by its lowest vertex); with ``n_voxels``, over that many cells
    drawn at random with ``generator`` (Plenoxels regularises a random subset each step). Squared
    differences (TensoRF / K-Planes) instead of Plenoxels' square root, so a constant grid scores exactly 0.

    Returns ``[C]``; differentiable in ``values`` (dense gradient; :meth:`VoxelGrid.interpolate` computes it
    together with an interpolation, with one sparse gradient).
    """
    return tv_from_rows(values.index_select(0, tv_rows(resolution, n_voxels, generator, values.device)))


def resample(values: Tensor, resolution: int, new_resolution: int) -> Tensor:
    """Trilinear resampling of a ``[R^3, C]`` vertex grid to ``new_resolution`` vertices per side
    (``align_corners=True``: the corners stay put, so linear fields are reproduced exactly). Not
    differentiable (used for coarse-to-fine upsampling)."""
    r, c = resolution, values.shape[1]
    grid = values.detach().view(r, r, r, c).permute(3, 0, 1, 2)[None]
    out = F.interpolate(grid, size=(new_resolution,) * 3, mode="trilinear", align_corners=True)
    return out[0].permute(1, 2, 3, 0).reshape(-1, c).contiguous()


class VoxelGrid(nn.Module):
    """A dense grid of ``channels`` values on ``resolution^3`` vertices over the unit cube.

    ``values`` (Parameter ``[R^3, C]``) starts as ``init_mean + init_std * randn`` per channel
    (``init_mean``: a scalar or ``[C]``); ``resolution`` is a buffer (saved with the weights) so a
    checkpoint of an upsampled grid can be loaded into a freshly built one (:meth:`resize` first).
    """

    def __init__(self, resolution: int, channels: int, init_std: float = 0.02, init_mean: float | Tensor = 0.0,
                 sparse_grad: bool = False):
        super().__init__()
        if resolution < 2 or channels < 1:
            raise ValueError(f"VoxelGrid needs resolution >= 2 and channels >= 1, got {resolution}, {channels}")
        self.sparse_grad = bool(sparse_grad)
        mean = torch.as_tensor(init_mean, dtype=torch.float32).expand(channels)
        self.values = nn.Parameter(mean + init_std * torch.randn(resolution**3, channels))
        self.register_buffer("resolution", torch.tensor(int(resolution)))

    @property
    def res(self) -> int:
        return int(self.resolution)

    def forward(self, u: Tensor, channels: slice | None = None) -> Tensor:
        """``u [N, 3]`` in the unit cube -> ``[N, C]`` interpolated values (or only ``channels``, dense gradient)."""
        if channels is not None:
            return trilinear(self.values[:, channels], u, self.res)
        return trilinear(self.values, u, self.res, self.sparse_grad)

    def interpolate_with_tv(self, u: Tensor, n_voxels: int | None = None,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``([N, C] values at u, [C] total_variation)`` in one gather (one sparse gradient)."""
        rows = tv_rows(self.res, n_voxels, generator, self.values.device)
        out, gathered = interpolate(self.values, u, self.res, rows, self.sparse_grad)
        return out, tv_from_rows(gathered)

    def total_variation(self, n_voxels: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``[C]`` :func:`total_variation` of the grid (random ``n_voxels`` cells, or all)."""
        return total_variation(self.values, self.res, n_voxels, generator)

    @torch.no_grad()
    def upsample(self, new_resolution: int) -> None:
        """Trilinearly resample to ``new_resolution`` vertices per side (same Parameter, new ``.data``)."""
        self.values.data = resample(self.values, self.res, int(new_resolution))
        self.values.grad = None
        self.resolution.fill_(int(new_resolution))

    @torch.no_grad()
    def resize(self, new_resolution: int) -> None:
        """Reshape to ``new_resolution`` (zeros), e.g. before loading a checkpoint of that resolution."""
        self.values.data = self.values.new_zeros(int(new_resolution) ** 3, self.values.shape[1])
        self.values.grad = None
        self.resolution.fill_(int(new_resolution))
