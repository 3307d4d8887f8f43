"""Geometry metrics on meshes and point clouds: surface sampling and the Chamfer distance.

Everything here is numpy in, numpy out (float64), with no gradients: these are evaluation tools.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnifield.errors import DataError


@dataclass(frozen=True)
class ChamferResult:
    """A symmetric Chamfer distance between a prediction and a reference.

    Attributes:
        chamfer: ``(pred_to_ref + ref_to_pred) / 2``, in the meshes' units.
        pred_to_ref: mean distance from samples on the prediction to the nearest reference sample (accuracy).
        ref_to_pred: mean distance from samples on the reference to the nearest prediction sample (completeness).
        diagonal: length of the reference's bounding-box diagonal.
        ratio: ``chamfer / diagonal``.
        num_points: samples drawn on each surface.
    """

    chamfer: float
    pred_to_ref: float
    ref_to_pred: float
    diagonal: float
    ratio: float
    num_points: int

    def to_dict(self) -> dict:
        return asdict(self)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points ``[n, 3]`` uniformly distributed over the area of a triangle mesh (reproducible by ``seed``).

    ``vertices``: ``[V, 3]``; ``faces``: ``[F, 3]`` int. Degenerate (zero-area) meshes raise ValueError.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise ValueError(f"sample_surface: need vertices [V, 3] and faces [F>0, 3], got {v.shape} and {f.shape}")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("sample_surface: the mesh has zero area")
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=n, p=area / total)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    return w0[:, None] * a[tri] + w1[:, None] * b[tri] + w2[:, None] * c[tri]


def nearest_distances(query: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``[Q]`` Euclidean distance from each ``query [Q, 3]`` point to its nearest neighbour in ``points [P, 3]``."""
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.asarray(points, dtype=np.float64)).query(np.asarray(query, dtype=np.float64), k=1, workers=-1)
    return d


def chamfer_points(pred: np.ndarray, ref: np.ndarray) -> ChamferResult:
    """Symmetric Chamfer distance between point sets ``pred [P, 3]`` and ``ref [Q, 3]`` (mean nearest distances)."""
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    if len(pred) == 0 or len(ref) == 0:
        raise ValueError(f"chamfer_points: empty point set (pred {len(pred)}, ref {len(ref)})")
    p2r = float(nearest_distances(pred, ref).mean())
    r2p = float(nearest_distances(ref, pred).mean())
    diag = float(np.linalg.norm(ref.max(0) - ref.min(0)))
    cd = 0.5 * (p2r + r2p)
    return ChamferResult(cd, p2r, r2p, diag, cd / diag if diag > 0 else float("inf"), min(len(pred), len(ref)))


def chamfer_distance(pred_vertices, pred_faces, ref_vertices, ref_faces, *, num_points: int = 100_000,
                     seed: int = 0, reference_diagonal: float | None = None) -> ChamferResult:
    """Symmetric Chamfer distance between two triangle meshes from ``num_points`` area-uniform samples on each.

    The ratio divides by the reference's bounding-box diagonal (from its vertices), or by
    ``reference_diagonal`` when given (e.g. the full ground-truth mesh when ``ref`` is its visible part).
    """
    pred = sample_surface(pred_vertices, pred_faces, num_points, seed)
    ref = sample_surface(ref_vertices, ref_faces, num_points, seed + 1)
    r = chamfer_points(pred, ref)
    rv = np.asarray(ref_vertices, np.float64)
    diag = float(np.linalg.norm(rv.max(0) - rv.min(0))) if reference_diagonal is None else float(reference_diagonal)
    return ChamferResult(r.chamfer, r.pred_to_ref, r.ref_to_pred, diag, r.chamfer / diag, num_points)


def load_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh file (anything trimesh reads) -> vertices ``[V, 3]`` float64, faces ``[F, 3]`` int64."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise DataError("mesh file not found", path)
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as e:  # trimesh raises many types for unreadable files
        raise DataError(f"cannot read mesh: {e}", path) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError("holds no triangle mesh", path)
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
