"""Public ops: one function per kernel, dispatched to the selected backend.

Every op here has a pure-PyTorch twin in :mod:`omnifield.cuda.reference` with the same
signature; the C++ CPU and CUDA kernels, where an op has them, are chosen per call from the
selected backend (:func:`omnifield.cuda.backend.resolve_backend`) and the tensors' device.
Fields and renderers call these functions, never the references directly.
"""

from __future__ import annotations

from torch import Tensor

from omnifield.cuda import cpu_compositing as _cpu_comp
from omnifield.cuda import cpu_gaussians as _cpu_gs
from omnifield.cuda import cpu_hash_grid as _cpu_hash
from omnifield.cuda import cpu_ray_marching as _cpu_march
from omnifield.cuda import cuda_encodings as _cuda_enc
from omnifield.cuda import cuda_gaussians as _cuda_gs
from omnifield.cuda import cuda_marching as _cuda_march
from omnifield.cuda.backend import resolve_backend
from omnifield.cuda.reference import compositing as _comp
from omnifield.cuda.reference import gaussians as _gs
from omnifield.cuda.reference import gaussians4d as _gs4
from omnifield.cuda.reference import hash_encoding as _hash
from omnifield.cuda.reference import occupancy as _occ
from omnifield.cuda.reference import ray_aabb as _aabb
from omnifield.cuda.reference import sh_encoding as _sh


def _native(backend: str | None) -> bool:
    """Whether native kernels (C++ on CPU tensors, CUDA on CUDA tensors) may run."""
    return resolve_backend(backend) in ("cpp", "cuda", "tcnn")


def _cuda(module, backend: str | None, *tensors) -> bool:
    """Whether the CUDA kernels of ``module`` take these tensors (``cuda`` backend, CUDA tensors, built)."""
    return resolve_backend(backend) in ("cuda", "tcnn") and module.supports(*tensors) and module.available()


def hash_encode(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, backend: str | None = None) -> Tensor:
    """Multiresolution hash encoding ``x [N, 3]`` in ``[0,1]^3`` -> ``[N, L * F]`` in ``x``'s dtype (see
    the reference docs). ``table`` may be float16 (the half-precision table option: read in half,
    accumulated in float32). Differentiable w.r.t. ``table`` and ``x``; on CUDA twice w.r.t. ``x``
    (NeuS2's eikonal loss) through :func:`hash_encode_input_grad`.

    CUDA tensors run ``cuda/csrc/hash_grid``; CPU tensors with the ``cpp`` backend (the default
    without a GPU) the C++/OpenMP kernel (4-10x faster than the reference); otherwise the reference.
    """
    if _cuda(_cuda_enc, backend, x, table):
        return _cuda_enc.hash_encode(x, table, resolutions, offsets)
    if table.dtype != x.dtype:
        table = table.to(x.dtype)
    if _native(backend) and _cpu_hash.supports(x, table) and _cpu_hash.available():
        return _cpu_hash.hash_encode_cpu(x, table, resolutions, offsets)
    return _hash.hash_encode(x, table, resolutions, offsets)


def hash_encode_input_grad(grad_out: Tensor, x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor,
                           backend: str | None = None) -> Tensor:
    """``d(sum grad_out * hash_encode(x)) / dx`` ``[N, 3]``, differentiable w.r.t. ``grad_out`` and
    ``table`` (the double backward of the encoding; NeuS2's eikonal loss)."""
    if _cuda(_cuda_enc, backend, grad_out, x, table):
        return _cuda_enc.hash_encode_input_grad(grad_out, x, table, resolutions, offsets)
    return _hash.hash_encode_input_grad(grad_out, x, table.to(x.dtype), resolutions, offsets)


def sh_encode(directions: Tensor, degree: int, backend: str | None = None) -> Tensor:
    """Real SH of unit ``directions [N, 3]`` -> ``[N, degree**2]`` (tiny-cuda-nn basis); differentiable."""
    if _cuda(_cuda_enc, backend, directions):
        return _cuda_enc.sh_encode(directions, degree)
    return _sh.sh_encode(directions, degree)


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor, backend: str | None = None):
    """Slab test -> ``(t_min [R], t_max [R], hit [R])``."""
    if _cuda(_cuda_march, backend, origins, directions):
        return _cuda_march.ray_aabb_intersect(origins, directions, aabb)
    return _aabb.ray_aabb_intersect(origins, directions, aabb)


