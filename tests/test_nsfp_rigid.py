"""Rigid refinement of accumulated sweeps (scenes/nsfp/rigid.py): ICP against known rigid motions,
clustering of separate boxes, static points never moved, fallbacks to the flow result."""

from __future__ import annotations

import numpy as np
import pytest

from omnifield.scenes.nsfp.rigid import RigidConfig, apply, cluster_points, icp, planar_part, refine_rigid, rigid_fit

# tolerances (metres)
TOL = {
    "kabsch": 1e-9,      # exact correspondences, float64 SVD
    "icp": 1e-3,         # the brief's bar: a known rigid motion recovered to < 1 mm (observed ~1e-7)
    "refined": 1e-2,     # loose: each sweep sees a different random half of a sparse car, whose PCA normals
                         # near edges are tilted and whose point-to-point neighbours are other surface points
                         # (max 5.6 mm, typically 1.5 mm); the bar is 5 cm
}


def box_surface(size=(4.4, 1.8, 1.5), spacing=0.08, center=(0.0, 0.0, 0.75)) -> np.ndarray:
    """Points on the six faces of an axis box, on a regular grid (a car-sized box by default)."""
    size, center = np.asarray(size), np.asarray(center)
    faces = []
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        ua = np.arange(-size[a] / 2, size[a] / 2 + 1e-9, spacing)
        ub = np.arange(-size[b] / 2, size[b] / 2 + 1e-9, spacing)
        ga, gb = np.meshgrid(ua, ub, indexing="ij")
        for sign in (-1, 1):
            p = np.zeros((ga.size, 3))
            p[:, a], p[:, b], p[:, axis] = ga.ravel(), gb.ravel(), sign * size[axis] / 2
            faces.append(p)
    return np.concatenate(faces) + center


def transform(yaw: float, t) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    out = np.eye(4)
    out[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    out[:3, 3] = t
    return out


def test_rigid_fit_recovers_an_exact_correspondence_motion():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(40, 3))
    true = transform(0.3, [1.0, -2.0, 0.5])
    np.testing.assert_allclose(rigid_fit(src, apply(true, src)), true, atol=TOL["kabsch"])
    with pytest.raises(ValueError, match="rigid_fit"):
        rigid_fit(src, src[:, :2])


def test_icp_recovers_a_known_rigid_motion_to_a_millimetre():
    target = box_surface()
    true = transform(np.deg2rad(4.0), [0.9, 0.2, 0.03])  # one 10 Hz frame of a car: ~1 m, a few degrees
    source = apply(np.linalg.inv(true), target[::3])     # a sub-sample of the surface, moved back
    init = transform(np.deg2rad(5.5), [0.97, 0.15, 0.0])  # the flow result: ~7 cm and 1.5 deg off
    res = icp(source, target, init)
    assert res.converged and res.inlier_fraction == 1.0
    assert np.abs(apply(res.transform, source) - apply(true, source)).max() < TOL["icp"]


def test_planar_icp_recovers_a_motion_along_a_sloped_ground_and_ignores_out_of_plane_init_errors():
    up = np.array([0.0, -np.sin(0.05), np.cos(0.05)])  # a 5 % cross slope
    tilt = _rotation_taking([0.0, 0.0, 1.0], up)
    target = apply(tilt, box_surface())
    along = transform(np.deg2rad(3.0), [0.8, -0.1, 0.0])  # yaw + translation in the box's own ground plane
    true = tilt @ along @ np.linalg.inv(tilt)
    source = apply(np.linalg.inv(true), target[::3])
    init = transform(0.0, [0.0, 0.0, 0.08]) @ true @ transform(0.02, [0.03, 0.0, 0.0])  # 8 cm up, off in plane
    assert np.abs(planar_part(true, up, source) - true).max() < 1e-12  # already planar: unchanged
    res = icp(source, target, init, up=up)
    assert res.converged
    assert np.abs(apply(res.transform, source) - apply(true, source)).max() < TOL["icp"]


