// Gaussian splatting rasterizer, C++ CPU kernel: what its passes share (gaussians_cpu.cpp has the rules, the
// work layout and the bindings; gaussians_cpu_forward.h, gaussians_cpu_backward.h and gaussians_cpu_isect.h
// the passes): SIMD lanes, exp, scratch buffers, lane sums, the packed Gaussian records, the per-tile batch
// gather, input validation and the channel dispatch.
#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

namespace omnifield {
namespace gaussians_cpu {

constexpr int kLanes = 8;  // pixels of a row processed together (one AVX vector of floats, two SSE ones)

template <typename T>
struct Simd;
// Explicit alignments: without them the portable (SSE2) build aligns these types to 16 bytes, the AVX2 copies of
// the kernels (below) to 32, and the two would disagree about the same buffers.
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(kLanes * sizeof(float)), aligned(kLanes * sizeof(float))));
  typedef int32_t M __attribute__((vector_size(kLanes * sizeof(int32_t)), aligned(kLanes * sizeof(int32_t))));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(kLanes * sizeof(double)), aligned(kLanes * sizeof(double))));
  typedef int64_t M __attribute__((vector_size(kLanes * sizeof(int64_t)), aligned(kLanes * sizeof(int64_t))));
};

static_assert(alignof(Simd<double>::V) <= 64 && alignof(Simd<float>::V) <= 64, "scratch buffers align to 64 bytes");

template <typename V, typename S>
inline V splat(S s) {
  return V{} + s;
}

template <typename M>
inline bool any(M m) {
  uint64_t words[sizeof(M) / 8];
  std::memcpy(words, &m, sizeof(M));
  uint64_t r = 0;
  for (int i = 0; i < static_cast<int>(sizeof(M) / 8); ++i) r |= words[i];
  return r != 0;
}

// The reference's thresholds, rounded to the input dtype as torch does for a Python scalar.
template <typename T>
struct Rule {
  static constexpr T kAlphaMax = static_cast<T>(0.99);
  static constexpr T kAlphaMin = static_cast<T>(1.0 / 255.0);
  static constexpr T kTransMin = static_cast<T>(1e-4);
};

// exp(x) for x <= 0, float: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and the Cephes degree-6
// polynomial (measured: at most 0.97 ulp from the exact exp on [-86, 0], 1 ulp from torch.exp). x is clamped at
// -86 so that 2^n stays a normal number: exp(-86) ~ 4e-38, far below any alpha that passes 1/255.
inline Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using M = Simd<float>::M;
  const V lo = splat<V>(-86.0f);
  x = x < lo ? lo : x;
  const V magic = splat<V>(12582912.0f);  // 1.5 * 2^23: (t + magic) - magic rounds t to the nearest integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;  // ln2 = 0.693359375 - 2.12194440e-4; the first product is exact
  r = r + n * 2.12194440e-4f;
  const V z = r * r;
  V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * z + r) + 1.0f;
  const M bits = __builtin_bit_cast(M, p) + (__builtin_convertvector(n, M) << 23);
  return __builtin_bit_cast(V, bits);
}

