"""4D Gaussian maths (Yang et al. 2024) of cuda/reference/gaussians4d.py against closed forms and
independent computations: rotations, slicing (conditional mean, covariance, marginal), spherindrical
harmonics, float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from omnifield.cuda.reference.gaussians import spherical_harmonics
from omnifield.cuda.reference.gaussians4d import (
    quats_to_rotation_4d,
    scale_rotation_to_covar4,
    slice_gaussians_4d,
    spherindrical_harmonics,
    temporal_basis,
)

F64 = torch.float64
IDENTITY = (1.0, 0.0, 0.0, 0.0)


def _random_gaussians(n: int, dtype=F64):
    """Means in [-1, 1]^4, scales in [0.2, 1.5], unnormalised random quaternions."""
    means4 = torch.rand(n, 4, dtype=dtype) * 2 - 1
    scales4 = torch.rand(n, 4, dtype=dtype) * 1.3 + 0.2
    q_l = torch.randn(n, 4, dtype=dtype) * 3
    q_r = torch.randn(n, 4, dtype=dtype) * 0.5
    return means4, scales4, q_l, q_r


def _xt_rotation_quats(theta: float, n: int = 1):
    """``q_l = q_r = (cos(theta/2), 0, 0, sin(theta/2))``: left multiplication by ``e^{k theta/2}``
    rotates both the (1, k) and (i, j) planes by theta/2, right multiplication rotates (1, k) by
    +theta/2 and (i, j) by -theta/2, so the product turns the x-t plane (1, k) by theta and fixes y, z."""
    q = torch.tensor([[math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)]], dtype=F64).repeat(n, 1)
    return q, q.clone()


def _xt_plane_rotation(theta: float):
    """The explicit 4x4 rotation by theta in the x-t plane: ``e_x -> cos e_x + sin e_t``."""
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, 0, 0, -s], [0, 1, 0, 0], [0, 0, 1, 0], [s, 0, 0, c]], dtype=F64)


def test_identity_rotations_give_axis_aligned_slices(tol):
    n = 5
    means4, scales4, _, _ = _random_gaussians(n)
    q = torch.tensor([IDENTITY], dtype=F64).repeat(n, 1)
    torch.testing.assert_close(quats_to_rotation_4d(q, q), torch.eye(4, dtype=F64).expand(n, 4, 4), **tol["float64"])
    for t in (-3.0, 0.0, 0.25, 7.5):
        means3, covars3, _ = slice_gaussians_4d(means4, scales4, q, q, t)
        torch.testing.assert_close(means3, means4[:, :3], **tol["float64"])
        torch.testing.assert_close(covars3, torch.diag_embed(scales4[:, :3] ** 2), **tol["float64"])


def test_xt_rotation_matches_explicit_plane_rotation(tol):
    for theta in (0.3, -1.1, 2.0):
        q_l, q_r = _xt_rotation_quats(theta)
        torch.testing.assert_close(quats_to_rotation_4d(q_l, q_r)[0], _xt_plane_rotation(theta), **tol["float64"])


@pytest.mark.parametrize("theta", [0.3, -0.8, 1.3])
def test_xt_rotation_moves_the_mean_with_closed_form_velocity(tol, theta):
    sx, sy, sz, st = 0.9, 0.4, 0.6, 0.3
    scales4 = torch.tensor([[sx, sy, sz, st]], dtype=F64)
    means4 = torch.tensor([[0.1, -0.2, 0.3, 0.5]], dtype=F64)
    q_l, q_r = _xt_rotation_quats(theta)
    sigma4 = scale_rotation_to_covar4(scales4, q_l, q_r)[0]
    velocity = sigma4[0, 3] / sigma4[3, 3]
    # closed form of Sigma_xt / Sigma_tt for R4 = plane rotation by theta: Sigma = R diag(s^2) R^T
    c, s = math.cos(theta), math.sin(theta)
    sigma_tt = s * s * sx * sx + c * c * st * st
    closed = s * c * (sx * sx - st * st) / sigma_tt
    torch.testing.assert_close(velocity, torch.tensor(closed, dtype=F64), **tol["float64"])
    t0, t1 = 0.2, 1.7
    m0, cov0, _ = slice_gaussians_4d(means4, scales4, q_l, q_r, t0)
    m1, cov1, _ = slice_gaussians_4d(means4, scales4, q_l, q_r, t1)
    torch.testing.assert_close(m1 - m0, torch.tensor([[(t1 - t0) * closed, 0.0, 0.0]], dtype=F64), **tol["float64"])
    # the sliced covariance does not depend on t; its x variance is sx^2 st^2 / Sigma_tt (det of the 2x2 block)
    torch.testing.assert_close(cov1, cov0, **tol["float64"])
    expected = torch.diag(torch.tensor([sx * sx * st * st / sigma_tt, sy * sy, sz * sz], dtype=F64))
    torch.testing.assert_close(cov0[0], expected, **tol["float64"])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_rotation_is_proper_and_orthonormal(tol, dtype):
    _, _, q_l, q_r = _random_gaussians(64, dtype)
    r4 = quats_to_rotation_4d(q_l, q_r)
    key = "float32" if dtype == torch.float32 else "float64"
    eye = torch.eye(4, dtype=dtype).expand(64, 4, 4)
    torch.testing.assert_close(r4 @ r4.transpose(-1, -2), eye, **tol[key])
    torch.testing.assert_close(torch.linalg.det(r4), torch.ones(64, dtype=dtype), **tol[key])


def test_rotation_ignores_quaternion_length_and_joint_sign(tol):
    _, _, q_l, q_r = _random_gaussians(16)
    ref = quats_to_rotation_4d(q_l, q_r)
    torch.testing.assert_close(quats_to_rotation_4d(q_l * 7.0, q_r * 0.1), ref, **tol["float64"])
    torch.testing.assert_close(quats_to_rotation_4d(-q_l, -q_r), ref, **tol["float64"])


def test_slice_matches_precision_matrix_computation(tol):
    """Independent route: with Lambda = inverse(Sigma4), Sigma_3|t = inverse(Lambda_11) and
    mu_3|t = mu_xyz - inverse(Lambda_11) Lambda_12 (t - mu_t)."""
    means4, scales4, q_l, q_r = _random_gaussians(32)
    t = 0.37
    r4 = quats_to_rotation_4d(q_l, q_r)
    precision = r4 @ torch.diag_embed(scales4 ** -2) @ r4.transpose(-1, -2)  # = inverse(Sigma4)
    torch.testing.assert_close(torch.linalg.inv(scale_rotation_to_covar4(scales4, q_l, q_r)), precision, **tol["float64"])
    cov_ref = torch.linalg.inv(precision[:, :3, :3])
    mean_ref = means4[:, :3] - (cov_ref @ precision[:, :3, 3:]).squeeze(-1) * (t - means4[:, 3:])
    means3, covars3, _ = slice_gaussians_4d(means4, scales4, q_l, q_r, t)
    torch.testing.assert_close(covars3, cov_ref, **tol["float64"])
    torch.testing.assert_close(means3, mean_ref, **tol["float64"])
    assert torch.equal(covars3, covars3.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(covars3) > 0).all()


def test_float32_slice_agrees_with_float64(tol):
    data64 = _random_gaussians(128)
    out32 = slice_gaussians_4d(*(x.float() for x in data64), 0.6)
    out64 = slice_gaussians_4d(*data64, 0.6)
    for a, b in zip(out32, out64):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b.float(), **tol["float32"])


def test_time_as_number_or_0d_tensor(tol):
    data = _random_gaussians(8)
    ref = slice_gaussians_4d(*data, 0.25)
    for t in (torch.tensor(0.25, dtype=F64), torch.tensor(0.25, dtype=torch.float32)):
        for a, b in zip(slice_gaussians_4d(*data, t), ref):
            torch.testing.assert_close(a, b, **tol["float32"])
            assert a.dtype == F64


def test_marginal_is_unnormalised_gaussian_in_time(tol):
    means4, scales4, q_l, q_r = _random_gaussians(16)
    s_tt = scale_rotation_to_covar4(scales4, q_l, q_r)[:, 3, 3]
    for i in range(3):  # one time value per call: one Gaussian at a time
        mu_t, sd = means4[i, 3], s_tt[i].sqrt()
        args = (means4[i:i + 1], scales4[i:i + 1], q_l[i:i + 1], q_r[i:i + 1])
        torch.testing.assert_close(slice_gaussians_4d(*args, mu_t)[2], torch.ones(1, dtype=F64), **tol["float64"])
        for t in (mu_t + sd, mu_t - sd):
            torch.testing.assert_close(slice_gaussians_4d(*args, t)[2], torch.full((1,), math.exp(-0.5), dtype=F64),
                                       **tol["float64"])


def test_degenerate_scales_stay_finite():
    """s_tt is clamped at MIN_TIME_VARIANCE: zero scales give finite slices, not inf/nan."""
    means4, scales4, q_l, q_r = _random_gaussians(8, torch.float32)
    scales4[:4] = 0.0
    out = slice_gaussians_4d(means4, scales4, q_l, q_r, 0.5)
    assert all(torch.isfinite(x).all() for x in out)


def test_temporal_basis_period_and_constant_term(tol):
    period = 2.5
    dt = torch.rand(20, dtype=F64) * 6 - 3
    basis = temporal_basis(4, dt, period)
    torch.testing.assert_close(temporal_basis(4, dt + period, period), basis, **tol["float64"])
    assert torch.equal(basis[:, 0], torch.ones(20, dtype=F64))
    torch.testing.assert_close(basis[:, 2], torch.cos(4 * math.pi * dt / period), **tol["float64"])
    # through the full op: colours repeat with the period too
    dirs, coeffs = torch.randn(20, 3, dtype=F64), torch.randn(20, 16 * 4, 3, dtype=F64)
    torch.testing.assert_close(spherindrical_harmonics(3, 4, dirs, dt + period, period, coeffs),
                               spherindrical_harmonics(3, 4, dirs, dt, period, coeffs), **tol["float64"])


def _spatial_basis_at_plus_z():
    """Closed-form 3DGS basis at direction (0, 0, 1): only the m = 0 terms survive."""
    basis = torch.zeros(16, dtype=F64)
    basis[0] = 0.28209479177387814
    basis[2] = 0.4886025119029199
    basis[6] = 0.31539156525252005 * 2  # C2[2] (2 z^2 - x^2 - y^2)
    basis[12] = 0.3731763325901154 * 2  # C3[3] z (2 z^2 - 3 x^2 - 3 y^2)
    return basis


def test_single_time_frequency_is_spatial_sh(tol):
    n = 12
    dirs, dt, coeffs = torch.randn(n, 3, dtype=F64), torch.randn(n, dtype=F64), torch.randn(n, 16, 3, dtype=F64)
    # closed form at +z (and dirs need not be unit length)
    plus_z = torch.tensor([[0.0, 0.0, 2.0]], dtype=F64).repeat(n, 1)
    expected = (_spatial_basis_at_plus_z()[None, :, None] * coeffs).sum(1)
    torch.testing.assert_close(spherindrical_harmonics(3, 1, plus_z, dt, 1.0, coeffs), expected, **tol["float64"])
    # bit-identical to the spatial SH reference of the 3DGS renderer
    for degree in range(4):
        k = (degree + 1) ** 2
        assert torch.equal(spherindrical_harmonics(degree, 1, dirs, dt, 1.0, coeffs[:, :k]),
                           spherical_harmonics(degree, dirs, coeffs[:, :k]))


def test_layout_is_time_major_and_lower_degree_uses_leading_coefficients(tol):
    n, n_time, period = 6, 3, 1.5
    dirs, dt = torch.randn(n, 3, dtype=F64), torch.randn(n, dtype=F64)
    coeffs = torch.randn(n, 16 * n_time, 3, dtype=F64)
    for degree in range(4):
        k = (degree + 1) ** 2
        expected = sum(torch.cos(2 * math.pi * j * dt / period)[:, None]
                       * spherindrical_harmonics(degree, 1, dirs, dt, period, coeffs[:, 16 * j:16 * j + k])
                       for j in range(n_time))
        got = spherindrical_harmonics(degree, n_time, dirs, dt, period, coeffs)
        torch.testing.assert_close(got, expected, **tol["float64"])


def test_gradcheck_slice(tol):
    gc = tol["gradcheck"]
    data = [x[:3].clone().requires_grad_() for x in _random_gaussians(3)]
    t = torch.tensor(0.4, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: slice_gaussians_4d(*a), (*data, t), **gc)
    assert torch.autograd.gradcheck(lambda *a: slice_gaussians_4d(*a, -0.3), tuple(data), **gc)


def test_gradcheck_spherindrical_harmonics(tol):
    gc = tol["gradcheck"]
    dirs = torch.randn(3, 3, dtype=F64, requires_grad=True)
    dt = torch.randn(3, dtype=F64, requires_grad=True)
    coeffs = torch.randn(3, 16 * 2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, s, c: spherindrical_harmonics(3, 2, d, s, 1.7, c), (dirs, dt, coeffs), **gc)


def test_bad_inputs_name_the_argument():
    means4, scales4, q_l, q_r = _random_gaussians(4)
    with pytest.raises(ValueError, match="scales4"):
        slice_gaussians_4d(means4, scales4[:, :3], q_l, q_r, 0.0)
    with pytest.raises(ValueError, match="q_right"):
        slice_gaussians_4d(means4, scales4, q_l, q_r[:2], 0.0)
    with pytest.raises(ValueError, match="t must be"):
        slice_gaussians_4d(means4, scales4, q_l, q_r, torch.zeros(4))
    dirs, dt = torch.randn(4, 3), torch.randn(4)
    with pytest.raises(ValueError, match="coeffs"):
        spherindrical_harmonics(2, 2, dirs, dt, 1.0, torch.randn(4, 9, 3))
    with pytest.raises(ValueError, match="degree"):
        spherindrical_harmonics(4, 1, dirs, dt, 1.0, torch.randn(4, 25, 3))
    with pytest.raises(ValueError, match="period"):
        spherindrical_harmonics(1, 1, dirs, dt, 0.0, torch.randn(4, 4, 3))
