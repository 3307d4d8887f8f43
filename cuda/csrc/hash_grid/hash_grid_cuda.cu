// Multiresolution hash encoding (Instant-NGP) on the GPU: forward, backward (table and positions)
// and the double backward of the position gradient (NeuS2's eikonal loss). See hash_grid_cuda.h
// for the layout; the oracle is cuda/reference/hash_encoding.py.
//
// Threads: one per (point, level, feature chunk): blockIdx.x over points, blockIdx.y the level,
// blockIdx.z the chunk of NF features (NF = the largest of 8, 4, 2, 1 dividing F; one chunk for
// the usual F = 2). Every launch of a level-major grid runs level 0's blocks first, so the table
// rows (and gradient rows) being touched are one level's, which stay in L2.
//
// Per (point, level): pos = clamp(x, 0, 1) * res (rounded product, as the reference), base =
// clamp(min(floor(pos), res - 1), 0), frac = pos - base; corner k = 4 bx + 2 by + bz at row
// offset + (dense ? ix + iy (res+1) + iz (res+1)^2 : ((ix * 1) ^ (iy * 2654435761) ^
// (iz * 805459861)) & (T - 1)), computed in uint32: the reference's int64 products agree with
// these modulo 2^32, hence after masking with T - 1 < 2^31, and dense rows are < 2^31.
// Weight w_k = (wx wy) wz with w*_0 = 1 - frac, w*_1 = frac.
//
// Loads of the NF features are vectorised (float2 / float4; __half2 for half tables) and
// accumulate in float32. Table gradients use float atomics (float2 / float4 vector atomics on
// sm_90+; with F = 2 the two x-corners of a pair of rows r, r ^ 1 share one 4-float atomic).
// Position gradients d/dx_d = res sum_k dw_k/dfrac_d (table_k . g), zero where the clamp is
// active, are added over levels with atomics. No FMA restrictions: results match the reference to
// float32 rounding (the corners and the clamp decisions exactly).
#include "hash_grid_cuda.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace omnifield {
namespace encodings {
namespace {

constexpr int kThreads = 128;
constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;

// Kernel configuration: table element type and the features per thread.
template <typename T, int NF>
struct HashCfg {
  using table_t = T;
  static constexpr int kF = NF;
};

// The 8 corners of one point in one level.
struct Cell {
  uint32_t row[8];
  float wd[3][2];  // per-axis 1D weights: wd[d][0] = 1 - frac_d, wd[d][1] = frac_d
  float res;
  bool inside[3];  // 0 <= x_d <= 1: the clamp passes the gradient (torch.clamp's closed interval)
};

__device__ __forceinline__ void locate(const float* __restrict__ xp, const HashLevel& lv, Cell& c) {
  c.res = static_cast<float>(lv.res);
  const int top = static_cast<int>(lv.res) - 1;
  uint32_t base[3];
#pragma unroll
  for (int d = 0; d < 3; ++d) {
    const float v = xp[d];
    c.inside[d] = v >= 0.f && v <= 1.f;
    const float pos = __fmul_rn(fminf(fmaxf(v, 0.f), 1.f), c.res);  // rounded: no FMA with the subtraction
    const int b = max(min(static_cast<int>(floorf(pos)), top), 0);
    base[d] = static_cast<uint32_t>(b);
    const float frac = pos - static_cast<float>(b);
    c.wd[d][0] = 1.f - frac;
    c.wd[d][1] = frac;
  }
  uint32_t hx[2], hy[2], hz[2];
  if (lv.dense) {
    const uint32_t s = lv.res + 1;
    hx[0] = base[0];
    hx[1] = base[0] + 1;
    hy[0] = base[1] * s;
    hy[1] = hy[0] + s;
    hz[0] = base[2] * s * s;
    hz[1] = hz[0] + s * s;
#pragma unroll
    for (int k = 0; k < 8; ++k) c.row[k] = lv.offset + hx[(k >> 2) & 1] + hy[(k >> 1) & 1] + hz[k & 1];
  } else {
    hx[0] = base[0];
    hx[1] = base[0] + 1;
    hy[0] = base[1] * kPrime1;
    hy[1] = (base[1] + 1) * kPrime1;
    hz[0] = base[2] * kPrime2;
    hz[1] = (base[2] + 1) * kPrime2;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      c.row[k] = lv.offset + ((hx[(k >> 2) & 1] ^ hy[(k >> 1) & 1] ^ hz[k & 1]) & lv.mask);
  }
}

__device__ __forceinline__ float corner_weight(const Cell& c, int k) {
  return c.wd[0][(k >> 2) & 1] * c.wd[1][(k >> 1) & 1] * c.wd[2][k & 1];
}

// d w_k / d frac_d (d = 0, 1, 2) for corner k.
__device__ __forceinline__ void corner_weight_grad(const Cell& c, int k, float* dw) {
  const int bx = (k >> 2) & 1, by = (k >> 1) & 1, bz = k & 1;
  const float w12 = c.wd[1][by] * c.wd[2][bz];
  const float w02 = c.wd[0][bx] * c.wd[2][bz];
  const float w01 = c.wd[0][bx] * c.wd[1][by];
  dw[0] = bx ? w12 : -w12;
  dw[1] = by ? w02 : -w02;
  dw[2] = bz ? w01 : -w01;
}

// NF consecutive floats at p (aligned to min(16, 4 NF) bytes) into v.
template <int NF>
__device__ __forceinline__ void load_floats(const float* __restrict__ p, float (&v)[NF]) {
  if constexpr (NF == 2) {
    const float2 a = *reinterpret_cast<const float2*>(p);
    v[0] = a.x;
    v[1] = a.y;
  } else if constexpr (NF % 4 == 0) {
#pragma unroll
    for (int j = 0; j < NF; j += 4) {
      const float4 a = *reinterpret_cast<const float4*>(p + j);
      v[j] = a.x;
      v[j + 1] = a.y;
      v[j + 2] = a.z;
      v[j + 3] = a.w;
    }
  } else {
#pragma unroll
    for (int j = 0; j < NF; ++j) v[j] = p[j];
  }
}

template <int NF>
__device__ __forceinline__ void store_floats(float* __restrict__ p, const float (&v)[NF]) {
  if constexpr (NF == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else if constexpr (NF % 4 == 0) {
#pragma unroll
    for (int j = 0; j < NF; j += 4) *reinterpret_cast<float4*>(p + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
  } else {
#pragma unroll
    for (int j = 0; j < NF; ++j) p[j] = v[j];
  }
}

// The NF features of a table row (row stride `stride` elements; the chunk's first feature at t).
template <int NF>
__device__ __forceinline__ void load_row(const float* __restrict__ t, uint32_t row, int stride, float (&v)[NF]) {
  load_floats<NF>(t + static_cast<size_t>(row) * stride, v);
}

template <int NF>
__device__ __forceinline__ void load_row(const __half* __restrict__ t, uint32_t row, int stride, float (&v)[NF]) {
  const __half* p = t + static_cast<size_t>(row) * stride;
  if constexpr (NF % 2 == 0) {
#pragma unroll
    for (int j = 0; j < NF; j += 2) {
      const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p + j));
      v[j] = a.x;
      v[j + 1] = a.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < NF; ++j) v[j] = __half2float(p[j]);
  }
}

// Float atomics of 2 and 4 consecutive floats: one vector atomic on sm_90+ (global memory, 8- / 16-byte
// aligned), scalar atomics elsewhere (and in the host emulation).
__device__ __forceinline__ void atomic_add2(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(dst), make_float2(a, b));
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}

__device__ __forceinline__ void atomic_add4(float* dst, float a, float b, float c, float d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(dst), make_float4(a, b, c, d));
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
  atomicAdd(dst + 2, c);
  atomicAdd(dst + 3, d);
#endif
}

