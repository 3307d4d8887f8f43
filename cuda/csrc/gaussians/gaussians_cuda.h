// CUDA kernels of Gaussian splatting (issue 4): params structs and launchers, free of torch headers.
//
// The torch glue (gaussians_cuda_bind.cpp) checks shapes, devices and dtypes, allocates every
// output (zero-filled where a kernel accumulates), fills these structs with raw pointers into
// contiguous float32 / int tensors, and calls the launchers on the current stream. Each launcher
// returns cudaGetLastError() (or the first CUB error). Semantics: /work/gs_spec.md, mirrored by
// the pure-PyTorch oracle cuda/reference/gaussians.py and gaussians4d.py.
//
// Layouts (row-major, contiguous): means [N,3], covars [N,3,3], viewmat [4,4] world-to-camera
// (OpenCV axes), K [3,3], means2d [N,2], conics [N,3] = (a, b, c) of the inverse 2D covariance
// [[a, b], [b, c]], colors [N,C], images [H,W,C], isect_offsets [tile_h, tile_w] int32,
// flatten_ids [M] int64. Culled Gaussians (radius 0) get zeros in every projected output except
// the depth (t.z for every Gaussian, as the reference).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace omnifield {
namespace gaussians {

// ---------------------------------------------------------------------------------------------
// Projection (EWA) and covariance from quaternion + scales: gaussians_cuda.cu

struct ProjectParams {
  int64_t n = 0;
  const float* means = nullptr;    // [N,3]
  const float* covars = nullptr;   // [N,3,3]
  const float* viewmat = nullptr;  // [4,4] on the device (read by every thread)
  const float* K = nullptr;        // [3,3] on the device: fx = K[0], cx = K[2], fy = K[4], cy = K[5]
  int width = 0;
  int height = 0;
  float near_plane = 0.01f;
  float far_plane = 1e10f;
  float eps2d = 0.3f;
  float radius_clip = 0.0f;
  bool antialias = false;
};

struct ProjectForwardOut {
  float* means2d = nullptr;        // [N,2]
  float* conics = nullptr;         // [N,3]
  float* depths = nullptr;         // [N]
  int32_t* radii = nullptr;        // [N]
  float* compensations = nullptr;  // [N] (written always; 1 without antialias)
};

struct ProjectBackwardIO {
  const int32_t* radii = nullptr;      // [N] from the forward: only radius > 0 get gradients
  const float* v_means2d = nullptr;    // [N,2]
  const float* v_conics = nullptr;     // [N,3]
  const float* v_depths = nullptr;     // [N]
  const float* v_comps = nullptr;      // [N] or nullptr (ignored without antialias)
  float* v_means = nullptr;            // [N,3] written
  float* v_covars = nullptr;           // [N,3,3] written (symmetric)
  float* v_viewmat = nullptr;          // [4,4] accumulated (zero-filled by the caller) or nullptr
};

cudaError_t launch_project_forward(const ProjectParams& p, const ProjectForwardOut& out, cudaStream_t stream);
cudaError_t launch_project_backward(const ProjectParams& p, const ProjectBackwardIO& io, cudaStream_t stream);

// Covariance from a quaternion (w, x, y, z), normalised inside, and scales: R S S R^T.
struct QuatScaleParams {
  int64_t n = 0;
  const float* quats = nullptr;   // [N,4]
  const float* scales = nullptr;  // [N,3]
  float* covars = nullptr;        // [N,3,3] forward output
  const float* v_covars = nullptr;  // [N,3,3] backward input
  float* v_quats = nullptr;       // [N,4] backward output
  float* v_scales = nullptr;      // [N,3] backward output
};

cudaError_t launch_quat_scale_to_covar_forward(const QuatScaleParams& p, cudaStream_t stream);
cudaError_t launch_quat_scale_to_covar_backward(const QuatScaleParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Tile intersection: gaussians_isect_cuda.cu
//
// Steps (the glue allocates between them): count (tiles per Gaussian, int64) -> inclusive scan
// (cub::DeviceScan) -> M = cum[N-1] read on the host -> fill keys (tile << 32 | depth key) and
// int32 Gaussian ids -> cub::DeviceRadixSort::SortPairs over bits [0, 32 + tile_bits) (stable:
// ties keep the Gaussian order) -> offsets. The depth key is the float's bits mapped to an
// order-preserving unsigned integer (negative depths sort correctly too).

struct IsectParams {
  int64_t n = 0;
  const float* means2d = nullptr;  // [N,2]
  const int32_t* radii = nullptr;  // [N]
  const float* depths = nullptr;   // [N]
  int width = 0;
  int height = 0;
  int tile_size = 16;
  int tile_w = 0;  // ceil(width / tile_size)
  int tile_h = 0;  // ceil(height / tile_size)
};

// Bits of the tile id in the sort key: smallest b with 2^b >= tile_w * tile_h.
int isect_tile_bits(int n_tiles);

cudaError_t launch_isect_count(const IsectParams& p, int64_t* counts, cudaStream_t stream);
// Temporary bytes of the inclusive scan over n int64 counts.
size_t isect_scan_temp_bytes(int64_t n);
cudaError_t launch_isect_scan(void* temp, size_t temp_bytes, const int64_t* counts, int64_t* cum, int64_t n,
                              cudaStream_t stream);
cudaError_t launch_isect_fill(const IsectParams& p, const int64_t* counts, const int64_t* cum, uint64_t* keys,
                              int32_t* ids, cudaStream_t stream);
// Temporary bytes of the radix sort of m (key, id) pairs.
size_t isect_sort_temp_bytes(int64_t m, int end_bit);
cudaError_t launch_isect_sort(void* temp, size_t temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                              const int32_t* ids_in, int32_t* ids_out, int64_t m, int end_bit, cudaStream_t stream);
// offsets [n_tiles] int32 from m >= 1 sorted keys.
cudaError_t launch_isect_offsets(const uint64_t* sorted_keys, int64_t m, int n_tiles, int32_t* offsets,
                                 cudaStream_t stream);
// flatten_ids [m] int64 from the sorted int32 ids.
cudaError_t launch_widen_ids(const int32_t* ids, int64_t m, int64_t* out, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Rasterization: gaussians_raster_cuda.cu
//
// One block per tile, one thread per pixel (tile_size^2 threads rounded up to whole warps),
// shared-memory batches of one Gaussian per thread. Channels are processed in chunks of at most
// 4 (templates for 1..4 channels; C > 4 runs one launch per chunk, `channel_offset` selects it).

struct RasterParams {
  int64_t n = 0;           // Gaussians
  int channels = 0;        // C: the row stride of colors / images
  int width = 0;
  int height = 0;
  int tile_size = 16;
  int tile_w = 0;
  int tile_h = 0;
  int64_t n_isects = 0;    // M
  const float* means2d = nullptr;      // [N,2]
  const float* conics = nullptr;       // [N,3]
  const float* colors = nullptr;       // [N,C]
  const float* opacities = nullptr;    // [N]
  const float* backgrounds = nullptr;  // [C] or nullptr
  const int32_t* isect_offsets = nullptr;  // [tile_h * tile_w]
  const int64_t* flatten_ids = nullptr;    // [M]
};

struct RasterForwardOut {
  float* colors = nullptr;        // [H,W,C]
  float* alphas = nullptr;        // [H,W] = 1 - T_final
  float* transmittance = nullptr; // [H,W] T_final (kept for the backward: exact, unlike 1 - alpha)
  int32_t* last_ids = nullptr;    // [H,W] index into flatten_ids of the last added Gaussian, -1 if none
};

struct RasterBackwardIO {
  const float* transmittance = nullptr;  // [H,W]
  const int32_t* last_ids = nullptr;     // [H,W]
  const float* v_colors = nullptr;       // [H,W,C] upstream
  const float* v_alphas = nullptr;       // [H,W] upstream
  float* v_means2d = nullptr;            // [N,2] accumulated (zero-filled by the caller)
  float* v_conics = nullptr;             // [N,3] accumulated
  float* v_colors_g = nullptr;           // [N,C] accumulated
  float* v_opacities = nullptr;          // [N] accumulated
};

cudaError_t launch_rasterize_forward(const RasterParams& p, const RasterForwardOut& out, cudaStream_t stream);
cudaError_t launch_rasterize_backward(const RasterParams& p, const RasterBackwardIO& io, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Spherical harmonics (3DGS basis) and 4D slicing: gaussians_sh_cuda.cu

struct SHParams {
  int64_t n = 0;
  int degree = 0;        // 0..3: uses the first (degree + 1)^2 coefficients
  int num_coeffs = 1;    // K: the stride of coeffs (K >= (degree + 1)^2)
  const float* dirs = nullptr;    // [N,3], normalised inside
  const float* coeffs = nullptr;  // [N,K,3]
  float* out = nullptr;           // [N,3] forward output (no +0.5)
  const float* v_out = nullptr;   // [N,3] backward input
  float* v_dirs = nullptr;        // [N,3] backward output or nullptr
  float* v_coeffs = nullptr;      // [N,K,3] backward output (zero-filled by the caller) or nullptr
};

cudaError_t launch_sh_forward(const SHParams& p, cudaStream_t stream);
cudaError_t launch_sh_backward(const SHParams& p, cudaStream_t stream);

// 4DGS (Yang et al. 2024) conditional 3D Gaussian at time t. Quaternions normalised inside;
// R4 = L(q_l) R(q_r), Sigma4 = R4 diag(s^2) R4^T, Sigma3|t = S11 - S12 S12^T / s_tt,
// mu3|t = mu_xyz + S12 / s_tt (t - mu_t), marginal = exp(-0.5 (t - mu_t)^2 / s_tt).
struct Slice4DParams {
  int64_t n = 0;
  float t = 0.0f;
  const float* means4 = nullptr;   // [N,4]
  const float* scales4 = nullptr;  // [N,4]
  const float* q_left = nullptr;   // [N,4]
  const float* q_right = nullptr;  // [N,4]
  float* means3 = nullptr;         // [N,3] forward
  float* covars3 = nullptr;        // [N,3,3] forward
  float* marginal = nullptr;       // [N] forward
  const float* v_means3 = nullptr;   // backward inputs
  const float* v_covars3 = nullptr;
  const float* v_marginal = nullptr;
  float* v_means4 = nullptr;         // backward outputs
  float* v_scales4 = nullptr;
  float* v_q_left = nullptr;
  float* v_q_right = nullptr;
};

cudaError_t launch_slice_4d_forward(const Slice4DParams& p, cudaStream_t stream);
cudaError_t launch_slice_4d_backward(const Slice4DParams& p, cudaStream_t stream);

}  // namespace gaussians
}  // namespace omnifield