def march_occupancy_grid(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset=None,
                         cone_angle=0.0, max_step=1e10, backend=None):
    """Occupancy-grid marching with empty-space skipping -> packed ``(ray_indices, t_starts, t_ends, packed_info)``.

    Constant steps, or steps growing with distance when ``cone_angle > 0`` (see the reference). The
    CUDA and C++ CPU kernels give the reference's samples bit for bit.
    """
    if _cuda(_cuda_march, backend, origins, directions, t_min, t_max, binaries):
        return _cuda_march.march_occupancy_grid(origins, directions, t_min, t_max, binaries, aabb, step_size,
                                                t_offset, cone_angle, max_step)
    if _native(backend) and _cpu_march.supports(origins, directions, t_min, t_max, binaries, t_offset) \
            and _cpu_march.available():
        return _cpu_march.march_occupancy_grid_cpu(origins, directions, t_min, t_max, binaries, aabb, step_size,
                                                   t_offset, cone_angle, max_step)
    return _occ.march_occupancy_grid(origins, directions, t_min, t_max, binaries, aabb, step_size, t_offset,
                                     cone_angle, max_step)


def grid_lookup(points: Tensor, binaries: Tensor, aabb: Tensor, backend: str | None = None) -> Tensor:
    """Occupancy ``[N]`` bool of world points in a cascaded grid."""
    if _native(backend) and _cpu_march.lookup_supports(points, binaries) and _cpu_march.available():
        return _cpu_march.grid_lookup_cpu(points, binaries, aabb)
    return _occ.grid_lookup(points, binaries, aabb)


def occupancy_ema_update(occs: Tensor, cell_ids: Tensor, values: Tensor, decay: float, backend: str | None = None) -> Tensor:
    """In-place ``occs[c] = max(occs[c] * decay, v)`` (duplicates keep the largest ``v``); returns ``occs``."""
    if _cuda(_cuda_march, backend, occs, cell_ids, values):
        return _cuda_march.occupancy_ema_update(occs, cell_ids, values, decay)
    return _occ.occupancy_ema_update(occs, cell_ids, values, decay)


def render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info, backend=None):
    """Packed emission-absorption ``(weights, transmittance, alphas)``, each ``[S]``; differentiable
    (first order; CUDA kernel on CUDA tensors, C++ CPU kernel on CPU tensors with the ``cpp`` backend)."""
    if _cuda(_cuda_march, backend, sigmas, t_starts, t_ends, packed_info):
        return _cuda_march.render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info)
    if _native(backend) and _cpu_comp.supports(sigmas, t_starts, t_ends, packed_info) and _cpu_comp.available():
        return _cpu_comp.render_weights_cpu(sigmas, t_starts, t_ends, ray_indices, packed_info)
    return _comp.render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info)


def accumulate_along_rays(weights, values, ray_indices, n_rays, backend=None):
    """Per-ray weighted sums ``[R, k]``; differentiable (``index_add``, fast on every device)."""
    return _comp.accumulate_along_rays(weights, values, ray_indices, n_rays)


def composite_rays(sigmas, values, t_starts, t_ends, ray_indices, packed_info, early_stop_eps=0.0, backend=None):
    """Fused compositing with early termination -> ``(out [R, C], depth [R] = sum w t_mid, acc [R])``;
    differentiable w.r.t. ``sigmas`` and ``values`` (CUDA: one kernel per direction)."""
    if _cuda(_cuda_march, backend, sigmas, values, t_starts, t_ends, packed_info):
        return _cuda_march.composite_rays(sigmas, values, t_starts, t_ends, ray_indices, packed_info, early_stop_eps)
    n_rays = packed_info.shape[0]
    weights, trans, _ = render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info, backend)
    if early_stop_eps > 0:
        weights = weights * (trans.detach() >= early_stop_eps).to(weights.dtype)
    t_mid = (0.5 * (t_starts + t_ends)).detach()
    out = _comp.accumulate_along_rays(weights, values, ray_indices, n_rays)
    depth = _comp.accumulate_along_rays(weights, t_mid[:, None], ray_indices, n_rays)[:, 0]
    acc = _comp.accumulate_along_rays(weights, None, ray_indices, n_rays)[:, 0]
    return out, depth, acc


packed_info_from_ray_indices = _comp.packed_info_from_ray_indices
packed_exclusive_cumsum = _comp.packed_exclusive_cumsum
cell_points = _occ.cell_points
cell_indices = _occ.cell_indices
occupancy_binarize = _occ.occupancy_binarize
spatial_hash = _hash.spatial_hash


