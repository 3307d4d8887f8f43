"""Scene-flow metrics (scenes/flow_metrics.py) on hand-computed examples and the AV2 protocol."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from omnifield.scenes.flow_metrics import evaluate_flow, flow_metrics

AV2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "av2_flow_pair" / "pair.npz"
PARALLEL = math.acos(1 - 1e-7)  # the reference clamps the cosine to 1 - 1e-7: parallel vectors give this

# row: gt, pred, and what the row must score (hand-computed)
ROWS = [
    # e = 0.04 (< 0.05): strict and relaxed by the absolute clause
    ((1, 0, 0), (1.04, 0, 0)),
    # e = 0.09, |gt| = 2 -> r = 0.045: strict ONLY through the relative clause (abs 0.09 >= 0.05)
    ((0, 2, 0), (0, 2.09, 0)),
    # e = 0.07, r = 0.7: not strict, relaxed (abs), outlier through the relative clause only
    ((0, 0, 0.1), (0, 0, 0.17)),
    # e = 0.8, r = 0.08: not strict, relaxed ONLY through the relative clause, outlier (abs > 0.3)
    ((10, 0, 0), (10, 0.8, 0)),
    # zero ground truth: e = 0.01 strict; r = 1e18 -> outlier; angle NaN -> cos 0 -> pi/2 (reference)
    ((0, 0, 0), (0.01, 0, 0)),
    # e = 0.5, r = 0.5: fails everything, outlier
    ((0, 0, 1), (0, 0, 1.5)),
]


def test_metrics_hand_computed():
    gt = np.array([r[0] for r in ROWS], np.float32)
    pred = np.array([r[1] for r in ROWS], np.float32)
    m = flow_metrics(pred, gt)
    assert m["n_points"] == 6
    assert m["epe3d"] == pytest.approx((0.04 + 0.09 + 0.07 + 0.8 + 0.01 + 0.5) / 6, abs=1e-6)
    assert m["acc3d_strict"] == pytest.approx(3 / 6)  # rows 0, 1 (relative), 4
    assert m["acc3d_relax"] == pytest.approx(5 / 6)  # rows 0-4 (row 3 by the relative clause)
    # rows 2 (relative), 3, 5, and 4: a zero gt makes r = 0.01 / 1e-20 huge (reference behaviour)
    assert m["outliers"] == pytest.approx(4 / 6)
    angle = (4 * PARALLEL + math.atan(0.08) + math.pi / 2) / 6
    assert m["angle_error"] == pytest.approx(angle, abs=1e-6)


def test_relative_clauses_matter():
    # one row that only the relative clause makes accurate, and one only the relative clause makes an outlier
    m = flow_metrics(np.array([[0, 2.09, 0]]), np.array([[0, 2, 0]]))
    assert m["acc3d_strict"] == 1.0 and m["outliers"] == 0.0
    m = flow_metrics(np.array([[0, 0, 0.17]]), np.array([[0, 0, 0.1]]))
    assert m["acc3d_strict"] == 0.0 and m["acc3d_relax"] == 1.0 and m["outliers"] == 1.0
    # opposite directions: angle pi (clamped)
    m = flow_metrics(np.array([[-1.0, 0, 0]]), np.array([[1.0, 0, 0]]))
    assert m["angle_error"] == pytest.approx(math.acos(-1 + 1e-7))


def test_mask_empty_and_bad_input():
    gt = np.array([r[0] for r in ROWS], np.float32)
    pred = np.array([r[1] for r in ROWS], np.float32)
    mask = np.array([True, True, False, False, False, False])
    assert flow_metrics(pred, gt, mask)["acc3d_strict"] == 1.0
    empty = flow_metrics(pred, gt, np.zeros(6, bool))
    assert empty["n_points"] == 0 and math.isnan(empty["epe3d"])
    with pytest.raises(ValueError, match="differ in shape"):
        flow_metrics(pred[:5], gt)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        flow_metrics(pred[:, :2], gt[:, :2])
    with pytest.raises(ValueError, match="mask"):
        flow_metrics(pred, gt, np.ones(5, bool))
    with pytest.raises(ValueError, match="NaN"):
        flow_metrics(np.full((6, 3), np.nan), gt)


def _frame(points, flow, **kw):
    base = dict(flow_valid=None, is_ground=None, dynamic=None, path="fixture.npz")
    return SimpleNamespace(points=np.asarray(points, np.float32), flow=np.asarray(flow, np.float32), **{**base, **kw})


def test_evaluate_flow_av2_protocol_and_subsets():
    pts = [[1, 1, 0], [60, 0, 0], [0, -51, 0], [2, 2, -1], [3, 3, 0], [4, 4, 0]]
    flow = [[1, 0, 0]] * 6
    pred = np.array([[1, 0, 0], [9, 9, 9], [9, 9, 9], [9, 9, 9], [9, 9, 9], [1, 0, 0.2]], np.float32)
    frame = _frame(pts, flow, is_ground=np.array([0, 0, 0, 1, 0, 0], bool),
                   flow_valid=np.array([1, 1, 1, 1, 0, 1], bool), dynamic=np.array([0, 1, 0, 0, 0, 1], bool))
    out = evaluate_flow(pred, frame, "av2")  # kept: rows 0 and 5 (1: |x| > 50, 2: |y| > 50, 3: ground, 4: invalid)
    assert out["n_points"] == 2 and out["epe3d"] == pytest.approx(0.1)
    assert out["static"]["n_points"] == 1 and out["static"]["epe3d"] == pytest.approx(0.0, abs=1e-7)
    assert out["dynamic"]["n_points"] == 1 and out["dynamic"]["epe3d"] == pytest.approx(0.2)
    no_protocol = evaluate_flow(pred, frame)  # only flow_valid applies
    assert no_protocol["n_points"] == 5
    with pytest.raises(ValueError, match="protocol"):
        evaluate_flow(pred, frame, "kitti-ish")
    with pytest.raises(ValueError, match="is_ground"):
        evaluate_flow(pred, _frame(pts, flow), "av2")
    with pytest.raises(ValueError, match="no ground-truth flow"):
        evaluate_flow(pred, SimpleNamespace(points=np.zeros((6, 3)), flow=None, path="x"))
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate_flow(pred[:3], frame)


def test_av2_labels_include_ego_motion():
    """On the real AV2 pair, the rigid ego-motion flow explains the static labels (the convention)."""
    if not AV2.exists():
        pytest.skip(f"{AV2} absent (../shared/data is not shipped)")
    d = np.load(AV2)
    T = d["ego1_SE3_ego0"].astype(np.float64)
    pc0 = d["pc0"].astype(np.float64)
    ego_flow = pc0 @ T[:3, :3].T + T[:3, 3] - pc0
    frame = _frame(d["pc0"], d["flow"], is_ground=d["is_ground0"], dynamic=d["dynamic"])
    out = evaluate_flow(ego_flow, frame, "av2")
    assert out["static"]["epe3d"] < 0.01 and out["static"]["acc3d_strict"] > 0.99, out["static"]
    assert out["dynamic"]["epe3d"] > 0.1  # moving objects are not explained by ego motion
    assert out["n_points"] < len(pc0)