// dst[j] += s * g[j], atomically (aligned as load_floats).
template <int NF>
__device__ __forceinline__ void atomic_add_scaled(float* dst, float s, const float (&g)[NF]) {
  if constexpr (NF == 2) {
    atomic_add2(dst, s * g[0], s * g[1]);
  } else if constexpr (NF % 4 == 0) {
#pragma unroll
    for (int j = 0; j < NF; j += 4) atomic_add4(dst + j, s * g[j], s * g[j + 1], s * g[j + 2], s * g[j + 3]);
  } else {
#pragma unroll
    for (int j = 0; j < NF; ++j) atomicAdd(dst + j, s * g[j]);
  }
}

// grad_table[row_k, f0 + j] += s[k] * g[j] for the 8 corners. With F = 2 (one chunk), corners k and
// k + 4 (bx = 0, 1) whose rows differ only in bit 0 (half of them: ix even on hashed levels, an even
// row on dense ones) form one aligned 16-byte pair: one 4-float atomic instead of two 2-float ones.
template <int NF>
__device__ __forceinline__ void scatter_corners(float* grad_table, int stride, const Cell& c, const float (&s)[8],
                                                const float (&g)[NF]) {
  if constexpr (NF == 2) {
    if (stride == 2) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t r0 = c.row[k], r1 = c.row[k + 4];
        if ((r0 ^ r1) == 1u) {
          const bool first = (r0 & 1u) == 0u;
          const float a = first ? s[k] : s[k + 4], b = first ? s[k + 4] : s[k];
          atomic_add4(grad_table + static_cast<size_t>(r0 & ~1u) * 2, a * g[0], a * g[1], b * g[0], b * g[1]);
        } else {
          atomic_add2(grad_table + static_cast<size_t>(r0) * 2, s[k] * g[0], s[k] * g[1]);
          atomic_add2(grad_table + static_cast<size_t>(r1) * 2, s[k + 4] * g[0], s[k + 4] * g[1]);
        }
      }
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < 8; ++k) atomic_add_scaled<NF>(grad_table + static_cast<size_t>(c.row[k]) * stride, s[k], g);
}

