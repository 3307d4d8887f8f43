"""TensoRF's vector-matrix (VM) decomposition of a 3D feature grid (Chen et al., ECCV 2022, section 3.2).

A grid of ``C`` channels over ``Rx x Ry x Rz`` vertices is stored as a sum of ``C`` rank-one terms per
axis pair: for pair ``i`` (axes ``a, b = MAT_MODE[i]``, remaining axis ``c = VEC_MODE[i]``) a matrix
(plane) ``M_i [C_i, R_b, R_a]`` and a vector (line) ``v_i [C_i, R_c]``. At a point the ``C_i``
components of pair ``i`` are ``bilinear(M_i)(u_a, u_b) * linear(v_i)(u_c)``; :class:`TensorVM` returns
all ``C_0 + C_1 + C_2`` products (TensoRF sums them for density and feeds them to a linear basis for
appearance). Interpolation is ``F.grid_sample`` with ``align_corners=True`` (vertex ``0`` at ``u = 0``,
vertex ``R - 1`` at ``u = 1``), as TensoRF's code. Coarse-to-fine training resamples the planes and
lines to a finer grid (:meth:`TensorVM.upsample`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAT_MODE = ((0, 1), (0, 2), (1, 2))
"""Axes ``(a, b)`` of plane ``i``: its rows follow ``b``, its columns ``a``."""
VEC_MODE = (2, 1, 0)
"""Axis of line ``i`` (the one plane ``i`` lacks)."""


def vm_resolution(n_voxels: int, box_size: Sequence[float] | Tensor) -> tuple[int, int, int]:
    """Vertices per axis for about ``n_voxels`` cubic voxels over a box of side lengths ``box_size [3]``
    (TensoRF ``N_to_reso``: voxel size ``(volume / n_voxels)^(1/3)``, then ``floor(size / voxel)`` per axis)."""
    size = [float(s) for s in torch.as_tensor(box_size, dtype=torch.float64).reshape(3)]
    if n_voxels < 1 or min(size) <= 0:
        raise ValueError(f"vm_resolution needs n_voxels >= 1 and a positive box, got {n_voxels}, {size}")
    voxel = (size[0] * size[1] * size[2] / n_voxels) ** (1.0 / 3.0)
    return tuple(max(2, int(s / voxel + 1e-6)) for s in size)  # type: ignore[return-value]


def voxel_schedule(n_init: int, n_final: int, n_upsamples: int) -> list[int]:
    """Voxel counts after each of ``n_upsamples`` upsamplings, log-linear from ``n_init`` to ``n_final``
    (TensoRF's ``N_voxel_list``; the first entry of ``torch.linspace`` is the initial count and is dropped)."""
    if n_upsamples <= 0:
        return []
    steps = torch.linspace(math.log(n_init), math.log(n_final), n_upsamples + 1, dtype=torch.float64)
    return [int(v) for v in torch.round(torch.exp(steps)).long().tolist()[1:]]


def _components(n_components: int | Sequence[int]) -> tuple[int, int, int]:
    comps = (int(n_components),) * 3 if isinstance(n_components, int) else tuple(int(c) for c in n_components)
    if len(comps) != 3 or min(comps) < 1:
        raise ValueError(f"TensorVM n_components must be one int or three ints >= 1, got {n_components}")
    return comps  # type: ignore[return-value]


class TensorVM(nn.Module):
    """VM-decomposed grid: parameters ``planes[i] [1, C_i, R_b, R_a]`` and ``lines[i] [1, C_i, R_c, 1]``.

    Args:
        n_components: ``C_i`` per axis pair (one int for all three; TensoRF: density 16, appearance 48).
        resolution: ``(Rx, Ry, Rz)`` vertices per axis.
        init_scale: the initial values are ``init_scale * N(0, 1)`` (TensoRF: 0.1).
        generator: optional ``torch.Generator`` for the initial values.
    """

    def __init__(self, n_components: int | Sequence[int], resolution: Sequence[int], init_scale: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.n_components = _components(n_components)
        res = self._check_resolution(resolution)
        self.planes = nn.ParameterList()
        self.lines = nn.ParameterList()
        for i, ((a, b), c) in enumerate(zip(MAT_MODE, VEC_MODE)):
            n = self.n_components[i]
            self.planes.append(nn.Parameter(init_scale * torch.randn(1, n, res[b], res[a], generator=generator)))
            self.lines.append(nn.Parameter(init_scale * torch.randn(1, n, res[c], 1, generator=generator)))

    @staticmethod
    def _check_resolution(resolution: Sequence[int]) -> tuple[int, int, int]:
        res = tuple(int(r) for r in resolution)
        if len(res) != 3 or min(res) < 2:
            raise ValueError(f"TensorVM resolution must be three vertex counts >= 2, got {tuple(resolution)}")
        return res  # type: ignore[return-value]

    @property
    def out_dim(self) -> int:
        """``C_0 + C_1 + C_2``: the number of products :meth:`forward` returns per point."""
        return sum(self.n_components)

    @property
    def resolution(self) -> tuple[int, int, int]:
        """Current ``(Rx, Ry, Rz)`` vertices per axis (read from the parameter shapes)."""
        res = [0, 0, 0]
        for (a, b), p in zip(MAT_MODE, self.planes):
            res[b], res[a] = int(p.shape[2]), int(p.shape[3])
        return tuple(res)  # type: ignore[return-value]

    def forward(self, u: Tensor) -> Tensor:
        """``u [N, 3]`` in [0, 1]^3 -> ``[N, C_0 + C_1 + C_2]`` plane x line products (pair 0's
        components first). Differentiable in the planes and lines (and in ``u``); outside [0, 1] the
        grids read zero (``grid_sample`` zero padding)."""
        if u.dim() != 2 or u.shape[-1] != 3:
            raise ValueError(f"TensorVM expects points [N, 3], got {tuple(u.shape)}")
        g = (2.0 * u - 1.0).to(self.planes[0].dtype)
        zeros = torch.zeros_like(g[:, 0])
        parts = []
        for (a, b), c, plane, line in zip(MAT_MODE, VEC_MODE, self.planes, self.lines):
            # grid_sample reads (x, y) = (column, row) coordinates; a contiguous grid is ~4x faster on CPU.
            pg = torch.stack([g[:, a], g[:, b]], dim=-1).reshape(1, -1, 1, 2)
            lg = torch.stack([zeros, g[:, c]], dim=-1).reshape(1, -1, 1, 2)
            pv = F.grid_sample(plane, pg, mode="bilinear", padding_mode="zeros", align_corners=True)
            lv = F.grid_sample(line, lg, mode="bilinear", padding_mode="zeros", align_corners=True)
            parts.append((pv * lv).reshape(plane.shape[1], -1))
        return torch.cat(parts, dim=0).t()

    def l1(self) -> Tensor:
        """TensoRF's ``density_L1``: the sum over pairs of ``mean|plane_i| + mean|line_i|`` (differentiable)."""
        return sum(p.abs().mean() + v.abs().mean() for p, v in zip(self.planes, self.lines))

    @torch.no_grad()
    def upsample(self, resolution: Sequence[int]) -> list[nn.Parameter]:
        """Resample every plane (bilinear) and line (linear) to ``resolution`` vertices per axis, in place
        (TensoRF ``upsample_VM``, ``align_corners=True``): the same ``Parameter`` objects get new ``.data``
        and lose their ``.grad``. Exact for fields linear along each axis; for smooth ones the change is
        the interpolation error. Returns the resized parameters (their optimiser state must be reset)."""
        res = self._check_resolution(resolution)
        changed = []
        for (a, b), c, plane, line in zip(MAT_MODE, VEC_MODE, self.planes, self.lines):
            for p, size in ((plane, (res[b], res[a])), (line, (res[c], 1))):
                if tuple(p.shape[2:]) != size:
                    p.data = F.interpolate(p.data, size=size, mode="bilinear", align_corners=True).contiguous()
                    p.grad = None
                    changed.append(p)
        return changed


__all__ = ["MAT_MODE", "VEC_MODE", "TensorVM", "vm_resolution", "voxel_schedule"]
