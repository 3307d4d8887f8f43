"""Accumulation of a lidar sequence: every sweep's points moved to one reference time by the
continuous-time flow field (:mod:`omnifield.scenes.nsfp.trajectory`), moving objects then refined as
rigid bodies (:mod:`omnifield.scenes.nsfp.rigid`), and the result written as a ``.ply``
(``omnifield flow accumulate SEQ --out map.ply``). The ego-poses-only baseline is here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from omnifield.scenes.nsfp.rigid import RigidRefinement, refine_rigid
from omnifield.scenes.nsfp.trajectory import (ContinuousFlowField, FitResult, PreparedSequence, TrajectoryConfig,
                                              _fit_prepared, integrate, prepare_sequence)


@dataclass
class AccumulatedCloud:
    """Every sweep's points moved to frame ``ref``'s time, in world coordinates.

    ``points [N, 3]`` float64 world metres; ``frame_index [N]`` int32 (the sweep of each point);
    ``point_index [N]`` int64 (its row in that sweep); ``ref``; ``time`` (s, frame ref's);
    ``fit``: the :class:`FitResult` (None for the ego-only baseline); ``notes``: assumptions made;
    ``flow_points`` and ``rigid``: see :func:`accumulate`.
    """

    points: np.ndarray
    frame_index: np.ndarray
    point_index: np.ndarray
    ref: int
    time: float
    fit: FitResult | None = None
    notes: list[str] | None = None
    flow_points: np.ndarray | None = None
    """``[N, 3]`` the flow-field result before the rigid refinement (None when it did not run)."""
    rigid: RigidRefinement | None = None
    """What the rigid refinement did (clusters, per-sweep ICP results), or None."""

    def __len__(self) -> int:
        return len(self.points)


def _check_ref(seq, ref: int | None) -> int:
    n = len(seq.frames)
    ref = n // 2 if ref is None else int(ref)
    if not -n <= ref < n:
        raise ValueError(f"{seq.path}: --ref {ref} is outside the sequence's {n} frames")
    return ref % n


def accumulate(seq, config: TrajectoryConfig = TrajectoryConfig(), *, ref: int | None = None,
               field: ContinuousFlowField | None = None, progress=None, device: str | torch.device = "cpu") -> AccumulatedCloud:
    """Fit the field on ``seq`` (unless ``field`` is given) and integrate every sweep to frame ``ref``'s time.

    ``ref``: a frame index (default: the middle frame ``len // 2``; negative counts from the end).
    Ground points are held static (only the ego poses move them). With ``config.rigid.enabled`` (default)
    the moving points (field displacement per frame interval above ``config.rigid.motion_threshold``) are
    then refined as rigid objects (:func:`omnifield.scenes.nsfp.rigid.refine_rigid`); the cloud keeps the
    unrefined result as ``flow_points`` and the report as ``rigid``. Returns world coordinates.
    """
    ref = _check_ref(seq, ref)
    prep = prepare_sequence(seq, config, ref)
    if field is None:
        field = _fit_prepared(prep, config, progress, device)
    elif not np.allclose(getattr(field, "world_center", prep.center), prep.center):
        raise ValueError("accumulate: the field was fitted with another reference frame")
    out = []
    t1 = float(prep.times[ref])
    with torch.no_grad():
        for k, (p, s) in enumerate(zip(prep.points, prep.static)):
            q = p.copy()
            move = np.flatnonzero(~s)
            if k != ref and len(move):
                steps = config.steps_per_interval * abs(k - ref)
                for c in range(0, len(move), config.chunk):
                    rows = move[c:c + config.chunk]
                    x = torch.as_tensor(p[rows], dtype=torch.float32, device=device)
                    q[rows] = integrate(field, x, float(prep.times[k]), t1, steps).double().cpu().numpy()
            out.append(q)
    cloud = _cloud(prep, out, ref, getattr(field, "fit_result", None))
    if config.rigid.enabled:
        moving = moving_points(field, prep, config, device)
        cloud.rigid = refine_rigid(prep.points, out, moving, ref, config.rigid, ground=prep.static)
        cloud.flow_points, cloud.points = cloud.points, np.concatenate(cloud.rigid.points) + prep.center
    return cloud


def moving_points(field: ContinuousFlowField, prep: PreparedSequence, config: TrajectoryConfig,
                  device: str | torch.device = "cpu") -> list[np.ndarray]:
    """Per sweep ``[N_k]`` bool: non-ground points whose field displacement per frame interval at the sweep's
    time, ``|v(x, t_k)| * frame_dt``, exceeds ``config.rigid.motion_threshold`` (m): the moving objects."""
    out = []
    with torch.no_grad():
        for k, (p, s) in enumerate(zip(prep.points, prep.static)):
            m = np.zeros(len(p), bool)
            rows = np.flatnonzero(~s)
            for c in range(0, len(rows), config.chunk):
                r = rows[c:c + config.chunk]
                x = torch.as_tensor(p[r], dtype=torch.float32, device=device)
                speed = field(x, float(prep.times[k])).norm(dim=-1) * prep.frame_dt
                m[r] = speed.cpu().numpy() > config.rigid.motion_threshold
            out.append(m)
    return out


def accumulate_ego_only(seq, *, ref: int | None = None) -> AccumulatedCloud:
    """The baseline without motion compensation: every sweep placed in the world by its ego pose only."""
    ref = _check_ref(seq, ref)
    prep = prepare_sequence(seq, TrajectoryConfig(ground="none"), ref)
    return _cloud(prep, prep.points, ref, None)


def _cloud(prep: PreparedSequence, points: list[np.ndarray], ref: int, fit) -> AccumulatedCloud:
    return AccumulatedCloud(
        points=np.concatenate(points) + prep.center,
        frame_index=np.concatenate([np.full(len(p), k, np.int32) for k, p in enumerate(points)]),
        point_index=np.concatenate([np.arange(len(p), dtype=np.int64) for p in points]),
        ref=ref, time=float(prep.times[ref]), fit=fit, notes=list(prep.notes))


def frame_colours(frame_index: np.ndarray, frames: int) -> np.ndarray:
    """``[N, 3]`` uint8 colours by sweep (a hue wheel from the first to the last frame)."""
    import colorsys

    table = np.array([colorsys.hsv_to_rgb(0.8 * k / max(frames - 1, 1), 0.85, 0.95) for k in range(frames)])
    return np.round(table[frame_index] * 255).astype(np.uint8)


def write_accumulated_ply(path, cloud: AccumulatedCloud, frames: int | None = None):
    """Write the cloud as a binary ``.ply`` (``x y z`` float32 world metres, colour by sweep), atomically."""
    from omnifield.scenes.export import write_pointcloud

    frames = int(cloud.frame_index.max()) + 1 if frames is None and len(cloud) else (frames or 1)
    return write_pointcloud(path, cloud.points.astype(np.float32), frame_colours(cloud.frame_index, frames))