// Index of thread (point i, level l, first feature f0); false past the last point.
struct Slot {
  int64_t i;
  int l;
  int f0;
};

__device__ __forceinline__ bool slot(const HashGridParams& p, int nf, Slot& s) {
  s.i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  s.l = static_cast<int>(blockIdx.y);
  s.f0 = static_cast<int>(blockIdx.z) * nf;
  return s.i < p.n;
}

// First element of the (point, level, chunk) slice of an [N, L*F] array.
__device__ __forceinline__ size_t feature_index(const HashGridParams& p, const Slot& s) {
  return (static_cast<size_t>(s.i) * p.n_levels + s.l) * p.n_features + s.f0;
}

template <typename Cfg>
__global__ void __launch_bounds__(kThreads) hash_forward_kernel(HashGridParams p, float* __restrict__ out) {
  using T = typename Cfg::table_t;
  constexpr int NF = Cfg::kF;
  Slot s;
  if (!slot(p, NF, s)) return;
  Cell c;
  locate(p.x + 3 * s.i, p.levels[s.l], c);
  const T* table = static_cast<const T*>(p.table) + s.f0;
  float acc[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) acc[j] = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float w = corner_weight(c, k);
    float v[NF];
    load_row<NF>(table, c.row[k], p.n_features, v);
#pragma unroll
    for (int j = 0; j < NF; ++j) acc[j] += w * v[j];
  }
  store_floats<NF>(out + feature_index(p, s), acc);
}

template <typename Cfg>
__global__ void __launch_bounds__(kThreads) hash_backward_kernel(HashGridParams p, HashBackwardIO io) {
  using T = typename Cfg::table_t;
  constexpr int NF = Cfg::kF;
  Slot s;
  if (!slot(p, NF, s)) return;
  Cell c;
  locate(p.x + 3 * s.i, p.levels[s.l], c);
  float g[NF];
  load_floats<NF>(io.grad_out + feature_index(p, s), g);
  if (io.grad_table != nullptr) {
    float w[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) w[k] = corner_weight(c, k);
    scatter_corners<NF>(io.grad_table + s.f0, p.n_features, c, w, g);
  }
  if (io.grad_x == nullptr || !(c.inside[0] || c.inside[1] || c.inside[2])) return;
  const T* table = static_cast<const T*>(p.table) + s.f0;
  float gpos[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    float v[NF];
    load_row<NF>(table, c.row[k], p.n_features, v);
    float dot = 0.f;  // d loss / d w_k
#pragma unroll
    for (int j = 0; j < NF; ++j) dot += v[j] * g[j];
    float dw[3];
    corner_weight_grad(c, k, dw);
#pragma unroll
    for (int d = 0; d < 3; ++d) gpos[d] += dw[d] * dot;
  }
#pragma unroll
  for (int d = 0; d < 3; ++d)
    if (c.inside[d]) atomicAdd(io.grad_x + 3 * s.i + d, gpos[d] * c.res);
}

