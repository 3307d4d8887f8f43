// Real spherical-harmonics encoding of directions, degree 1..4 (tiny-cuda-nn / Instant-NGP basis),
// forward and backward w.r.t. the directions; one thread per direction, the degree a template
// parameter. The basis and its float operations follow cuda/reference/sh_encoding.py term by term
// (the same constants in float32, products left to right); the backward is the analytic gradient
// of each term, summed against grad_out.
#include "sh_cuda.h"

#include <cuda_runtime.h>

namespace omnifield {
namespace encodings {
namespace {

constexpr int kThreads = 256;

constexpr float kC0 = 0.28209479177387814f;
constexpr float kC1 = 0.48860251190291987f;
constexpr float kC2a = 1.0925484305920792f;
constexpr float kC2b = 0.94617469575755997f;
constexpr float kC2c = 0.31539156525251999f;
constexpr float kC2d = 0.54627421529603959f;
constexpr float kC3a = 0.59004358992664352f;
constexpr float kC3b = 2.8906114426405538f;
constexpr float kC3c = 0.45704579946446572f;
constexpr float kC3d = 0.3731763325901154f;
constexpr float kC3e = 1.4453057213202769f;

// Basis values b[0 .. D^2) at (x, y, z).
template <int D>
__device__ __forceinline__ void sh_basis(float x, float y, float z, float* b) {
  b[0] = kC0;
  if constexpr (D > 1) {
    b[1] = -kC1 * y;
    b[2] = kC1 * z;
    b[3] = -kC1 * x;
  }
  if constexpr (D > 2) {
    const float x2 = x * x, y2 = y * y, z2 = z * z;
    const float xy = x * y, yz = y * z, xz = x * z;
    b[4] = kC2a * xy;
    b[5] = -kC2a * yz;
    b[6] = kC2b * z2 - kC2c;
    b[7] = -kC2a * xz;
    b[8] = kC2d * (x2 - y2);
    if constexpr (D > 3) {
      b[9] = kC3a * y * (-3.f * x2 + y2);
      b[10] = kC3b * xy * z;
      b[11] = kC3c * y * (1.f - 5.f * z2);
      b[12] = kC3d * z * (5.f * z2 - 3.f);
      b[13] = kC3c * x * (1.f - 5.f * z2);
      b[14] = kC3e * z * (x2 - y2);
      b[15] = kC3a * x * (-x2 + 3.f * y2);
    }
  }
}

// (gx, gy, gz) = sum_j g[j] d b_j / d(x, y, z).
template <int D>
__device__ __forceinline__ void sh_basis_grad(float x, float y, float z, const float* g, float* out) {
  float gx = 0.f, gy = 0.f, gz = 0.f;
  if constexpr (D > 1) {
    gy -= kC1 * g[1];
    gz += kC1 * g[2];
    gx -= kC1 * g[3];
  }
  if constexpr (D > 2) {
    gx += kC2a * y * g[4];
    gy += kC2a * x * g[4];
    gy -= kC2a * z * g[5];
    gz -= kC2a * y * g[5];
    gz += 2.f * kC2b * z * g[6];
    gx -= kC2a * z * g[7];
    gz -= kC2a * x * g[7];
    gx += 2.f * kC2d * x * g[8];
    gy -= 2.f * kC2d * y * g[8];
    if constexpr (D > 3) {
      const float x2 = x * x, y2 = y * y, z2 = z * z;
      gx += kC3a * y * (-6.f * x) * g[9];
      gy += kC3a * (3.f * y2 - 3.f * x2) * g[9];
      gx += kC3b * y * z * g[10];
      gy += kC3b * x * z * g[10];
      gz += kC3b * x * y * g[10];
      gy += kC3c * (1.f - 5.f * z2) * g[11];
      gz += kC3c * y * (-10.f * z) * g[11];
      gz += kC3d * (15.f * z2 - 3.f) * g[12];
      gx += kC3c * (1.f - 5.f * z2) * g[13];
      gz += kC3c * x * (-10.f * z) * g[13];
      gx += kC3e * z * (2.f * x) * g[14];
      gy -= kC3e * z * (2.f * y) * g[14];
      gz += kC3e * (x2 - y2) * g[14];
      gx += kC3a * (3.f * y2 - 3.f * x2) * g[15];
      gy += kC3a * x * (6.f * y) * g[15];
    }
  }
  out[0] = gx;
  out[1] = gy;
  out[2] = gz;
}

template <int D>
__global__ void __launch_bounds__(kThreads) sh_forward_kernel(SHEncodeParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const float* d = p.dirs + 3 * i;
  float b[D * D];
  sh_basis<D>(d[0], d[1], d[2], b);
  float* o = p.out + i * (D * D);
#pragma unroll
  for (int j = 0; j < D * D; ++j) o[j] = b[j];
}

template <int D>
__global__ void __launch_bounds__(kThreads) sh_backward_kernel(SHEncodeParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const float* d = p.dirs + 3 * i;
  const float* go = p.grad_out + i * (D * D);
  float g[D * D];
#pragma unroll
  for (int j = 0; j < D * D; ++j) g[j] = go[j];
  float v[3];
  sh_basis_grad<D>(d[0], d[1], d[2], g, v);
#pragma unroll
  for (int k = 0; k < 3; ++k) p.grad_dirs[3 * i + k] = v[k];
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

template <int D>
cudaError_t run_forward(const SHEncodeParams& p, cudaStream_t stream) {
  sh_forward_kernel<D><<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <int D>
cudaError_t run_backward(const SHEncodeParams& p, cudaStream_t stream) {
  sh_backward_kernel<D><<<blocks_for(p.n), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sh_encode_forward(const SHEncodeParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.degree < 1 || p.degree > 4) return cudaGetLastError();  // the glue rejects other degrees
  switch (p.degree) {
    case 1: return run_forward<1>(p, stream);
    case 2: return run_forward<2>(p, stream);
    case 3: return run_forward<3>(p, stream);
    default: return run_forward<4>(p, stream);
  }
}

cudaError_t launch_sh_encode_backward(const SHEncodeParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.degree < 1 || p.degree > 4) return cudaGetLastError();  // the glue rejects other degrees
  switch (p.degree) {
    case 1: return run_backward<1>(p, stream);
    case 2: return run_backward<2>(p, stream);
    case 3: return run_backward<3>(p, stream);
    default: return run_backward<4>(p, stream);
  }
}

}  // namespace encodings
}  // namespace omnifield
