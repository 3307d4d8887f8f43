"""Long-term scene flow: one continuous-time velocity field over a whole lidar sequence.

Neural Scene Flow Prior (Li, Kaesemodel Pontes, Lucey, NeurIPS 2021) fits one flow MLP per pair of
sweeps. Here the MLP takes ``(x, y, z, t)`` in world coordinates and returns a velocity (m/s); a point
moves by integrating it through time (RK4, a fixed number of steps per frame interval). The field is
fitted jointly over every consecutive pair: frame i's points integrated from ``t_i`` to ``t_{i+1}``
must land on frame i+1, and frame i+1's points integrated back to ``t_i`` on frame i. Adam, early
stopping with patience, the weights of the lowest loss kept (as
:func:`omnifield.scenes.nsfp.estimate.estimate_flow` does for pairs).

The match (``TrajectoryConfig.loss``): NSFP's truncated Chamfer between random subsets ("chamfer")
moves static points by up to the lidar's ring spacing, because consecutive sweeps sample surfaces at
different places; so by default ("plane") each moved point is matched to its nearest neighbour in the
FULL other sweep by the point-to-plane distance (PCA normals), matches at squared distance >= 2 m^2
dropped as in NSFP, and a saturating static prior (Geman-McClure on the displacement per frame) keeps
the ego-compensated world still without slowing moving objects. On the synthetic 10-sweep sequence
this takes the static points from ~0.15 m (truncated Chamfer) to ~2 mm median error.

Moving objects: the point-to-plane match cannot see motion across a surface (a car seen from behind
may drift sideways or up at no cost), and a static prior on the whole displacement is switched off by
the car's forward motion. So the prior is applied apart to the displacement along the surface normal
and across it (``split_prior``), and a rigidity prior (``smooth``: saturating penalty on the difference
of neighbouring points' displacements) makes each object move as one. On the synthetic sequence
(1 CPU thread, 500 steps) these took the moving points from 7.5 cm median / 30 cm p90 / 34 % within
5 cm to 3.7 cm / 9.5 cm / 59 % (fit 157 s), the static non-ground ones staying at 2.1 mm median.
Multi-step terms (``horizon``) and sampling likely-moving points more (``focus``) did not help there.

:func:`omnifield.scenes.nsfp.accumulate.accumulate` integrates every sweep's points to one reference
time: a dense, motion-compensated cloud (``omnifield flow accumulate SEQ --out map.ply``). Then, by default (``TrajectoryConfig.rigid``),
the moving points are clustered into objects and each sweep of an object is registered to the reference
time by ICP from the flow result, in its ground plane (:mod:`omnifield.scenes.nsfp.rigid`: the
rigid-object assumption, its checks and limits): moving points 3.7 cm / 9.5 cm / 59 % -> 0.5 cm / 2.6 cm /
99 % within 5 cm on the synthetic sequence, the static points unchanged.

Frames: points ``[N, 3]`` in each frame's ego coordinates, mapped to the world by the ego poses
(``world_from_ego [4, 4]``). A sequence without poses is fitted with identity poses (the field then
also carries the ego motion) and a warning says so; a pair with only ``next_from_this`` is chained.
Ground points (the frame's ``is_ground`` labels, else :func:`omnifield.datasets.pointclouds.remove_ground`)
are left out of the fit and held static when accumulating, since the ground does not move.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from omnifield.scenes.nsfp.rigid import RigidConfig

GROUND_MODES = ("auto", "labels", "grid", "height", "ransac", "none")


@dataclass(frozen=True)
class TrajectoryConfig:
    """The continuous-time flow field and its fit. Defaults sized for CPU (measured on 1 thread)."""

    layers: int = 5
    """Linear layers of the velocity MLP (NSFP's flow MLP: 8 of 128; 5 of 64 fits a 10-sweep sequence in
    about two minutes on one CPU thread, with the same accuracy on the synthetic sequence)."""
    hidden: int = 64
    """Width of the hidden layers (NSFP: 128)."""
    activation: str = "relu"
    """"relu" (NSFP) or "sigmoid" / "tanh" / "softplus"."""
    lr: float = 3e-3
    """Adam learning rate (NSFP pairs: 8e-3; the integrated field is steadier a little lower)."""
    max_iterations: int = 500
    """Adam steps at most."""
    patience: int = 100
    """Stop after this many steps without a loss lower than the best by ``min_delta`` (NSFP: 100)."""
    min_delta: float = 0.0
    """Improvement that resets the patience counter."""
    truncate_sq: float = 2.0
    """Chamfer matches with squared nearest-neighbour distance >= this (m^2) are dropped (NSFP)."""
    steps_per_interval: int = 1
    """RK4 steps per frame interval, in the fit and when integrating."""
    points_per_frame: int | None = 2048
    """Non-ground points per frame used in the fit (random subset; None: all). Accumulation moves all."""
    horizon: int = 1
    """Multi-step consistency: frame i is also integrated to frames i+2 ... i+horizon (and back, with
    ``backward``) and matched there, which penalises the velocity error accumulated over several
    intervals. Span s uses every s-th fitted point, so each span costs about as much as span 1."""
    focus: float = 0.0
    """Share of ``points_per_frame`` reserved for points farther than ``focus_distance`` from both
    neighbouring sweeps (ego-compensated: likely moving); the rest is a random subset. Moving objects
    are a few % of a sweep; sampling them more fits their motion better. No labels are used."""
    focus_distance: float = 0.15
    """Nearest-neighbour distance (m) to the neighbouring sweeps above which a point counts as likely moving."""
    backward: bool = True
    """Also integrate frame i+1 back to t_i and match frame i (the time-reversed term)."""
    ground: str = "auto"
    """Ground points held static, not fitted: "auto" (labels when the frames have them, else "grid"),
    "labels", "grid", "height", "ransac" (:func:`omnifield.datasets.pointclouds.ground_mask`) or "none"."""
    loss: str = "plane"
    """"plane": point-to-plane distance to the FULL next sweep (normals by PCA of 16 neighbours), plus
    ``tangent`` x the point-to-point one; "dense": the truncated Chamfer's source-to-target half with the FULL next sweep as the target, in both
    time directions (a subsampled target adds sampling noise to a flow that should be zero); "chamfer":
    NSFP's bidirectional truncated Chamfer between the subsets (F2's ``truncated_chamfer``)."""
    tangent: float = 0.01
    """"plane": weight of the point-to-point term added to the point-to-plane one."""
    motion_penalty: float = 0.002
    """Weight of the static prior: the mean of the Geman-McClure penalty ``s^2 / (s^2 + motion_scale^2)``
    of the displacement per frame interval ``s`` at the fitted points. The world is mostly static once
    the ego poses are applied, and the point-to-plane loss leaves sliding along surfaces free; the
    penalty saturates, so it pulls drifts of a few cm to zero but barely biases moving cars (an L1
    penalty slowed them by ~5 cm per frame)."""
    motion_scale: float = 0.03
    """Scale of the static prior (metres per frame interval)."""
    split_prior: bool = True
    """"plane": apply the static prior apart to the displacement along the surface normal and across it
    (see :func:`_static_prior`), so a large motion along one does not switch the prior off for the other."""
    smooth: float = 0.1
    """Weight of the rigidity prior: the mean Geman-McClure penalty ``d^2 / (d^2 + smooth_scale^2)`` of the
    difference ``d`` of the per-frame displacements of neighbouring fitted points (``smooth_neighbors``
    nearest within ``smooth_radius`` in the same sweep). Rigid objects move (almost) uniformly; the
    penalty saturates, so the jump between a car and the world behind it is left free."""
    smooth_scale: float = 0.02
    """Scale of the rigidity prior (metres per frame interval)."""
    smooth_radius: float = 1.0
    """Neighbours farther than this (m) are not linked by the rigidity prior."""
    smooth_neighbors: int = 8
    """Neighbours per fitted point in the rigidity prior."""
    chunk: int = 65536
    """Points per MLP call when integrating without gradients."""
    seed: int = 0
    """Seed of the weights and of the point subsets."""
    rigid: RigidConfig = RigidConfig()
    """Rigid refinement after the integration (:mod:`omnifield.scenes.nsfp.rigid`): moving points clustered
    into objects, each sweep of an object registered to the reference time by ICP from the flow result.
    On by default; ``rigid.enabled=false`` keeps the flow-field result."""

    def __post_init__(self):
        if self.layers < 2 or self.hidden < 1:
            raise ValueError(f"TrajectoryConfig: layers must be >= 2 and hidden >= 1, got {self.layers}, {self.hidden}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TrajectoryConfig.activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.steps_per_interval < 1 or self.max_iterations < 0 or self.patience < 1 or self.horizon < 1:
            raise ValueError("TrajectoryConfig: steps_per_interval, horizon and patience must be >= 1, max_iterations >= 0")
        if self.loss not in ("plane", "dense", "chamfer"):
            raise ValueError(f"TrajectoryConfig.loss must be 'plane', 'dense' or 'chamfer', got {self.loss!r}")
        if self.ground not in GROUND_MODES:
            raise ValueError(f"TrajectoryConfig.ground must be one of {GROUND_MODES}, got {self.ground!r}")
        if not 0.0 <= self.focus <= 1.0 or self.smooth < 0 or self.smooth_neighbors < 1:
            raise ValueError(f"TrajectoryConfig: focus must be in [0, 1], smooth >= 0 and smooth_neighbors >= 1, got "
                             f"{self.focus}, {self.smooth}, {self.smooth_neighbors}")
        if self.points_per_frame is not None and self.points_per_frame < 1:
            raise ValueError(f"TrajectoryConfig.points_per_frame must be >= 1 or None, got {self.points_per_frame}")


_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "softplus": nn.Softplus}


class ContinuousFlowField(nn.Module):
    """Velocity field ``v(x, t)``: world points ``[N, 3]`` (m) and times ``[N]`` or scalar (s) -> ``[N, 3]`` m/s.

    The MLP sees ``x - center`` in metres (NSFP feeds raw metric coordinates) and time in frame units
    ``(t - t_center) / frame_dt``; it returns metres per frame interval, divided by ``frame_dt``. The
    last layer starts at zero, so an unfitted field is "no motion" (the ego-only compensation).
    Differentiable in the inputs and the weights.
    """

    def __init__(self, config: TrajectoryConfig = TrajectoryConfig(), *, center=(0.0, 0.0, 0.0),
                 t_center: float = 0.0, frame_dt: float = 0.1):
        super().__init__()
        self.config = config
        torch.manual_seed(config.seed)
        dims = [4] + [config.hidden] * (config.layers - 1) + [3]
        mods: list[nn.Module] = []
        for i in range(len(dims) - 1):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                mods.append(_ACTIVATIONS[config.activation]())
        nn.init.zeros_(mods[-1].weight)
        nn.init.zeros_(mods[-1].bias)
        self.mlp = nn.Sequential(*mods)
        self.register_buffer("center", torch.as_tensor(np.asarray(center, dtype=np.float64)).float().reshape(3))
        self.t_center = float(t_center)
        self.frame_dt = float(frame_dt)

    def forward(self, x: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        tau = ((t - self.t_center) / self.frame_dt).expand(x.shape[:-1]).unsqueeze(-1)
        return self.mlp(torch.cat([x - self.center, tau], dim=-1)) / self.frame_dt

    def steps_for(self, t0, t1) -> int:
        """RK4 steps for the longest of the spans ``t1 - t0``: ``steps_per_interval`` per frame interval."""
        span = float(torch.as_tensor(t1, dtype=torch.float64).sub(torch.as_tensor(t0, dtype=torch.float64)).abs().max())
        return self.config.steps_per_interval * max(1, math.ceil(span / self.frame_dt - 1e-6))


def integrate(field: Callable[[Tensor, Tensor], Tensor], points_world: Tensor, t0, t1, steps: int | None = None) -> Tensor:
    """Move points through ``field`` from time ``t0`` to ``t1`` with ``steps`` classical RK4 steps.

    ``points_world``: ``[N, 3]`` (a tensor; a numpy array returns a numpy array); ``t0``, ``t1``: scalars
    or ``[N]`` per-point times (each point takes ``steps`` steps of its own length ``(t1 - t0) / steps``).
    ``field(x [N, 3], t [N]) -> [N, 3]`` velocity. ``steps=None``: ``field.steps_for(t0, t1)``
    (``steps_per_interval`` per frame interval). Differentiable through the field (used by the fit).
    """
    as_numpy = isinstance(points_world, np.ndarray)
    x = torch.as_tensor(points_world)
    if x.ndim != 2 or x.shape[-1] != 3:
        raise ValueError(f"integrate: points_world must be [N, 3], got {tuple(x.shape)}")
    if steps is None:
        if not hasattr(field, "steps_for"):
            raise ValueError("integrate: pass steps= for a field without steps_for()")
        steps = field.steps_for(t0, t1)
    if steps < 1:
        raise ValueError(f"integrate: steps must be >= 1, got {steps}")
    t0 = torch.as_tensor(t0, dtype=x.dtype, device=x.device).expand(x.shape[:1])
    h = (torch.as_tensor(t1, dtype=x.dtype, device=x.device) - t0).expand(x.shape[:1]) / steps
    hc = h.unsqueeze(-1)
    for s in range(steps):
        t = t0 + s * h
        k1 = field(x, t)
        k2 = field(x + 0.5 * hc * k1, t + 0.5 * h)
        k3 = field(x + 0.5 * hc * k2, t + 0.5 * h)
        k4 = field(x + hc * k3, t + h)
        x = x + hc / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return x.detach().numpy() if as_numpy else x


# -- preparing a sequence ---------------------------------------------------------------------------
@dataclass
class PreparedSequence:
    """A sequence in world coordinates relative to ``center``: what the fit and accumulation read."""

    points: list[np.ndarray]     # [N_i, 3] float64 world - center
    static: list[np.ndarray]     # [N_i] bool: ground points held static
    times: np.ndarray            # [F] float64 seconds
    poses: np.ndarray            # [F, 4, 4] float64 world_from_ego
    center: np.ndarray           # [3] float64
    frame_dt: float
    notes: list[str]


def sequence_poses(seq) -> tuple[np.ndarray, str | None]:
    """``[F, 4, 4]`` world_from_ego of every frame: the ego poses, else chained ``next_from_this``, else identity.

    Returns the poses and a note when they are not the sequence's own (None otherwise).
    """
    frames = seq.frames
    if all(f.ego_pose is not None for f in frames):
        return np.stack([np.asarray(f.ego_pose, dtype=np.float64) for f in frames]), None
    chained = [np.eye(4)]
    for i in range(len(frames) - 1):
        m = seq.next_from_this(i)
        if m is None:
            break
        chained.append(chained[-1] @ np.linalg.inv(np.asarray(m, dtype=np.float64)))
    if len(chained) == len(frames) and len(frames) > 1:
        return np.stack(chained), "no ego poses: frames chained from the ego motion between them (frame 0 = world)"
    return np.stack([np.eye(4)] * len(frames)), ("no ego poses: identity poses assumed, so the field also carries "
                                                 "the sensor's own motion")


def sequence_times(seq) -> tuple[np.ndarray, str | None]:
    """``[F]`` frame times (s); ``index * 0.1`` with a note when they do not increase."""
    t = np.asarray([float(f.time) for f in seq.frames], dtype=np.float64)
    if len(t) > 1 and not np.all(np.diff(t) > 0):
        return np.arange(len(t)) * 0.1, "frame times do not increase: 10 Hz assumed (time = index * 0.1 s)"
    return t, None


def ground_mask(frame, mode: str) -> np.ndarray:
    """``[N]`` bool: the frame's ground points under ``mode`` (see :attr:`TrajectoryConfig.ground`)."""
    n = len(frame.points)
    if mode == "none":
        return np.zeros(n, bool)
    if mode in ("auto", "labels") and frame.is_ground is not None:
        return np.asarray(frame.is_ground, bool)
    if mode == "labels":
        raise ValueError(f"ground='labels' but frame {frame.path or '?'} has no is_ground labels")
    from omnifield.datasets.pointclouds import ground_mask as points_ground_mask

    return points_ground_mask(frame.points, "grid" if mode == "auto" else mode)


