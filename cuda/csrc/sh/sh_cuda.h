// CUDA kernels of the real spherical-harmonics encoding (tiny-cuda-nn / Instant-NGP basis): params
// struct and launchers, free of torch headers.
//
// Semantics are the oracle's (cuda/reference/sh_encoding.py): directions [N,3] float32 used as
// given (unit length expected, not normalised), degree 1..4 bands, output [N, degree^2] float32 in
// tiny-cuda-nn's order and sign convention. The backward gives the gradient w.r.t. the directions.
// One thread per direction; the torch glue is hash_grid/encodings_cuda_bind.cpp.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace omnifield {
namespace encodings {

struct SHEncodeParams {
  int64_t n = 0;
  int degree = 1;                    // bands, 1..4: degree^2 outputs per direction
  const float* dirs = nullptr;       // [N,3]
  float* out = nullptr;              // [N, degree^2] forward output
  const float* grad_out = nullptr;   // [N, degree^2] backward input
  float* grad_dirs = nullptr;        // [N,3] backward output (every entry written)
};

cudaError_t launch_sh_encode_forward(const SHEncodeParams& p, cudaStream_t stream);
cudaError_t launch_sh_encode_backward(const SHEncodeParams& p, cudaStream_t stream);

}  // namespace encodings
}  // namespace omnifield
