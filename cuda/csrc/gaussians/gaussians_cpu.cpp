// Gaussian splatting rasterizer (3DGS, Kerbl et al. 2023): C++ CPU kernel, forward, backward and tile binning.
//
// Same semantics as the pure-PyTorch oracle cuda/reference/gaussians.py (rasterize_to_pixels, isect_tiles;
// pinned in the issue-4 spec). Per pixel centre p = (x + 0.5, y + 0.5), over the Gaussians of its tile in list
// order, with d = p - mean and conic (a, b, c), starting from T = 1:
//   sigma  = 0.5 * (a*dx*dx + c*dy*dy) + b*dx*dy            skip the Gaussian if sigma < 0
//   alpha  = min(0.99, opacity * exp(-sigma))                skip the Gaussian if alpha < 1/255
//   T_next = T * (1 - alpha)                                 stop the pixel (without it) if T_next <= 1e-4
//   out   += alpha * T * color;  T = T_next
//   colors = out + T * background,  alphas = 1 - T.
// The float operations are the reference's, in the same order and in the dtype of the inputs, except exp (ours,
// vexp below: within 1 ulp of torch's, equal for 90 % of inputs) and T, a running product in the input dtype
// (torch's cumprod rounds a double accumulator at each step: a few ulp apart after hundreds of Gaussians).
//
// Work layout. Tiles run in parallel (OpenMP, torch.get_num_threads() threads, dynamic schedule, busiest tiles
// first). A tile's pixels form groups of kLanes consecutive pixels of a row, one pixel per SIMD lane (GCC vector
// extensions). The tile's list is read in batches of kBatch intersections: a batch is gathered into SoA arrays
// (every Gaussian packed into one record beforehand, so one cache line per intersection) together with, for each
// pixel row, the batch's Gaussians that can reach the row; every group then composites the batch, its lane
// state carried over to the next batch. Lanes terminate independently; a group stops when all its lanes have,
// and the tile stops reading its list when all its groups have (a typical tile needs about a third of it).
// The per-tile work is compiled twice, portable (SSE2) and AVX2 without FMA, chosen at run time: every
// operation rounds identically in both, so results are bit-identical (tested).
//
// Culling that changes no result (only where the rules above would skip anyway):
//  * alpha >= 1/255 needs sigma <= thr = log(255 * opacity) + 1e-4: exp (and the blend) runs only there. The
//    1e-4 margin dwarfs the rounding of exp and of the product with the opacity.
//  * sigma <= thr holds only inside an axis-aligned box around the mean: the ellipse 0.5 d^T Q d <= thr'
//    (Q = [[a, b], [b, c]]) has half sizes sqrt(2 thr' c / det), sqrt(2 thr' a / det). thr' enlarges thr by
//    the rounding error of the computed sigma, at most ~10 u cond(Q) sigma (u the unit roundoff), plus a
//    margin. The box picks the rows and lane groups a Gaussian can reach; conics that are not positive
//    definite or too ill-conditioned get no box (every pixel of the tile is tested).
//
// Backward (first order), per pixel, walking back to front from its last contributing Gaussian as the 3DGS CUDA
// backward does. With contributors i = 1..n in order, T_1 = 1, T_{i+1} = T_i (1 - alpha_i), T_f = T_{n+1}, and
// G [C], gA the upstream gradients of the pixel's colours and alpha:
//   out = sum_i alpha_i T_i c_i + T_f bg,   alphas = 1 - T_f
//   dL/dc_i     = alpha_i T_i G
//   dL/dalpha_i = T_i G . (c_i - S_i) + gA T_f / (1 - alpha_i)
//   dL/dbg      = T_f G
// where S_i = (sum_{j>i} alpha_j T_j c_j + T_f bg) / T_{i+1} is the colour behind i as seen from just behind it
// (the terms behind i are proportional to T_{i+1} = T_i (1 - alpha_i), hence -T_i S_i; T_f likewise). Walking
// back from i = n, both are recurrences that need no per-pixel storage:
//   T_i = T_{i+1} / (1 - alpha_i)           (from the saved T_f; 1 - alpha >= 0.01)
//   S_n = bg (0 without background),   S_{i-1} = alpha_i c_i + (1 - alpha_i) S_i.
// Then, where alpha is not clamped (opacity * e <= 0.99, e = exp(-sigma); torch's clamp passes the gradient at
// equality): dL/dopacity = dL/dalpha e, dL/dsigma = -dL/dalpha opacity e, and from sigma:
//   dL/da = 0.5 dx^2 dL/dsigma,  dL/db = dx dy dL/dsigma,  dL/dc = 0.5 dy^2 dL/dsigma,
//   dL/dmean_x = -(a dx + b dy) dL/dsigma,  dL/dmean_y = -(b dx + c dy) dL/dsigma.
// Skipped Gaussians (sigma < 0, alpha < 1/255) are recomputed with the same operations, so they are skipped
// again; the batches are walked from the one holding the tile's last contributor down to the first. No races and
// deterministic sums: per lane into per-batch accumulators, whose lane sums (a fixed pairwise tree) give one row
// of gradients per intersection (each intersection belongs to one tile, hence one thread); these rows are summed
// into the per-Gaussian gradients in list order, each thread owning a range of Gaussians. Results do not depend
// on the number of threads.
//
// isect_tiles: the covering Gaussians are radix-sorted once by (depth, index), then appended to their tiles in
// that order (per-thread histograms and prefix sums, then a fill), so every tile's list comes out in the
// reference's (tile, depth, index) order without a sort per tile.

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

