// Gaussian splatting, C++ CPU kernel: the forward pass (front-to-back compositing per tile).
// Included once, by gaussians_cpu.cpp (one translation unit: torch's headers are parsed once), which
// states the rules and the work layout.
#pragma once
#include "gaussians_cpu.h"

namespace omnifield {
namespace gaussians_cpu {
namespace {

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

}  // namespace gaussians_cpu
}  // namespace omnifield
