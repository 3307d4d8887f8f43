"""4D Gaussians (Yang et al., ICLR 2024, "Real-time Photorealistic Dynamic Scene Representation and
Rendering with 4D Gaussian Splatting"): rotation, covariance, slicing at time t, spherindrical harmonics.

Pure PyTorch, differentiable by autograd (float32 and float64): the CPU path and the oracle for the
native kernels.

Conventions
- A 4D point is ``(x, y, z, t)``. A 4D rotation is ``R4 = L(q_l) R(q_r)``: ``L(q)`` is the matrix of
  ``p -> q p`` and ``R(q)`` the matrix of ``p -> p q`` (quaternion products), where the 4-vector
  ``(x, y, z, t)`` is read as the quaternion ``x + y i + z j + t k`` and quaternions are stored
  ``(w, x, y, z)``. Both factors are orthogonal with determinant +1 for unit quaternions, so ``R4`` is a
  proper rotation, and every proper 4D rotation arises this way (up to the sign of both quaternions).
  Example: ``q_l = q_r = (cos(theta/2), 0, 0, sin(theta/2))`` is the rotation by ``theta`` in the x-t
  plane (``e_x -> cos(theta) e_x + sin(theta) e_t``) that leaves y and z fixed.
- ``Sigma4 = R4 diag(s^2) R4^T`` with ``s = scales4 [N, 4]`` (positive).
- Slice at time t (conditional Gaussian): ``Sigma_3|t = S11 - S12 S12^T / s_tt``,
  ``mu_3|t = mu_xyz + S12 / s_tt * (t - mu_t)``, and the unnormalised marginal
  ``p(t) = exp(-0.5 (t - mu_t)^2 / s_tt)`` that multiplies the opacity.
- Spherindrical harmonics: the real SH basis of 3DGS in direction (the spatial SH of
  ``reference/gaussians.py``, reused here) times ``cos(2 pi n dt / period)``,
  ``n = 0 .. n_time - 1``; coefficients ``[N, K * n_time, 3]`` ordered n major, K minor.

Numerical safety: ``s_tt >= min(s)^2 > 0`` for positive scales, so the divisions are safe in exact
arithmetic; ``s_tt`` is still clamped below at ``MIN_TIME_VARIANCE`` (1e-12, i.e. a temporal extent of
1e-6) so that a degenerate scale gives a finite (flat-gradient) result instead of inf/nan. The clamp is
inactive for any scale above 1e-6.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omnifield.cuda.reference.gaussians import spherical_harmonics

# Lower bound on the temporal variance s_tt before dividing by it (see the module docstring).
MIN_TIME_VARIANCE = 1e-12


def _check_rows(name: str, x: Tensor, cols: int, n: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != cols or (n is not None and x.shape[0] != n):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        want = f"[{'N' if n is None else n}, {cols}]"
        raise ValueError(f"{name} must be {want} (cuda/reference/gaussians4d.py), got {shape}")


def _left_matrix(q: Tensor) -> Tensor:
    """``[N, 4, 4]`` matrix of ``p -> q p`` for quaternions ``q [N, 4]`` (w, x, y, z)."""
    a, b, c, d = q.unbind(-1)
    rows = [(a, -b, -c, -d), (b, a, -d, c), (c, d, a, -b), (d, -c, b, a)]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _right_matrix(q: Tensor) -> Tensor:
    """``[N, 4, 4]`` matrix of ``p -> p q`` for quaternions ``q [N, 4]`` (w, x, y, z)."""
    a, b, c, d = q.unbind(-1)
    rows = [(a, -b, -c, -d), (b, a, d, -c), (c, -d, a, b), (d, c, -b, a)]
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def quats_to_rotation_4d(q_left: Tensor, q_right: Tensor) -> Tensor:
    """4D rotation ``R4 = L(q_l) R(q_r)`` ``[N, 4, 4]`` from two quaternions ``[N, 4]`` (w, x, y, z).

    The quaternions are normalised inside (any non-zero length); ``R4`` is orthonormal with
    determinant +1. Differentiable w.r.t. both quaternions. Yang et al. 2024, section 3.2.
    """
    _check_rows("q_left", q_left, 4)
    _check_rows("q_right", q_right, 4, q_left.shape[0])
    q_l = torch.nn.functional.normalize(q_left, dim=-1)
    q_r = torch.nn.functional.normalize(q_right, dim=-1)
    return _left_matrix(q_l) @ _right_matrix(q_r)


def scale_rotation_to_covar4(scales4: Tensor, q_left: Tensor, q_right: Tensor) -> Tensor:
    """4D covariance ``Sigma4 = R4 diag(s^2) R4^T`` ``[N, 4, 4]`` (exactly symmetric).

    ``scales4 [N, 4]`` positive, ``q_left, q_right [N, 4]`` (w, x, y, z), normalised inside.
    Differentiable w.r.t. all three.
    """
    _check_rows("scales4", scales4, 4)
    _check_rows("q_left", q_left, 4, scales4.shape[0])
    m = quats_to_rotation_4d(q_left, q_right) * scales4.unsqueeze(-2)  # R4 diag(s)
    covar = m @ m.transpose(-1, -2)
    return 0.5 * (covar + covar.transpose(-1, -2))


def slice_gaussians_4d(means4: Tensor, scales4: Tensor, q_left: Tensor, q_right: Tensor,
                       t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Condition 4D Gaussians on time ``t`` -> ``(means3 [N, 3], covars3 [N, 3, 3], marginal [N])``.

    ``means4 [N, 4]`` (x, y, z, t), ``scales4 [N, 4]`` positive, ``q_left, q_right [N, 4]``
    (w, x, y, z, normalised inside); ``t`` a Python number or a 0-d tensor. ``marginal`` is the
    unnormalised ``p(t) = exp(-0.5 (t - mu_t)^2 / s_tt)`` (1 at ``t = mu_t``); culling by
    ``marginal <= 0.05`` is the caller's. Differentiable w.r.t. every tensor input, ``t`` included.
    Yang et al. 2024, eq. (5)-(6).
    """
    _check_rows("means4", means4, 4)
    _check_rows("scales4", scales4, 4, means4.shape[0])
    _check_rows("q_left", q_left, 4, means4.shape[0])
    _check_rows("q_right", q_right, 4, means4.shape[0])
    if isinstance(t, Tensor):
        if t.ndim != 0:
            raise ValueError(f"t must be a number or a 0-d tensor (cuda/reference/gaussians4d.py), got {tuple(t.shape)}")
    elif not isinstance(t, (int, float)):
        raise TypeError(f"t must be a number or a 0-d tensor, got {type(t).__name__}")
    sigma4 = scale_rotation_to_covar4(scales4, q_left, q_right)
    s11 = sigma4[:, :3, :3]
    s12 = sigma4[:, :3, 3]
    s_tt = sigma4[:, 3, 3].clamp_min(MIN_TIME_VARIANCE)
    dt = t - means4[:, 3]
    gain = s12 / s_tt.unsqueeze(-1)  # [N, 3]: velocity of the sliced mean
    means3 = means4[:, :3] + gain * dt.unsqueeze(-1)
    covars3 = s11 - s12.unsqueeze(-1) * s12.unsqueeze(-2) / s_tt[:, None, None]  # exactly symmetric
    marginal = torch.exp(-0.5 * dt * dt / s_tt)
    return means3, covars3, marginal


