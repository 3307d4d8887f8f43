"""Scene-flow metrics (EPE3D, Acc3DS, Acc3DR, Outliers, angle error) and the evaluation protocols.

Definitions of ``scene_flow_metrics`` in the released Neural Scene Flow Prior code (``utils.py``,
"follow FlowNet3D metrics"; the same function in FastNSF's ``optimization.py``), per point with
``e = |pred - gt|`` and ``r = e / (|gt| + 1e-20)``:

- ``epe3d``: mean of ``e`` (metres);
- ``acc3d_strict`` (Acc3DS): fraction with ``e < 0.05`` or ``r < 0.05``;
- ``acc3d_relax`` (Acc3DR): fraction with ``e < 0.1`` or ``r < 0.1``;
- ``outliers``: fraction with ``e > 0.3`` or ``r > 0.1``;
- ``angle_error`` (radians): mean of ``arccos(clamp(u_gt . u_pred, -1 + 1e-7, 1 - 1e-7))`` with unit
  vectors ``u``; a zero-length vector gives a NaN dot product, which that code sets to 0 (an angle of
  pi/2). Note this is the 3-D angle of NSFP/FlowNet3D, not the 4-D (flow, dt) angle of some optical-flow
  and AV2 tool kits.
"""

from __future__ import annotations

import numpy as np

KEYS = ("epe3d", "acc3d_strict", "acc3d_relax", "outliers", "angle_error", "n_points")
AV2_RANGE = 50.0  # m: AV2 scene-flow evaluation keeps |x|, |y| <= 50 m


def _as_flow(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"{name}: expected shape [N, 3], got {a.shape}")
    return a


def flow_metrics(pred, gt, mask=None) -> dict:
    """Metrics of ``pred [N, 3]`` against ``gt [N, 3]`` over the rows where ``mask [N]`` (bool) is set.

    Returns the keys ``epe3d, acc3d_strict, acc3d_relax, outliers, angle_error`` (floats; NaN when no row
    is evaluated) and ``n_points``. Rows with a non-finite ``gt`` or ``pred`` raise ``ValueError``."""
    p, g = _as_flow(pred, "pred"), _as_flow(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"flow_metrics: pred {p.shape} and gt {g.shape} differ in shape")
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool or m.shape != (len(g),):
            raise ValueError(f"flow_metrics: mask must be bool [{len(g)}], got {m.dtype} {m.shape}")
        p, g = p[m], g[m]
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise ValueError("flow_metrics: pred or gt has NaN/inf rows among the evaluated points")
    n = len(g)
    if n == 0:
        return {**{k: float("nan") for k in KEYS[:-1]}, "n_points": 0}
    err = np.linalg.norm(p - g, axis=1)
    rel = err / (np.linalg.norm(g, axis=1) + 1e-20)
    with np.errstate(invalid="ignore", divide="ignore"):
        u_g = g / np.linalg.norm(g, axis=1, keepdims=True)
        u_p = p / np.linalg.norm(p, axis=1, keepdims=True)
        dot = np.clip((u_g * u_p).sum(1), -1 + 1e-7, 1 - 1e-7)
    dot[np.isnan(dot)] = 0.0
    return {
        "epe3d": float(err.mean()),
        "acc3d_strict": float(((err < 0.05) | (rel < 0.05)).mean()),
        "acc3d_relax": float(((err < 0.1) | (rel < 0.1)).mean()),
        "outliers": float(((err > 0.3) | (rel > 0.1)).mean()),
        "angle_error": float(np.arccos(dot).mean()),
        "n_points": int(n),
    }


def evaluation_mask(frame, protocol: str | None = None) -> np.ndarray:
    """``[N]`` bool: the rows of ``frame`` (a ``PointCloudFrame``) that ``protocol`` evaluates.

    Always drops rows whose ``flow_valid`` is False. ``"av2"``: also ground points (``is_ground``
    required) and points with ``|x| > 50`` or ``|y| > 50`` m (Argoverse 2 scene-flow evaluation)."""
    n = len(frame.points)
    mask = np.ones(n, bool)
    if getattr(frame, "flow_valid", None) is not None:
        mask &= np.asarray(frame.flow_valid, bool)
    if protocol is None:
        return mask
    if protocol != "av2":
        raise ValueError(f"evaluate_flow: unknown protocol {protocol!r} (known: None, 'av2')")
    if getattr(frame, "is_ground", None) is None:
        raise ValueError("evaluate_flow: protocol 'av2' needs frame.is_ground (ground labels)")
    pts = np.asarray(frame.points)
    mask &= ~np.asarray(frame.is_ground, bool)
    mask &= (np.abs(pts[:, 0]) <= AV2_RANGE) & (np.abs(pts[:, 1]) <= AV2_RANGE)
    return mask


def evaluate_flow(pred, frame, protocol: str | None = None) -> dict:
    """Metrics of ``pred [N, 3]`` against ``frame.flow`` on the rows ``protocol`` evaluates (see
    :func:`evaluation_mask`), plus ``static`` / ``dynamic`` sub-dicts when ``frame.dynamic`` exists.

    The label flow includes ego motion (``points + flow`` = the point at the next frame's time, in the
    next frame's ego coordinates), so ``pred`` must be that same quantity."""
    if getattr(frame, "flow", None) is None:
        raise ValueError(f"evaluate_flow: frame {getattr(frame, 'path', '')!r} has no ground-truth flow")
    gt = _as_flow(frame.flow, "frame.flow")
    p = _as_flow(pred, "pred")
    if p.shape != gt.shape:
        raise ValueError(f"evaluate_flow: pred {p.shape} and frame.flow {gt.shape} differ in shape")
    mask = evaluation_mask(frame, protocol)
    out = flow_metrics(p, gt, mask)
    if getattr(frame, "dynamic", None) is not None:
        dyn = np.asarray(frame.dynamic, bool)
        out["static"] = flow_metrics(p, gt, mask & ~dyn)
        out["dynamic"] = flow_metrics(p, gt, mask & dyn)
    return out