template <typename Cfg>
__global__ void __launch_bounds__(kThreads) hash_double_backward_kernel(HashGridParams p, HashDoubleBackwardIO io) {
  using T = typename Cfg::table_t;
  constexpr int NF = Cfg::kF;
  Slot s;
  if (!slot(p, NF, s)) return;
  Cell c;
  locate(p.x + 3 * s.i, p.levels[s.l], c);
  float gg[3];
#pragma unroll
  for (int d = 0; d < 3; ++d) gg[d] = c.inside[d] ? io.grad_grad_x[3 * s.i + d] * c.res : 0.f;
  const size_t fi = feature_index(p, s);
  float acc[NF], g[NF];
#pragma unroll
  for (int j = 0; j < NF; ++j) acc[j] = 0.f;
  const bool zero = gg[0] == 0.f && gg[1] == 0.f && gg[2] == 0.f;
  if (io.grad_table != nullptr && !zero) load_floats<NF>(io.grad_out + fi, g);
  const T* table = static_cast<const T*>(p.table) + s.f0;
  if (!zero) {
    float sk[8];  // s_k = sum_d gg_d res mask_d dw_k/dfrac_d
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      float dw[3];
      corner_weight_grad(c, k, dw);
      sk[k] = dw[0] * gg[0] + dw[1] * gg[1] + dw[2] * gg[2];
    }
    if (io.grad_grad_out != nullptr) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        float v[NF];
        load_row<NF>(table, c.row[k], p.n_features, v);
#pragma unroll
        for (int j = 0; j < NF; ++j) acc[j] += sk[k] * v[j];
      }
    }
    if (io.grad_table != nullptr) scatter_corners<NF>(io.grad_table + s.f0, p.n_features, c, sk, g);
  }
  if (io.grad_grad_out != nullptr) store_floats<NF>(io.grad_grad_out + fi, acc);
}

int chunk_features(int f) { return f % 8 == 0 ? 8 : f % 4 == 0 ? 4 : f % 2 == 0 ? 2 : 1; }

bool empty(const HashGridParams& p) { return p.n <= 0 || p.n_levels <= 0 || p.n_features <= 0; }

template <typename Cfg>
dim3 grid_of(const HashGridParams& p) {
  return dim3(static_cast<unsigned>((p.n + kThreads - 1) / kThreads), static_cast<unsigned>(p.n_levels),
              static_cast<unsigned>(p.n_features / Cfg::kF));
}

// fn(HashCfg<T, NF>{}) for the table type and feature chunk of p.
template <typename T, typename Fn>
cudaError_t by_chunk(int nf, Fn&& fn) {
  switch (nf) {
    case 8: return fn(HashCfg<T, 8>{});
    case 4: return fn(HashCfg<T, 4>{});
    case 2: return fn(HashCfg<T, 2>{});
    default: return fn(HashCfg<T, 1>{});
  }
}

template <typename Fn>
cudaError_t dispatch(const HashGridParams& p, Fn&& fn) {
  const int nf = chunk_features(p.n_features);
  return p.table_half ? by_chunk<__half>(nf, fn) : by_chunk<float>(nf, fn);
}

template <typename Cfg>
cudaError_t run_forward(const HashGridParams& p, float* out, cudaStream_t stream) {
  const dim3 grid = grid_of<Cfg>(p);
  hash_forward_kernel<Cfg><<<grid, kThreads, 0, stream>>>(p, out);
  return cudaGetLastError();
}

template <typename Cfg>
cudaError_t run_backward(const HashGridParams& p, const HashBackwardIO& io, cudaStream_t stream) {
  const dim3 grid = grid_of<Cfg>(p);
  hash_backward_kernel<Cfg><<<grid, kThreads, 0, stream>>>(p, io);
  return cudaGetLastError();
}

template <typename Cfg>
cudaError_t run_double_backward(const HashGridParams& p, const HashDoubleBackwardIO& io, cudaStream_t stream) {
  const dim3 grid = grid_of<Cfg>(p);
  hash_double_backward_kernel<Cfg><<<grid, kThreads, 0, stream>>>(p, io);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_hash_forward(const HashGridParams& p, float* out, cudaStream_t stream) {
  if (empty(p)) return cudaGetLastError();
  return dispatch(p, [&](auto cfg) { return run_forward<decltype(cfg)>(p, out, stream); });
}

cudaError_t launch_hash_backward(const HashGridParams& p, const HashBackwardIO& io, cudaStream_t stream) {
  if (empty(p) || (io.grad_table == nullptr && io.grad_x == nullptr)) return cudaGetLastError();
  return dispatch(p, [&](auto cfg) { return run_backward<decltype(cfg)>(p, io, stream); });
}

cudaError_t launch_hash_double_backward(const HashGridParams& p, const HashDoubleBackwardIO& io,
                                        cudaStream_t stream) {
  if (empty(p) || (io.grad_table == nullptr && io.grad_grad_out == nullptr)) return cudaGetLastError();
  return dispatch(p, [&](auto cfg) { return run_double_backward<decltype(cfg)>(p, io, stream); });
}

}  // namespace encodings
}  // namespace omnifield
