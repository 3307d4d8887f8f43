"""Runtime optimisation of Neural Scene Flow Prior for one pair of point clouds, and two baselines.

Li, Kaesemodel Pontes, Lucey, "Neural Scene Flow Prior", NeurIPS 2021; the loop follows the released
``optimization.py`` (``solver``): forward MLP ``f``, deformed cloud ``P1' = P1 + f(P1)``, loss
``chamfer(P1', P2)``; with the cycle term a backward MLP ``g`` (initialised as a copy of ``f``) gives
``P1'' = P1' - g(P1')`` and the loss adds ``chamfer(P1'', P1)``. Adam (lr 8e-3, weight decay 1e-4 in
both parameter groups). Each iteration evaluates the loss at the current weights, keeps the flow if
the loss is <= the best so far (the result is the lowest-loss iterate), asks the early stopper
(patience 100, min_delta 1e-4), then steps. Up to 5,000 iterations (released), or 200 with the ``cpu``
profile, the default on the CPU (:attr:`NSFPConfig.profile`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from omnifield.scenes._common import adam

from .chamfer import DistanceTransform, _nn_index_kdtree, _nn_index_torch, check_points, _truncated_mean
from .config import NSFPConfig
from .model import FlowMLP


@dataclass
class FlowEstimate:
    """Result of :func:`estimate_flow`."""

    flow: np.ndarray
    """``[N, 3]`` float32: flow of each row of ``points1`` at the lowest-loss iteration."""
    loss: float
    """The lowest loss."""
    iterations: int
    """Loss evaluations run (early stopping included)."""
    best_iteration: int
    """0-based iteration of the returned flow."""
    runtime_s: float
    """Wall time of the whole estimate (distance transform and set-up included)."""
    field_flow: np.ndarray | None = None
    """``[N, 3]`` float32: the fitted field's flow before the rigid refinement (None when it did not run)."""
    rigid: dict | None = None
    """:meth:`~omnifield.scenes.nsfp.rigid.RigidRefinement.summary` of the rigid refinement
    (``config.rigid.enabled``), else None."""
    state: dict = field(default_factory=dict)
    """``{"flow": state_dict, "backward": state_dict | None}`` (CPU tensors) at the best iteration;
    pass as ``init_state`` with ``NSFPConfig(init="warm")`` to warm-start the next pair."""


def as_points(points, name: str, device: str | torch.device = "cpu") -> Tensor:
    """``points`` (array-like ``[N, 3]``) as a float32 tensor on ``device``; ``ValueError`` when empty,
    not ``[N, 3]`` or not finite (the message names ``name``)."""
    if isinstance(points, Tensor):
        t = points.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(points, dtype=np.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: not convertible to a float array ({e})") from None
    if not t.is_floating_point():
        t = t.float()
    check_points(t, name)
    return t.to(device=device, dtype=torch.float32).contiguous()


def _device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"estimate_flow: device {device!r} requested but CUDA is not available")
    return dev


class _EarlyStopping:
    """The released ``utils.EarlyStopping`` (mode 'min'): stop after ``patience`` non-improving steps."""

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta, self.best, self.bad = patience, min_delta, None, 0

    def step(self, value: float) -> bool:
        if self.patience == 0:
            return False
        if self.best is None:
            self.best = value
            return False
        if value < self.best - self.min_delta:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