def _rotation_taking(a, b) -> np.ndarray:
    """``[4, 4]`` the rotation taking unit vector ``a`` to ``b`` (Rodrigues)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    v, c = np.cross(a, b), a @ b
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    out = np.eye(4)
    out[:3, :3] = np.eye(3) + k + k @ k / (1 + c)
    return out


def test_icp_that_cannot_converge_in_its_iterations_says_so():
    target = box_surface()
    source = apply(np.linalg.inv(transform(0.05, [0.3, 0.1, 0.0])), target[::3])
    res = icp(source, target, None, RigidConfig(max_iterations=1))
    assert not res.converged and res.iterations == 1
    with pytest.raises(ValueError, match="source"):
        icp(np.zeros((2, 3)), target)


def test_clustering_separates_two_boxes_and_drops_tiny_groups():
    a = box_surface(spacing=0.2)
    b = box_surface(spacing=0.2, center=(0.0, 3.5, 0.75))  # the next lane: 1.7 m gap
    speck = np.array([[20.0, 0.0, 1.0], [20.1, 0.0, 1.0]])
    labels = cluster_points(np.concatenate([a, b, speck]), radius=1.0, min_points=10)
    la, lb, ls = labels[:len(a)], labels[len(a):len(a) + len(b)], labels[len(a) + len(b):]
    assert len(set(la)) == 1 and len(set(lb)) == 1 and la[0] != lb[0] and min(la[0], lb[0]) >= 0
    assert (ls == -1).all()
    assert len(cluster_points(np.zeros((0, 3)), 1.0)) == 0


def car_sequence(frames: int = 5, ref: int = 2, flow_error: float = 0.05, seed: int = 0):
    """A car (a box 0.3 m above the ground z = 0) driving at 8 m/s with a yaw rate past a static wall; each
    sweep sees a random half of the car's surface points. Returns per sweep: world points (own time), their
    true positions at the reference time, a flow result (truth + a smooth error of ``flow_error`` m, vertical
    drift included, plus noise), the moving mask and the ground mask."""
    rng = np.random.default_rng(seed)
    car = box_surface(spacing=0.1, center=(0.0, 0.0, 1.05))
    wall = np.stack(np.meshgrid(np.arange(-5, 5, 0.2), [6.0], np.arange(0, 3, 0.2)), -1).reshape(-1, 3)
    ground = np.stack(np.meshgrid(np.arange(-8, 8, 0.5), np.arange(-4, 4, 0.5), [0.0]), -1).reshape(-1, 3)
    world = np.concatenate([wall, ground])
    pose = [transform(0.03 * (k - ref), [0.8 * (k - ref), 0.0, 0.0]) for k in range(frames)]
    points, true, flow, moving, is_ground = [], [], [], [], []
    for k in range(frames):
        body = car[rng.random(len(car)) < 0.5]
        at_ref = apply(pose[ref], body)
        err = np.zeros_like(at_ref) if k == ref else (
            flow_error * np.array([1.0, 0.5, -0.6]) * np.sin(at_ref[:, :1]) + rng.normal(0, 0.01, at_ref.shape))
        points.append(np.concatenate([apply(pose[k], body), world]))
        true.append(np.concatenate([at_ref, world]))
        flow.append(np.concatenate([at_ref + err, world + rng.normal(0, 0.002, world.shape) * (world[:, 2:] > 0)]))
        moving.append(np.arange(len(points[-1])) < len(body))
        is_ground.append(np.arange(len(points[-1])) >= len(body) + len(wall))
    return points, true, flow, moving, is_ground


@pytest.mark.parametrize("planar", [True, False])
def test_refinement_snaps_a_rigid_car_and_never_moves_static_points(planar):
    points, true, flow, moving, ground = car_sequence()
    out = refine_rigid(points, flow, moving, ref=2, config=RigidConfig(planar_motion=planar), ground=ground)
    assert len(out.clusters) == 1 and out.clusters[0].anchor == 2
    if planar:
        np.testing.assert_allclose(np.abs(out.clusters[0].up), [0, 0, 1], atol=1e-9)
    for k in range(5):
        car = moving[k]
        assert np.array_equal(out.points[k][~car], flow[k][~car])  # static rows: the flow result, bit for bit
        assert not out.refined[k][~car].any() and (out.cluster[k][~car] == -1).all()
        if k != 2:
            assert out.refined[k][car].all()
            assert np.abs(out.points[k][car] - true[k][car]).max() < TOL["refined"]
            assert np.linalg.norm(flow[k][car] - true[k][car], axis=1).mean() > 0.02  # there was something to fix
    assert out.summary()["frames"] == {"anchor": 1, "refined": 4}


def test_tiny_non_rigid_groundless_and_non_converging_clusters_keep_the_flow_result():
    points, true, flow, moving, ground = car_sequence()

    def unchanged(out, flow_points):
        return all(np.array_equal(a, b) for a, b in zip(out.points, flow_points)) and not any(r.any() for r in out.refined)

    # a tiny cluster: below min_cluster_points
    out = refine_rigid(points, flow, moving, ref=2, config=RigidConfig(min_cluster_points=10_000), ground=ground)
    assert not out.clusters and unchanged(out, flow)
    # ICP not converging within its iterations
    out = refine_rigid(points, flow, moving, ref=2, config=RigidConfig(max_iterations=1), ground=ground)
    assert {f.status for f in out.clusters[0].frames} == {"anchor", "not converged"} and unchanged(out, flow)
    # no ground plane under the object
    out = refine_rigid(points, flow, moving, ref=2, ground=[np.zeros_like(g) for g in ground])
    assert {f.status for f in out.clusters[0].frames} == {"no ground"} and unchanged(out, flow)
    # a non-rigid mover: the flow result scatters far more than any rigid motion explains
    bent = [f.copy() for f in flow]
    for k in (0, 4):
        bent[k][moving[k]] += np.random.default_rng(k).normal(0, 0.3, (moving[k].sum(), 3))
    out = refine_rigid(points, bent, moving, ref=2, ground=ground)
    status = {f.frame: f.status for f in out.clusters[0].frames}
    assert status[0] == status[4] == "not rigid" and status[1] == status[3] == "refined"
    assert np.array_equal(out.points[0], bent[0]) and np.array_equal(out.points[4], bent[4])


def test_refine_rigid_checks_its_inputs():
    points, _, flow, moving, ground = car_sequence(frames=2, ref=0)
    with pytest.raises(ValueError, match="ref"):
        refine_rigid(points, flow, moving, ref=2, ground=ground)
    with pytest.raises(ValueError, match="sweep 1"):
        refine_rigid(points, [flow[0], flow[1][:5]], moving, ref=0, ground=ground)
    with pytest.raises(ValueError, match="ground"):
        refine_rigid(points, flow, moving, ref=0)
    with pytest.raises(ValueError, match="cluster_radius"):
        RigidConfig(cluster_radius=0)


@pytest.fixture(scope="module")
def fitted_small_sequence(tmp_path_factory):
    import torch

    from omnifield.datasets.pointclouds import load_point_clouds
    from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar
    from omnifield.scenes.nsfp.trajectory import TrajectoryConfig, fit_sequence

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lidar") / "seq"
    synthesize_lidar(out, LidarSynthConfig(frames=5, beams=16, azimuths=512, cars=3, buildings=4, poles=4))
    seq = load_point_clouds(out)
    config = TrajectoryConfig(layers=4, hidden=32, max_iterations=120, patience=40, points_per_frame=384, lr=5e-3)
    return seq, config, fit_sequence(seq, config, ref=2)


def test_accumulate_refines_moving_objects_and_leaves_the_rest_to_the_flow(fitted_small_sequence):
    import dataclasses

    from omnifield.datasets.synth_lidar import true_positions
    from omnifield.scenes.nsfp.accumulate import accumulate

    seq, config, field = fitted_small_sequence
    cloud = accumulate(seq, config, ref=2, field=field)
    true = np.concatenate([true_positions(seq, k, 2) for k in range(len(seq))])
    dyn = np.concatenate([f.dynamic for f in seq.frames]) & (cloud.frame_index != 2)
    in_cluster = np.concatenate(cloud.rigid.cluster) >= 0
    refined = np.concatenate(cloud.rigid.refined)
    assert refined.any() and not (refined & ~in_cluster).any()
    assert np.array_equal(cloud.points[~refined], cloud.flow_points[~refined])  # the rest: the flow result
    err, flow_err = (np.linalg.norm(p - true, axis=1)[dyn] for p in (cloud.points, cloud.flow_points))
    assert np.median(err) < 0.5 * np.median(flow_err) and (err < 0.05).mean() > (flow_err < 0.05).mean() + 0.2
    off = accumulate(seq, dataclasses.replace(config, rigid=dataclasses.replace(config.rigid, enabled=False)),
                     ref=2, field=field)
    assert off.rigid is None and off.flow_points is None and np.array_equal(off.points, cloud.flow_points)


# -- pairs -------------------------------------------------------------------------------------------------
def street_pair(object_motion, ego, flow_fraction: float, seed: int = 0):
    """A static street (two walls) and a car-sized box, seen from two poses of a moving sensor: sweep 1 in
    its own frame, sweep 2 in the second frame (``ego``: frame2_from_frame1); the car also moves by
    ``object_motion`` (in frame 2). Returns points1, points2, the true flow (ego included), the ego flow
    and a poor flow result: the ego flow plus ``flow_fraction`` of the car's own motion."""
    rng = np.random.default_rng(seed)
    k = 3000
    walls = np.concatenate([np.c_[rng.uniform(-20, 20, k), np.full(k, 8.0), rng.uniform(0, 4, k)],
                            np.c_[rng.uniform(-20, 20, k), np.full(k, -8.0), rng.uniform(0, 4, k)]])
    car = box_surface(center=(6.0, 2.0, 0.75))
    world1 = np.concatenate([walls, car])
    is_car = np.r_[np.zeros(len(walls), bool), np.ones(len(car), bool)]
    frame2 = apply(ego, world1)
    frame2[is_car] = apply(object_motion, frame2[is_car])
    keep1, keep2 = rng.random(len(world1)) < 0.5, rng.random(len(world1)) < 0.5  # different points per sweep
    p1, true_flow, ego_flow = world1[keep1], (frame2 - world1)[keep1], (apply(ego, world1) - world1)[keep1]
    poor = (ego_flow + flow_fraction * (true_flow - ego_flow)).astype(np.float32)  # flows are float32
    return p1, frame2[keep2], true_flow, ego_flow, poor, is_car[keep1]


