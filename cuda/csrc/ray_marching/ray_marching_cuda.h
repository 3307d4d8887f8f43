// CUDA kernels of ray marching (issue 5): ray/box intersection, occupancy-grid marching with
// cascades and cone steps, the occupancy EMA update. Params structs and launchers, no torch.
//
// The torch glue (marching_cuda_bind.cpp) checks shapes, devices and dtypes, allocates the outputs,
// fills these structs with raw pointers into contiguous float32 / int64 / bool tensors and calls the
// launchers on the current stream. Each launcher returns cudaGetLastError() and launches nothing for
// empty inputs. Semantics and float operation order: the pure-PyTorch oracles
// cuda/reference/ray_aabb.py and cuda/reference/occupancy.py, matched bit for bit (every product
// and sum is a round-to-nearest intrinsic, so nvcc cannot contract them into FMAs).
//
// Layouts (row-major, contiguous): origins / directions [R,3], t_min / t_max / t_offset [R],
// aabb [6] = (min xyz, max xyz) on the device, binaries [Lv,G,G,G] bool (level l covers the level-0
// box scaled by 2^l about its centre), packed_info [R,2] int64 = (first sample, count).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace omnifield {
namespace marching {

// Slab test of R rays against one box: t_min, t_max [R] and hit [R] (t_max > max(t_min, 0)).
// Direction components with |d| < 1e-12 are replaced by +1e-12 (as the reference).
struct AabbParams {
  int64_t n_rays = 0;
  const float* origins = nullptr;     // [R,3]
  const float* directions = nullptr;  // [R,3]
  const float* aabb = nullptr;        // [6]
  float* t_min = nullptr;             // [R] out
  float* t_max = nullptr;             // [R] out
  bool* hit = nullptr;                // [R] out
};

cudaError_t launch_ray_aabb_intersect(const AabbParams& p, cudaStream_t stream);

// Cascaded occupancy grid: a point goes to level max(0, ceil(log2(max_k |u_k|))) with
// u = (p - centre) / half of the level-0 box; it is empty when that level is >= Lv.
struct GridParams {
  const bool* binaries = nullptr;  // [Lv,G,G,G]
  int levels = 1;                  // Lv
  int res = 1;                     // G
  const float* aabb = nullptr;     // [6]
};

// Marching: constant steps (cone_angle == 0) or cone steps dt(t) = min(max(t * cone_angle,
// step_size), max_step). One thread per ray, two passes: count the kept samples of every ray
// (written to packed_info[i][1]), then, after the glue's exclusive scan into packed_info[i][0],
// fill the samples at their ray's first slot, in step order.
struct MarchParams {
  int64_t n_rays = 0;
  const float* origins = nullptr;     // [R,3]
  const float* directions = nullptr;  // [R,3]
  const float* t_min = nullptr;       // [R]
  const float* t_max = nullptr;       // [R]
  const float* t_offset = nullptr;    // [R] or nullptr (no jitter)
  float step_size = 0.0f;
  float cone_angle = 0.0f;
  float max_step = 1e10f;
  GridParams grid;
};

struct MarchOut {
  int64_t* packed_info = nullptr;  // [R,2]: count pass writes [i][1], the fill pass reads [i][0]
  int64_t* ray_indices = nullptr;  // [S] fill pass
  float* t_starts = nullptr;       // [S] fill pass
  float* t_ends = nullptr;         // [S] fill pass
};

cudaError_t launch_march_count(const MarchParams& p, const MarchOut& out, cudaStream_t stream);
cudaError_t launch_march_fill(const MarchParams& p, const MarchOut& out, cudaStream_t stream);

// occs[c] = max(occs[c] * decay, max(-1, max of the values of c)) for the cells c in cell_ids
// (duplicates keep their largest value; NaN values and ids outside [0, n_cells) are ignored).
// `scratch` is [n_cells] int32 of any content: three kernels mark the touched cells with a NaN
// sentinel, take a float atomic max into them (atomicCAS on the bits), then let exactly one
// thread per cell (atomicExch back to the sentinel) apply the decayed update.
struct EmaParams {
  int64_t n = 0;            // number of updates
  int64_t n_cells = 0;
  float* occs = nullptr;    // [n_cells], updated in place
  const int64_t* cell_ids = nullptr;  // [n]
  const float* values = nullptr;      // [n]
  float decay = 0.95f;
  uint32_t* scratch = nullptr;        // [n_cells]
};

cudaError_t launch_occupancy_ema_update(const EmaParams& p, cudaStream_t stream);

}  // namespace marching
}  // namespace omnifield
