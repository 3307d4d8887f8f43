// Emission-absorption weights (Max 1995; NeRF eq. 3) and fused compositing with early ray
// termination (Instant-NGP) on packed samples: forward and first-order backward on the GPU.
//
// One thread per ray walks the ray's samples in order; the optical depth sum_{j<i} s_j is
// accumulated in double, as the reference's float64 prefix sum, so T matches it to about an ulp.
// Products and sums are round-to-nearest intrinsics (no FMA contraction): the float32 operations
// are those of cuda/reference/compositing.py. Formulas of the backward: compositing_cuda.h.
#include "compositing_cuda.h"

namespace omnifield {
namespace compositing {
namespace {

constexpr int kThreads = 128;
constexpr int kChunk = 4;  // channels per forward thread (double accumulators in registers)

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// The sample range [first, last) of ray r; empty when packed_info points outside the samples.
__device__ __forceinline__ void ray_range(const Samples& s, int64_t r, int64_t& first, int64_t& last) {
  first = s.packed_info[2 * r];
  const int64_t count = s.packed_info[2 * r + 1];
  if (count > 0 && first >= 0 && first <= s.n_samples - count) {
    last = first + count;
  } else {
    first = last = 0;
  }
}

struct Sample {
  float s;      // sigma * delta
  float delta;  // t_end - t_start
  float e;      // exp(-s)
  float alpha;  // 1 - exp(-s)
};

__device__ __forceinline__ Sample load_sample(const Samples& p, int64_t i) {
  Sample x;
  x.delta = __fsub_rn(p.t_ends[i], p.t_starts[i]);
  x.s = __fmul_rn(p.sigmas[i], x.delta);
  x.e = expf(-x.s);
  x.alpha = __fsub_rn(1.0f, x.e);
  return x;
}

// T_i from the double optical depth: the reference's exp(-(float)exclusive_sum).
__device__ __forceinline__ float transmittance(double optical_depth) {
  return expf(-static_cast<float>(optical_depth));
}

__device__ __forceinline__ void write_time_grads(const Samples& p, float* v_starts, float* v_ends, int64_t i,
                                                 double ds) {
  if (!v_ends) return;
  const float g = static_cast<float>(ds * static_cast<double>(p.sigmas[i]));
  v_ends[i] = g;
  v_starts[i] = -g;
}

__global__ void __launch_bounds__(kThreads) weights_forward_kernel(Samples p, WeightsIO io) {
  const int64_t r = thread_index();
  if (r >= p.n_rays) return;
  int64_t first, last;
  ray_range(p, r, first, last);
  double optical_depth = 0.0;
  for (int64_t i = first; i < last; ++i) {
    const Sample x = load_sample(p, i);
    const float t = transmittance(optical_depth);
    io.alphas[i] = x.alpha;
    io.trans[i] = t;
    io.weights[i] = __fmul_rn(t, x.alpha);
    optical_depth += static_cast<double>(x.s);
  }
}

__global__ void __launch_bounds__(kThreads) weights_backward_kernel(Samples p, WeightsIO io) {
  const int64_t r = thread_index();
  if (r >= p.n_rays) return;
  int64_t first, last;
  ray_range(p, r, first, last);
  double suffix = 0.0;  // sum_{i>k} (gw_i w_i + gT_i T_i)
  for (int64_t k = last - 1; k >= first; --k) {
    const Sample x = load_sample(p, k);
    const double t = static_cast<double>(io.saved_trans[k]);
    const double w = t * static_cast<double>(x.alpha);
    const double gw = io.v_weights ? static_cast<double>(io.v_weights[k]) : 0.0;
    const double ga = io.v_alphas ? static_cast<double>(io.v_alphas[k]) : 0.0;
    const double ds = static_cast<double>(x.e) * (ga + gw * t) - suffix;
    suffix += gw * w + (io.v_trans ? static_cast<double>(io.v_trans[k]) * t : 0.0);
    if (io.v_sigmas) io.v_sigmas[k] = static_cast<float>(ds * static_cast<double>(x.delta));
    write_time_grads(p, io.v_t_starts, io.v_t_ends, k, ds);
  }
}

// Whether sample i (transmittance t) still contributes under early termination.
__device__ __forceinline__ bool alive(float t, float eps) { return !(eps > 0.0f) || t >= eps; }

__device__ __forceinline__ float t_mid(const Samples& p, int64_t i) {
  return __fmul_rn(0.5f, __fadd_rn(p.t_starts[i], p.t_ends[i]));
}

// One thread per (ray, chunk of 4 channels); chunk 0 also sums depth and acc.
__global__ void __launch_bounds__(kThreads) composite_forward_kernel(Samples p, CompositeIO io, int n_chunks) {
  const int64_t idx = thread_index();
  if (idx >= p.n_rays * n_chunks) return;
  const int64_t r = idx / n_chunks;
  const int chunk = static_cast<int>(idx % n_chunks);
  const int C = io.channels, c0 = chunk * kChunk;
  const int nc = C - c0 < kChunk ? C - c0 : kChunk;
  int64_t first, last;
  ray_range(p, r, first, last);
  double sum[kChunk] = {0.0, 0.0, 0.0, 0.0};
  double depth = 0.0, acc = 0.0, optical_depth = 0.0;
  for (int64_t i = first; i < last; ++i) {
    const float t = transmittance(optical_depth);
    if (!alive(t, io.early_stop_eps)) break;
    const Sample x = load_sample(p, i);
    const float w = __fmul_rn(t, x.alpha);
    const float* v = io.values + i * C + c0;
#pragma unroll
    for (int c = 0; c < kChunk; ++c)
      if (c < nc) sum[c] += static_cast<double>(__fmul_rn(w, v[c]));
    if (chunk == 0) {
      depth += static_cast<double>(__fmul_rn(w, t_mid(p, i)));
      acc += static_cast<double>(w);
    }
    optical_depth += static_cast<double>(x.s);
  }
#pragma unroll
  for (int c = 0; c < kChunk; ++c)
    if (c < nc) io.out[r * C + c0 + c] = static_cast<float>(sum[c]);
  if (chunk == 0) {
    io.depth[r] = static_cast<float>(depth);
    io.acc[r] = static_cast<float>(acc);
  }
}

__global__ void __launch_bounds__(kThreads) composite_backward_kernel(Samples p, CompositeIO io) {
  const int64_t r = thread_index();
  if (r >= p.n_rays) return;
  int64_t first, last;
  ray_range(p, r, first, last);
  const int C = io.channels;
  const float* g_out = io.v_out ? io.v_out + r * C : nullptr;
  const double g_depth = io.v_depth ? static_cast<double>(io.v_depth[r]) : 0.0;
  const double g_acc = io.v_acc ? static_cast<double>(io.v_acc[r]) : 0.0;
  // U = sum_c g_c out_c + g_depth depth + g_acc acc, from the saved outputs.
  double total = g_depth * static_cast<double>(io.saved_depth[r]) + g_acc * static_cast<double>(io.saved_acc[r]);
  if (g_out)
    for (int c = 0; c < C; ++c) total += static_cast<double>(g_out[c]) * static_cast<double>(io.saved_out[r * C + c]);
  double prefix = 0.0, optical_depth = 0.0;  // prefix = sum_{i<=k} w_i u_i
  for (int64_t k = first; k < last; ++k) {
    const float t = transmittance(optical_depth);
    if (!alive(t, io.early_stop_eps)) break;
    const Sample x = load_sample(p, k);
    const float w = __fmul_rn(t, x.alpha);
    const float* v = io.values + k * C;
    double u = g_depth * static_cast<double>(t_mid(p, k)) + g_acc;
    if (g_out) {
      for (int c = 0; c < C; ++c) {
        u += static_cast<double>(g_out[c]) * static_cast<double>(v[c]);
        if (io.v_values) io.v_values[k * C + c] = __fmul_rn(g_out[c], w);
      }
    }
    prefix += static_cast<double>(w) * u;
    const double ds = static_cast<double>(__fmul_rn(t, x.e)) * u - (total - prefix);
    if (io.v_sigmas) io.v_sigmas[k] = static_cast<float>(ds * static_cast<double>(x.delta));
    write_time_grads(p, io.v_t_starts, io.v_t_ends, k, ds);
    optical_depth += static_cast<double>(x.s);
  }
}

}  // namespace

cudaError_t launch_render_weights_forward(const Samples& s, const WeightsIO& io, cudaStream_t stream) {
  if (s.n_rays > 0 && s.n_samples > 0)
    weights_forward_kernel<<<blocks_for(s.n_rays, kThreads), kThreads, 0, stream>>>(s, io);
  return cudaGetLastError();
}

cudaError_t launch_render_weights_backward(const Samples& s, const WeightsIO& io, cudaStream_t stream) {
  if (s.n_rays > 0 && s.n_samples > 0)
    weights_backward_kernel<<<blocks_for(s.n_rays, kThreads), kThreads, 0, stream>>>(s, io);
  return cudaGetLastError();
}

cudaError_t launch_composite_forward(const Samples& s, const CompositeIO& io, cudaStream_t stream) {
  const int n_chunks = io.channels > kChunk ? (io.channels + kChunk - 1) / kChunk : 1;
  const int64_t n = s.n_rays * n_chunks;
  if (n > 0) composite_forward_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(s, io, n_chunks);
  return cudaGetLastError();
}

cudaError_t launch_composite_backward(const Samples& s, const CompositeIO& io, cudaStream_t stream) {
  if (s.n_rays > 0 && s.n_samples > 0)
    composite_backward_kernel<<<blocks_for(s.n_rays, kThreads), kThreads, 0, stream>>>(s, io);
  return cudaGetLastError();
}

}  // namespace compositing
}  // namespace omnifield