namespace {

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
bool g_avx2_allowed = true;
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
// Forward.

template <typename T>
struct ForwardOut {
  T* colors;       // [H, W, C]
  T* alphas;       // [H, W]
  T* trans;        // [H, W] final T
  int32_t* last;   // [H, W] exclusive end (global intersection index) of the pixel's contributors
};

// Per group of lanes, kept across batches.
template <typename T>
struct ForwardLanes {
  typename Simd<T>::V trans;  // transmittance
  typename Simd<T>::M last;   // tile-local exclusive end of the contributors so far
  typename Simd<T>::M alive;  // lanes still compositing (lanes outside the image start dead)
};

template <typename T>
struct ForwardScratch {
  TileBatch<T> tb;
  AlignedBuffer lanes;                 // [groups] ForwardLanes
  AlignedBuffer acc;                   // [groups, C] colour sums (vectors)
  std::vector<uint8_t> alive;          // per group
};

// Composites batch tb of group g's pixels; returns whether any lane is still alive. CC > 0 fixes C.
template <typename T, int CC>
bool forward_batch(const Scene<T>& s, const TileBatch<T>& tb, int g, ForwardLanes<T>& st,
                   typename Simd<T>::V* acc_mem) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  using I = typename std::remove_reference<decltype(M{}[0])>::type;
  const int C = CC > 0 ? CC : s.channels;
  const int y = tb.group_y(g), gx0 = tb.group_x(g), gx1 = gx0 + tb.group_live(g) - 1, r = y - tb.y0;
  const V px = pixel_centres<T>(gx0);
  const T py = T(y) + T(0.5);
  V trans = st.trans;
  M last = st.last, alive = st.alive;
  V acc_reg[CC > 0 ? CC : 1];  // registers when C is fixed
  V* acc = CC > 0 ? acc_reg : acc_mem;
  if (CC > 0)
    for (int k = 0; k < C; ++k) acc[k] = acc_mem[k];
  for (int32_t q = tb.row_begin[r]; q < tb.row_begin[r + 1]; ++q) {
    const int32_t j = tb.rows[q];
    if (tb.misses(j, gx0, gx1)) continue;
    V dx;
    T dy;
    const V sigma = lane_sigma(tb, j, px, py, dx, dy);
    const M ok = alive & (sigma >= T(0)) & (sigma <= tb.thr[j]);
    if (!any(ok)) continue;
    const V raw = tb.op[j] * vexp(ok ? -sigma : V{});
    const V alpha = raw > Rule<T>::kAlphaMax ? splat<V>(Rule<T>::kAlphaMax) : raw;
    const M contrib = ok & (alpha >= Rule<T>::kAlphaMin);
    if (!any(contrib)) continue;
    const V t_next = trans * (T(1) - alpha);
    const M stop = contrib & (t_next <= Rule<T>::kTransMin);
    const M add = contrib & ~stop;
    const V w = alpha * trans;
    const T* cj = &tb.col[int64_t(j) * C];
    for (int k = 0; k < C; ++k) acc[k] = add ? acc[k] + w * cj[k] : acc[k];
    trans = add ? t_next : trans;
    last = add ? splat<M>(I(tb.b0 + j + 1)) : last;
    if (any(stop)) {
      alive &= ~stop;
      if (!any(alive)) break;
    }
  }
  st.trans = trans;
  st.last = last;
  st.alive = alive;
  if (CC > 0)
    for (int k = 0; k < C; ++k) acc_mem[k] = acc[k];
  return any(alive);
}

