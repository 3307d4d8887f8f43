// CUDA kernels of the multiresolution hash encoding (Mueller et al. 2022, Instant-NGP): params
// structs and launchers, free of torch headers.
//
// Layout and semantics are the oracle's (cuda/reference/hash_encoding.py): x [N,3] float32 clamped
// to [0,1]^3; table [rows,F] float32 or float16 (read as half, accumulated in float32); level l has
// res_l cells per side and owns rows offsets[l]:offsets[l+1]; dense when (res_l+1)^3 fit in its
// rows (ix + iy (res+1) + iz (res+1)^2), else hashed ((ix * 1) ^ (iy * 2654435761) ^
// (iz * 805459861)) & (T - 1), T a power of two; corners k = 4 bx + 2 by + bz; trilinear weights
// (wx wy) wz. Output [N, L*F] float32, level-major. The torch glue (encodings_cuda_bind.cpp)
// validates the layout on the host and fills HashLevel per level; kernels take everything by value.
//
// One thread per (point, level): blockIdx.x covers points, blockIdx.y is the level, so the warps
// resident at a time read (and atomically update) one level's rows, which stay in L2.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace omnifield {
namespace encodings {

// Levels of one grid, at most this many (passed by value in the kernel parameters).
constexpr int kMaxHashLevels = 32;

struct HashLevel {
  uint32_t offset = 0;  // first row of the level in the table
  uint32_t res = 1;     // cells per side (>= 1)
  uint32_t mask = 0;    // hashed: T - 1; dense: unused
  uint32_t dense = 1;   // 1: dense rows ix + iy (res+1) + iz (res+1)^2; 0: hashed
};

struct HashGridParams {
  int64_t n = 0;            // points
  int n_levels = 0;         // L (1..kMaxHashLevels)
  int n_features = 0;       // F (the table's row length)
  const float* x = nullptr;         // [N,3]
  const void* table = nullptr;      // [rows,F] float32, or float16 when table_half
  bool table_half = false;
  HashLevel levels[kMaxHashLevels];
};

// out [N, L*F] float32 (every entry written).
cudaError_t launch_hash_forward(const HashGridParams& p, float* out, cudaStream_t stream);

// First-order backward from grad_out [N, L*F] float32. Either output may be nullptr (not wanted):
// grad_table [rows,F] float32, accumulated with atomicAdd (zero-filled by the caller; the glue
// converts it to half for half tables); grad_x [N,3] float32, accumulated over levels with
// atomicAdd (zero-filled by the caller), zero where the clamp to [0,1] is active (torch.clamp's
// gradient: passed on the closed interval). grad_x alone is the forward of the input-grad op.
struct HashBackwardIO {
  const float* grad_out = nullptr;  // [N, L*F]
  float* grad_table = nullptr;      // [rows, F] or nullptr
  float* grad_x = nullptr;          // [N, 3] or nullptr
};

cudaError_t launch_hash_backward(const HashGridParams& p, const HashBackwardIO& io, cudaStream_t stream);

// Double backward: the input-grad op grad_x = G(grad_out, table) is bilinear in (grad_out, table).
// Given gg = dL/d(grad_x) [N,3], with s_k = res_l * sum_d gg_d mask_d dw_k/dfrac_d per corner:
// grad_grad_out[n, l, f] = sum_k s_k table[row_k, f] (written, or nullptr) and
// grad_table[row_k, f] += s_k grad_out[n, l, f] (atomicAdd, zero-filled by the caller, or nullptr).
// Positions are constants of the op (no gradient w.r.t. x).
struct HashDoubleBackwardIO {
  const float* grad_grad_x = nullptr;  // [N, 3]
  const float* grad_out = nullptr;     // [N, L*F] (read only when grad_table is wanted)
  float* grad_grad_out = nullptr;      // [N, L*F] or nullptr
  float* grad_table = nullptr;         // [rows, F] or nullptr
};

cudaError_t launch_hash_double_backward(const HashGridParams& p, const HashDoubleBackwardIO& io,
                                        cudaStream_t stream);

}  // namespace encodings
}  // namespace omnifield