class _Loss:
    """The NSFP objective for one pair: exact truncated Chamfer, or FastNSF's distance transform."""

    def __init__(self, config: NSFPConfig, p1: Tensor, p2: Tensor):
        self.c, self.p1, self.p2 = config, p1, p2
        backend = config.nn_backend
        if backend == "auto":
            backend = "kdtree" if p1.device.type == "cpu" else "torch"
        self.backend = backend
        self.dt2 = self.dt1 = None
        if config.loss == "dt":
            kw = dict(voxel=config.dt_voxel, max_voxels=config.dt_max_voxels)
            self.dt2 = DistanceTransform.build(p2, cover=p1, **kw)
            if config.cycle:
                self.dt1 = DistanceTransform.build(p1, **kw)

        self._trees: dict[int, object] = {}  # KD-trees of the fixed clouds, built once

    def _index(self, q: Tensor, r: Tensor) -> Tensor:
        if self.backend != "kdtree":
            return _nn_index_torch(q, r, None)
        if r is self.p1 or r is self.p2:
            from scipy.spatial import cKDTree

            tree = self._trees.get(id(r))
            if tree is None:
                tree = self._trees[id(r)] = cKDTree(r.cpu().double().numpy())
            _, idx = tree.query(q.detach().cpu().double().numpy(), k=1)
            return torch.from_numpy(np.asarray(idx, dtype=np.int64))
        return _nn_index_kdtree(q, r)

    def term(self, a: Tensor, b: Tensor, dt_b: DistanceTransform | None) -> Tensor:
        ts = self.c.truncate_sq
        if dt_b is not None:
            d = dt_b(a)
            return _truncated_mean(d, d * d < ts)
        d_ab = ((a - b[self._index(a, b)]) ** 2).sum(1)
        d_ba = ((b - a[self._index(b, a)]) ** 2).sum(1)
        return _truncated_mean(d_ab, d_ab < ts) + _truncated_mean(d_ba, d_ba < ts)

    def __call__(self, net: FlowMLP, back: FlowMLP | None) -> tuple[Tensor | None, Tensor]:
        flow = net(self.p1)
        if not bool(torch.isfinite(flow).all()):
            return None, flow
        deformed = self.p1 + flow
        loss = self.term(deformed, self.p2, self.dt2)
        if back is not None:
            cycled = deformed - back(deformed)
            if not bool(torch.isfinite(cycled).all()):
                return None, flow
            loss = loss + self.term(cycled, self.p1, self.dt1)
        return loss, flow


def _init_nets(config: NSFPConfig, init_state: dict | None, dev: torch.device) -> tuple[FlowMLP, FlowMLP | None]:
    net = FlowMLP.from_config(config)
    if init_state is not None:
        if config.init != "warm":
            raise ValueError("estimate_flow: init_state given but config.init='reinit'; use NSFPConfig(init='warm')")
        if not isinstance(init_state, dict) or "flow" not in init_state:
            raise ValueError("estimate_flow: init_state must be FlowEstimate.state ({'flow': state_dict, ...})")
        try:
            net.load_state_dict(init_state["flow"])
        except RuntimeError as e:
            raise ValueError(f"estimate_flow: init_state does not match the config's MLP: {e}") from None
    net = net.to(dev)
    back = copy.deepcopy(net) if config.cycle else None  # released solver: net_inv = deepcopy(net)
    return net, back