template <typename T, int CC>
void forward_tile(const Scene<T>& s, int64_t tile, ForwardScratch<T>& sc, const ForwardOut<T>& out) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  const int C = s.channels;
  TileBatch<T>& tb = sc.tb;
  tb.set_tile(s, tile);
  const int n_groups = tb.groups();
  auto* lanes = static_cast<ForwardLanes<T>*>(sc.lanes.zeros(n_groups * sizeof(ForwardLanes<T>)));
  V* acc = static_cast<V*>(sc.acc.zeros(n_groups * C * sizeof(V)));
  sc.alive.assign(n_groups, 1);
  for (int g = 0; g < n_groups; ++g) {
    lanes[g].trans = splat<V>(T(1));
    for (int l = 0; l < tb.group_live(g); ++l) lanes[g].alive[l] = -1;
  }
  int n_alive = n_groups;
  for (int64_t b0 = 0; b0 < tb.count && n_alive > 0; b0 += kBatch) {
    tb.load(s, b0, std::min(tb.count, b0 + kBatch));
    for (int g = 0; g < n_groups; ++g)
      if (sc.alive[g] && !forward_batch<T, CC>(s, tb, g, lanes[g], acc + int64_t(g) * C)) {
        sc.alive[g] = 0;
        --n_alive;
      }
  }
  for (int g = 0; g < n_groups; ++g) {
    const V trans = lanes[g].trans;
    const M last = lanes[g].last;
    const V* a = acc + int64_t(g) * C;
    for (int l = 0; l < tb.group_live(g); ++l) {
      const int64_t pix = int64_t(tb.group_y(g)) * s.width + tb.group_x(g) + l;
      T* o = out.colors + pix * C;
      for (int k = 0; k < C; ++k) o[k] = s.backgrounds ? a[k][l] + trans[l] * s.backgrounds[k] : a[k][l];
      out.alphas[pix] = T(1) - trans[l];
      out.trans[pix] = trans[l];
      out.last[pix] = int32_t(tb.start + last[l]);
    }
  }
}

// The same, compiled for AVX2 (no FMA: every operation rounds as in the portable build); flatten inlines the
// whole call tree into it. Chosen at run time where the CPU has AVX2 (see use_avx2).
template <typename T, int CC>
__attribute__((target("avx2"), flatten)) void forward_tile_avx2(const Scene<T>& s, int64_t tile,
                                                                 ForwardScratch<T>& sc, const ForwardOut<T>& out) {
  forward_tile<T, CC>(s, tile, sc, out);
}

template <typename T, int CC>
void forward_tiles(const Scene<T>& s, const std::vector<int64_t>& order, const ForwardOut<T>& out) {
  const auto tile_fn = use_avx2() ? &forward_tile_avx2<T, CC> : &forward_tile<T, CC>;
  const int64_t n_tiles = int64_t(order.size());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    ForwardScratch<T> sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_tiles; ++i) tile_fn(s, order[i], sc, out);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward.