# --- Gaussian splatting (issue 4) --------------------------------------------------------------------
# CUDA tensors run the CUDA kernels of cuda/csrc/gaussians when the ``cuda`` backend is selected and
# the extension builds; on CPU tensors tile binning and rasterization run the C++/OpenMP kernel
# (``cpp`` backend, the default without a GPU); everything else runs the pure-PyTorch reference,
# which is also the oracle of every kernel's tests.


def _gs_cuda(backend: str | None, *tensors) -> bool:
    """Whether the CUDA Gaussian kernels take these tensors."""
    return _cuda(_cuda_gs, backend, *tensors)


def quat_scale_to_covar(quats: Tensor, scales: Tensor, backend: str | None = None) -> Tensor:
    """World covariances ``[N, 3, 3]`` from quaternions ``[N, 4]`` (w, x, y, z) and scales ``[N, 3]``."""
    impl = _cuda_gs if _gs_cuda(backend, quats, scales) else _gs
    return impl.quat_scale_to_covar(quats, scales)


def project_gaussians(means, covars, viewmat, K, width, height, near=0.01, far=1e10, eps2d=0.3,
                      radius_clip=0.0, antialias=False, backend=None):
    """EWA projection -> ``(means2d [N, 2], conics [N, 3], depths [N], radii [N] int32, compensations [N] | None)``."""
    impl = _cuda_gs if _gs_cuda(backend, means, covars, viewmat, K) else _gs
    return impl.project_gaussians(means, covars, viewmat, K, width, height, near, far, eps2d, radius_clip, antialias)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor, backend: str | None = None) -> Tensor:
    """3DGS SH colour ``[N, 3]`` of ``dirs [N, 3]`` and ``coeffs [N, K, 3]`` (no +0.5)."""
    impl = _cuda_gs if _gs_cuda(backend, dirs, coeffs) else _gs
    return impl.spherical_harmonics(degree, dirs, coeffs)


def isect_tiles(means2d, radii, depths, width, height, tile_size=16, backend=None):
    """Sorted tile intersections -> ``(isect_offsets [tile_h, tile_w] int32, flatten_ids [M] int64)``."""
    if _gs_cuda(backend, means2d, radii, depths):
        return _cuda_gs.isect_tiles(means2d, radii, depths, width, height, tile_size)
    if _native(backend) and _cpu_gs.isect_supports(means2d, radii, depths) and _cpu_gs.available():
        return _cpu_gs.isect_tiles_cpu(means2d, radii, depths, width, height, tile_size)
    return _gs.isect_tiles(means2d, radii, depths, width, height, tile_size)


def rasterize_to_pixels(means2d, conics, colors, opacities, width, height, tile_size, isect_offsets,
                        flatten_ids, backgrounds=None, backend=None):
    """Tile-based alpha compositing -> ``(colors [H, W, C], alphas [H, W, 1])``; differentiable."""
    args = (means2d, conics, colors, opacities, width, height, tile_size, isect_offsets, flatten_ids, backgrounds)
    if _gs_cuda(backend, means2d, conics, colors, opacities, backgrounds):
        return _cuda_gs.rasterize_to_pixels(*args)
    if _native(backend) and _cpu_gs.supports(means2d, conics, colors, opacities, backgrounds) and _cpu_gs.available():
        return _cpu_gs.rasterize_to_pixels_cpu(*args)
    return _gs.rasterize_to_pixels(*args)


def slice_gaussians_4d(means4, scales4, q_left, q_right, t, backend=None):
    """4D Gaussians conditioned on time ``t`` -> ``(means3 [N, 3], covars3 [N, 3, 3], marginal [N])``."""
    impl = _cuda_gs if _gs_cuda(backend, means4, scales4, q_left, q_right) else _gs4
    return impl.slice_gaussians_4d(means4, scales4, q_left, q_right, t)


def spherindrical_harmonics(degree, n_time, dirs, dt, period, coeffs, backend=None):
    """4DGS colour ``[N, 3]``: spatial SH x temporal cosines (no +0.5); differentiable."""
    impl = _cuda_gs if _gs_cuda(backend, dirs, dt, coeffs) else _gs4
    return impl.spherindrical_harmonics(degree, n_time, dirs, dt, period, coeffs)