@pytest.mark.parametrize("given_ego", [True, False])
def test_pair_refinement_recovers_a_fast_car_from_a_poor_flow_and_leaves_the_street(given_ego):
    from omnifield.scenes.nsfp.rigid_pair import PAIR_RIGID, refine_pair_flow
    from dataclasses import replace

    ego = transform(np.deg2rad(1.0), [0.8, 0.05, 0.0])          # the sensor drives ~8 m/s
    car = transform(np.deg2rad(2.0), [-1.0, 0.1, 0.0])          # an oncoming car, 1 m per frame
    p1, p2, true, ego_flow, poor, is_car = street_pair(car, ego, flow_fraction=0.1)
    res = refine_pair_flow(p1, poor, p2, replace(PAIR_RIGID, enabled=True),
                           ego_flow=ego_flow if given_ego else None)
    err = np.linalg.norm(res.flow - true, axis=1)
    assert np.linalg.norm(poor - true, axis=1)[is_car].mean() > 0.8   # the flow result missed most of the motion
    assert err[is_car].max() < 0.05, err[is_car].max()
    assert res.moving[is_car].all()
    np.testing.assert_array_equal(res.flow[~res.moving], poor[~res.moving])  # static rows: bit for bit


def test_dominant_motion_ignores_a_moving_minority():
    from omnifield.scenes.nsfp.rigid_pair import dominant_motion

    rng = np.random.default_rng(1)
    pts = rng.uniform(-10, 10, (500, 3))
    ego = transform(np.deg2rad(3.0), [0.5, -0.2, 0.05])
    moved = apply(ego, pts)
    moved[:60] += [1.0, 0.3, 0.0]  # 12 % of the points on a mover
    # Cauchy weights leave the movers ~1/400 of a vote each: a bias of ~0.3 mm, well under the 5 cm bar
    np.testing.assert_allclose(dominant_motion(pts, moved), ego, atol=1e-3)


def test_pair_refinement_checks_its_inputs():
    from omnifield.scenes.nsfp.rigid_pair import refine_pair_flow

    with pytest.raises(ValueError, match="refine_pair_flow"):
        refine_pair_flow(np.zeros((5, 3)), np.zeros((4, 3)), np.zeros((5, 3)))