template <typename T>
struct BackwardIn {
  const T* grad_colors;  // [H, W, C] or nullptr
  const T* grad_alphas;  // [H, W] or nullptr
  const T* trans;        // [H, W] final T (forward)
  const int32_t* last;   // [H, W] (forward)
};

// Gradient quantities per intersection: mean x, mean y, conic a, b, c, opacity, then colour 0 .. C-1.
constexpr int kQ = 6;

template <typename T>
struct BackwardOut {
  T* isect_grads;     // [M, kQ + C]: rows tile_begin .. tile_begin + used of each tile are written
  T* tile_bg;         // [n_tiles, C] background gradient sums
  int64_t* used;      // [n_tiles] entries of each tile's list before its last contributor
};

// Per group of lanes, kept across batches (walked from the last batch to the first).
template <typename T>
struct BackwardLanes {
  typename Simd<T>::V trans;       // T_{i+1}, then T_i, ... of the recurrence
  typename Simd<T>::V t_final;     // T_f
  typename Simd<T>::V grad_alpha;  // upstream gradient of the pixel's alpha
  typename Simd<T>::M end;         // tile-local exclusive end of the contributors (0 outside the image)
};

template <typename T>
struct BackwardScratch {
  TileBatch<T> tb;
  AlignedBuffer lanes;                    // [groups] BackwardLanes
  AlignedBuffer colour;                   // [groups, 2, C] vectors: upstream colour gradient G, then S
  AlignedBuffer grads;                    // [batch, kQ + C] vectors: lane sums of the gradients
  AlignedBuffer bg;                       // [C] vectors: lane sums of the background gradient
  std::vector<int64_t> end_max;           // per group
};

// The backward recurrences (module comment) for group g over batch tb, back to front.
template <typename T, int CC>
void backward_batch(const Scene<T>& s, const TileBatch<T>& tb, int g, int64_t end_max, BackwardLanes<T>& st,
                    typename Simd<T>::V* colour, typename Simd<T>::V* lane_grads) {
  using V = typename Simd<T>::V;
  using M = typename Simd<T>::M;
  using I = typename std::remove_reference<decltype(M{}[0])>::type;
  const int C = CC > 0 ? CC : s.channels, K = kQ + C;
  const V* g_col = colour;
  V* behind = colour + C;
  const int y = tb.group_y(g), gx0 = tb.group_x(g), gx1 = gx0 + tb.group_live(g) - 1, r = y - tb.y0;
  const V px = pixel_centres<T>(gx0);
  const T py = T(y) + T(0.5);
  const M end = st.end;
  const V t_final = st.t_final, g_alpha_up = st.grad_alpha;
  V trans = st.trans;
  const int32_t* first = tb.rows.data() + tb.row_begin[r];
  const int32_t* stop = std::lower_bound(first, tb.rows.data() + tb.row_begin[r + 1], int32_t(end_max - tb.b0));
  for (const int32_t* q = stop; q-- != first;) {
    const int32_t j = *q;
    if (tb.misses(j, gx0, gx1)) continue;
    V dx;
    T dy;
    const V sigma = lane_sigma(tb, j, px, py, dx, dy);
    const M ok = (splat<M>(I(tb.b0 + j)) < end) & (sigma >= T(0)) & (sigma <= tb.thr[j]);
    if (!any(ok)) continue;
    const V e = vexp(ok ? -sigma : V{});
    const V raw = tb.op[j] * e;
    const V alpha = raw > Rule<T>::kAlphaMax ? splat<V>(Rule<T>::kAlphaMax) : raw;
    const M contrib = ok & (alpha >= Rule<T>::kAlphaMin);
    if (!any(contrib)) continue;
    const V one_minus = T(1) - alpha;
    trans = contrib ? trans / one_minus : trans;  // T_i = T_{i+1} / (1 - alpha_i)
    const V w = contrib ? alpha * trans : V{};
    V* gj = lane_grads + int64_t(j) * K;
    const T* cj = &tb.col[int64_t(j) * C];
    V dot = V{};
    for (int k = 0; k < C; ++k) {
      gj[kQ + k] += w * g_col[k];                                                        // dL/dc_i
      dot += g_col[k] * (cj[k] - behind[k]);                                             // G . (c_i - S_i)
      behind[k] = contrib ? alpha * cj[k] + one_minus * behind[k] : behind[k];           // S_{i-1}
    }
    const V g_alpha = trans * dot + g_alpha_up * t_final / one_minus;                    // dL/dalpha_i
    const M pass = contrib & (raw <= Rule<T>::kAlphaMax);  // the clamp passes no gradient above 0.99
    const V g_sigma = pass ? -(g_alpha * raw) : V{};
    gj[5] += pass ? g_alpha * e : V{};
    gj[2] += T(0.5) * dx * dx * g_sigma;
    gj[3] += dx * dy * g_sigma;
    gj[4] += T(0.5) * (dy * dy) * g_sigma;
    gj[0] -= (tb.a[j] * dx + tb.b[j] * dy) * g_sigma;
    gj[1] -= (tb.b[j] * dx + tb.c[j] * dy) * g_sigma;
  }
  st.trans = trans;
}