def temporal_basis(n_time: int, dt: Tensor, period: float) -> Tensor:
    """Temporal cosine basis ``cos(2 pi n dt / period)``, ``n = 0 .. n_time - 1`` -> ``[N, n_time]``."""
    n = torch.arange(n_time, dtype=dt.dtype, device=dt.device)
    return torch.cos((2.0 * math.pi / period) * dt.unsqueeze(-1) * n)


def spherindrical_harmonics(degree: int, n_time: int, dirs: Tensor, dt: Tensor, period: float,
                            coeffs: Tensor) -> Tensor:
    """4D spherindrical harmonics: colour ``[N, 3]`` (no +0.5 offset, no clamp).

    ``sum_n cos(2 pi n dt / period) * sum_k Y_k(dirs) * coeffs[:, n * K' + k]`` with ``Y_k`` the real SH
    of the 3DGS code (``reference.gaussians.spherical_harmonics``) up to ``degree`` (0..3,
    ``K = (degree + 1)^2`` terms, ``dirs [N, 3]`` normalised inside) and ``n = 0 .. n_time - 1``. ``dt [N]`` is ``t - mu_t``; ``period > 0`` (4DGS uses the
    scene's time span). ``coeffs [N, K' * n_time, 3]``, n major: ``K' >= K`` coefficients per temporal
    frequency, of which the first ``K`` are used (so a lower ``degree`` can be rendered from the full
    set). With ``n_time = 1`` this is exactly the spatial SH. Differentiable w.r.t. ``dirs``, ``dt``
    and ``coeffs``. Yang et al. 2024, section 3.3.
    """
    if not 0 <= degree <= 3:
        raise ValueError(f"degree must be in 0..3, got {degree}")
    if n_time < 1:
        raise ValueError(f"n_time must be >= 1, got {n_time}")
    if not period > 0:
        raise ValueError(f"period must be > 0, got {period}")
    _check_rows("dirs", dirs, 3)
    n_gauss, k = dirs.shape[0], (degree + 1) ** 2
    if dt.shape != (n_gauss,):
        raise ValueError(f"dt must be [{n_gauss}] like dirs (cuda/reference/gaussians4d.py), got {tuple(dt.shape)}")
    if (coeffs.ndim != 3 or coeffs.shape[0] != n_gauss or coeffs.shape[2] != 3
            or coeffs.shape[1] % n_time or coeffs.shape[1] // n_time < k):
        raise ValueError(f"coeffs must be [{n_gauss}, K' * {n_time}, 3] with K' >= {k} for degree {degree} "
                         f"(cuda/reference/gaussians4d.py), got {tuple(coeffs.shape)}")
    per_n = coeffs.reshape(n_gauss, n_time, -1, 3)[:, :, :k]  # [N, n_time, K, 3]
    # n = 0 gives cos(0) = 1 exactly, so n_time = 1 is bit-identical to the spatial SH.
    mixed = (temporal_basis(n_time, dt, period)[:, :, None, None] * per_n).sum(1)  # [N, K, 3]
    return spherical_harmonics(degree, dirs, mixed)
