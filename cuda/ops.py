"""Public ops: one function per kernel, dispatched to the selected backend.

Every op here has a pure-PyTorch twin in :mod:`omnifield.cuda.reference` with the same
signature; today every call runs that reference (see :func:`omnifield.cuda.backend.resolve_backend`).
Fields and renderers call these functions, never the references directly.
"""

from __future__ import annotations

from torch import Tensor

from omnifield.cuda import cpu_compositing as _cpu_comp
from omnifield.cuda import cpu_hash_grid as _cpu_hash
from omnifield.cuda import cpu_ray_marching as _cpu_march
from omnifield.cuda.backend import resolve_backend
from omnifield.cuda.reference import compositing as _comp
from omnifield.cuda.reference import hash_encoding as _hash
from omnifield.cuda.reference import occupancy as _occ
from omnifield.cuda.reference import ray_aabb as _aabb
from omnifield.cuda.reference import sh_encoding as _sh


def _impl(module, name: str, backend: str | None):
    resolve_backend(backend)  # validates and warns once; only the reference exists so far
    return getattr(module, name)


def hash_encode(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, backend: str | None = None) -> Tensor:
    """Multiresolution hash encoding ``x [N, 3]`` in ``[0,1]^3`` -> ``[N, L * F]`` (see reference docs).

    On CPU tensors with the ``cpp`` backend (the default without a GPU) this runs the C++/OpenMP
    kernel of ``cuda/csrc/hash_grid`` (built on first use, 4-10x faster); otherwise the reference.
    """
    name = resolve_backend(backend)
    if name in ("cpp", "cuda") and _cpu_hash.supports(x, table) and _cpu_hash.available():
        return _cpu_hash.hash_encode_cpu(x, table, resolutions, offsets)
    return _hash.hash_encode(x, table, resolutions, offsets)


def sh_encode(directions: Tensor, degree: int, backend: str | None = None) -> Tensor:
    """Real SH of unit ``directions [N, 3]`` -> ``[N, degree**2]`` (tiny-cuda-nn basis)."""
    return _impl(_sh, "sh_encode", backend)(directions, degree)


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor, backend: str | None = None):
    """Slab test -> ``(t_min [R], t_max [R], hit [R])``."""
    return _impl(_aabb, "ray_aabb_intersect", backend)(origins, directions, aabb)


def _native(backend: str | None) -> bool:
    return resolve_backend(backend) in ("cpp", "cuda")


def march_occupancy_grid(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset=None, backend=None):
    """Constant-step marching with empty-space skipping -> packed ``(ray_indices, t_starts, t_ends, packed_info)``.

    C++ CPU kernel (bit-identical to the reference) on CPU tensors with the ``cpp`` backend.
    """
    if _native(backend) and _cpu_march.supports(origins, directions, t_min, t_max, binaries, t_offset) \
            and _cpu_march.available():
        return _cpu_march.march_occupancy_grid_cpu(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset)
    return _occ.march_occupancy_grid(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset)


def grid_lookup(points: Tensor, binaries: Tensor, aabb: Tensor, backend: str | None = None) -> Tensor:
    """Occupancy ``[N]`` bool of world points in a cascaded grid."""
    if _native(backend) and _cpu_march.lookup_supports(points, binaries) and _cpu_march.available():
        return _cpu_march.grid_lookup_cpu(points, binaries, aabb)
    return _occ.grid_lookup(points, binaries, aabb)


def occupancy_ema_update(occs: Tensor, cell_ids: Tensor, values: Tensor, decay: float, backend: str | None = None) -> Tensor:
    """In-place ``occs[c] = max(occs[c] * decay, v)``."""
    return _impl(_occ, "occupancy_ema_update", backend)(occs, cell_ids, values, decay)


def render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info, backend=None):
    """Packed emission-absorption ``(weights, transmittance, alphas)``, each ``[S]``; differentiable
    (first order; the C++ CPU kernel on CPU tensors with the ``cpp`` backend)."""
    if _native(backend) and _cpu_comp.supports(sigmas, t_starts, t_ends, packed_info) and _cpu_comp.available():
        return _cpu_comp.render_weights_cpu(sigmas, t_starts, t_ends, ray_indices, packed_info)
    return _comp.render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info)


def accumulate_along_rays(weights, values, ray_indices, n_rays, backend=None):
    """Per-ray weighted sums ``[R, k]``; differentiable."""
    return _impl(_comp, "accumulate_along_rays", backend)(weights, values, ray_indices, n_rays)


packed_info_from_ray_indices = _comp.packed_info_from_ray_indices
packed_exclusive_cumsum = _comp.packed_exclusive_cumsum
cell_points = _occ.cell_points
occupancy_binarize = _occ.occupancy_binarize
spatial_hash = _hash.spatial_hash