// Reads the forward's per-pixel state and the upstream gradients of group g; returns its largest end.
template <typename T>
int64_t backward_lanes_init(const Scene<T>& s, const TileBatch<T>& tb, int g, const BackwardIn<T>& in,
                            BackwardLanes<T>& st, typename Simd<T>::V* colour, typename Simd<T>::V* bg) {
  using V = typename Simd<T>::V;
  const int C = s.channels;
  st.trans = splat<V>(T(1));
  st.grad_alpha = V{};
  for (int k = 0; k < C; ++k) colour[C + k] = splat<V>(s.backgrounds ? s.backgrounds[k] : T(0));  // S_n = bg
  int64_t end_max = 0;
  for (int l = 0; l < tb.group_live(g); ++l) {
    const int64_t pix = int64_t(tb.group_y(g)) * s.width + tb.group_x(g) + l;
    st.trans[l] = in.trans[pix];
    st.end[l] = in.last[pix] - tb.start;
    end_max = std::max<int64_t>(end_max, st.end[l]);
    if (in.grad_alphas) st.grad_alpha[l] = in.grad_alphas[pix];
    if (in.grad_colors)
      for (int k = 0; k < C; ++k) colour[k][l] = in.grad_colors[pix * C + k];
  }
  st.t_final = st.trans;
  for (int k = 0; k < C; ++k) bg[k] += st.t_final * colour[k];  // dL/dbg = T_f G (0 in dead lanes)
  return end_max;
}

// One tile: every batch that holds contributors, from the last to the first; lane sums reduced into one row of
// kQ + C gradients per intersection (rows past the last contributor are zero), and the tile's background sums.
template <typename T, int CC>
void backward_tile(const Scene<T>& s, int64_t tile, BackwardScratch<T>& sc, const BackwardIn<T>& in,
                   const BackwardOut<T>& out) {
  using V = typename Simd<T>::V;
  const int C = s.channels, K = kQ + C;
  TileBatch<T>& tb = sc.tb;
  tb.set_tile(s, tile);
  const int n_groups = tb.groups();
  auto* lanes = static_cast<BackwardLanes<T>*>(sc.lanes.zeros(n_groups * sizeof(BackwardLanes<T>)));
  V* colour = static_cast<V*>(sc.colour.zeros(n_groups * 2 * C * sizeof(V)));
  V* bg = static_cast<V*>(sc.bg.zeros((C + kLanes - 1) * sizeof(V)));  // lane_sums reads whole blocks
  sc.end_max.resize(n_groups);
  int64_t used = 0;
  for (int g = 0; g < n_groups; ++g) {
    sc.end_max[g] = backward_lanes_init(s, tb, g, in, lanes[g], colour + int64_t(g) * 2 * C, bg);
    used = std::max(used, sc.end_max[g]);
  }
  out.used[tile] = used;
  for (int64_t b1 = used; b1 > 0;) {
    const int64_t b0 = std::max<int64_t>(0, b1 - kBatch);
    tb.load(s, b0, b1);
    V* lane_grads = static_cast<V*>(sc.grads.zeros(((b1 - b0) * K + kLanes - 1) * sizeof(V)));
    for (int g = 0; g < n_groups; ++g)
      if (sc.end_max[g] > b0)
        backward_batch<T, CC>(s, tb, g, sc.end_max[g], lanes[g], colour + int64_t(g) * 2 * C, lane_grads);
    lane_sums(lane_grads, (b1 - b0) * K, out.isect_grads + (tb.start + b0) * K);
    b1 = b0;
  }
  lane_sums(bg, C, out.tile_bg + tile * C);
}

