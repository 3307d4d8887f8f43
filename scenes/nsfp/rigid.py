"""Rigid refinement of an accumulated lidar sequence: moving objects snapped to rigid motions by ICP.

The continuous flow field (:mod:`omnifield.scenes.nsfp.trajectory`) moves every point on its own, and
its velocity of a car is off by a few cm per frame where the car's surfaces do not pin it down (sliding
along a side, vertical drift), so far sweeps land ~10 cm off. Lidar movers are mostly vehicles, i.e.
rigid: every sweep of one car reaches the reference time by ONE rigid transform. :func:`refine_rigid`:

1. *moving points*: non-ground points whose flow-field displacement per frame interval exceeds
   ``RigidConfig.motion_threshold`` in the ego-compensated world (the caller decides; see ``accumulate``);
2. *clusters*: connected components (points closer than ``cluster_radius``) of the moving points at
   their flow-field positions at the reference time, every sweep together (:func:`cluster_points`);
3. *ground plane* (``planar_motion``): a plane fitted to the ground points within ``ground_radius`` of
   the cluster; the object's motion is then restricted to the plane (rotation about its normal,
   translation along it): vehicles drive on the ground, and lidar rings, horizontal scan lines on
   mostly vertical faces, barely constrain vertical motion (6-DoF ICP let the sweeps drift vertically);
4. *per cluster, per sweep*, sweeps taken outward from the reference: the rigid transform that best
   explains the flow result (Kabsch, :func:`rigid_fit`), and a constant-velocity prediction from the two
   previously registered sweeps, each initialise a robust ICP (:func:`icp`: point-to-plane + a little
   point-to-point, Huber weights, a maximum correspondence distance, and a weak pull of every point
   towards its initial position, which decides what the surfaces leave free) of the sweep's ORIGINAL
   points against the cluster's target: the reference sweep's own points (exact), grown by each
   registered sweep; the result that fits the target better (:func:`alignment_cost`) is kept;
5. the sweep's points are replaced by the rigid result unless a check fails (then they keep the flow
   result): too few points; the flow result itself not rigid (RMS about its rigid fit above
   ``max_flow_residual``: pedestrians, two objects in one cluster); ICP not converged; too few matches;
   or the rigid result fitting the target worse than the flow result.

Limits: the rigid-object assumption. Non-rigid movers are left to the flow field (by the rigidity
check, not recognised as such); two objects closer than ``cluster_radius`` form one cluster, which
usually fails the rigidity check and keeps the flow result; clusters under ``min_cluster_points`` and
sweeps under ``min_frame_points`` keep the flow result; a sweep seeing a side of the object that the
target has not seen has few matches and falls back; ``planar_motion`` assumes the ground under the
object's path is one plane (a crest or a dip within a second's drive bends it) and leaves objects with
no ground around them (fliers, ground removal off) to the flow field; a sweep whose flow result landed
farther than ``cluster_radius`` from its object joins no cluster and keeps it. Static points
(``moving`` false) are never moved.

On the synthetic 10-sweep sequence (``bench/flow.py --only accumulate``) the moving points went from
3.7 cm median / 9.5 cm p90 / 59 % within 5 cm (flow field) to 0.5 cm / 2.6 cm / 99 %, in ~3 s.
Besl & McKay 1992 (ICP), Chen & Medioni 1992 (point-to-plane).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RigidConfig:
    """Rigid refinement of moving objects after the flow-field integration (``TrajectoryConfig.rigid``)."""

    enabled: bool = True
    """Run the refinement (``--set rigid.enabled=false`` keeps the flow-field result)."""
    motion_threshold: float = 0.05
    """A non-ground point moves when the field's displacement per frame interval at its own time
    exceeds this (m; 0.05 m per 0.1 s frame = 0.5 m/s). The fitted static world drifts by ~2 mm."""
    cluster_radius: float = 1.0
    """Moving points closer than this (m, at the reference time) join one object. The lidar's ring
    spacing on a car at 40 m is ~0.9 m; two cars in neighbouring lanes are ~1.7 m apart."""
    min_cluster_points: int = 50
    """Clusters with fewer points (all sweeps together) keep the flow result."""
    min_frame_points: int = 10
    """A sweep with fewer points of a cluster keeps the flow result for them."""
    max_flow_residual: float = 0.15
    """Rigidity check: the RMS (m) of the flow result about its best rigid fit above which the sweep's
    points are not treated as one rigid object and keep the flow result."""
    planar_motion: bool = True
    """Restrict each object's motion to its local ground plane (3 DoF: rotation about the plane's normal,
    translation along it); objects without a ground plane nearby keep the flow result. False: 6-DoF ICP,
    which lidar scan lines leave loose vertically (synthetic sequence: moving points 2.6 cm median but
    11 cm p90, against 0.5 cm / 2.6 cm planar and 3.7 cm / 9.5 cm for the flow alone)."""
    ground_radius: float = 3.0
    """Ground points within this distance (m) of the object's points at the reference time fit its plane."""
    min_ground_points: int = 20
    """Fewer ground points near the object (or not on a plane): no ground plane, the flow result is kept."""
    max_correspondence: float = 0.5
    """ICP matches farther than this (m) are dropped (the flow result is within ~0.1 m on the synthetic sequence)."""
    huber: float = 0.03
    """Scale (m) of the Huber weights of the ICP residuals."""
    point_weight: float = 0.01
    """Weight of the point-to-point residual next to the point-to-plane one (weight 1). Small: matched to
    the nearest target point, lidar rings pull a sweep's scan lines onto the target's."""
    anchor_weight: float = 0.02
    """Weight of the pull of each point towards its initial position (the flow result, or the
    constant-velocity prediction), next to the point-to-plane term (weight 1): decides what the object's
    surfaces leave free (e.g. sliding along the one side a sweep sees)."""
    worse_margin: float = 0.02
    """A rigid result whose RMS :func:`alignment_cost` exceeds the flow result's by more than this (m) is
    rejected (ICP in a wrong minimum). A margin, as the flow moves each point freely and may fit the
    target a little better than any rigid motion while being farther from the truth."""
    min_inlier_fraction: float = 0.5
    """A sweep's ICP result needs this share of its points matched within ``max_correspondence``."""
    max_iterations: int = 30
    """ICP iterations at most."""
    tolerance: float = 1e-5
    """ICP stops when a step moves no point of the sweep by more than this (m)."""
    settled: float = 0.002
    """ICP still running after ``max_iterations`` counts as converged when its last step moved no point by
    more than this (m), else the flow result is kept: on a sparse target, nearest-neighbour switches keep
    it stepping back and forth by ~0.5 mm."""
    normal_neighbors: int = 12
    """Neighbours of the PCA normals of the target."""
    static_start: bool = False
    """Also start ICP from no motion (the identity) and keep the better fit. Off for sequences (the flow
    result and the constant-velocity prediction are better starts); on for pairs
    (:data:`omnifield.scenes.nsfp.rigid_pair.PAIR_RIGID`), where the flow of a fast object can be a fraction of its motion."""

    def __post_init__(self):
        positive = {"motion_threshold": self.motion_threshold, "cluster_radius": self.cluster_radius,
                    "max_correspondence": self.max_correspondence, "huber": self.huber, "tolerance": self.tolerance,
                    "settled": self.settled, "ground_radius": self.ground_radius, "worse_margin": self.worse_margin}
        bad = [k for k, v in positive.items() if not v > 0]
        if bad:
            raise ValueError(f"RigidConfig: {', '.join(bad)} must be > 0")
        counts = (self.min_frame_points, self.min_cluster_points, self.normal_neighbors, self.min_ground_points)
        if min(counts) < 3 or self.max_iterations < 1:
            raise ValueError("RigidConfig: min_frame_points, min_cluster_points, normal_neighbors, min_ground_points "
                             "must be >= 3 and max_iterations >= 1")
        if not 0.0 <= self.min_inlier_fraction <= 1.0 or min(self.point_weight, self.anchor_weight) < 0 \
                or self.max_flow_residual <= 0:
            raise ValueError("RigidConfig: min_inlier_fraction must be in [0, 1], point_weight and anchor_weight >= 0, "
                             "max_flow_residual > 0")