// float64 (gradcheck, tests): libm per lane.
inline Simd<double>::V vexp(Simd<double>::V x) {
  for (int l = 0; l < kLanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

// Zeroed scratch memory, 64-byte aligned, reused across calls (a std::vector of SIMD vectors would drop their
// alignment attribute: it is ignored on template arguments).
class AlignedBuffer {
 public:
  static constexpr std::align_val_t kAlign{64};
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { release(); }
  void* zeros(size_t bytes) {
    if (bytes > capacity_) {
      release();
      data_ = ::operator new(bytes, kAlign);
      capacity_ = bytes;
    }
    std::memset(data_, 0, bytes);
    return data_;
  }

 private:
  void release() {
    if (data_) ::operator delete(data_, kAlign);
    data_ = nullptr;
    capacity_ = 0;
  }
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// Lane sums in one fixed order, a pairwise tree ((l0 + l1) + (l2 + l3)) + ..., whatever the instruction set.
// pair_sums(a, b) = (a0 + a1, a2 + a3, ..., b0 + b1, b2 + b3, ...).
template <typename V>
inline V pair_sums(const V& a, const V& b) {
  static_assert(kLanes == 8 || kLanes == 16, "pair_sums is written for 8 or 16 lanes");
  if constexpr (kLanes == 8) {
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14) +
           __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  }
}

// out[i] = lane sum of v[i] for i < n, kLanes vectors at a time (a transpose-and-add: kLanes - 1 pair_sums per
// block instead of kLanes (kLanes - 1) scalar adds); v is padded with zero vectors to a multiple of kLanes.
template <typename T, typename V>
inline void lane_sums(const V* v, int64_t n, T* out) {
  for (int64_t i0 = 0; i0 < n; i0 += kLanes) {
    V buf[kLanes];
    for (int i = 0; i < kLanes; ++i) buf[i] = v[i0 + i];
    for (int width = kLanes; width > 1; width /= 2)
      for (int i = 0; i < width / 2; ++i) buf[i] = pair_sums(buf[2 * i], buf[2 * i + 1]);
    for (int i = 0; i < kLanes && i0 + i < n; ++i) out[i0 + i] = buf[0][i];
  }
}

// Light per-Gaussian loops run in parallel only from this many Gaussians: below, a parallel region's start and
// barrier cost more than the loop (and a descheduled thread on a busy machine makes the others spin).
constexpr int64_t kParallelMin = 32768;

// AVX2 copies of the per-tile work run where the CPU has AVX2, unless switched off (tests compare the two).
inline bool g_avx2_allowed = true;  // one flag for every file (C++17 inline variable)
inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
inline bool use_avx2() { return g_avx2_allowed && cpu_has_avx2(); }

// ---------------------------------------------------------------------------------------------------------------
// Inputs: every Gaussian packed into one record (one gather per intersection), and the per-tile gather.

// Record of Gaussian g: packed[g * (kRec + C) + field]; the colour follows the fields.
enum Field { kMx, kMy, kA, kB, kC, kOpacity, kThr, kHx, kHy, kRec };

template <typename T>
struct Scene {
  const T* packed;       // [N, kRec + C] (pack_gaussians)
  const T* backgrounds;  // [C] or nullptr
  const int32_t* offsets;
  const int64_t* ids;
  int64_t n, m;
  int channels, width, height, tile_size, tile_w, tile_h;

  int record() const { return kRec + channels; }
  int64_t tile_begin(int64_t t) const { return offsets[t]; }
  int64_t tile_end(int64_t t) const { return t + 1 < int64_t(tile_w) * tile_h ? offsets[t + 1] : m; }
};

// Packs the inputs with thr = log(255 * opacity) + 1e-4 and the half sizes of the box outside which
// sigma > thr (module comment): +inf where no box is safe, -1 (reaches no pixel) where thr < 0 or NaN.
template <typename T>
void pack_gaussians(const T* means2d, const T* conics, const T* colors, const T* opacities, int64_t n, int C,
                    T* packed) {
  const double rel_per_cond = 40.0 * std::numeric_limits<T>::epsilon();
  const int rec = kRec + C;
#pragma omp parallel for schedule(dynamic, 2048) num_threads(at::get_num_threads()) if(n >= kParallelMin)
  for (int64_t g = 0; g < n; ++g) {
    const double op = opacities[g];
    const double thr = op > 0 ? std::log(255.0 * op) + 1e-4 : -std::numeric_limits<double>::infinity();
    double hx = std::numeric_limits<double>::infinity(), hy = hx;
    const double a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
    const double det = a * c - b * b, tr = a + c;
    if (!(thr >= 0)) {
      hx = hy = -1;  // sigma >= 0 > thr (or NaN opacity: the reference's comparisons are all false)
    } else if (a > 0 && c > 0 && det > 0 && std::isfinite(tr) && std::isfinite(thr)) {
      const double rel = rel_per_cond * tr * tr / det;  // condition number <= tr^2 / det
      if (rel < 0.5) {
        const double reach = (thr / (1.0 - rel)) * 1.001 + 1e-3;
        hx = std::sqrt(2.0 * reach * c / det) * 1.001 + 1e-2;
        hy = std::sqrt(2.0 * reach * a / det) * 1.001 + 1e-2;
      }
    }
    T* r = packed + g * rec;
    r[kMx] = means2d[2 * g];
    r[kMy] = means2d[2 * g + 1];
    r[kA] = conics[3 * g];
    r[kB] = conics[3 * g + 1];
    r[kC] = conics[3 * g + 2];
    r[kOpacity] = opacities[g];
    r[kThr] = static_cast<T>(thr);
    r[kHx] = static_cast<T>(hx);
    r[kHy] = static_cast<T>(hy);
    for (int k = 0; k < C; ++k) r[kRec + k] = colors[g * C + k];
  }
}

// A batch [b0, b1) of one tile's list in SoA (batch-local indices j = list index - b0) and, for each pixel row of
// the tile, the batch's Gaussians that can reach it (ascending). The tile's pixels form groups of kLanes
// consecutive pixels of a row: group g covers row y0 + g / groups_per_row, columns group_x(g) ...
template <typename T>
struct TileBatch {
  std::vector<T> mx, my, a, b, c, op, thr, hx, col;
  std::vector<int32_t> lo, hi, next, row_begin, rows;  // row r: rows[row_begin[r] : row_begin[r + 1]]
  int64_t start = 0, count = 0;                        // the tile's list is ids[start : start + count]
  int64_t b0 = 0, b1 = 0;
  int x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // pixel box of the tile, clipped to the image
  int n_rows = 0, groups_per_row = 0;

  void set_tile(const Scene<T>& s, int64_t tile) {
    start = s.tile_begin(tile);
    count = s.tile_end(tile) - start;
    x0 = int(tile % s.tile_w) * s.tile_size;
    y0 = int(tile / s.tile_w) * s.tile_size;
    x1 = std::min(x0 + s.tile_size, s.width);
    y1 = std::min(y0 + s.tile_size, s.height);
    n_rows = y1 - y0;
    groups_per_row = (x1 - x0 + kLanes - 1) / kLanes;
  }
  int groups() const { return n_rows * groups_per_row; }
  int group_y(int g) const { return y0 + g / groups_per_row; }
  int group_x(int g) const { return x0 + (g % groups_per_row) * kLanes; }
  int group_live(int g) const { return std::min(kLanes, x1 - group_x(g)); }

  void load(const Scene<T>& s, int64_t begin, int64_t end) {
    constexpr int kAhead = 8;  // prefetch distance, in intersections
    b0 = begin;
    b1 = end;
    const int64_t n = end - begin;
    const int C = s.channels, rec = s.record();
    for (auto* v : {&mx, &my, &a, &b, &c, &op, &thr, &hx}) v->resize(n);
    col.resize(n * C);
    lo.resize(n);
    hi.resize(n);
    row_begin.assign(n_rows + 2, 0);
    const int64_t* ids = s.ids + start;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t i = begin + j;
      if (i + kAhead < count) __builtin_prefetch(s.packed + ids[i + kAhead] * rec);
      const T* r = s.packed + ids[i] * rec;
      mx[j] = r[kMx];
      my[j] = r[kMy];
      a[j] = r[kA];
      b[j] = r[kB];
      c[j] = r[kC];
      op[j] = r[kOpacity];
      thr[j] = r[kThr];
      hx[j] = r[kHx];
      for (int k = 0; k < C; ++k) col[j * C + k] = r[kRec + k];
      // rows with |y0 + row + 0.5 - my| <= hy (all rows when hy is +inf or my is NaN; none when hy < 0)
      const double hy = r[kHy], rel_my = double(r[kMy]) - y0 - 0.5;
      double r0 = std::ceil(rel_my - hy), r1 = std::floor(rel_my + hy);
      if (!(r0 > 0)) r0 = 0;
      if (!(r1 < n_rows - 1)) r1 = n_rows - 1;
      if (hy < 0) r1 = -1;
      lo[j] = int32_t(r0);
      hi[j] = int32_t(r1);
      if (lo[j] <= hi[j]) {  // difference array of the row counts, shifted by one
        ++row_begin[lo[j] + 1];
        --row_begin[hi[j] + 2];
      }
    }
    for (int q = 1; q <= n_rows; ++q) row_begin[q] += row_begin[q - 1];  // per-row counts
    for (int q = 1; q <= n_rows; ++q) row_begin[q] += row_begin[q - 1];  // exclusive starts
    rows.resize(row_begin[n_rows]);
    next.assign(row_begin.begin(), row_begin.begin() + n_rows);
    for (int64_t j = 0; j < n; ++j)
      for (int q = lo[j]; q <= hi[j]; ++q) rows[next[q]++] = int32_t(j);
  }

  // Whether Gaussian j's box misses the pixel centres x in [gx0, gx1] + 0.5.
  bool misses(int32_t j, int gx0, int gx1) const {
    return mx[j] + hx[j] < T(gx0) + T(0.5) || mx[j] - hx[j] > T(gx1) + T(0.5);
  }
};

// sigma of the lanes (pixel centres px, one row py) for Gaussian j, in the reference's operation order.
template <typename T, typename V>
inline V lane_sigma(const TileBatch<T>& tb, int32_t j, const V& px, T py, V& dx, T& dy) {
  dx = px - tb.mx[j];
  dy = py - tb.my[j];
  return T(0.5) * (tb.a[j] * dx * dx + tb.c[j] * dy * dy) + tb.b[j] * dx * dy;
}

template <typename T>
inline typename Simd<T>::V pixel_centres(int gx0) {
  typename Simd<T>::V px;
  for (int l = 0; l < kLanes; ++l) px[l] = T(gx0 + l) + T(0.5);
  return px;
}

// Process list batches of kBatch intersections: the forward stops loading a tile once all its pixels have
// terminated, the backward loads only the entries before the tile's last contributor.
constexpr int64_t kBatch = 128;

// ---------------------------------------------------------------------------------------------------------------
// Validation and the bindings' glue.

inline void check_raster_inputs(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,
                                const torch::Tensor& opacities, const c10::optional<torch::Tensor>& backgrounds,
                                int64_t width, int64_t height, int64_t tile_size, const torch::Tensor& offsets,
                                const torch::Tensor& ids, bool check_ids) {
  const auto dtype = means2d.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kDouble, "gaussians_cpu: float32 or float64 means2d, got ",
              dtype);
  const int64_t n = means2d.size(0);
  TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "gaussians_cpu: means2d must be [N, 2]");
  TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3, "gaussians_cpu: conics must be [N, 3]");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n && colors.size(1) >= 1, "gaussians_cpu: colors must be [N, C]");
  TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "gaussians_cpu: opacities must be [N]");
  for (const auto* t : {&means2d, &conics, &colors, &opacities})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->is_contiguous(),
                "gaussians_cpu: means2d, conics, colors, opacities must be contiguous CPU tensors of one dtype");
  if (backgrounds.has_value())
    TORCH_CHECK(backgrounds->device().is_cpu() && backgrounds->scalar_type() == dtype &&
                    backgrounds->is_contiguous() && backgrounds->dim() == 1 && backgrounds->size(0) == colors.size(1),
                "gaussians_cpu: backgrounds must be a contiguous CPU [C] tensor of the colours' dtype");
  TORCH_CHECK(width > 0 && height > 0 && tile_size > 0 && width < (1 << 24) && height < (1 << 24),
              "gaussians_cpu: bad image or tile size");
  const int64_t tile_w = (width + tile_size - 1) / tile_size, tile_h = (height + tile_size - 1) / tile_size;
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == torch::kInt && offsets.is_contiguous() &&
                  offsets.numel() == tile_w * tile_h,
              "gaussians_cpu: isect_offsets must be contiguous CPU int32 [", tile_h, ", ", tile_w, "]");
  TORCH_CHECK(ids.device().is_cpu() && ids.scalar_type() == torch::kLong && ids.is_contiguous() && ids.dim() == 1,
              "gaussians_cpu: flatten_ids must be a contiguous CPU int64 [M] tensor");
  const int64_t m = ids.size(0);
  TORCH_CHECK(m < (int64_t(1) << 31), "gaussians_cpu: too many intersections for int32 offsets: ", m);
  const int32_t* off = offsets.data_ptr<int32_t>();
  int64_t prev = 0;
  for (int64_t t = 0; t < offsets.numel(); ++t) {
    TORCH_CHECK(off[t] >= prev && off[t] <= m, "gaussians_cpu: isect_offsets must be non-decreasing in [0, M]");
    prev = off[t];
  }
  if (offsets.numel() > 0) TORCH_CHECK(off[0] == 0, "gaussians_cpu: isect_offsets must start at 0");
  if (!check_ids) return;  // the backward gets the forward's (validated) lists
  const int64_t* id = ids.data_ptr<int64_t>();
  bool ids_ok = true;
  for (int64_t i = 0; i < m; ++i) ids_ok &= (id[i] >= 0) & (id[i] < n);
  TORCH_CHECK(ids_ok, "gaussians_cpu: flatten_ids must index the ", n, " Gaussians");
}