template <typename T, int CC>
__attribute__((target("avx2"), flatten)) void backward_tile_avx2(const Scene<T>& s, int64_t tile,
                                                                  BackwardScratch<T>& sc, const BackwardIn<T>& in,
                                                                  const BackwardOut<T>& out) {
  backward_tile<T, CC>(s, tile, sc, in, out);
}

template <typename T, int CC>
void backward_tiles(const Scene<T>& s, const std::vector<int64_t>& order, const BackwardIn<T>& in,
                    const BackwardOut<T>& out) {
  const auto tile_fn = use_avx2() ? &backward_tile_avx2<T, CC> : &backward_tile<T, CC>;
  const int64_t n_tiles = int64_t(order.size());
#pragma omp parallel num_threads(at::get_num_threads())
  {
    BackwardScratch<T> sc;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_tiles; ++i) tile_fn(s, order[i], sc, in, out);
  }
}

// Per-intersection gradients -> per-Gaussian gradients [N, kQ + C] (zeroed by the caller), summed in list order
// (deterministic) over the used entries of every tile. The Gaussians are cut into 2 ranges per thread (one below
// kParallelMin), dynamically scheduled (a descheduled thread does not hold the others up); each range scans the
// used entries for its own Gaussians.
template <typename T>
void reduce_to_gaussians(const Scene<T>& s, const BackwardOut<T>& out, T* g_packed) {
  const int K = kQ + s.channels, nt = at::get_num_threads(), parts = s.n >= kParallelMin ? 2 * nt : 1;
  const int64_t n_tiles = int64_t(s.tile_w) * s.tile_h;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if(parts > 1)
  for (int part = 0; part < parts; ++part) {
    const int64_t lo = s.n * part / parts, hi = s.n * (part + 1) / parts;
    for (int64_t tile = 0; tile < n_tiles; ++tile) {
      const int64_t begin = s.tile_begin(tile), end = begin + out.used[tile];
      for (int64_t i = begin; i < end; ++i) {
        const int64_t g = s.ids[i];
        if (g < lo || g >= hi) continue;
        const T* src = out.isect_grads + i * K;
        T* dst = g_packed + g * K;
        for (int q = 0; q < K; ++q) dst[q] += src[q];
      }
    }
  }
}