# -- small ops ---------------------------------------------------------------------------------------
def rigid_fit(source: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``[4, 4]`` rigid transform ``T`` minimising ``sum w |R source_i + t - target_i|^2`` (Kabsch / Umeyama
    without scale). ``source``, ``target``: ``[M, 3]`` corresponding points; ``weights``: ``[M]`` >= 0."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 3:
        raise ValueError(f"rigid_fit: source and target must both be [M, 3], got {source.shape}, {target.shape}")
    w = np.ones(len(source)) if weights is None else np.asarray(weights, np.float64)
    if len(source) == 0 or w.sum() <= 0:
        return np.eye(4)
    w = w / w.sum()
    cs, ct = w @ source, w @ target
    h = ((source - cs) * w[:, None]).T @ (target - ct)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, ct - r @ cs
    return out


def apply(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points [M, 3]`` moved by the ``[4, 4]`` transform."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def _exp_se3(delta: np.ndarray) -> np.ndarray:
    """``[4, 4]`` of a small twist ``delta = (omega, v)`` (rotation by Rodrigues, translation ``v``)."""
    omega, v = delta[:3], delta[3:]
    angle = np.linalg.norm(omega)
    k = np.array([[0, -omega[2], omega[1]], [omega[2], 0, -omega[0]], [-omega[1], omega[0], 0]])
    if angle < 1e-12:
        r = np.eye(3) + k
    else:
        k = k / angle
        r = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = r, v
    return out


def cluster_points(points: np.ndarray, radius: float, min_points: int = 1) -> np.ndarray:
    """``[M]`` int64 cluster id of each of ``points [M, 3]``: connected components of the graph linking
    points closer than ``radius``, numbered by size (0 = largest); components under ``min_points``: -1."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    m = len(points)
    if m == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = rank[comp].astype(np.int64)
    labels[sizes[comp] < min_points] = -1
    return labels


# -- ICP -------------------------------------------------------------------------------------------------
@dataclass
class IcpResult:
    """What :func:`icp` found: ``transform [4, 4]`` (source -> target), ``converged``, ``iterations``,
    ``inlier_fraction`` (source points matched within the maximum correspondence distance), ``cost``
    (:func:`alignment_cost` at the result)."""

    transform: np.ndarray
    converged: bool
    iterations: int
    inlier_fraction: float
    cost: float


def alignment_cost(moved: np.ndarray, target: np.ndarray, normals: np.ndarray, target_tree,
                   config: RigidConfig = RigidConfig()) -> tuple[float, float]:
    """How well ``moved [M, 3]`` fits ``target [T, 3]`` (unit PCA ``normals [T, 3]``, zero rows: none; its
    cKDTree): the mean over the points of the squared point-to-plane distance to the nearest target point
    plus ``point_weight`` times the squared point-to-point one (point to point alone where the target is not
    planar), ``max_correspondence^2`` for points without a match; and the share of points matched. The ICP
    data term, so ICP and flow results compare on the same scale."""
    if not len(moved):
        return 0.0, 0.0
    d, idx = target_tree.query(moved, k=1, distance_upper_bound=config.max_correspondence)
    inlier = np.isfinite(d)
    cost = np.full(len(moved), config.max_correspondence ** 2)
    diff = moved[inlier] - target[idx[inlier]]
    n = normals[idx[inlier]]
    sq = (diff ** 2).sum(1)
    cost[inlier] = np.where((n != 0).any(1), (diff * n).sum(1) ** 2 + config.point_weight * sq, sq)
    return float(cost.mean()), float(inlier.mean())


def icp(source: np.ndarray, target: np.ndarray, init: np.ndarray | None = None, config: RigidConfig = RigidConfig(),
        *, anchor: np.ndarray | None = None, up: np.ndarray | None = None, target_normals: np.ndarray | None = None,
        target_tree=None) -> IcpResult:
    """Robust ICP: the ``[4, 4]`` transform taking ``source [M, 3]`` onto ``target [T, 3]``, from ``init``.

    Each iteration matches every moved source point to its nearest target point (dropped beyond
    ``config.max_correspondence``) and takes one Gauss-Newton step on the Huber-weighted point-to-plane
    residuals (target PCA normals, :func:`~omnifield.scenes.nsfp.trajectory.surface_normals`), plus
    ``config.point_weight`` times the point-to-point ones, plus ``config.anchor_weight`` times the squared
    distance of each moved source point to its ``anchor [M, 3]`` position (the flow result; None: no
    anchor). The anchor decides the motions the surfaces leave free (sliding along a car's side); the
    point-to-point term is kept small because lidar rings make it snap sweeps to each other's scan lines.
    ``up``: a unit plane normal restricts the motion to that plane (rotation about ``up``, translation
    across it; ``init`` is projected first, :func:`planar_part`). Stops when a step moves no source point
    by more than ``config.tolerance``; converged if the last step moved none by more than
    ``config.settled``. NumPy, not differentiable.
    """
    from scipy.spatial import cKDTree

    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    for name, arr in (("source", source), ("target", target)):
        if arr.ndim != 2 or arr.shape[1] != 3 or len(arr) < 3:
            raise ValueError(f"icp: {name} must be [M >= 3, 3], got {arr.shape}")
    if anchor is not None and np.shape(anchor) != source.shape:
        raise ValueError(f"icp: anchor must be [M, 3] like source {source.shape}, got {np.shape(anchor)}")
    tree = cKDTree(target) if target_tree is None else target_tree
    if target_normals is None:
        from omnifield.scenes.nsfp.trajectory import surface_normals

        target_normals = surface_normals(target, k=min(config.normal_neighbors, len(target)))
    transform = np.eye(4) if init is None else np.asarray(init, np.float64).copy()
    basis = np.eye(6)
    if up is not None:
        up = np.asarray(up, np.float64) / np.linalg.norm(up)
        transform = planar_part(transform, up, source)
        e1, e2 = _plane_axes(up)
        basis = np.zeros((6, 3))
        basis[:3, 0], basis[3:, 1], basis[3:, 2] = up, e1, e2
    reach = np.linalg.norm(source - source.mean(0), axis=1).max() + 1.0
    converged, it, moved_by = False, 0, np.inf
    for it in range(1, config.max_iterations + 1):
        x = apply(transform, source)
        d, idx = tree.query(x, k=1, distance_upper_bound=config.max_correspondence)
        keep = np.isfinite(d)
        if keep.sum() < 6:
            break
        h, g = _normal_equations(x[keep], target[idx[keep]], target_normals[idx[keep]], config)
        if anchor is not None and config.anchor_weight > 0:
            jp = _point_jacobian(x)
            h = h + config.anchor_weight * np.einsum("mki,mkj->ij", jp, jp)
            g = g + config.anchor_weight * np.einsum("mki,mk->i", jp, x - anchor)
        h, g = basis.T @ h @ basis, basis.T @ g
        delta = basis @ -np.linalg.solve(h + 1e-9 * np.trace(h) * np.eye(len(h)), g)
        transform = _exp_se3(delta) @ transform
        moved_by = np.linalg.norm(delta[:3]) * reach + np.linalg.norm(delta[3:])  # bound on a point's step
        if moved_by < config.tolerance:
            break
    converged = moved_by < max(config.tolerance, config.settled)
    cost, inliers = alignment_cost(apply(transform, source), target, target_normals, tree, config)
    return IcpResult(transform, converged, it, inliers, cost)


def _plane_axes(up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors completing the unit ``up [3]`` to an orthonormal basis."""
    e1 = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1)


def planar_part(transform: np.ndarray, up: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The motion parallel to the plane with unit normal ``up`` closest to ``transform`` on ``points [M, 3]``:
    its rotation about ``up`` (twist part) and, given that rotation, the translation moving the points'
    centroid where ``transform`` moves it, less its component along ``up``."""
    e1, e2 = _plane_axes(up)
    r = transform[:3, :3] @ e1
    angle = np.arctan2(r @ e2, r @ e1)
    out = _exp_se3(np.concatenate([angle * up, np.zeros(3)]))
    c = points.mean(0)
    t = apply(transform, c[None])[0] - out[:3, :3] @ c
    out[:3, 3] = t - (t @ up) * up
    return out


def _point_jacobian(x: np.ndarray) -> np.ndarray:
    """``[M, 3, 6]`` derivative of ``x + omega x x + v`` in ``(omega, v)`` at zero: ``[-[x]_x, I]``."""
    skew = np.zeros((len(x), 3, 3))
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -x[:, 2], x[:, 1], -x[:, 0]
    skew = skew - skew.transpose(0, 2, 1)
    return np.concatenate([-skew, np.broadcast_to(np.eye(3), (len(x), 3, 3))], 2)


def _normal_equations(x: np.ndarray, q: np.ndarray, n: np.ndarray, config: RigidConfig) -> tuple[np.ndarray, np.ndarray]:
    """``H [6, 6]``, ``g [6]`` of the Huber-IRLS Gauss-Newton step in the twist ``(omega, v)`` for moved points
    ``x`` matched to ``q`` with normals ``n`` (zero rows, non-planar: no point-to-plane term)."""
    diff = x - q
    planar = (n != 0).any(1)
    r_plane = (diff * n).sum(1)  # point-to-plane: r = n . diff, J = [x x n, n]
    j_plane = np.concatenate([np.cross(x, n), n], 1)
    j_point = _point_jacobian(x)  # point-to-point: r = diff

    def huber(r):
        a = np.abs(r)
        return np.where(a <= config.huber, 1.0, config.huber / np.maximum(a, 1e-12))

    wp = huber(r_plane) * planar
    wq = huber(np.linalg.norm(diff, axis=1)) * config.point_weight
    h = (j_plane * wp[:, None]).T @ j_plane + np.einsum("m,mki,mkj->ij", wq, j_point, j_point)
    g = (j_plane * wp[:, None]).T @ r_plane + np.einsum("m,mki,mk->i", wq, j_point, diff)
    return h, g


# -- refinement of an accumulated sequence ----------------------------------------------------------------
@dataclass
class FrameFit:
    """One sweep of one cluster: ``frame``, ``n_points``, ``status`` ("refined", "anchor", or why the flow
    result was kept: "no ground", "few points", "not rigid", "not converged", "few matches", "worse"), ``init`` ("flow" or
    "predicted": the ICP start kept), the ICP result (None when ICP did not run), ``correction`` (median
    distance, m, between the rigid and flow results) and ``flow_cost`` (:func:`alignment_cost` of the flow result)."""

    frame: int
    n_points: int
    status: str
    init: str = ""
    icp: IcpResult | None = None
    correction: float = 0.0
    flow_cost: float = float("nan")


@dataclass
class ClusterFit:
    """One moving cluster: its ``id`` (as in ``RigidRefinement.cluster``), point count, the ``anchor`` sweep
    whose points start the target (the reference sweep when it sees the object), the ground-plane normal
    ``up [3]`` its motion was restricted to (None: 6 DoF), per-sweep :class:`FrameFit`."""

    id: int
    n_points: int
    anchor: int | None
    up: np.ndarray | None = None
    frames: list[FrameFit] = field(default_factory=list)


@dataclass
class RigidRefinement:
    """What :func:`refine_rigid` did. Per sweep ``k`` (lists of ``[N_k]`` arrays): ``points`` the refined
    positions at the reference time, ``cluster`` int64 (-1: static, or moving in no kept cluster) and
    ``refined`` bool (replaced by a rigid result); ``clusters``: one :class:`ClusterFit` per cluster;
    ``runtime_s``: seconds taken."""

    points: list[np.ndarray]
    cluster: list[np.ndarray]
    refined: list[np.ndarray]
    clusters: list[ClusterFit]
    runtime_s: float = 0.0

    def summary(self) -> dict:
        """Counts for reports: clusters, sweeps per status, points refined, seconds."""
        status: dict[str, int] = {}
        for c in self.clusters:
            for f in c.frames:
                status[f.status] = status.get(f.status, 0) + 1
        return {"clusters": len(self.clusters), "frames": status,
                "points_refined": int(sum(r.sum() for r in self.refined)), "runtime_s": self.runtime_s}


def refine_rigid(points: list[np.ndarray], moved: list[np.ndarray], moving: list[np.ndarray], ref: int,
                 config: RigidConfig = RigidConfig(), *, ground: list[np.ndarray] | None = None) -> RigidRefinement:
    """Replace the flow-field positions of rigidly moving clusters by per-sweep rigid ICP results.

    ``points``: per sweep ``[N_k, 3]`` world coordinates at the sweep's own time; ``moved``: the same
    points at the reference time by the flow field (``moved[ref]`` = ``points[ref]``); ``moving``: ``[N_k]``
    bool, the points that move in the world (ground and static points false: never touched); ``ground``:
    ``[N_k]`` bool ground points (static), needed by ``config.planar_motion``. ``ref``: the
    reference sweep. Returns a :class:`RigidRefinement`; rows outside refined clusters keep ``moved``
    bit for bit. The algorithm, its checks and its limits: the module docstring. NumPy + SciPy.
    """
    n = len(points)
    if not len(moved) == len(moving) == n or (ground is not None and len(ground) != n) or not 0 <= ref < n:
        raise ValueError(f"refine_rigid: points, moved, moving (and ground) must have one entry per sweep and "
                         f"0 <= ref < {n}; got {n}, {len(moved)}, {len(moving)} sweeps and ref={ref}")
    for k in range(n):
        p, q, m = points[k], moved[k], moving[k]
        g = np.shape(m) if ground is None else np.shape(ground[k])
        if p.shape != q.shape or p.ndim != 2 or p.shape[1:] != (3,) or np.shape(m) != (len(p),) or g != (len(p),):
            raise ValueError(f"refine_rigid: sweep {k}: points {p.shape}, moved {q.shape}, moving {np.shape(m)}, "
                             f"ground {g} must be [N, 3], [N, 3], [N], [N]")
    if config.planar_motion and ground is None:
        raise ValueError("refine_rigid: RigidConfig.planar_motion needs the ground masks (ground=...)")
    start = time.perf_counter()
    out = [np.array(q, np.float64, copy=True) for q in moved]
    labels = [np.full(len(p), -1, np.int64) for p in points]
    refined = [np.zeros(len(p), bool) for p in points]
    rows = [np.flatnonzero(np.asarray(m, bool)) for m in moving]
    if not sum(len(r) for r in rows):
        return RigidRefinement(out, labels, refined, [], time.perf_counter() - start)
    ids = cluster_points(np.concatenate([moved[k][r] for k, r in enumerate(rows)]), config.cluster_radius,
                         config.min_cluster_points)
    offsets = np.cumsum([0] + [len(r) for r in rows])
    for k, r in enumerate(rows):
        labels[k][r] = ids[offsets[k]:offsets[k + 1]]
    ground_tree = None
    if config.planar_motion:
        from scipy.spatial import cKDTree

        ground_points = np.concatenate([q[np.asarray(g, bool)] for q, g in zip(moved, ground)])
        ground_tree = cKDTree(ground_points) if len(ground_points) else None
    clusters = []
    for c in range(int(ids.max()) + 1):
        members = [np.flatnonzero(lab == c) for lab in labels]
        if not config.planar_motion:
            clusters.append(_refine_cluster(c, members, points, out, refined, ref, None, config))
            continue
        up = _ground_normal(ground_tree, np.concatenate([out[k][m] for k, m in enumerate(members)]), config)
        if up is None:
            frames = [FrameFit(k, len(m), "no ground") for k, m in enumerate(members) if len(m)]
            clusters.append(ClusterFit(c, sum(f.n_points for f in frames), None, None, frames))
        else:
            clusters.append(_refine_cluster(c, members, points, out, refined, ref, up, config))
    return RigidRefinement(out, labels, refined, clusters, time.perf_counter() - start)


def _ground_normal(tree, cluster: np.ndarray, config: RigidConfig) -> np.ndarray | None:
    """Unit normal [3] of the plane through the ground points (``tree``, a cKDTree of them) within
    ``ground_radius`` of the cluster's points, by PCA; None with too few (or no tree)."""
    if tree is None:
        return None
    near = sorted(set().union(*tree.query_ball_point(cluster[:: max(1, len(cluster) // 500)], config.ground_radius)))
    if len(near) < config.min_ground_points:
        return None
    g = tree.data[near]
    w, v = np.linalg.eigh(np.cov((g - g.mean(0)).T))
    if w[1] <= 0 or w[0] > 0.1 * w[1]:  # not a plane (a line of points, or rough)
        return None
    return v[:, 0] * np.sign(v[2, 0] or 1.0)


def _refine_cluster(c: int, members: list[np.ndarray], points, out, refined, ref: int, up,
                    config: RigidConfig) -> ClusterFit:
    """Register each sweep's points of cluster ``c`` (rows ``members[k]``) outward from the anchor sweep,
    writing accepted rigid results into ``out`` and ``refined`` (in place)."""
    from scipy.spatial import cKDTree

    from omnifield.scenes.nsfp.trajectory import surface_normals

    counts = np.array([len(m) for m in members])
    usable = np.flatnonzero(counts >= config.min_frame_points)
    fit = ClusterFit(c, int(counts.sum()), None, up)
    fit.frames += [FrameFit(k, int(n), "few points") for k, n in enumerate(counts) if 0 < n < config.min_frame_points]
    if not len(usable):
        return fit
    anchor = int(usable[np.argmin(np.abs(usable - ref))])
    fit.anchor = anchor
    fit.frames.append(FrameFit(anchor, int(counts[anchor]), "anchor"))
    target = out[anchor][members[anchor]]
    transforms = {anchor: rigid_fit(points[anchor][members[anchor]], target)}  # identity when anchor == ref
    for k in sorted((int(k) for k in usable if k != anchor), key=lambda k: (abs(k - ref), k)):
        src, flow = points[k][members[k]], out[k][members[k]]
        frame = FrameFit(k, len(src), "not rigid")
        fit.frames.append(frame)
        init = rigid_fit(src, flow)
        if np.sqrt(np.mean(np.sum((apply(init, src) - flow) ** 2, 1))) > config.max_flow_residual:
            continue
        tree = cKDTree(target)
        normals = surface_normals(target, k=min(config.normal_neighbors, len(target)))
        starts = [("flow", init, flow)] + ([("static", np.eye(4), src)] if config.static_start else [])
        step = 1 if k > anchor else -1  # constant velocity: T_k = T_a T_b^-1 T_a with a = k - step, b = k - 2 step
        if k - step in transforms and k - 2 * step in transforms:
            ta, tb = transforms[k - step], transforms[k - 2 * step]
            predicted = ta @ np.linalg.inv(tb) @ ta
            starts.append(("predicted", predicted, apply(predicted, src)))
        best = None
        for name, start, anchor_points in starts:
            res = icp(src, target, start, config, anchor=anchor_points, up=up, target_normals=normals, target_tree=tree)
            ok = res.converged and res.inlier_fraction >= config.min_inlier_fraction
            if best is None or (ok, -res.cost) > (best[2], -best[1].cost):
                best = (name, res, ok)
        frame.init, frame.icp = best[0], best[1]
        res = best[1]
        flow_cost, _ = alignment_cost(flow, target, normals, tree, config)
        frame.flow_cost = flow_cost
        if not res.converged:
            frame.status = "not converged"
        elif res.inlier_fraction < config.min_inlier_fraction:
            frame.status = "few matches"
        elif np.sqrt(res.cost) > np.sqrt(flow_cost) + config.worse_margin:
            frame.status = "worse"
        else:
            new = apply(res.transform, src)
            frame.status, frame.correction = "refined", float(np.median(np.linalg.norm(new - flow, axis=1)))
            out[k][members[k]] = new
            refined[k][members[k]] = True
            transforms[k] = res.transform
            target = np.concatenate([target, new])
    fit.frames.sort(key=lambda f: f.frame)
    return fit
