"""Ground removal and cropping of lidar frames (z up): a per-column cut (default), a height cut, or a seeded
RANSAC plane; see :func:`ground_mask`. Re-exported by :mod:`omnifield.datasets.pointclouds`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from omnifield.datasets.pointclouds import PointCloudFrame


def fit_ground_plane(points: np.ndarray, *, threshold: float = 0.3, iterations: int = 200, seed: int = 0,
                     max_tilt_deg: float = 30.0) -> tuple[np.ndarray, float, np.ndarray]:
    """RANSAC ground plane: among planes tilted at most ``max_tilt_deg`` from horizontal (z up), the one
    maximising (points within ``threshold`` m) - (points more than ``threshold`` below it), since nothing
    lies under the ground (a plain inlier count picks a layer of car bodies in street scenes); refined by
    least squares on its inliers. Deterministic for a given ``seed``.

    Returns ``normal [3]`` (unit, n_z > 0), ``d`` (plane ``normal . x + d = 0``) and the inlier mask ``[N]``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < 3:
        raise ValueError(f"fit_ground_plane needs at least 3 points, got {len(pts)}")
    rng = np.random.default_rng(seed)
    cos_max = math.cos(math.radians(max_tilt_deg))
    sample = pts if len(pts) <= 20000 else pts[rng.choice(len(pts), 20000, replace=False)]
    best, best_count = None, -math.inf
    for _ in range(iterations):
        a, b, c = sample[rng.choice(len(sample), 3, replace=False)]
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n)
        if norm < 1e-9 or abs(n[2]) / norm < cos_max:
            continue
        n = n / norm * np.sign(n[2])
        dist = sample @ n - n @ a
        count = int(np.sum(np.abs(dist) < threshold)) - int(np.sum(dist < -threshold))
        if count > best_count:
            best, best_count = (n, -float(n @ a)), count
    if best is None:
        raise ValueError(f"fit_ground_plane: no plane within {max_tilt_deg} deg of horizontal found")
    n, d = best
    inliers = np.abs(pts @ n + d) < threshold
    centroid = pts[inliers].mean(axis=0)
    _, _, vt = np.linalg.svd(pts[inliers] - centroid, full_matrices=False)
    n_ref = vt[-1] * np.sign(vt[-1][2] or 1.0)
    if abs(n_ref[2]) >= cos_max:
        n, d = n_ref, -float(n_ref @ centroid)
    return n, float(d), np.abs(pts @ n + d) < threshold


def _ground_height(z: np.ndarray) -> float:
    """The ground's z: the densest 0.1 m layer of z among the lower half of the points."""
    low = z[z <= np.median(z)]
    bins = np.arange(low.min(), low.max() + 0.2, 0.1)
    hist, edges = np.histogram(low, bins=bins)
    k = int(np.argmax(hist))
    return float(0.5 * (edges[k] + edges[k + 1]))


def ground_mask(points: np.ndarray, method: str = "grid", *, height: float | None = None,
                threshold: float | None = None, cell: float = 1.0, seed: int = 0) -> np.ndarray:
    """``[N]`` bool: the ground points of ``points [N, 3]`` (z up) by ``method``.

    ``"grid"`` (default): a point is ground when it lies less than ``threshold`` (default 0.15) m above
    the lowest point of its ``cell`` x ``cell`` m column; it follows slopes and hills. On the AV2 pair it
    removes 95% of the labelled ground and keeps 94% of the rest (0.3 m: 99% / 90%), and NSFP on the
    second sweep cleaned this way reaches 0.031 m EPE3D where the single-height cut leaves 0.38 m (at
    0.3 m the bottoms of objects go too, and the first sweep's labelled objects lose their match).
    A column holding only an object (no ground hit) loses its lowest ``threshold`` m. ``"height"``:
    ``z < height + threshold`` (default 0.3); ``height`` None estimates the ground's z as the densest
    0.1 m layer of the lower half of the points. ``"ransac"``: within ``threshold`` (default 0.3) m of
    the RANSAC ground plane (:func:`fit_ground_plane`, seeded).
    """
    points = np.asarray(points)
    if threshold is None:
        threshold = 0.15 if method == "grid" else 0.3
    if method == "grid":
        if cell <= 0:
            raise ValueError(f"ground_mask: cell must be > 0, got {cell}")
        if len(points) == 0:
            return np.zeros(0, bool)
        ij = np.floor(points[:, :2] / cell).astype(np.int64)
        _, column = np.unique(ij, axis=0, return_inverse=True)
        column = column.reshape(-1)
        lowest = np.full(int(column.max()) + 1, np.inf)
        np.minimum.at(lowest, column, points[:, 2])
        return points[:, 2] - lowest[column] < threshold
    if method == "height":
        z = points[:, 2]
        h = _ground_height(z) if height is None else float(height)
        return z < h + threshold
    if method == "ransac":
        return fit_ground_plane(points, threshold=threshold, seed=seed)[2]
    raise ValueError(f"ground removal method must be 'grid', 'height' or 'ransac', got {method!r}")


def remove_ground(frame: PointCloudFrame, method: str = "grid", *, height: float | None = None,
                  threshold: float | None = None, cell: float = 1.0, seed: int = 0) -> PointCloudFrame:
    """The frame without its ground points (z up); methods and parameters of :func:`ground_mask`."""
    return frame.select(~ground_mask(frame.points, method, height=height, threshold=threshold, cell=cell, seed=seed))


def crop(frame: PointCloudFrame, *, max_range: float | None = None, box=None) -> PointCloudFrame:
    """Keep points within ``max_range`` m (3D distance from the sensor origin) and inside ``box``
    ``(xmin, xmax, ymin, ymax[, zmin, zmax])`` (bounds inclusive)."""
    keep = np.ones(len(frame), bool)
    if max_range is not None:
        keep &= np.linalg.norm(frame.points, axis=1) <= max_range
    if box is not None:
        box = [float(b) for b in box]
        if len(box) not in (4, 6):
            raise ValueError(f"crop: box must be (xmin, xmax, ymin, ymax[, zmin, zmax]), got {box}")
        for axis in range(len(box) // 2):
            c = frame.points[:, axis]
            keep &= (c >= box[2 * axis]) & (c <= box[2 * axis + 1])
    return frame.select(keep)
