// Ray/box intersection, occupancy-grid marching (Instant-NGP; nerfacc OccGridEstimator) and the
// occupancy EMA update on the GPU. One thread per ray (marching) or per update (EMA).
//
// Marching repeats the float32 operations of cuda/reference/occupancy.py one for one with
// round-to-nearest intrinsics (no FMA contraction), so samples, their order and packed_info are
// bit-identical to the reference run on the same device:
//   constant steps: start = t_min (+ t_offset * step), n = t_max > start ? ceil(max(t_max - start,
//     0) / step) : 0 (n non-finite: no samples), t0_j = start + j * step, t1_j = min(t0_j + step, t_max);
//   cone steps: dt(t) = min(max(t * cone_angle, step), max_step), start = t_min (+ t_offset *
//     dt(t_min)), t_{i+1} = t_i + dt(t_i) while t_i < t_max (and the step makes progress),
//     t1_i = min(t_{i+1}, t_max);
//   a sample is kept when the cell of p = o + d * (0.5 * (t0 + t1)) is occupied (grid_lookup).
// The cascade level uses log2f and ceilf as torch's CUDA log2 and ceil do.
#include <cfloat>

#include "ray_marching_cuda.h"

namespace omnifield {
namespace marching {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kSentinel = 0x7fc0beefu;  // a quiet NaN no float arithmetic produces: "not touched"

inline unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// torch.minimum / torch.maximum: NaN in either operand gives NaN.
__device__ __forceinline__ float nan_min(float a, float b) { return (a != a || a < b) ? a : b; }
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

__global__ void __launch_bounds__(kThreads) aabb_kernel(AabbParams p) {
  const int64_t i = thread_index();
  if (i >= p.n_rays) return;
  float lo = -FLT_MAX, hi = FLT_MAX;
  for (int k = 0; k < 3; ++k) {
    float d = p.directions[3 * i + k];
    if (fabsf(d) < 1e-12f) d = 1e-12f;
    const float inv = 1.0f / d;
    const float o = p.origins[3 * i + k];
    const float t0 = __fmul_rn(__fsub_rn(p.aabb[k], o), inv);
    const float t1 = __fmul_rn(__fsub_rn(p.aabb[3 + k], o), inv);
    const float near = nan_min(t0, t1), far = nan_max(t0, t1);
    lo = k == 0 ? near : nan_max(lo, near);
    hi = k == 0 ? far : nan_min(hi, far);
  }
  p.t_min[i] = lo;
  p.t_max[i] = hi;
  p.hit[i] = hi > nan_max(lo, 0.0f);
}

struct Grid {
  const bool* bins;
  int levels;
  int res;
  float centre[3];
  float half[3];
};

__device__ __forceinline__ Grid load_grid(const GridParams& gp) {
  Grid g;
  g.bins = gp.binaries;
  g.levels = gp.levels;
  g.res = gp.res;
  for (int k = 0; k < 3; ++k) {
    const float lo = gp.aabb[k], hi = gp.aabb[3 + k];
    g.centre[k] = __fmul_rn(0.5f, __fadd_rn(lo, hi));
    g.half[k] = __fmul_rn(0.5f, __fsub_rn(hi, lo));
  }
  return g;
}

// Occupancy of one point: the reference grid_lookup in its float operation order. Non-finite
// points are empty.
__device__ __forceinline__ bool occupied(const Grid& g, const float p[3]) {
  float u[3];
  for (int k = 0; k < 3; ++k) u[k] = __fsub_rn(p[k], g.centre[k]) / g.half[k];
  if (!(fabsf(u[0]) <= FLT_MAX && fabsf(u[1]) <= FLT_MAX && fabsf(u[2]) <= FLT_MAX)) return false;
  const float extent = fmaxf(fmaxf(fabsf(u[0]), fabsf(u[1])), fabsf(u[2]));
  int level = 0;
  float scale = 1.0f;  // 2^level: u / scale is exact
  if (extent > 1.0f) {  // ceil(log2(extent)) > 0 exactly when extent > 1
    if (g.levels == 1) return false;
    const float lv = ceilf(log2f(extent));
    if (!(lv < static_cast<float>(g.levels))) return false;
    level = static_cast<int>(lv);
    scale = static_cast<float>(1LL << level);
  }
  const int64_t r = g.res;
  const float rs = static_cast<float>(g.res);
  int64_t c[3];
  for (int k = 0; k < 3; ++k) {
    const float v = __fmul_rn(__fmul_rn(__fadd_rn(u[k] / scale, 1.0f), 0.5f), rs);
    c[k] = static_cast<int64_t>(fminf(fmaxf(floorf(v), 0.0f), rs - 1.0f));
  }
  return g.bins[((level * r + c[0]) * r + c[1]) * r + c[2]];
}

__device__ __forceinline__ float cone_dt(const MarchParams& p, float t) {
  return fminf(fmaxf(__fmul_rn(t, p.cone_angle), p.step_size), p.max_step);
}

// Whether the interval [t0, t1] of ray (o, d) has an occupied midpoint.
__device__ __forceinline__ bool keep(const Grid& g, const float o[3], const float d[3], float t0, float t1) {
  const float mid = __fmul_rn(0.5f, __fadd_rn(t0, t1));
  const float pt[3] = {__fadd_rn(o[0], __fmul_rn(d[0], mid)), __fadd_rn(o[1], __fmul_rn(d[1], mid)),
                       __fadd_rn(o[2], __fmul_rn(d[2], mid))};
  return occupied(g, pt);
}

// Marches ray i, calling emit(k, t0, t1) for its k-th kept interval; returns the number kept.
template <typename Emit>
__device__ int64_t march_ray(const MarchParams& p, const Grid& g, int64_t i, Emit& emit) {
  const float o[3] = {p.origins[3 * i], p.origins[3 * i + 1], p.origins[3 * i + 2]};
  const float d[3] = {p.directions[3 * i], p.directions[3 * i + 1], p.directions[3 * i + 2]};
  const float t_min = p.t_min[i], t_max = p.t_max[i];
  int64_t kept = 0;
  if (p.cone_angle > 0.0f) {
    float t = p.t_offset ? __fadd_rn(t_min, __fmul_rn(p.t_offset[i], cone_dt(p, t_min))) : t_min;
    while (t < t_max) {
      const float t_next = __fadd_rn(t, cone_dt(p, t));
      if (keep(g, o, d, t, fminf(t_next, t_max))) emit(kept++, t, fminf(t_next, t_max));
      if (!(t_next > t)) break;  // no progress (t + dt == t): the reference stops the ray too
      t = t_next;
    }
    return kept;
  }
  const float start = p.t_offset ? __fadd_rn(t_min, __fmul_rn(p.t_offset[i], p.step_size)) : t_min;
  if (!(t_max > start)) return 0;
  const float steps = ceilf(fmaxf(__fsub_rn(t_max, start), 0.0f) / p.step_size);
  if (!(steps < 9.0e15f)) return 0;  // non-finite segment
  const int64_t n = static_cast<int64_t>(steps);
  for (int64_t j = 0; j < n; ++j) {
    const float t0 = __fadd_rn(start, __fmul_rn(static_cast<float>(j), p.step_size));
    const float t1 = fminf(__fadd_rn(t0, p.step_size), t_max);
    if (keep(g, o, d, t0, t1)) emit(kept++, t0, t1);
  }
  return kept;
}

struct CountOnly {
  __device__ void operator()(int64_t, float, float) const {}
};

struct WriteSamples {
  int64_t ray;
  int64_t* ray_indices;  // offset to the ray's first slot
  float* t_starts;
  float* t_ends;
  __device__ void operator()(int64_t k, float t0, float t1) const {
    ray_indices[k] = ray;
    t_starts[k] = t0;
    t_ends[k] = t1;
  }
};

__global__ void __launch_bounds__(kThreads) march_count_kernel(MarchParams p, MarchOut out) {
  const int64_t i = thread_index();
  if (i >= p.n_rays) return;
  const Grid g = load_grid(p.grid);
  CountOnly emit;
  out.packed_info[2 * i + 1] = march_ray(p, g, i, emit);
}

__global__ void __launch_bounds__(kThreads) march_fill_kernel(MarchParams p, MarchOut out) {
  const int64_t i = thread_index();
  if (i >= p.n_rays || out.packed_info[2 * i + 1] == 0) return;
  const Grid g = load_grid(p.grid);
  const int64_t first = out.packed_info[2 * i];
  WriteSamples emit{i, out.ray_indices + first, out.t_starts + first, out.t_ends + first};
  march_ray(p, g, i, emit);
}

// ------------------------------------------------------------------------------------------
// Occupancy EMA update

__device__ __forceinline__ bool valid_cell(const EmaParams& p, int64_t c) { return c >= 0 && c < p.n_cells; }

__global__ void __launch_bounds__(kThreads) ema_mark_kernel(EmaParams p) {
  const int64_t i = thread_index();
  if (i >= p.n) return;
  const int64_t c = p.cell_ids[i];
  if (valid_cell(p, c)) p.scratch[c] = kSentinel;  // duplicates write the same word
}

// Float atomic max through atomicCAS on the bits (valid for any sign, unlike the int trick);
// the sentinel counts as "smaller than everything". NaN values are skipped.
__global__ void __launch_bounds__(kThreads) ema_max_kernel(EmaParams p) {
  const int64_t i = thread_index();
  if (i >= p.n) return;
  const int64_t c = p.cell_ids[i];
  const float v = p.values[i];
  if (!valid_cell(p, c) || v != v) return;
  const uint32_t bits = __float_as_uint(v);
  uint32_t* slot = p.scratch + c;
  uint32_t old = *slot;
  while (old == kSentinel || __uint_as_float(old) < v) {
    const uint32_t seen = atomicCAS(slot, old, bits);
    if (seen == old) break;
    old = seen;
  }
}

// The first thread of each touched cell takes its maximum (and resets the slot): one writer per cell.
__global__ void __launch_bounds__(kThreads) ema_apply_kernel(EmaParams p) {
  const int64_t i = thread_index();
  if (i >= p.n) return;
  const int64_t c = p.cell_ids[i];
  if (!valid_cell(p, c)) return;
  const uint32_t got = atomicExch(p.scratch + c, kSentinel);
  if (got == kSentinel) return;  // another thread of this cell applied it (or every value was NaN)
  const float v = fmaxf(__uint_as_float(got), -1.0f);  // the reference's scatter starts from -1
  p.occs[c] = nan_max(__fmul_rn(p.occs[c], p.decay), v);
}

}  // namespace

cudaError_t launch_ray_aabb_intersect(const AabbParams& p, cudaStream_t stream) {
  if (p.n_rays > 0) aabb_kernel<<<blocks_for(p.n_rays, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_march_count(const MarchParams& p, const MarchOut& out, cudaStream_t stream) {
  if (p.n_rays > 0) march_count_kernel<<<blocks_for(p.n_rays, kThreads), kThreads, 0, stream>>>(p, out);
  return cudaGetLastError();
}

cudaError_t launch_march_fill(const MarchParams& p, const MarchOut& out, cudaStream_t stream) {
  if (p.n_rays > 0) march_fill_kernel<<<blocks_for(p.n_rays, kThreads), kThreads, 0, stream>>>(p, out);
  return cudaGetLastError();
}

cudaError_t launch_occupancy_ema_update(const EmaParams& p, cudaStream_t stream) {
  if (p.n <= 0 || p.n_cells <= 0) return cudaSuccess;
  const unsigned blocks = blocks_for(p.n, kThreads);
  ema_mark_kernel<<<blocks, kThreads, 0, stream>>>(p);
  ema_max_kernel<<<blocks, kThreads, 0, stream>>>(p);
  ema_apply_kernel<<<blocks, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace marching
}  // namespace omnifield
