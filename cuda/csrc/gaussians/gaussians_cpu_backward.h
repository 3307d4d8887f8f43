// Gaussian splatting, C++ CPU kernel: the backward pass (back to front, deterministic sums).
// Included once, by gaussians_cpu.cpp (one translation unit: torch's headers are parsed once), which
// states the rules and the work layout.
#pragma once
#include "gaussians_cpu.h"

namespace omnifield {
namespace gaussians_cpu {
namespace {

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

}  // namespace

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

}  // namespace gaussians_cpu
}  // namespace omnifield
