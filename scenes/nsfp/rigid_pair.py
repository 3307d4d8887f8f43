"""Rigid refinement of one scene-flow pair: the moving objects of the first sweep snapped onto the second
by ICP (:func:`refine_pair_flow`, ``NSFPConfig.rigid``), with the machinery of
:mod:`omnifield.scenes.nsfp.rigid` (clusters, ICP, checks; see its docstring for the limits)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from omnifield.scenes.nsfp.rigid import RigidConfig, RigidRefinement, apply, refine_rigid, rigid_fit


def dominant_motion(points: np.ndarray, moved: np.ndarray, scale: float = 0.05, iterations: int = 10) -> np.ndarray:
    """``[4, 4]`` rigid transform that most rows of ``points -> moved`` follow (the ego motion of a lidar
    pair whose flow includes it): Kabsch re-weighted by Cauchy weights ``1 / (1 + (r / scale)^2)`` of the
    residuals ``r`` (m), so movers, a minority, barely count."""
    w = np.ones(len(points))
    transform = np.eye(4)
    for _ in range(iterations):
        transform = rigid_fit(points, moved, w)
        r = np.linalg.norm(apply(transform, points) - moved, axis=1)
        w = 1.0 / (1.0 + (r / scale) ** 2)
    return transform


@dataclass
class PairRefinement:
    """What :func:`refine_pair_flow` did: ``flow [N, 3]`` (refined), ``moving [N]`` (rows of the first sweep
    taken as moving), ``refinement`` (the :class:`RigidRefinement` of the two-sweep sequence)."""

    flow: np.ndarray
    moving: np.ndarray
    refinement: RigidRefinement


def refine_pair_flow(points1: np.ndarray, flow: np.ndarray, points2: np.ndarray, config: RigidConfig = RigidConfig(),
                     *, ego_flow: np.ndarray | None = None, ground2: np.ndarray | None = None) -> PairRefinement:
    """The rigid refinement of :func:`refine_rigid` for one scene-flow pair: moving objects of the first
    sweep snapped onto the second by ICP.

    ``points1 [N, 3]`` and its ``flow [N, 3]`` (ego motion included: ``points1 + flow`` in the second
    sweep's coordinates), ``points2 [M, 3]`` (the second sweep's points the flow was fitted to);
    ``ego_flow [N, 3]``: the ego-motion part of each row's flow (``T p - p``), or None to take the flow's
    :func:`dominant_motion`; ``ground2 [K, 3]``: ground points of the second sweep (the ground plane of
    ``config.planar_motion``; without them the motion is 6-DoF).

    A row moves when its flow minus the ego flow exceeds ``config.motion_threshold``; the second sweep's
    points whose nearest flowed first-sweep point moves are the objects' targets. Every check of
    :func:`refine_rigid` applies (rows that fail keep their flow, bit for bit). Returns a :class:`PairRefinement`.
    """
    from scipy.spatial import cKDTree

    p1, p2 = np.asarray(points1, np.float64), np.asarray(points2, np.float64)
    if p1.ndim != 2 or p1.shape[1:] != (3,) or np.shape(flow) != p1.shape or p2.ndim != 2 or p2.shape[1:] != (3,):
        raise ValueError(f"refine_pair_flow: points1 {p1.shape}, flow {np.shape(flow)}, points2 {p2.shape} "
                         "must be [N, 3], [N, 3], [M, 3]")
    moved = p1 + np.asarray(flow, np.float64)
    if ego_flow is None:
        static = apply(dominant_motion(p1, moved), p1)
    else:
        static = p1 + np.asarray(ego_flow, np.float64)
    moving1 = np.linalg.norm(moved - static, axis=1) > config.motion_threshold
    _, nearest = cKDTree(moved).query(p2)
    moving2 = moving1[nearest]
    g = np.zeros((0, 3)) if ground2 is None else np.asarray(ground2, np.float64).reshape(-1, 3)
    sweep2 = np.concatenate([p2, g])
    result = refine_rigid(
        [static, sweep2], [moved, sweep2], [moving1, np.concatenate([moving2, np.zeros(len(g), bool)])], ref=1,
        config=config if ground2 is not None or not config.planar_motion else replace(config, planar_motion=False),
        ground=[np.zeros(len(p1), bool), np.arange(len(sweep2)) >= len(p2)])
    new_flow = np.where(result.refined[0][:, None], result.points[0] - p1, np.asarray(flow, np.float64))
    return PairRefinement(new_flow.astype(np.float32), moving1, result)


PAIR_RIGID = RigidConfig(enabled=False, planar_motion=False, anchor_weight=0.0, max_iterations=100, settled=0.01,
                         static_start=True)
"""The rigid refinement's settings for scene-flow pairs (``NSFPConfig.rigid``, :func:`refine_pair_flow`):
6-DoF (the ground plane under a car is not known from a pair's non-ground points), no pull towards the
flow result (NSFP's flow of a fast car can be a small fraction of its motion: on the Argoverse 2 pair
0.09 m of a 1.04 m move), a start from no motion as well, 100 ICP iterations (starts a metre off) and a
final ICP step of up to 1 cm accepted (nearest-neighbour switches on a real car keep ICP stepping by
millimetres; with 50 iterations or a 2 mm bar that car was left to the flow: dynamic EPE 0.227 m). Off by default
(``--set rigid.enabled=true``): it needs dense sweeps. On the whole Argoverse 2 pair (78,506 points) it
took the dynamic EPE from 0.317 m to 0.148 m; on 8,192 sampled points of each sweep ICP has too little
surface to fit and made it worse (0.304 m -> 0.359 m)."""