def prepare_sequence(seq, config: TrajectoryConfig, ref: int) -> PreparedSequence:
    """World coordinates (float64, relative to frame ``ref``'s ego origin), times, ground masks, notes."""
    if len(seq.frames) < 2:
        raise ValueError(f"{seq.path}: a trajectory needs at least 2 frames, got {len(seq.frames)}")
    poses, pose_note = sequence_poses(seq)
    times, time_note = sequence_times(seq)
    center = poses[ref][:3, 3].copy()
    pts, static = [], []
    for f, pose in zip(seq.frames, poses):
        p = np.asarray(f.points, dtype=np.float64)
        pts.append(p @ pose[:3, :3].T + (pose[:3, 3] - center))
        static.append(ground_mask(f, config.ground))
    frame_dt = float(np.median(np.diff(times)))
    return PreparedSequence(pts, static, times, poses, center, frame_dt, [n for n in (pose_note, time_note) if n])


# -- fitting ---------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit_sequence` did: the loss of the kept weights and when it was reached."""

    loss: float
    iterations: int
    best_iteration: int
    runtime_s: float
    notes: list[str]


def _fit_sets(prep: PreparedSequence, config: TrajectoryConfig) -> tuple[list[Tensor], list[Tensor]]:
    """Per frame: the fitted subset (``points_per_frame`` non-ground points, up to ``focus`` of them among
    the points far from both neighbouring sweeps, the rest at random) and all non-ground points."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(config.seed)
    rows = [np.flatnonzero(~s) for s in prep.static]
    trees = [cKDTree(p[r]) if len(r) else None for p, r in zip(prep.points, rows)]
    subsets, dense = [], []
    for k, (p, idx) in enumerate(zip(prep.points, rows)):
        dense.append(torch.as_tensor(p[idx], dtype=torch.float32))
        n = config.points_per_frame
        if n is not None and len(idx) > n:
            # the ego-compensated world is still: points far from every neighbouring sweep are likely moving
            near = [trees[j].query(p[idx], k=1)[0] for j in (k - 1, k + 1) if 0 <= j < len(trees) and trees[j] is not None]
            far = np.min(near, axis=0) > config.focus_distance if near else np.zeros(len(idx), bool)
            chosen = np.flatnonzero(far)
            if len(chosen) > int(config.focus * n):
                chosen = rng.choice(chosen, int(config.focus * n), replace=False)
            rest = np.setdiff1d(np.arange(len(idx)), chosen)
            chosen = np.concatenate([chosen, rng.choice(rest, n - len(chosen), replace=False)])
            idx = idx[np.sort(chosen)]
        subsets.append(torch.as_tensor(p[idx], dtype=torch.float32))
    return subsets, dense


def _static_prior(step: Tensor, normals: Tensor | None, scale: float) -> Tensor:
    """``[M]`` Geman-McClure penalty of displacements ``step [M, 3]`` (m per frame interval). With unit
    ``normals [M, 3]`` (zero rows: no plane) the components along and across the surface are penalised
    apart: a car seen from behind moves along the normal of its rear face, which saturates that term,
    while the sideways and vertical drift the point-to-plane match cannot see is still pulled to zero."""
    def gm(sq):
        return sq / (sq + scale ** 2)

    sq = step.pow(2).sum(-1)
    if normals is None:
        return gm(sq)
    along = (step * normals).sum(-1).pow(2)
    planar = (normals != 0).any(-1)
    return torch.where(planar, 0.5 * (gm(along) + gm((sq - along).clamp_min(0.0))), gm(sq))


def _subset_normals(subsets: list[Tensor], dense: list[Tensor], normals: list[Tensor]) -> Tensor:
    """``[sum M_i, 3]`` the normals of the fitted points (rows of ``torch.cat(subsets)``), looked up in their sweep."""
    from scipy.spatial import cKDTree

    out = []
    for sub, d, n in zip(subsets, dense, normals):
        rows = cKDTree(d.double().cpu().numpy()).query(sub.double().cpu().numpy(), k=1)[1] if len(sub) else []
        out.append(n[torch.as_tensor(np.asarray(rows, dtype=np.int64), device=n.device)])
    return torch.cat(out)


def _neighbour_edges(subsets: list[Tensor], config: TrajectoryConfig) -> Tensor:
    """``[2, E]`` int64 rows into ``torch.cat(subsets)``: each fitted point and its ``smooth_neighbors``
    nearest points of the same sweep within ``smooth_radius``."""
    from scipy.spatial import cKDTree

    edges, offset = [], 0
    for sub in subsets:
        p = sub.detach().double().cpu().numpy()
        k = min(config.smooth_neighbors + 1, len(p))
        if k > 1:
            dist, idx = cKDTree(p).query(p, k=k, distance_upper_bound=config.smooth_radius)
            rows = np.repeat(np.arange(len(p)), k - 1).reshape(len(p), k - 1)
            keep = np.isfinite(dist[:, 1:])
            edges.append(np.stack([rows[keep], idx[:, 1:][keep]]) + offset)
        offset += len(p)
    return torch.as_tensor(np.concatenate(edges, 1) if edges else np.zeros((2, 0), np.int64), dtype=torch.int64)


def surface_normals(points: np.ndarray, k: int = 16, planarity: float = 0.3) -> np.ndarray:
    """``[M, 3]`` unit normals of ``points [M, 3]`` by PCA of the ``k`` nearest neighbours; rows whose
    neighbourhood is not planar (smallest / middle eigenvalue >= ``planarity``, e.g. a single scan line,
    a pole) get zeros (matched point to point)."""
    from scipy.spatial import cKDTree

    m = len(points)
    if m < 3:
        return np.zeros((m, 3))
    _, idx = cKDTree(points).query(points, k=min(k, m))
    nb = points[idx] - points[idx].mean(1, keepdims=True)
    w, v = np.linalg.eigh(np.einsum("mki,mkj->mij", nb, nb))
    normals = v[:, :, 0]
    flat = w[:, 0] < planarity * np.maximum(w[:, 1], 1e-12)
    return np.where(flat[:, None], normals, 0.0)


class _Matcher:
    """Truncated squared distance of moved points to a frame's points (NN indices from a cached KD-tree
    on CPU, F2's chunked search on GPU), differentiable in the moved points. With normals: the
    point-to-plane distance on planar neighbourhoods (point to point elsewhere), plus ``tangent`` times
    the point-to-point distance."""

    def __init__(self, frames: list[Tensor], truncate_sq: float, normals: list[Tensor] | None = None, tangent: float = 0.0):
        self.frames, self.truncate_sq, self.normals, self.tangent = frames, truncate_sq, normals, tangent
        self.trees = None
        if frames and frames[0].device.type == "cpu":
            from scipy.spatial import cKDTree

            self.trees = [cKDTree(f.double().numpy()) if len(f) else None for f in frames]

    def __call__(self, moved: Tensor, k: int) -> Tensor:
        if self.trees is not None:
            _, idx = self.trees[k].query(moved.detach().double().numpy(), k=1)
            idx = torch.from_numpy(np.asarray(idx, dtype=np.int64))
        else:
            from omnifield.scenes.nsfp.chamfer import nearest_neighbors

            _, idx = nearest_neighbors(moved, self.frames[k])
        diff = moved - self.frames[k][idx]
        sq = (diff ** 2).sum(1)
        value = sq
        if self.normals is not None:
            n = self.normals[k][idx]
            planar = (n != 0).any(1)
            value = torch.where(planar, (diff * n).sum(1) ** 2 + self.tangent * sq, sq)
        return torch.where(sq < self.truncate_sq, value, torch.zeros_like(value)).mean()


def fit_sequence(seq, config: TrajectoryConfig = TrajectoryConfig(), *, ref: int | None = None, progress=None,
                 device: str | torch.device = "cpu") -> ContinuousFlowField:
    """Fit the continuous-time field to a :class:`~omnifield.datasets.pointclouds.PointCloudSequence`.

    Loss: mean over consecutive pairs of the match (``config.loss``, see the module docstring) between
    frame i integrated to ``t_{i+1}`` and frame i+1 (plus the time-reversed term with ``config.backward``),
    plus ``config.motion_penalty`` times the static prior. The returned field
    (on ``device``) holds the weights of the lowest loss and a :class:`FitResult` as ``field.fit_result``.
    Coordinates are relative to frame ``ref``'s ego origin (default: the middle frame), ``field.center``.
    ``progress``: True for a progress bar, or a callable ``(iteration, loss)``.
    """
    ref = len(seq.frames) // 2 if ref is None else ref
    return _fit_prepared(prepare_sequence(seq, config, ref), config, progress, device)


def _fit_prepared(prep: PreparedSequence, config: TrajectoryConfig, progress, device) -> ContinuousFlowField:
    from omnifield.scenes.nsfp.chamfer import truncated_chamfer

    for note in prep.notes:
        warnings.warn(note, stacklevel=3)
    field = ContinuousFlowField(config, center=(0.0, 0.0, 0.0), t_center=float(np.median(prep.times)),
                                frame_dt=prep.frame_dt).to(device)
    field.world_center = prep.center
    subsets, dense = _fit_sets(prep, config)
    subsets, dense = [s.to(device) for s in subsets], [d.to(device) for d in dense]
    pairs = [i for i in range(len(subsets) - 1) if len(subsets[i]) and len(subsets[i + 1])]
    t = torch.as_tensor(prep.times, dtype=torch.float32, device=device)
    normals = None
    if config.loss == "plane":
        normals = [torch.as_tensor(surface_normals(d.double().cpu().numpy()), dtype=torch.float32, device=device) for d in dense]
    matcher = _Matcher(dense, config.truncate_sq, normals, config.tangent) if config.loss != "chamfer" else None
    prior_normals = _subset_normals(subsets, dense, normals) if normals is not None and config.split_prior else None

    def batch(frm: list[int], to: list[int], span: int):
        """All pairs of one span in one integration: sources (every ``span``-th fitted point, so each span
        costs about the same) concatenated, per-point start and end times, ``span`` frame intervals of RK4."""
        src = [subsets[i][::span] for i in frm]
        t0 = torch.cat([t[i].expand(len(p)) for i, p in zip(frm, src)])
        t1 = torch.cat([t[j].expand(len(p)) for j, p in zip(to, src)])
        return torch.cat(src), t0, t1, [len(p) for p in src], to, span * config.steps_per_interval

    batches = []
    for span in range(1, config.horizon + 1):
        starts = [i for i in range(len(subsets) - span) if len(subsets[i]) and len(subsets[i + span])]
        if starts:
            batches.append(batch(starts, [i + span for i in starts], span))
            if config.backward:
                batches.append(batch([i + span for i in starts], starts, span))

    all_src = torch.cat(subsets)
    all_t = torch.cat([t[i].expand(len(p)) for i, p in enumerate(subsets)])
    edges = _neighbour_edges(subsets, config).to(device) if config.smooth > 0 else None

    def loss_fn() -> Tensor:
        terms = []
        for src, t0, t1, split, to, steps in batches:
            moved = integrate(field, src, t0, t1, steps).split(split)
            for m, j in zip(moved, to):
                terms.append(matcher(m, j) if matcher is not None else truncated_chamfer(m, subsets[j], config.truncate_sq))
        loss = torch.stack(terms).mean()
        if config.motion_penalty > 0 or edges is not None:
            step = field(all_src, all_t) * prep.frame_dt
            if config.motion_penalty > 0:
                loss = loss + config.motion_penalty * _static_prior(step, prior_normals, config.motion_scale).mean()
            if edges is not None and edges.shape[1]:
                dsq = (step[edges[0]] - step[edges[1]]).pow(2).sum(-1)
                loss = loss + config.smooth * (dsq / (dsq + config.smooth_scale ** 2)).mean()
        return loss

    start = time.perf_counter()
    if not pairs or config.max_iterations == 0:
        field.fit_result = FitResult(float("nan"), 0, 0, time.perf_counter() - start, prep.notes)
        return field.eval()
    opt = torch.optim.Adam(field.parameters(), lr=config.lr)
    best, best_it, best_state, since = math.inf, 0, copy.deepcopy(field.state_dict()), 0
    bar = _progress_bar(progress, config.max_iterations)
    it = 0
    try:
        for it in range(1, config.max_iterations + 1):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"trajectory fit: the loss became {value} at iteration {it}")
            if value < best - config.min_delta:
                best, best_it, since = value, it, 0
                best_state = copy.deepcopy(field.state_dict())
            else:
                since += 1
            if callable(progress):
                progress(it, value)
            elif bar is not None:
                bar[0].update(bar[1], advance=1, loss=value, best=best)
            if since >= config.patience:
                break
            loss.backward()
            opt.step()
    finally:
        if bar is not None:
            bar[0].stop()
    field.load_state_dict(best_state)
    field.fit_result = FitResult(best, it, best_it, time.perf_counter() - start, prep.notes)
    return field.eval()


def _progress_bar(progress, total: int):
    if progress is not True:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("fit"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("loss {task.fields[loss]:.4f} (best {task.fields[best]:.4f})"), TimeRemainingColumn())
    task = bar.add_task("fit", total=total, loss=float("nan"), best=float("nan"))
    bar.start()
    return bar, task