template <typename T>
Scene<T> make_scene(const torch::Tensor& packed, const c10::optional<torch::Tensor>& backgrounds, int64_t width,
                    int64_t height, int64_t tile_size, const torch::Tensor& offsets, const torch::Tensor& ids) {
  Scene<T> s;
  s.packed = packed.data_ptr<T>();
  s.backgrounds = backgrounds.has_value() ? backgrounds->data_ptr<T>() : nullptr;
  s.offsets = offsets.data_ptr<int32_t>();
  s.ids = ids.data_ptr<int64_t>();
  s.n = packed.size(0);
  s.m = ids.size(0);
  s.channels = int(packed.size(1) - kRec);
  s.width = int(width);
  s.height = int(height);
  s.tile_size = int(tile_size);
  s.tile_w = int((width + tile_size - 1) / tile_size);
  s.tile_h = int((height + tile_size - 1) / tile_size);
  return s;
}

// Tiles by decreasing number of intersections (ties by id): the dynamic schedule then balances the threads.
template <typename T>
std::vector<int64_t> busiest_first(const Scene<T>& s) {
  std::vector<int64_t> order(int64_t(s.tile_w) * s.tile_h);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) {
    return s.tile_end(p) - s.tile_begin(p) > s.tile_end(q) - s.tile_begin(q);
  });
  return order;
}

// Dispatch on the channel count: C = 1, 3, 4 compiled with C fixed, anything else with C at run time.
template <typename T, typename F>
void with_channels(int C, F&& f) {
  if (C == 1) return f(std::integral_constant<int, 1>{});
  if (C == 3) return f(std::integral_constant<int, 3>{});
  if (C == 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, 0>{});
}

}  // namespace gaussians_cpu
}  // namespace omnifield
