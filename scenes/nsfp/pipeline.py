"""Scene flow on pairs of sweeps as ``omnifield flow estimate`` / ``flow eval`` and ``bench/flow.py`` run it:
choose the points (ground removal, range, sampling), call :func:`~omnifield.scenes.nsfp.estimate.estimate_flow`
and the baselines, score with :func:`~omnifield.scenes.flow_metrics.evaluate_flow`, save ``flow.npz``.

Everything here is callable from Python; the CLI only parses and prints.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnifield.errors import DataError

METRIC_KEYS = ("epe3d", "acc3d_strict", "acc3d_relax", "outliers", "angle_error")
GROUND_CHOICES = ("auto", "none", "labels", "grid", "height", "ransac")


def nsfp_config(overrides=()):
    """``NSFPConfig()`` with ``key=value`` overrides (typed by the dataclass; ConfigError on a bad key)."""
    from omnifield.scenes.configs import apply_overrides
    from omnifield.scenes.nsfp.config import NSFPConfig

    return apply_overrides(NSFPConfig(), list(overrides))


def load_flow_pair(pc1, pc2=None):
    """Two sweeps (any single-sweep file), or one scene-flow pair file when ``pc2`` is None -> a sequence."""
    from omnifield.datasets.pointclouds import load_pair, load_point_clouds

    if pc2 is None:
        seq = load_point_clouds(pc1)
        if len(seq) < 2:
            raise DataError("holds one sweep; give a second sweep (PC2) or a scene-flow pair file", pc1)
        return seq
    return load_pair(pc1, pc2)


# -- choosing the points ---------------------------------------------------------------------------
def _ground_rows(frame, mode: str, other_has_labels: bool) -> np.ndarray:
    """``[N]`` bool ground rows of ``frame`` under ``mode`` (see :data:`GROUND_CHOICES`): ``auto`` takes the
    frame's labels, else (when the other frame of the pair is labelled, e.g. AV2's second sweep) the
    per-column ``grid`` cut of :func:`~omnifield.datasets.pointclouds.ground_mask`, else nothing (KITTI /
    FT3D pair files come without ground)."""
    from omnifield.datasets.pointclouds import ground_mask

    n = len(frame)
    if mode == "none" or n == 0:
        return np.zeros(n, bool)
    if mode in ("auto", "labels") and frame.is_ground is not None:
        return np.asarray(frame.is_ground, bool)
    if mode == "labels":
        raise DataError("--ground labels: this frame has no ground labels", frame.path or None)
    if mode == "auto" and not other_has_labels:
        return np.zeros(n, bool)
    if mode == "ransac" and n < 3:
        return np.zeros(n, bool)
    return ground_mask(frame.points, "grid" if mode == "auto" else mode)


def choose_rows(frame, *, ground: np.ndarray, max_range: float | None = None, box=None, keep=None,
                points: int | None = None, seed: int = 0) -> np.ndarray:
    """Sorted row indices of ``frame`` used for the flow: not ``ground``, within ``max_range`` m and
    ``box`` (|x|, |y| <= box), inside ``keep`` when given, then ``points`` of them at random (seeded)."""
    pts = frame.points
    mask = ~ground
    if max_range is not None:
        mask &= np.linalg.norm(pts, axis=1) <= max_range
    if box is not None:
        mask &= (np.abs(pts[:, 0]) <= box) & (np.abs(pts[:, 1]) <= box)
    if keep is not None:
        mask &= keep
    rows = np.flatnonzero(mask)
    if points is not None and len(rows) > points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, points, replace=False))
    return rows


def _require_points(rows: np.ndarray, frame, what: str) -> None:
    if len(rows) == 0:
        raise DataError(f"no points left in {what} after ground removal / cropping", frame.path or None)


# -- estimate ----------------------------------------------------------------------------------------
@dataclass
class PairFlow:
    """The flow of the chosen rows of frame ``pair`` towards frame ``pair + 1``.

    ``flow [N, 3]`` float32 (points + flow = positions at the second sweep's time in its coordinates);
    ``points [N, 3]`` the rows used; ``indices [N]`` int64 rows into the first sweep as read.
    """

    flow: np.ndarray
    points: np.ndarray
    indices: np.ndarray
    loss: float
    iterations: int
    best_iteration: int
    runtime_s: float
    source: str = ""
    rigid: dict | None = None
    """Summary of the rigid refinement (``config.rigid.enabled``), else None."""


def estimate_pair_flow(seq, config=None, *, pair: int = 0, points: int | None = None, ground: str = "none",
                       max_range: float | None = None, ego_motion: bool = True, seed: int = 0,
                       device="cpu", progress: bool = False) -> PairFlow:
    """NSFP flow of frame ``pair`` of ``seq`` towards the next one, on the rows :func:`choose_rows` keeps.

    ``ego_motion``: give NSFP the relative ego pose when the data has one (it then fits the residual).
    """
    from omnifield.scenes.nsfp.estimate import estimate_flow

    config = (nsfp_config() if config is None else config).resolved(device)
    f1, f2 = seq.pair(pair)
    labels = f1.is_ground is not None or f2.is_ground is not None
    rows1 = choose_rows(f1, ground=_ground_rows(f1, ground, labels), max_range=max_range, points=points, seed=seed)
    rows2 = choose_rows(f2, ground=_ground_rows(f2, ground, labels), max_range=max_range, points=points, seed=seed + 1)
    _require_points(rows1, f1, "the first sweep")
    _require_points(rows2, f2, "the second sweep")
    motion = seq.next_from_this(pair) if ego_motion else None
    with _progress(progress, config.max_iterations, "NSFP") as report:
        est = estimate_flow(f1.points[rows1], f2.points[rows2], config, ego_motion=motion, device=device, progress=report)
    return PairFlow(flow=est.flow, points=f1.points[rows1], indices=rows1.astype(np.int64), loss=float(est.loss),
                    iterations=int(est.iterations), best_iteration=int(est.best_iteration),
                    runtime_s=float(est.runtime_s), source=f1.path, rigid=est.rigid)


def save_flow_npz(path, result: PairFlow) -> Path:
    """Write ``flow, points, indices, loss, iterations, best_iteration, runtime_s`` as an ``.npz``, atomically."""
    from omnifield.scenes.runs import atomic_write_bytes

    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, flow=result.flow.astype(np.float32), points=result.points.astype(np.float32),
             indices=result.indices.astype(np.int64), loss=np.float64(result.loss),
             iterations=np.int64(result.iterations), best_iteration=np.int64(result.best_iteration),
             runtime_s=np.float64(result.runtime_s))
    atomic_write_bytes(path, buf.getvalue())
    return path


class _progress:
    """Context manager: a rich bar fed by ``estimate_flow``'s ``progress(iteration, loss)`` (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label, self.bar = enabled, total, label, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("loss {task.fields[loss]:.4f}"), transient=True)
        task = self.bar.add_task(self.label, total=self.total, loss=math.nan)
        self.bar.start()
        return lambda it, loss: self.bar.update(task, completed=it + 1, loss=loss)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


# -- evaluate ------------------------------------------------------------------------------------------
def _combine(parts: list[dict]) -> dict:
    """Point-weighted mean of per-pair metric dicts (exactly the metrics of the pooled points)."""
    n = sum(p["n_points"] for p in parts)
    out = {k: (sum(p[k] * p["n_points"] for p in parts if p["n_points"]) / n if n else math.nan) for k in METRIC_KEYS}
    out["n_points"] = int(n)
    for sub in ("static", "dynamic"):
        if all(sub in p for p in parts) and parts:
            out[sub] = _combine([p[sub] for p in parts])
    return out


def _ego_flow(points: np.ndarray, motion) -> np.ndarray:
    m = np.asarray(motion, dtype=np.float64)
    p = points.astype(np.float64)
    return (p @ m[:3, :3].T + m[:3, 3] - p).astype(np.float32)


def evaluate_sequence(seq, config=None, *, points: int | None = None, baselines: bool = False, ground: str = "auto",
                      max_pairs: int | None = None, ego_motion: bool = True, seed: int = 0, device="cpu",
                      progress: bool = False) -> dict:
    """NSFP (and with ``baselines`` zero / nearest-neighbour flow) on every labelled pair of ``seq``.

    Per pair: ground removed (:func:`_ground_rows`), the data's protocol box (AV2: |x|, |y| <= 50 m) and
    labelled rows of the first sweep, ``points`` random rows of each sweep; metrics by
    :func:`omnifield.scenes.flow_metrics.evaluate_flow` with the data's protocol, pooled over pairs.
    Returns the JSON of ``omnifield flow eval``: top-level metrics, ``runtime_s`` (NSFP seconds, summed),
    ``static`` / ``dynamic`` where labels allow, ``baselines`` and per-pair results.
    """
    from omnifield.scenes.flow_metrics import AV2_RANGE, evaluate_flow
    from omnifield.scenes.nsfp.estimate import estimate_flow, nn_flow, zero_flow

    config = (nsfp_config() if config is None else config).resolved(device)
    protocol = seq.metadata.get("protocol")
    labelled = [i for i in range(len(seq) - 1) if seq.frames[i].flow is not None]
    if not labelled:
        raise DataError("no ground-truth flow in this data: flow eval needs labelled pairs", seq.path)
    if max_pairs is not None:
        labelled = labelled[:max_pairs]
    box = AV2_RANGE if protocol == "av2" else None
    nsfp_parts, field_parts, base_parts, per_pair, runtime, used_ego = [], [], {}, [], 0.0, False
    for i in labelled:
        f1, f2 = seq.pair(i)
        labels = f1.is_ground is not None or f2.is_ground is not None
        keep = None if f1.flow_valid is None else np.asarray(f1.flow_valid, bool)
        rows1 = choose_rows(f1, ground=_ground_rows(f1, ground, labels), box=box, keep=keep, points=points, seed=seed + 2 * i)
        rows2 = choose_rows(f2, ground=_ground_rows(f2, ground, labels), box=box, points=points, seed=seed + 2 * i + 1)
        _require_points(rows1, f1, f"the first sweep of pair {i}")
        _require_points(rows2, f2, f"the second sweep of pair {i}")
        p1, p2, sub = f1.points[rows1], f2.points[rows2], f1.select(rows1)
        motion = seq.next_from_this(i) if ego_motion else None
        used_ego |= motion is not None
        t0 = time.perf_counter()
        with _progress(progress, config.max_iterations, f"NSFP pair {i}") as report:
            est = estimate_flow(p1, p2, config, ego_motion=motion, device=device, progress=report)
        seconds = time.perf_counter() - t0
        runtime += seconds
        m = evaluate_flow(est.flow, sub, protocol)
        nsfp_parts.append(m)
        entry = {"pair": i, "points1": int(len(p1)), "points2": int(len(p2)), "runtime_s": seconds,
                 "iterations": int(est.iterations), "loss": float(est.loss), "epe3d": m["epe3d"]}
        if est.field_flow is not None:  # the rigid refinement ran: the field's own flow too
            field_parts.append(evaluate_flow(est.field_flow, sub, protocol))
            entry.update(rigid=est.rigid, field_epe3d=field_parts[-1]["epe3d"])
        if baselines:
            preds = {"zero": lambda: zero_flow(p1, p2), "nn": lambda: nn_flow(p1, p2)}
            if motion is not None:  # the same inputs NSFP had: the known ego motion applied first
                preds["ego"] = lambda: _ego_flow(p1, motion)
                preds["ego+nn"] = lambda: _ego_flow(p1, motion) + nn_flow(p1 + _ego_flow(p1, motion), p2)
            for name, fn in preds.items():
                t0 = time.perf_counter()
                pred = fn()
                bm = evaluate_flow(pred, sub, protocol)
                bm["runtime_s"] = time.perf_counter() - t0
                base_parts.setdefault(name, []).append(bm)
        per_pair.append(entry)
    result = _combine(nsfp_parts)
    result["runtime_s"] = runtime
    result.update({"method": "nsfp", "protocol": protocol, "data": str(seq.path), "format": seq.format,
                   "pairs": len(labelled), "points": points, "ground": ground, "ego_motion": used_ego,
                   "config": _config_dict(config), "per_pair": per_pair, "notes": []})
    if field_parts and len(field_parts) == len(nsfp_parts):
        result["field_only"] = _combine(field_parts)  # NSFP before the rigid refinement
    if baselines:
        result["baselines"] = {}
        for name, parts in base_parts.items():
            b = _combine(parts)
            b["runtime_s"] = sum(p["runtime_s"] for p in parts)
            result["baselines"][name] = b
    if not any("dynamic" in p for p in nsfp_parts):
        result["notes"].append("no dynamic labels: static/dynamic not reported")
    return result


def _config_dict(config) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(config).items()}
