// Gaussian splatting, C++ CPU kernel: tile binning (radix sort by depth, then a fill per tile).
// Included once, by gaussians_cpu.cpp (one translation unit: torch's headers are parsed once), which
// states the rules and the work layout.
#pragma once
#include "gaussians_cpu.h"

namespace omnifield {
namespace gaussians_cpu {
namespace {

// Order-preserving key of a depth (+0 and -0 equal, every NaN last and equal, like torch.sort).
inline uint64_t depth_key(double d) {
  if (std::isnan(d)) return ~uint64_t(0);
  if (d == 0) d = 0;  // -0 -> +0
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof(bits));
  return (bits >> 63) ? ~bits : bits | (uint64_t(1) << 63);
}

// Stable LSD radix sort of (key, value) pairs by key, a byte per pass; passes where every key has the same byte
// (e.g. the zero low bytes of float32 depths widened to double) are skipped.
void radix_sort(std::vector<uint64_t>& keys, std::vector<int64_t>& values) {
  const int64_t n = int64_t(keys.size());
  std::vector<int64_t> hist(8 * 256, 0);
  for (const uint64_t k : keys)
    for (int d = 0; d < 8; ++d) ++hist[d * 256 + ((k >> (8 * d)) & 255)];
  std::vector<uint64_t> keys2(n);
  std::vector<int64_t> values2(n);
  for (int d = 0; d < 8; ++d) {
    int64_t* h = hist.data() + d * 256;
    if (std::any_of(h, h + 256, [n](int64_t c) { return c == n; })) continue;
    for (int64_t bucket = 0, sum = 0; bucket < 256; ++bucket) {
      const int64_t c = h[bucket];
      h[bucket] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = h[(keys[i] >> (8 * d)) & 255]++;
      keys2[pos] = keys[i];
      values2[pos] = values[i];
    }
    keys.swap(keys2);
    values.swap(values2);
  }
}

// Tile range [lo, hi) of one axis: clamp(floor((m - r) / ts), 0, tiles), clamp(ceil((m + r) / ts), 0, tiles),
// in the dtype of means2d as the reference computes it. NaN -> empty.
template <typename T>
inline void tile_range(T mean, int32_t radius, int tile_size, int tiles, int32_t& lo, int32_t& hi) {
  const T a = std::floor((mean - T(radius)) / T(tile_size)), b = std::ceil((mean + T(radius)) / T(tile_size));
  if (std::isnan(a) || std::isnan(b)) {
    lo = hi = 0;
    return;
  }
  lo = int32_t(std::min(std::max(a, T(0)), T(tiles)));
  hi = int32_t(std::min(std::max(b, T(0)), T(tiles)));
}

// Sorted intersections: the Gaussians that cover a tile, in (depth, index) order (radix sort), are appended to
// their tiles in that order, so every tile's list comes out sorted. The sorted Gaussians are cut into kParts
// contiguous parts (more than threads, dynamically scheduled: a descheduled thread does not hold the others up);
// per-part tile histograms give each part its own cursor in each tile.
// alloc_ids(M) -> int64_t*: where to write the M sorted Gaussian ids (the output tensor).
template <typename T, typename Alloc>
void isect_tiles_impl(const T* means2d, const int32_t* radii, const double* depths, int64_t n, int tile_size,
                      int tile_w, int tile_h, std::vector<int64_t>& tile_start, Alloc&& alloc_ids) {
  constexpr int kParts = 16;
  const int64_t n_tiles = int64_t(tile_w) * tile_h;
  const int nt = std::max(1, at::get_num_threads());
  std::vector<int32_t> rect(4 * n);  // x0, x1, y0, y1
#pragma omp parallel for schedule(dynamic, 4096) num_threads(nt) if(n >= kParallelMin)
  for (int64_t g = 0; g < n; ++g) {
    int32_t* rc = rect.data() + 4 * g;
    rc[0] = rc[1] = rc[2] = rc[3] = 0;
    if (radii[g] <= 0) continue;
    tile_range(means2d[2 * g], radii[g], tile_size, tile_w, rc[0], rc[1]);
    tile_range(means2d[2 * g + 1], radii[g], tile_size, tile_h, rc[2], rc[3]);
  }
  std::vector<uint64_t> keys;
  std::vector<int64_t> order;
  keys.reserve(n);
  order.reserve(n);
  for (int64_t g = 0; g < n; ++g) {
    const int32_t* rc = rect.data() + 4 * g;
    if (rc[0] < rc[1] && rc[2] < rc[3]) {
      keys.push_back(depth_key(depths[g]));
      order.push_back(g);
    }
  }
  radix_sort(keys, order);
  const int64_t n_vis = int64_t(order.size());
  // counts[p][tile]: intersections of part p, sorted range [n_vis p / kParts, n_vis (p + 1) / kParts), with each tile.
  std::vector<int64_t> counts(int64_t(kParts) * n_tiles, 0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if(n_vis >= kParallelMin)
  for (int p = 0; p < kParts; ++p) {
    int64_t* cnt = counts.data() + p * n_tiles;
    for (int64_t i = n_vis * p / kParts; i < n_vis * (p + 1) / kParts; ++i) {
      const int32_t* rc = rect.data() + 4 * order[i];
      for (int32_t ty = rc[2]; ty < rc[3]; ++ty)
        for (int32_t tx = rc[0]; tx < rc[1]; ++tx) ++cnt[int64_t(ty) * tile_w + tx];
    }
  }
  // Exclusive prefix sums: tile starts, then each part's cursor inside each tile.
  tile_start.assign(n_tiles + 1, 0);
  int64_t total = 0;
  for (int64_t t = 0; t < n_tiles; ++t) {
    tile_start[t] = total;
    for (int p = 0; p < kParts; ++p) {
      const int64_t c = counts[p * n_tiles + t];
      counts[p * n_tiles + t] = total;
      total += c;
    }
  }
  tile_start[n_tiles] = total;
  TORCH_CHECK(total < (int64_t(1) << 31), "isect_tiles_cpu: too many intersections for int32 offsets: ", total);
  int64_t* ids = alloc_ids(total);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if(n_vis >= kParallelMin)
  for (int p = 0; p < kParts; ++p) {
    int64_t* cursor = counts.data() + p * n_tiles;
    for (int64_t i = n_vis * p / kParts; i < n_vis * (p + 1) / kParts; ++i) {
      const int64_t g = order[i];
      const int32_t* rc = rect.data() + 4 * g;
      for (int32_t ty = rc[2]; ty < rc[3]; ++ty)
        for (int32_t tx = rc[0]; tx < rc[1]; ++tx) ids[cursor[int64_t(ty) * tile_w + tx]++] = g;
    }
  }
}

}  // namespace

// -> {isect_offsets [tile_h, tile_w] int32, flatten_ids [M] int64}
std::vector<torch::Tensor> isect_tiles(torch::Tensor means2d, torch::Tensor radii, torch::Tensor depths,
                                       int64_t width, int64_t height, int64_t tile_size) {
  const auto dtype = means2d.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kDouble, "isect_tiles_cpu: float32 or float64 means2d");
  TORCH_CHECK(means2d.device().is_cpu() && means2d.dim() == 2 && means2d.size(1) == 2,
              "isect_tiles_cpu: means2d must be CPU [N, 2]");
  const int64_t n = means2d.size(0);
  TORCH_CHECK(radii.device().is_cpu() && radii.scalar_type() == torch::kInt && radii.dim() == 1 && radii.size(0) == n,
              "isect_tiles_cpu: radii must be CPU int32 [N]");
  TORCH_CHECK(depths.device().is_cpu() && depths.dim() == 1 && depths.size(0) == n && depths.is_floating_point(),
              "isect_tiles_cpu: depths must be a CPU float [N] tensor");
  TORCH_CHECK(width > 0 && height > 0 && tile_size > 0, "isect_tiles_cpu: bad image or tile size");
  const int tile_w = int((width + tile_size - 1) / tile_size), tile_h = int((height + tile_size - 1) / tile_size);
  means2d = means2d.contiguous();
  radii = radii.contiguous();
  const torch::Tensor d = depths.to(torch::kDouble).contiguous();  // exact for float32 depths
  std::vector<int64_t> tile_start;
  torch::Tensor ids;
  const auto alloc_ids = [&](int64_t total) {
    ids = torch::empty({total}, torch::dtype(torch::kLong));
    return ids.data_ptr<int64_t>();
  };
  AT_DISPATCH_FLOATING_TYPES(dtype, "isect_tiles_cpu", [&] {
    isect_tiles_impl<scalar_t>(means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(), d.data_ptr<double>(), n,
                               int(tile_size), tile_w, tile_h, tile_start, alloc_ids);
  });
  auto offsets = torch::empty({tile_h, tile_w}, torch::dtype(torch::kInt));
  int32_t* off = offsets.data_ptr<int32_t>();
  for (int64_t t = 0; t < int64_t(tile_w) * tile_h; ++t) off[t] = int32_t(tile_start[t]);
  return {offsets, ids};
}

}  // namespace gaussians_cpu
}  // namespace omnifield
