"""Nearest neighbours, truncated Chamfer and the distance transform of scenes/nsfp against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from omnifield.scenes.nsfp import DistanceTransform, nearest_neighbors, truncated_chamfer

# Tolerances (float32 geometry; compared in float64 references).
TOL = {
    "sq_dist": 1e-5,  # m^2, float32 rounding of differences of ~10 m coordinates
    "chamfer": 1e-5,
    "dt_voxel_factor": math.sqrt(3),  # DT error bound: node snapping + trilinear interpolation, in voxels
}


def brute_nn(q: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = ((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1)
    return d.min(1), d.argmin(1)


def brute_chamfer(a: np.ndarray, b: np.ndarray, trunc: float) -> float:
    total = 0.0
    for x, y in ((a, b), (b, a)):
        d, _ = brute_nn(x, y)
        total += np.where(d < trunc, d, 0.0).sum() / len(x)  # dropped matches stay in the denominator
    return total


@pytest.mark.parametrize("backend", ["torch", "kdtree"])
@pytest.mark.parametrize("chunk", [None, 1, 7, 64, 1000])
def test_nearest_neighbors_matches_brute_force(backend, chunk):
    g = torch.Generator().manual_seed(0)
    q = torch.rand(103, 3, generator=g) * 10  # 103: not a multiple of any chunk -> a ragged last chunk
    r = torch.rand(257, 3, generator=g) * 10
    sq, idx = nearest_neighbors(q, r, chunk, backend=backend)
    ref_d, ref_i = brute_nn(q.numpy(), r.numpy())
    assert sq.shape == (103,) and idx.dtype == torch.long
    np.testing.assert_allclose(sq.numpy(), ref_d, atol=TOL["sq_dist"])
    assert (idx.numpy() == ref_i).all()


def test_nearest_neighbors_far_from_origin_and_gradient():
    g = torch.Generator().manual_seed(1)
    offset = torch.tensor([3000.0, -2000.0, 50.0])  # expanded |x|^2 - 2xy + |y|^2 would lose cm here
    q = (torch.rand(200, 3, generator=g) * 5 + offset).requires_grad_(True)
    r = torch.rand(300, 3, generator=g) * 5 + offset
    sq, idx = nearest_neighbors(q, r, 16)
    ref_d, ref_i = brute_nn(q.detach().numpy(), r.numpy())
    assert (idx.numpy() == ref_i).all()
    sq.sum().backward()
    expected = 2 * (q.detach() - r[idx])
    torch.testing.assert_close(q.grad, expected)


def test_truncated_chamfer_matches_reference_with_truncation():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(150, 3, generator=g) * 4
    b = a[:120] + 0.2 * torch.randn(120, 3, generator=g)
    b = torch.cat([b, torch.rand(40, 3, generator=g) * 3 + 10])  # far points: matches >= 2 m^2 dropped
    for trunc in (2.0, 0.05):
        ref = brute_chamfer(a.numpy(), b.numpy(), trunc)
        for chunk in (None, 13):
            got = truncated_chamfer(a, b, trunc, chunk=chunk)
            assert abs(float(got) - ref) < TOL["chamfer"], (trunc, chunk, float(got), ref)
    # without truncation the far points would dominate: the truncation must really drop them
    assert brute_chamfer(a.numpy(), b.numpy(), 1e9) > 10 * brute_chamfer(a.numpy(), b.numpy(), 2.0)


def test_truncated_chamfer_gradient_flows_to_both_clouds():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(50, 3, generator=g).requires_grad_(True)
    b = (torch.rand(60, 3, generator=g) + 0.1).requires_grad_(True)
    truncated_chamfer(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_distance_transform_matches_exact_distances():
    g = torch.Generator().manual_seed(4)
    target = torch.rand(400, 3, generator=g) * torch.tensor([6.0, 5.0, 2.0])
    voxel = 0.1
    dt = DistanceTransform.build(target, voxel, margin=1.0)
    x = torch.rand(500, 3, generator=g) * torch.tensor([6.0, 5.0, 2.0]) + 0.3 * torch.randn(500, 3, generator=g)
    x = x.clamp(-0.9, 6.9)  # inside the grid (margin 1 m)
    exact = np.sqrt(brute_nn(x.numpy(), target.numpy())[0])
    got = dt(x).numpy()
    err = np.abs(got - exact)
    assert err.max() <= TOL["dt_voxel_factor"] * voxel, err.max()
    assert err.mean() < 0.5 * voxel


def test_distance_transform_is_differentiable_and_points_away_from_surface():
    target = torch.zeros(1, 3)  # one point: distance = |x|, gradient = x / |x|
    dt = DistanceTransform.build(target, 0.05, margin=1.0)
    x = torch.tensor([[0.5, 0.2, -0.3], [-0.4, 0.4, 0.1]], requires_grad=True)
    dt(x).sum().backward()
    unit = x.detach() / x.detach().norm(dim=1, keepdim=True)
    cos = (x.grad * unit).sum(1) / x.grad.norm(dim=1)
    assert (cos > 0.97).all(), cos


def test_chamfer_with_dt_is_one_sided_mean_distance():
    g = torch.Generator().manual_seed(5)
    b = torch.rand(300, 3, generator=g) * 3
    a = b[:100] + 0.05
    dt = DistanceTransform.build(b, 0.05, cover=a)
    got = float(truncated_chamfer(a, b, 2.0, dt_b=dt))
    assert abs(got - float(dt(a).mean())) < 1e-6
    exact = float(np.sqrt(brute_nn(a.numpy(), b.numpy())[0]).mean())
    assert abs(got - exact) < TOL["dt_voxel_factor"] * 0.05


def test_distance_transform_refuses_huge_grids():
    pts = torch.tensor([[0.0, 0.0, 0.0], [100.0, 100.0, 10.0]])
    with pytest.raises(ValueError, match="max_voxels"):
        DistanceTransform.build(pts, 0.01, max_voxels=10_000)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 3), "empty"),
        (torch.tensor([[0.0, 0.0, float("nan")], [1.0, 1.0, 1.0]]), "NaN"),
        (torch.zeros(5, 2), r"\[N, 3\]"),
    ],
)
def test_bad_input_raises(bad, match):
    good = torch.rand(5, 3)
    with pytest.raises(ValueError, match=match):
        nearest_neighbors(bad, good)
    with pytest.raises(ValueError, match=match):
        truncated_chamfer(good, bad)
    with pytest.raises(ValueError, match=match):
        DistanceTransform.build(bad)
