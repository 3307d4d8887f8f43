"""Neural Scene Flow Prior (scenes/nsfp): rigid-motion recovery, early stopping, warm start, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifield.scenes.flow_metrics import flow_metrics
from omnifield.scenes.nsfp import FlowMLP, NSFPConfig, estimate_flow, nn_flow, zero_flow

SMALL = dict(layers=4, hidden=64, max_iterations=300, patience=40)  # fast test config (not the paper's)


def rigid_pair(n: int = 600, seed: int = 0):
    """A structured cloud (three planes, like a street corner) and the same cloud moved rigidly."""
    rng = np.random.default_rng(seed)
    k = n // 3
    floor = np.c_[rng.uniform(-4, 4, k), rng.uniform(-4, 4, k), np.zeros(k)]
    wall = np.c_[rng.uniform(-4, 4, k), np.full(k, 4.0), rng.uniform(0, 3, k)]
    side = np.c_[np.full(n - 2 * k, -4.0), rng.uniform(-4, 4, n - 2 * k), rng.uniform(0, 3, n - 2 * k)]
    p1 = np.concatenate([floor, wall, side]).astype(np.float32)
    a = math.radians(4.0)
    rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    t = np.array([0.25, -0.15, 0.05])
    p2 = (p1 @ rot.T + t).astype(np.float32)
    return p1, p2, (p2 - p1).astype(np.float32)


def test_flow_mlp_layout_matches_released_code():
    net = FlowMLP()
    linears = [m for m in net.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 128)] + [(128, 128)] * 7 + [(128, 3)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in net.net) == 8
    assert not isinstance(net.net[-1], torch.nn.ReLU)
    torch.testing.assert_close(FlowMLP(seed=3)(torch.ones(2, 3)), FlowMLP(seed=3)(torch.ones(2, 3)))


@pytest.mark.parametrize("cycle", [True, False])
def test_recovers_rigid_motion(cycle):
    p1, p2, gt = rigid_pair()
    est = estimate_flow(p1, p2, NSFPConfig(**SMALL, cycle=cycle))
    m = flow_metrics(est.flow, gt)
    assert m["epe3d"] < 0.05 and m["acc3d_strict"] > 0.9, m
    assert est.runtime_s < 20
    # the prior matters: nearest-neighbour flow on the same pair is far worse
    assert flow_metrics(nn_flow(p1, p2), gt)["epe3d"] > 2 * m["epe3d"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NSFP on the GPU against the CPU)")
@pytest.mark.parametrize("loss", ["chamfer", "dt"])
def test_the_gpu_fit_recovers_the_motion_as_the_cpu_fit_does(loss):
    p1, p2, gt = rigid_pair()
    config = NSFPConfig(**SMALL, loss=loss, dt_voxel=0.05, cycle=loss == "chamfer")
    gpu, cpu = estimate_flow(p1, p2, config, device="cuda"), estimate_flow(p1, p2, config, device="cpu")
    assert isinstance(gpu.flow, np.ndarray) and gpu.flow.shape == p1.shape
    m_gpu, m_cpu = flow_metrics(gpu.flow, gt), flow_metrics(cpu.flow, gt)
    assert m_gpu["epe3d"] < 0.08 and m_gpu["epe3d"] < 2 * m_cpu["epe3d"] + 0.01, (m_gpu, m_cpu)


def test_recovers_rigid_motion_with_distance_transform():
    p1, p2, gt = rigid_pair()
    est = estimate_flow(p1, p2, NSFPConfig(**SMALL, loss="dt", dt_voxel=0.05, cycle=False))
    m = flow_metrics(est.flow, gt)
    assert m["epe3d"] < 0.08 and m["acc3d_relax"] > 0.8, m


def test_early_stopping_returns_the_best_loss_iterate():
    p1, p2, _ = rigid_pair(300)
    losses = []
    cfg = NSFPConfig(layers=3, hidden=32, max_iterations=400, patience=5, min_delta=0.0, lr=0.05)
    est = estimate_flow(p1, p2, cfg, progress=lambda it, loss: losses.append(loss))
    assert len(losses) == est.iterations < cfg.max_iterations  # it stopped early
    best = min(losses)
    assert est.loss == best and losses[est.best_iteration] == best
    assert est.best_iteration < est.iterations - 1  # the last iterate was not the best: a later one was kept out
    assert min(losses[est.best_iteration + 1 :]) > best
    # the returned flow and state are those of the best iterate
    net = FlowMLP(cfg.layers, cfg.hidden)
    net.load_state_dict(est.state["flow"])
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.from_numpy(p1)).numpy(), est.flow, atol=1e-6)


def test_warm_start_uses_init_state():
    p1, p2, gt = rigid_pair(300)
    first = estimate_flow(p1, p2, NSFPConfig(**SMALL))
    one = dict(SMALL, max_iterations=1)
    warm = estimate_flow(p1, p2, NSFPConfig(**one, init="warm", seed=7), init_state=first.state)
    np.testing.assert_allclose(warm.flow, first.flow, atol=1e-6)  # iteration 0 = the loaded network
    cold = estimate_flow(p1, p2, NSFPConfig(**one, seed=7))
    assert np.abs(cold.flow - first.flow).max() > 0.05
    with pytest.raises(ValueError, match="init='warm'"):
        estimate_flow(p1, p2, NSFPConfig(**one), init_state=first.state)
    with pytest.raises(ValueError, match="init_state"):
        estimate_flow(p1, p2, NSFPConfig(**one, init="warm"), init_state={"nope": 1})


def test_reinit_is_deterministic():
    p1, p2, _ = rigid_pair(200)
    cfg = NSFPConfig(layers=3, hidden=32, max_iterations=20)
    a, b = estimate_flow(p1, p2, cfg), estimate_flow(p1, p2, cfg)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert a.state["backward"] is not None and estimate_flow(p1, p2, NSFPConfig(
        layers=3, hidden=32, max_iterations=2, cycle=False)).state["backward"] is None


def test_baselines():
    p1, p2, _ = rigid_pair(90)
    assert (zero_flow(p1, p2) == 0).all() and zero_flow(p1, p2).shape == (90, 3)
    f = nn_flow(p1, p2[::-1].copy())
    d = ((p1[:, None] + f[:, None] - p2[None]) ** 2).sum(-1).min(1)
    assert d.max() < 1e-10  # every moved point lands on a point of the target


@pytest.mark.parametrize(
    "p1, match",
    [
        (np.zeros((0, 3), np.float32), "points1: empty"),
        (np.array([[0, 0, np.nan], [1, 1, 1]], np.float32), "points1: 1 of 2 rows are NaN"),
        (np.zeros((10, 4), np.float32), r"points1: expected shape \[N, 3\]"),
        ("abc", "points1"),
    ],
)
def test_bad_input_raises(p1, match):
    p2 = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    for fn in (lambda: estimate_flow(p1, p2, NSFPConfig(max_iterations=1)), lambda: nn_flow(p1, p2),
               lambda: zero_flow(p1, p2)):
        with pytest.raises(ValueError, match=match):
            fn()
    with pytest.raises(ValueError, match="points2: empty"):
        estimate_flow(p2, np.zeros((0, 3)), NSFPConfig(max_iterations=1))


def test_config_validation():
    for bad in (dict(loss="icp"), dict(init="cold"), dict(lr=0), dict(truncate_sq=-1), dict(layers=0),
                dict(profile="fast"), dict(max_iterations=0)):
        with pytest.raises(ValueError, match="NSFPConfig"):
            NSFPConfig(**bad)


def test_the_profile_caps_the_iterations_on_the_cpu_and_keeps_the_released_schedule_on_a_gpu():
    from omnifield.scenes.nsfp.config import CPU_MAX_ITERATIONS, PAPER_MAX_ITERATIONS

    assert NSFPConfig().resolved("cpu").max_iterations == CPU_MAX_ITERATIONS < PAPER_MAX_ITERATIONS == 5000
    assert NSFPConfig().resolved("cuda").profile == "paper" and NSFPConfig().resolved("cuda").max_iterations == 5000
    assert NSFPConfig(profile="paper").resolved("cpu").max_iterations == 5000
    assert NSFPConfig(profile="paper", max_iterations=7).resolved("cpu").max_iterations == 7  # explicit wins
    # The cap is what the CPU fit runs: no early stop (patience 0), exactly CPU_MAX_ITERATIONS steps.
    p1, p2, _ = rigid_pair(64)
    est = estimate_flow(p1, p2, NSFPConfig(layers=2, hidden=8, patience=0, cycle=False))
    assert est.iterations == CPU_MAX_ITERATIONS


def test_ego_motion_is_compensated_and_added_back():
    p1, p2, gt = rigid_pair(300)
    a = math.radians(4.0)
    T = np.eye(4)
    T[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = [0.25, -0.15, 0.05]
    est = estimate_flow(p1, p2, NSFPConfig(**SMALL), ego_motion=T)  # residual motion is zero
    assert flow_metrics(est.flow, gt)["epe3d"] < 0.02
    with pytest.raises(ValueError, match="ego_motion"):
        estimate_flow(p1, p2, NSFPConfig(max_iterations=1), ego_motion=np.eye(3))


def test_fit_points_fits_a_sample_and_returns_the_field_at_every_row():
    p1, p2, gt = rigid_pair(1800)
    est = estimate_flow(p1, p2, NSFPConfig(**SMALL, fit_points=600))
    assert est.flow.shape == gt.shape
    rows = np.sort(np.random.default_rng(SMALL.get("seed", 0)).choice(1800, 600, replace=False))
    unseen = np.setdiff1d(np.arange(1800), rows)
    seen, unseen_epe = flow_metrics(est.flow[rows], gt[rows])["epe3d"], flow_metrics(est.flow[unseen], gt[unseen])["epe3d"]
    assert unseen_epe < 0.1 and unseen_epe < 1.5 * seen, (seen, unseen_epe)  # rows the loss never saw
    assert flow_metrics(nn_flow(p1, p2), gt)["epe3d"] > 2 * unseen_epe
    # the same sample fitted directly gives the same field: a sample, not a different problem
    direct = estimate_flow(p1[rows], p2[np.sort(np.random.default_rng(1).choice(1800, 600, replace=False))],
                           NSFPConfig(**SMALL))
    np.testing.assert_allclose(est.flow[rows], direct.flow, atol=1e-5)
    with pytest.raises(ValueError, match="fit_points"):
        NSFPConfig(fit_points=0)


def test_rigid_refinement_option_runs_after_the_fit_and_keeps_the_field_flow():
    p1, p2, gt = rigid_pair(600)
    plain = estimate_flow(p1, p2, NSFPConfig(**SMALL))
    assert plain.field_flow is None and plain.rigid is None
    from omnifield.scenes.nsfp.pipeline import nsfp_config

    cfg = nsfp_config([f"{k}={v}" for k, v in SMALL.items()] + ["rigid.enabled=true"])
    est = estimate_flow(p1, p2, cfg)
    # the whole cloud moves rigidly: its dominant motion is the motion, nothing is left to refine
    np.testing.assert_array_equal(est.field_flow, plain.flow)
    np.testing.assert_array_equal(est.flow, plain.flow)
    assert est.rigid["points_refined"] == 0
