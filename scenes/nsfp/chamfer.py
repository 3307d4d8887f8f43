"""Nearest neighbours, the truncated Chamfer loss of Neural Scene Flow Prior and FastNSF's distance
transform.

- NSFP (Li et al., NeurIPS 2021), released ``loss.py`` (``my_chamfer_fn``, adapted from pytorch3d's
  ``chamfer_distance``): squared nearest-neighbour distances in both directions; matches with a squared
  distance >= 2 m^2 are set to 0; each direction is summed and divided by its number of points (the
  dropped matches stay in the denominator), and the two directions are added.
- FastNSF (Li, Zheng, Ferroni, Pontes, Lucey, ICCV 2023), released ``optimization.py`` (``DT``): a voxel
  grid of Euclidean distances to the target cloud built once per pair (there with FastGeodis; here with
  scipy's exact Euclidean distance transform of the same occupancy grid), sampled trilinearly
  (``grid_sample``, ``align_corners=True``); the loss is the mean distance of the deformed source points
  (one-sided, not squared).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_CHUNK_BYTES = 2**23  # 8 MiB of distances per chunk: fastest on CPU caches, bounded on any size


def check_points(points: Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``points`` is a non-empty, finite ``[N, 3]`` floating tensor."""
    if not isinstance(points, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [N, 3], got {tuple(points.shape)}")
    if points.shape[0] == 0:
        raise ValueError(f"{name}: empty point cloud (0 points)")
    if not points.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {points.dtype}")
    if not bool(torch.isfinite(points).all()):
        bad = int((~torch.isfinite(points)).any(1).sum())
        raise ValueError(f"{name}: {bad} of {points.shape[0]} rows are NaN/inf; drop them first")


def _auto_chunk(n_ref: int) -> int:
    return int(min(4096, max(64, _CHUNK_BYTES // (4 * max(1, n_ref)))))


@torch.no_grad()
def _nn_index_torch(query: Tensor, ref: Tensor, chunk: int | None) -> Tensor:
    chunk = _auto_chunk(len(ref)) if chunk is None else int(chunk)
    if chunk < 1:
        raise ValueError(f"nearest_neighbors: chunk must be >= 1, got {chunk}")
    centre = ref.mean(0)  # |x|^2 - 2 x.y + |y|^2 loses precision far from the origin
    r, q = ref - centre, query - centre
    rr = (r * r).sum(1)
    out = torch.empty(len(q), dtype=torch.long, device=q.device)
    for s in range(0, len(q), chunk):
        d = torch.addmm(rr[None, :], q[s : s + chunk], r.t(), alpha=-2.0)  # + |q|^2 is constant per row
        out[s : s + chunk] = d.argmin(1)
    return out


@torch.no_grad()
def _nn_index_kdtree(query: Tensor, ref: Tensor) -> Tensor:
    from scipy.spatial import cKDTree

    _, idx = cKDTree(ref.detach().cpu().double().numpy()).query(query.detach().cpu().double().numpy(), k=1)
    return torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(query.device)


def nearest_neighbors(query: Tensor, ref: Tensor, chunk: int | None = None, *, backend: str = "torch") -> tuple[Tensor, Tensor]:
    """Exact nearest neighbour in ``ref [M, 3]`` of each row of ``query [N, 3]``.

    Returns ``sq_dist [N]`` (squared Euclidean distance, differentiable w.r.t. ``query`` and ``ref``:
    recomputed from the gathered neighbours as pytorch3d's ``knn_points`` gradient) and ``idx [N]``
    (int64, not differentiable). ``backend="torch"``: brute force in chunks of ``chunk`` query rows (by
    default sized so a chunk's distance block holds about 8 MiB: memory-bounded, same code on CPU and
    GPU); ``"kdtree"``: scipy's cKDTree (CPU, ~20x faster for 8k x 8k points).
    """
    check_points(query, "query")
    check_points(ref, "ref")
    if query.device != ref.device:
        raise ValueError(f"nearest_neighbors: query on {query.device}, ref on {ref.device}")
    if backend == "torch":
        idx = _nn_index_torch(query, ref, chunk)
    elif backend == "kdtree":
        idx = _nn_index_kdtree(query, ref)
    else:
        raise ValueError(f"nearest_neighbors: backend must be 'torch' or 'kdtree', got {backend!r}")
    sq = ((query - ref[idx]) ** 2).sum(1)
    return sq, idx


def _truncated_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Sum of the kept values over the number of ALL values (released ``loss.py`` point reduction)."""
    return torch.where(keep, values, torch.zeros_like(values)).sum() / values.shape[0]


def truncated_chamfer(a: Tensor, b: Tensor, truncate_sq: float = 2.0, *, dt_b: "DistanceTransform | None" = None,
                      backend: str = "torch", chunk: int | None = None) -> Tensor:
    """NSFP's truncated bidirectional Chamfer loss between ``a [N, 3]`` and ``b [M, 3]`` (scalar).

    ``mean_a(d2(a, b) if d2 < truncate_sq else 0) + mean_b(d2(b, a) if d2 < truncate_sq else 0)`` with
    ``d2`` the squared nearest-neighbour distance; the means divide by all N (resp. M) points, dropped
    matches included (released ``loss.py``). Differentiable w.r.t. ``a`` and ``b``.

    With ``dt_b`` (a :class:`DistanceTransform` of ``b``): FastNSF's one-sided loss
    ``mean_a(dt_b(a) if dt_b(a)^2 < truncate_sq else 0)`` with ``dt_b`` the (unsquared) distance;
    ``b`` is then only used for its shape check.
    """
    check_points(a, "a")
    check_points(b, "b")
    if dt_b is not None:
        d = dt_b(a)
        return _truncated_mean(d, d * d < truncate_sq)
    d_ab, _ = nearest_neighbors(a, b, chunk, backend=backend)
    d_ba, _ = nearest_neighbors(b, a, chunk, backend=backend)
    return _truncated_mean(d_ab, d_ab < truncate_sq) + _truncated_mean(d_ba, d_ba < truncate_sq)


class DistanceTransform:
    """Voxel grid of Euclidean distances to a point cloud, sampled trilinearly (FastNSF's ``DT``).

    ``grid [X, Y, Z]`` float32 holds at node ``origin + (i, j, k) * voxel`` the distance to the nearest
    node occupied by a point (points rounded to their nearest node, as FastNSF). Build with
    :meth:`build`; call with ``x [N, 3]`` to get ``distance [N]``, differentiable w.r.t. ``x``
    (coordinates outside the grid are clamped to its border). Error against the exact nearest-point
    distance: at most about ``sqrt(3) * voxel``.
    """

    def __init__(self, grid: Tensor, origin: Tensor, voxel: float):
        if grid.ndim != 3:
            raise ValueError(f"DistanceTransform: grid must be [X, Y, Z], got {tuple(grid.shape)}")
        self.grid, self.origin, self.voxel = grid, origin.to(grid.device, torch.float32), float(voxel)

    @classmethod
    def build(cls, points: Tensor, voxel: float = 0.1, margin: float | None = None, *,
              cover: Tensor | None = None, max_voxels: int = 100_000_000) -> "DistanceTransform":
        """Distance grid of ``points [M, 3]`` over their bounding box (and that of ``cover [K, 3]``, the
        points that will be queried) grown by ``margin`` metres (default 2 voxels) on each side.
        Raises ``ValueError`` when the grid would exceed ``max_voxels`` nodes."""
        from scipy.ndimage import distance_transform_edt

        check_points(points, "points")
        if voxel <= 0:
            raise ValueError(f"DistanceTransform.build: voxel must be > 0, got {voxel}")
        margin = 2.0 * voxel if margin is None else float(margin)
        box = points.detach()
        if cover is not None:
            check_points(cover, "cover")
            box = torch.cat([box, cover.detach().to(box.device)])
        lo = torch.floor((box.min(0).values.cpu().double() - margin) / voxel) * voxel
        hi = box.max(0).values.cpu().double() + margin
        shape = [int(math.ceil(float(s))) + 1 for s in (hi - lo) / voxel]
        n_vox = shape[0] * shape[1] * shape[2]
        if n_vox > max_voxels:
            raise ValueError(
                f"DistanceTransform.build: a {shape[0]}x{shape[1]}x{shape[2]} grid ({n_vox:,} voxels) at "
                f"voxel {voxel} m exceeds max_voxels={max_voxels:,}; crop the clouds or use a larger voxel")
        ijk = torch.round((points.detach().cpu().double() - lo) / voxel).long().numpy()
        free = np.ones(shape, dtype=bool)
        free[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = False
        dist = distance_transform_edt(free, sampling=voxel).astype(np.float32)
        return cls(torch.from_numpy(dist).to(points.device), lo.float(), voxel)

    def __call__(self, x: Tensor) -> Tensor:
        """Trilinear distance at ``x [N, 3]`` -> ``[N]`` (differentiable w.r.t. ``x``)."""
        sizes = torch.tensor(self.grid.shape, dtype=x.dtype, device=x.device)
        u = (x - self.origin.to(x.dtype)) / self.voxel  # grid index coordinates
        u = 2.0 * u / (sizes - 1).clamp_min(1) - 1.0  # align_corners=True normalisation
        coords = u.flip(-1).reshape(1, -1, 1, 1, 3)  # grid_sample wants (z, y, x) = (W, H, D) order
        out = F.grid_sample(self.grid[None, None].to(x.dtype), coords, mode="bilinear",
                            padding_mode="border", align_corners=True)
        return out.reshape(-1)