def _snapshot(net: torch.nn.Module | None) -> dict | None:
    return None if net is None else {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def estimate_flow(points1, points2, config: NSFPConfig = NSFPConfig(), *, init_state: dict | None = None,
                  ego_motion=None, device: str | torch.device = "cpu",
                  progress: Callable[[int, float], None] | None = None) -> FlowEstimate:
    """Scene flow of ``points1 [N, 3]`` towards ``points2 [M, 3]`` by NSFP runtime optimisation.

    Without ``ego_motion`` the flow is ``points1 + flow ~ points2`` with both clouds in their own sensor
    frames, i.e. ego motion included (the AV2/KITTI label convention). With ``ego_motion`` (``[4, 4]``
    frame2_from_frame1, e.g. AV2's ``ego1_SE3_ego0``) ``points1`` is first moved into frame 2, the MLP
    fits the residual (object) motion, and the returned flow is the full flow
    ``T @ p + residual - p`` (ego motion included), as the labels define it. ``init_state`` (with ``config.init == "warm"``) starts the forward MLP from a
    previous :attr:`FlowEstimate.state`. ``progress(iteration, loss)`` is called every iteration.
    Bad input (empty, NaN rows, not ``[N, 3]``) raises ``ValueError``.
    """
    t0 = time.perf_counter()
    dev = _device(device)
    config = config.resolved(dev)
    p1, p2 = as_points(points1, "points1", dev), as_points(points2, "points2", dev)
    given = p1
    ego = _ego_offset(ego_motion, p1)
    if ego is not None:
        p1 = p1 + ego
    fit1 = _sample_rows(p1, config.fit_points, config.seed)
    objective = _Loss(config, fit1, _sample_rows(p2, config.fit_points, config.seed + 1))
    net, back = _init_nets(config, init_state, dev)
    groups = [{"params": list(net.parameters()), "weight_decay": config.weight_decay}]
    if back is not None:
        groups.append({"params": list(back.parameters()), "weight_decay": config.weight_decay})
    optimizer = adam(groups, lr=config.lr)
    stopper = _EarlyStopping(config.patience, config.min_delta)
    best_loss, best_flow, best_it, best_state, it = math.inf, None, -1, {}, -1
    deadline = math.inf if config.time_budget_s is None else t0 + config.time_budget_s
    for it in range(config.max_iterations):
        optimizer.zero_grad(set_to_none=True)
        loss, flow = objective(net, back)
        value = math.nan if loss is None else float(loss.detach())
        if not math.isfinite(value):  # released EarlyStopping stops on NaN; keep the best iterate
            break
        if value <= best_loss:
            best_loss, best_flow, best_it = value, flow.detach().clone(), it
            best_state = {"flow": _snapshot(net), "backward": _snapshot(back)}
        if progress is not None:
            progress(it, value)
        if stopper.step(value) or time.perf_counter() > deadline:
            break
        loss.backward()
        optimizer.step()
    if best_flow is None:
        raise ValueError("estimate_flow: the loss was not finite at the first iteration (inputs too far "
                         "from the origin or lr too high?)")
    if fit1 is not p1:  # the fitted field at every row
        net.load_state_dict(best_state["flow"])
        with torch.no_grad():
            best_flow = torch.cat([net(c) for c in p1.split(65536)])
    if ego is not None:
        best_flow = best_flow + ego
    flow_np = field_flow = best_flow.cpu().numpy().astype(np.float32)
    rigid = None
    if config.rigid.enabled:
        from omnifield.scenes.nsfp.rigid_pair import refine_pair_flow

        refined = refine_pair_flow(given.cpu().numpy(), flow_np, p2.cpu().numpy(), config.rigid,
                                   ego_flow=None if ego is None else ego.cpu().numpy())
        flow_np, rigid = refined.flow, refined.refinement.summary()
    return FlowEstimate(
        flow=flow_np, loss=best_loss, iterations=it + 1, best_iteration=best_it,
        runtime_s=time.perf_counter() - t0, field_flow=None if rigid is None else field_flow, rigid=rigid,
        state=best_state)


def _sample_rows(points: Tensor, count: int | None, seed: int) -> Tensor:
    """``count`` random rows of ``points`` (seeded), or ``points`` itself when it has no more rows."""
    if count is None or len(points) <= count:
        return points
    rows = np.sort(np.random.default_rng(seed).choice(len(points), count, replace=False))
    return points[torch.from_numpy(rows).to(points.device)]


def _ego_offset(ego_motion, p1: Tensor) -> Tensor | None:
    """``T @ p - p`` for each row of ``p1`` (float64 transform), or None without ``ego_motion``."""
    if ego_motion is None:
        return None
    T = np.asarray(ego_motion, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ValueError(f"estimate_flow: ego_motion must be a finite [4, 4] matrix, got shape {T.shape}")
    p = p1.detach().cpu().double().numpy()
    moved = p @ T[:3, :3].T + T[:3, 3]
    return torch.from_numpy(moved - p).to(p1.device, torch.float32)


def zero_flow(points1, points2) -> np.ndarray:
    """Baseline: ``[N, 3]`` zeros (inputs validated as in :func:`estimate_flow`)."""
    p1 = as_points(points1, "points1")
    as_points(points2, "points2")
    return np.zeros((len(p1), 3), np.float32)


def nn_flow(points1, points2) -> np.ndarray:
    """Baseline: each point of ``points1`` moves to its nearest neighbour in ``points2`` -> ``[N, 3]``."""
    p1, p2 = as_points(points1, "points1"), as_points(points2, "points2")
    idx = _nn_index_kdtree(p1, p2)
    return (p2[idx] - p1).numpy().astype(np.float32)