// Splits the packed per-Gaussian gradients into the outputs.
template <typename T>
void unpack_gradients(const T* g_packed, int64_t n, int C, T* g_means, T* g_conics, T* g_opac, T* g_colors) {
  const int K = kQ + C;
#pragma omp parallel for schedule(dynamic, 4096) num_threads(at::get_num_threads()) if(n >= kParallelMin)
  for (int64_t g = 0; g < n; ++g) {
    const T* src = g_packed + g * K;
    g_means[2 * g] = src[0];
    g_means[2 * g + 1] = src[1];
    for (int k = 0; k < 3; ++k) g_conics[3 * g + k] = src[2 + k];
    g_opac[g] = src[5];
    for (int k = 0; k < C; ++k) g_colors[g * C + k] = src[kQ + k];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Validation and the bindings' glue.

void check_raster_inputs(const torch::Tensor& means2d, const torch::Tensor& conics, const torch::Tensor& colors,
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

}  // namespace

// -> {colors [H, W, C], alphas [H, W, 1], final T [H, W], last [H, W] int32, packed [N, kRec + C]}
std::vector<torch::Tensor> rasterize_forward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                             torch::Tensor opacities, c10::optional<torch::Tensor> backgrounds,
                                             int64_t width, int64_t height, int64_t tile_size,
                                             torch::Tensor isect_offsets, torch::Tensor flatten_ids) {
  check_raster_inputs(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                      flatten_ids, true);
  const int64_t n = means2d.size(0), C = colors.size(1);
  auto out_colors = torch::empty({height, width, C}, colors.options());
  auto out_alphas = torch::empty({height, width, 1}, colors.options());
  auto out_trans = torch::empty({height, width}, colors.options());
  auto out_last = torch::empty({height, width}, colors.options().dtype(torch::kInt));
  auto packed = torch::empty({n, kRec + C}, colors.options());
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward_cpu", [&] {
    pack_gaussians<scalar_t>(means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(),
                             opacities.data_ptr<scalar_t>(), n, int(C), packed.data_ptr<scalar_t>());
    const Scene<scalar_t> s = make_scene<scalar_t>(packed, backgrounds, width, height, tile_size, isect_offsets,
                                                   flatten_ids);
    const ForwardOut<scalar_t> out{out_colors.data_ptr<scalar_t>(), out_alphas.data_ptr<scalar_t>(),
                                   out_trans.data_ptr<scalar_t>(), out_last.data_ptr<int32_t>()};
    const auto order = busiest_first(s);
    with_channels<scalar_t>(int(C), [&](auto cc) { forward_tiles<scalar_t, decltype(cc)::value>(s, order, out); });
  });
  return {out_colors, out_alphas, out_trans, out_last, packed};
}

