"""Long-term flow (scenes/nsfp/trajectory.py): RK4 against closed forms, the fitted field on a small
synthetic lidar sequence against the ego-only baseline, the accumulated .ply."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifield.scenes.nsfp.accumulate import AccumulatedCloud, accumulate, accumulate_ego_only, write_accumulated_ply
from omnifield.scenes.nsfp.trajectory import ContinuousFlowField, TrajectoryConfig, integrate

TINY = TrajectoryConfig(layers=4, hidden=32, max_iterations=120, patience=40, points_per_frame=384, lr=5e-3)


def rotation_field(omega: float):
    """v(x, t) = omega z x (x): rigid rotation about the z axis; closed form x(t) = R_z(omega (t - t0)) x0."""
    def field(x, t):
        return torch.stack([-omega * x[:, 1], omega * x[:, 0], torch.zeros_like(x[:, 2])], dim=1)
    return field


def rotate_z(x: np.ndarray, angle) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1], x[:, 2]], axis=1)


def test_rk4_matches_rotation_closed_form_and_is_fourth_order():
    x0 = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    omega, t0, t1 = 1.3, 0.2, 1.0
    exact = rotate_z(x0.numpy(), omega * (t1 - t0))
    errors = [float(np.abs(integrate(rotation_field(omega), x0, t0, t1, steps=s).numpy() - exact).max()) for s in (4, 8, 16)]
    assert errors[-1] < 1e-6  # float64, 16 RK4 steps over a 1 rad turn: ~4e-7
    assert 12 < errors[0] / errors[1] < 20 and 12 < errors[1] / errors[2] < 20  # 2^4 = 16 per halving


def test_rk4_per_point_start_times_and_numpy_in_numpy_out():
    x0 = np.random.default_rng(1).normal(size=(20, 3))
    t0 = np.linspace(0.0, 0.5, 20)
    out = integrate(rotation_field(0.7), x0, torch.as_tensor(t0), 0.9, steps=16)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, rotate_z(x0, 0.7 * (0.9 - t0)), atol=1e-7)  # RK4 truncation ~2e-8
    back = integrate(rotation_field(0.7), out, 0.9, torch.as_tensor(t0), steps=16)  # backward in time
    np.testing.assert_allclose(back, x0, atol=1e-7)


def test_integrate_constant_velocity_is_exact_and_checks_shapes():
    def field(x, t):
        return torch.tensor([2.0, -1.0, 0.5]).expand_as(x)

    x = torch.zeros(4, 3)
    torch.testing.assert_close(integrate(field, x, 0.0, 0.3, steps=1), torch.tensor([[0.6, -0.3, 0.15]] * 4))
    with pytest.raises(ValueError, match="N, 3"):
        integrate(field, torch.zeros(4, 2), 0.0, 1.0, steps=1)
    with pytest.raises(ValueError, match="steps"):
        integrate(field, x, 0.0, 1.0)  # a bare callable has no steps_for


def test_unfitted_field_is_no_motion_and_steps_follow_frame_intervals():
    field = ContinuousFlowField(TrajectoryConfig(steps_per_interval=3), frame_dt=0.1)
    x = torch.randn(10, 3)
    assert torch.equal(field(x, torch.zeros(10)), torch.zeros(10, 3))
    assert field.steps_for(0.0, 0.1) == 3 and field.steps_for(0.0, 0.5) == 15 and field.steps_for(0.3, 0.0) == 9
    torch.testing.assert_close(integrate(field, x, 0.0, 0.4), x)
    with pytest.raises(ValueError, match="activation"):
        TrajectoryConfig(activation="gelu!")


def test_split_static_prior_still_pulls_sideways_drift_of_a_fast_object():
    from omnifield.scenes.nsfp.trajectory import _static_prior

    # a car seen from behind (rear face normal +x) moving 0.8 m per frame forward, drifting 4 cm sideways
    step = torch.tensor([[0.8, 0.04, 0.0]], requires_grad=True)
    normal = torch.tensor([[1.0, 0.0, 0.0]])
    _static_prior(step, normal, 0.03).sum().backward()
    split_pull = float(step.grad[0, 1])
    step.grad = None
    _static_prior(step, None, 0.03).sum().backward()  # on the whole displacement: saturated
    assert split_pull > 20 * float(step.grad[0, 1]) > 0
    still = torch.zeros(2, 3)
    assert torch.equal(_static_prior(still, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), 0.03), torch.zeros(2))


@pytest.fixture(scope="module")
def small_sequence(tmp_path_factory):
    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar

    out = tmp_path_factory.mktemp("lidar") / "seq"
    synthesize_lidar(out, LidarSynthConfig(frames=5, beams=16, azimuths=512, cars=3, buildings=4, poles=4))
    return load_point_clouds(out)


def _errors(seq, cloud: AccumulatedCloud):
    from omnifield.datasets.synth_lidar import true_positions

    true = np.concatenate([true_positions(seq, k, cloud.ref) for k in range(len(seq))])
    err = np.linalg.norm(cloud.points - true, axis=1)
    dyn = np.concatenate([f.dynamic for f in seq.frames])
    return err, dyn


def test_ego_only_baseline_is_exact_for_the_static_world(small_sequence):
    cloud = accumulate_ego_only(small_sequence)
    err, dyn = _errors(small_sequence, cloud)
    assert cloud.ref == 2 and len(cloud) == sum(len(f) for f in small_sequence.frames)
    assert err[~dyn].max() < 1e-4
    assert np.median(err[dyn]) > 0.3  # the cars moved


def test_accumulate_beats_no_motion_compensation(small_sequence):
    torch.set_num_threads(1)
    cloud = accumulate(small_sequence, TINY)
    err, dyn = _errors(small_sequence, cloud)
    base, _ = _errors(small_sequence, accumulate_ego_only(small_sequence))
    assert cloud.fit is not None and cloud.fit.iterations > 0
    assert np.median(err[dyn]) < 0.5 * np.median(base[dyn])
    assert np.median(err[~dyn]) < 0.05  # the static world stays put
    assert np.array_equal(np.bincount(cloud.frame_index), [len(f) for f in small_sequence.frames])


def test_multi_step_and_focused_sampling_options_run(small_sequence):
    config = TrajectoryConfig(layers=3, hidden=8, max_iterations=3, points_per_frame=128, horizon=3, focus=0.5)
    cloud = accumulate(small_sequence, config)
    assert cloud.fit.iterations == 3 and np.isfinite(cloud.points).all()
    with pytest.raises(ValueError, match="horizon"):
        TrajectoryConfig(horizon=0)


def test_accumulate_without_poses_warns_and_ref_is_checked(small_sequence):
    import copy

    seq = copy.deepcopy(small_sequence)
    seq.frames = seq.frames[:2]
    for f in seq.frames:
        f.ego_pose = None
    seq.metadata = {}
    with pytest.warns(UserWarning, match="identity poses"):
        cloud = accumulate(seq, TrajectoryConfig(layers=3, hidden=8, max_iterations=2, points_per_frame=64), ref=-1)
    assert cloud.ref == 1 and cloud.notes
    with pytest.raises(ValueError, match="outside"):
        accumulate_ego_only(seq, ref=5)


def test_accumulated_ply_opens_in_trimesh_and_open3d(small_sequence, tmp_path):
    cloud = accumulate_ego_only(small_sequence, ref=0)
    path = write_accumulated_ply(tmp_path / "map.ply", cloud, frames=len(small_sequence))
    trimesh = pytest.importorskip("trimesh")
    pc = trimesh.load(path)
    assert len(pc.vertices) == len(cloud)
    np.testing.assert_allclose(pc.vertices, cloud.points, atol=1e-3 * max(1.0, math.ceil(np.abs(cloud.points).max() / 1000)))
    o3d = pytest.importorskip("open3d")
    assert len(o3d.io.read_point_cloud(str(path)).points) == len(cloud)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file
