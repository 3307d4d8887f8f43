// Tile intersections of projected Gaussians: count, prefix sum, keys, radix sort, tile offsets.
//
// A Gaussian with radius r > 0 covers tiles x in [clamp(floor((mx - r) / ts), 0, tile_w),
// clamp(ceil((mx + r) / ts), 0, tile_w)), same for y; each (tile, Gaussian) pair is one
// intersection with the 64-bit key (tile_id << 32) | depth_key, where depth_key maps the float's
// bits to an unsigned integer of the same order. Intersections are written in Gaussian order, so
// the stable radix sort (cub::DeviceRadixSort) orders them by tile, then depth, then Gaussian
// index, as the spec asks. The sort looks at bits [0, 32 + tile_bits) only. Counts N and M are
// passed to CUB as int (the glue checks both are below 2^31).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "gaussians_cuda.h"
#include "gaussians_cuda_common.cuh"

namespace omnifield {
namespace gaussians {
namespace {

constexpr int kThreads = 256;

struct TileRect {
  int x0, x1, y0, y1;
};

__device__ __forceinline__ int clamp_tile(float v, int hi) {
  return static_cast<int>(fminf(fmaxf(v, 0.f), static_cast<float>(hi)));  // NaN -> 0
}

__device__ __forceinline__ TileRect tile_rect(const IsectParams& p, int64_t i) {
  TileRect r{0, 0, 0, 0};
  const int32_t radius = p.radii[i];
  if (radius <= 0) return r;
  const float rad = static_cast<float>(radius), ts = static_cast<float>(p.tile_size);
  const float mx = p.means2d[2 * i], my = p.means2d[2 * i + 1];
  r.x0 = clamp_tile(floorf((mx - rad) / ts), p.tile_w);
  r.x1 = clamp_tile(ceilf((mx + rad) / ts), p.tile_w);
  r.y0 = clamp_tile(floorf((my - rad) / ts), p.tile_h);
  r.y1 = clamp_tile(ceilf((my + rad) / ts), p.tile_h);
  return r;
}

// Order-preserving map of a float to uint32 (ascending floats -> ascending integers).
__device__ __forceinline__ uint32_t depth_key(float d) {
  const uint32_t bits = __float_as_uint(d);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads) count_kernel(IsectParams p, int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const TileRect r = tile_rect(p, i);
  const int64_t w = r.x1 > r.x0 ? r.x1 - r.x0 : 0, h = r.y1 > r.y0 ? r.y1 - r.y0 : 0;
  counts[i] = w * h;
}

__global__ void __launch_bounds__(kThreads) fill_kernel(IsectParams p, const int64_t* counts, const int64_t* cum,
                                                        uint64_t* keys, int32_t* ids) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n || counts[i] == 0) return;
  const TileRect r = tile_rect(p, i);
  int64_t k = cum[i] - counts[i];  // first slot of Gaussian i (inclusive scan)
  const uint64_t dk = depth_key(p.depths[i]);
  const int32_t id = static_cast<int32_t>(i);
  for (int ty = r.y0; ty < r.y1; ++ty) {
    for (int tx = r.x0; tx < r.x1; ++tx) {
      const uint64_t tile = static_cast<uint64_t>(ty) * static_cast<uint64_t>(p.tile_w) + static_cast<uint64_t>(tx);
      keys[k] = (tile << 32) | dk;
      ids[k] = id;
      ++k;
    }
  }
}

// offsets[t] = index of the first intersection whose tile is >= t (M when none), for t < n_tiles.
__global__ void __launch_bounds__(kThreads) offsets_kernel(const uint64_t* keys, int64_t m, int n_tiles,
                                                           int32_t* offsets) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= m) return;
  const int tile = static_cast<int>(keys[k] >> 32);
  const int prev = k == 0 ? -1 : static_cast<int>(keys[k - 1] >> 32);
  for (int t = prev + 1; t <= tile; ++t) offsets[t] = static_cast<int32_t>(k);
  if (k == m - 1)
    for (int t = tile + 1; t < n_tiles; ++t) offsets[t] = static_cast<int32_t>(m);
}

__global__ void __launch_bounds__(kThreads) widen_kernel(const int32_t* ids, int64_t m, int64_t* out) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < m) out[k] = ids[k];
}

}  // namespace

int isect_tile_bits(int n_tiles) {
  int bits = 0;
  while (bits < 32 && (int64_t{1} << bits) < static_cast<int64_t>(n_tiles)) ++bits;
  return bits;
}

cudaError_t launch_isect_count(const IsectParams& p, int64_t* counts, cudaStream_t stream) {
  if (p.n > 0) count_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p, counts);
  return cudaGetLastError();
}

size_t isect_scan_temp_bytes(int64_t n) {
  size_t bytes = 0;
  cub::DeviceScan::InclusiveSum(nullptr, bytes, static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                static_cast<int>(n));
  return bytes;
}

cudaError_t launch_isect_scan(void* temp, size_t temp_bytes, const int64_t* counts, int64_t* cum, int64_t n,
                              cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const cudaError_t err = cub::DeviceScan::InclusiveSum(temp, temp_bytes, counts, cum, static_cast<int>(n), stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

cudaError_t launch_isect_fill(const IsectParams& p, const int64_t* counts, const int64_t* cum, uint64_t* keys,
                              int32_t* ids, cudaStream_t stream) {
  if (p.n > 0) fill_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p, counts, cum, keys, ids);
  return cudaGetLastError();
}

size_t isect_sort_temp_bytes(int64_t m, int end_bit) {
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint64_t*>(nullptr),
                                  static_cast<uint64_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(m), 0, end_bit);
  return bytes;
}

cudaError_t launch_isect_sort(void* temp, size_t temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                              const int32_t* ids_in, int32_t* ids_out, int64_t m, int end_bit, cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  const cudaError_t err =
      cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, ids_in, ids_out, static_cast<int>(m), 0,
                                      end_bit, stream);
  return err != cudaSuccess ? err : cudaGetLastError();
}

cudaError_t launch_isect_offsets(const uint64_t* sorted_keys, int64_t m, int n_tiles, int32_t* offsets,
                                 cudaStream_t stream) {
  if (m > 0) offsets_kernel<<<detail::blocks_for(m, kThreads), kThreads, 0, stream>>>(sorted_keys, m, n_tiles, offsets);
  return cudaGetLastError();
}

cudaError_t launch_widen_ids(const int32_t* ids, int64_t m, int64_t* out, cudaStream_t stream) {
  if (m > 0) widen_kernel<<<detail::blocks_for(m, kThreads), kThreads, 0, stream>>>(ids, m, out);
  return cudaGetLastError();
}

}  // namespace gaussians
}  // namespace omnifield