// -> {grad_means2d [N, 2], grad_conics [N, 3], grad_colors [N, C], grad_opacities [N], grad_backgrounds [C]
//     (undefined without backgrounds)}. Upstream gradients may be None. packed, trans, last: from the forward.
std::vector<torch::Tensor> rasterize_backward(torch::Tensor means2d, torch::Tensor conics, torch::Tensor colors,
                                              torch::Tensor opacities, c10::optional<torch::Tensor> backgrounds,
                                              int64_t width, int64_t height, int64_t tile_size,
                                              torch::Tensor isect_offsets, torch::Tensor flatten_ids,
                                              torch::Tensor packed, torch::Tensor trans, torch::Tensor last,
                                              c10::optional<torch::Tensor> grad_colors,
                                              c10::optional<torch::Tensor> grad_alphas) {
  check_raster_inputs(means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets,
                      flatten_ids, false);
  const int64_t n = means2d.size(0), C = colors.size(1), m = flatten_ids.size(0);
  TORCH_CHECK(packed.scalar_type() == means2d.scalar_type() && packed.is_contiguous() && packed.dim() == 2 &&
                  packed.size(0) == n && packed.size(1) == kRec + C && trans.scalar_type() == means2d.scalar_type() &&
                  trans.is_contiguous() && trans.numel() == height * width && last.scalar_type() == torch::kInt &&
                  last.is_contiguous() && last.numel() == height * width,
              "gaussians_cpu: bad saved tensors (packed, final T, last) for the backward");
  auto upstream = [&](c10::optional<torch::Tensor>& g, int64_t channels) {
    if (!g.has_value() || !g->defined()) return torch::Tensor();
    TORCH_CHECK(g->numel() == height * width * channels, "gaussians_cpu: upstream gradient of shape ", g->sizes(),
                " does not match the image");
    return g->to(means2d.scalar_type()).contiguous();
  };
  const torch::Tensor gc = upstream(grad_colors, C), ga = upstream(grad_alphas, 1);
  torch::Tensor g_bg;
  if (backgrounds.has_value()) g_bg = torch::zeros_like(*backgrounds);
  if (!gc.defined() && !ga.defined())
    return {torch::zeros_like(means2d), torch::zeros_like(conics), torch::zeros_like(colors),
            torch::zeros_like(opacities), g_bg};
  auto g_means = torch::empty_like(means2d), g_conics = torch::empty_like(conics);
  auto g_colors = torch::empty_like(colors), g_opac = torch::empty_like(opacities);
  auto isect_grads = torch::empty({m, kQ + C}, colors.options());
  auto tile_bg = torch::empty({isect_offsets.numel(), C}, colors.options());
  auto used = torch::empty({isect_offsets.numel()}, torch::dtype(torch::kLong));
  auto g_packed = torch::zeros({n, kQ + C}, colors.options());
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_backward_cpu", [&] {
    const Scene<scalar_t> s = make_scene<scalar_t>(packed, backgrounds, width, height, tile_size, isect_offsets,
                                                   flatten_ids);
    const BackwardIn<scalar_t> in{gc.defined() ? gc.data_ptr<scalar_t>() : nullptr,
                                  ga.defined() ? ga.data_ptr<scalar_t>() : nullptr, trans.data_ptr<scalar_t>(),
                                  last.data_ptr<int32_t>()};
    const auto order = busiest_first(s);
    const BackwardOut<scalar_t> out{isect_grads.data_ptr<scalar_t>(), tile_bg.data_ptr<scalar_t>(),
                                    used.data_ptr<int64_t>()};
    with_channels<scalar_t>(int(C), [&](auto cc) { backward_tiles<scalar_t, decltype(cc)::value>(s, order, in, out); });
    reduce_to_gaussians<scalar_t>(s, out, g_packed.data_ptr<scalar_t>());
    unpack_gradients<scalar_t>(g_packed.data_ptr<scalar_t>(), n, int(C), g_means.data_ptr<scalar_t>(),
                               g_conics.data_ptr<scalar_t>(), g_opac.data_ptr<scalar_t>(),
                               g_colors.data_ptr<scalar_t>());
    if (g_bg.defined()) {  // sum over the tiles in tile order (deterministic)
      const scalar_t* src = tile_bg.data_ptr<scalar_t>();
      scalar_t* dst = g_bg.data_ptr<scalar_t>();
      for (int64_t t = 0; t < tile_bg.size(0); ++t)
        for (int64_t k = 0; k < C; ++k) dst[k] += src[t * C + k];
    }
  });
  return {g_means, g_conics, g_colors, g_opac, g_bg};
}

// ---------------------------------------------------------------------------------------------------------------
// Tile binning.

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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield Gaussian splatting rasterizer (3DGS), C++ CPU kernel (OpenMP over tiles, SIMD over pixels)";
  m.def("forward", &rasterize_forward,
        "forward: (means2d, conics, colors, opacities, backgrounds | None, width, height, tile_size, isect_offsets, "
        "flatten_ids) -> [colors [H,W,C], alphas [H,W,1], final T [H,W], last [H,W] int32, packed [N, 9 + C]]");
  m.def("backward", &rasterize_backward,
        "backward: (means2d, conics, colors, opacities, backgrounds | None, width, height, tile_size, isect_offsets, "
        "flatten_ids, packed, final T, last, grad_colors | None, grad_alphas | None) -> [grad_means2d, grad_conics, "
        "grad_colors, grad_opacities, grad_backgrounds | None]");
  m.def("isect_tiles", &isect_tiles,
        "isect_tiles: (means2d [N,2], radii [N] int32, depths [N], width, height, tile_size) -> "
        "[isect_offsets [tile_h, tile_w] int32, flatten_ids [M] int64]");
  m.def("num_threads", []() { return at::get_num_threads(); });
  m.def("set_avx2", [](bool allowed) { g_avx2_allowed = allowed; },
        "allow (default) or forbid the AVX2 copies of the per-tile work (tests compare the two)");
  m.def("uses_avx2", &use_avx2, "whether the per-tile work runs its AVX2 copy");
}
