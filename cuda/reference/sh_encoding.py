"""Real spherical-harmonics encoding of unit directions, degree 1..4 (tiny-cuda-nn / Instant-NGP basis)."""

from __future__ import annotations

import torch
from torch import Tensor


def sh_encode(directions: Tensor, degree: int) -> Tensor:
    """Real SH basis of ``directions [N, 3]`` (unit length) -> ``[N, degree**2]``.

    ``degree`` counts bands (1..4), as tiny-cuda-nn's ``SphericalHarmonics`` ``degree`` does; the
    sign and normalisation conventions are tiny-cuda-nn's (orthonormal on the sphere). Differentiable.
    """
    if not 1 <= degree <= 4:
        raise ValueError(f"SH degree must be in 1..4, got {degree}")
    if directions.ndim != 2 or directions.shape[1] != 3:
        raise ValueError(f"directions must be [N, 3], got {tuple(directions.shape)}")
    x, y, z = directions.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        x2, y2, z2 = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * z2 - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (x2 - y2),
        ]
    if degree > 3:
        out += [
            0.59004358992664352 * y * (-3.0 * x2 + y2),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * z2),
            0.3731763325901154 * z * (5.0 * z2 - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * z2),
            1.4453057213202769 * z * (x2 - y2),
            0.59004358992664352 * x * (-x2 + 3.0 * y2),
        ]
    return torch.stack(out, dim=-1)
