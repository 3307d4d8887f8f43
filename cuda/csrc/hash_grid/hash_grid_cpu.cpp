// Multiresolution hash encoding (Mueller et al. 2022, Instant-NGP): C++ CPU kernel.
//
// Same layout and semantics as the pure-PyTorch oracle cuda/reference/hash_encoding.py:
//   x [N, 3] clamped to [0, 1]^3; table [rows, F]; resolutions [L] int64; offsets [L + 1] int64.
//   Level l is dense when (res + 1)^3 <= its rows (ix + iy * (res + 1) + iz * (res + 1)^2), else
//   hashed: (ix * 1) ^ (iy * 2654435761) ^ (iz * 805459861) masked to T - 1 (T a power of two).
//   base = clamp(min(floor(x * res), res - 1), 0); corners k = 4 * bx + 2 * by + bz; trilinear weights.
// Output [N, L * F], level-major. Backward: dense table gradient (scatter-add) and, when asked,
// the position gradient through the trilinear weights (zero where the clamp is active).
//
// Threads: at::parallel_for, i.e. torch.get_num_threads() (built with -fopenmp, torch's libgomp).
// Table-gradient races are avoided either by partitioning the work by level (levels own disjoint
// rows: race-free and deterministic) or, when there are more threads than levels, with atomic adds.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr uint64_t kPrime1 = 2654435761ULL;
constexpr uint64_t kPrime2 = 805459861ULL;

struct Level {
  int64_t res;
  int64_t offset;
  int64_t size;
  bool dense;
};

std::vector<Level> make_levels(const torch::Tensor& resolutions, const torch::Tensor& offsets) {
  auto res = resolutions.accessor<int64_t, 1>();
  auto off = offsets.accessor<int64_t, 1>();
  const int64_t n_levels = resolutions.size(0);
  std::vector<Level> levels(n_levels);
  for (int64_t l = 0; l < n_levels; ++l) {
    const int64_t r = res[l];
    const int64_t size = off[l + 1] - off[l];
    TORCH_CHECK(r >= 1, "hash_grid_cpu: resolutions must be >= 1, got ", r, " at level ", l);
    const int64_t side = r + 1;
    // (r+1)^3 <= size, written to avoid overflow for huge resolutions.
    const bool dense = side <= size && side * side <= size / side && side * side * side <= size;
    TORCH_CHECK(dense || (size > 0 && (size & (size - 1)) == 0),
                "hash_grid_cpu: hashed level ", l, " needs a power-of-two size, got ", size);
    levels[l] = Level{r, off[l], size, dense};
  }
  return levels;
}

// Rows, weights and fractional positions of the 8 corners of one point in one level.
template <typename scalar_t>
struct Corners {
  int64_t row[8];
  scalar_t w[8];
  scalar_t wd[3][2];  // per-axis 1D weights: wd[d][0] = 1 - frac, wd[d][1] = frac
};

template <typename scalar_t>
inline void corners(const scalar_t* p, const Level& lv, Corners<scalar_t>& c) {
  const scalar_t r = static_cast<scalar_t>(lv.res);
  int64_t base[3];
  for (int d = 0; d < 3; ++d) {
    const scalar_t xc = std::min(std::max(p[d], scalar_t(0)), scalar_t(1));
    const scalar_t pos = xc * r;
    int64_t b = static_cast<int64_t>(std::floor(pos));
    b = std::max<int64_t>(std::min<int64_t>(b, lv.res - 1), 0);
    const scalar_t frac = pos - static_cast<scalar_t>(b);
    base[d] = b;
    c.wd[d][0] = scalar_t(1) - frac;
    c.wd[d][1] = frac;
  }
  int64_t ix[2] = {base[0], base[0] + 1};
  int64_t iy[2] = {base[1], base[1] + 1};
  int64_t iz[2] = {base[2], base[2] + 1};
  if (lv.dense) {
    const int64_t stride = lv.res + 1;
    for (int k = 0; k < 8; ++k) {
      const int bx = (k >> 2) & 1, by = (k >> 1) & 1, bz = k & 1;
      c.row[k] = lv.offset + ix[bx] + iy[by] * stride + iz[bz] * stride * stride;
    }
  } else {
    const uint64_t mask = static_cast<uint64_t>(lv.size - 1);
    uint64_t hx[2] = {static_cast<uint64_t>(ix[0]), static_cast<uint64_t>(ix[1])};
    uint64_t hy[2] = {static_cast<uint64_t>(iy[0]) * kPrime1, static_cast<uint64_t>(iy[1]) * kPrime1};
    uint64_t hz[2] = {static_cast<uint64_t>(iz[0]) * kPrime2, static_cast<uint64_t>(iz[1]) * kPrime2};
    for (int k = 0; k < 8; ++k) {
      const int bx = (k >> 2) & 1, by = (k >> 1) & 1, bz = k & 1;
      c.row[k] = lv.offset + static_cast<int64_t>((hx[bx] ^ hy[by] ^ hz[bz]) & mask);
    }
  }
  for (int k = 0; k < 8; ++k) {
    const int bx = (k >> 2) & 1, by = (k >> 1) & 1, bz = k & 1;
    c.w[k] = c.wd[0][bx] * c.wd[1][by] * c.wd[2][bz];  // same order as the reference
  }
}

// Lock-free atomic add on float / double (compare-and-swap on the bit pattern).
template <typename scalar_t>
inline void atomic_add(scalar_t* addr, scalar_t value) {
  using bits_t = std::conditional_t<sizeof(scalar_t) == 4, uint32_t, uint64_t>;
  bits_t* ptr = reinterpret_cast<bits_t*>(addr);
  bits_t expected = __atomic_load_n(ptr, __ATOMIC_RELAXED);
  while (true) {
    scalar_t current;
    std::memcpy(&current, &expected, sizeof(scalar_t));
    const scalar_t updated = current + value;
    bits_t desired;
    std::memcpy(&desired, &updated, sizeof(scalar_t));
    if (__atomic_compare_exchange_n(ptr, &expected, desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return;
  }
}

constexpr int64_t kChunk = 2048;  // points per cache block
constexpr int64_t kAhead = 8;     // prefetch distance, in points

// Prefetch the table rows of corners 0..3 (bx = 0); corners 4..7 (bx = 1) are the next rows.
template <typename scalar_t>
inline void prefetch_rows(const scalar_t* tp, const Corners<scalar_t>& c, int64_t f) {
  for (int k = 0; k < 4; ++k) __builtin_prefetch(tp + c.row[k] * f);
}


void check_inputs(const torch::Tensor& x, const torch::Tensor& table, const torch::Tensor& resolutions,
                  const torch::Tensor& offsets) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "hash_grid_cpu: x and table must be CPU tensors");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "hash_grid_cpu: x must be [N, 3], got ", x.sizes());
  TORCH_CHECK(table.dim() == 2, "hash_grid_cpu: table must be [rows, F], got ", table.sizes());
  TORCH_CHECK(x.scalar_type() == table.scalar_type(), "hash_grid_cpu: x and table must share a dtype, got ",
              x.scalar_type(), " and ", table.scalar_type());
  TORCH_CHECK(resolutions.scalar_type() == torch::kLong && offsets.scalar_type() == torch::kLong,
              "hash_grid_cpu: resolutions and offsets must be int64");
  TORCH_CHECK(resolutions.dim() == 1 && offsets.dim() == 1 && offsets.size(0) == resolutions.size(0) + 1,
              "hash_grid_cpu: offsets must be [L + 1]");
  TORCH_CHECK(offsets[-1].item<int64_t>() == table.size(0), "hash_grid_cpu: table rows != offsets[-1]");
}

}  // namespace

// out [N, L * F]
torch::Tensor hash_grid_forward(torch::Tensor x, torch::Tensor table, torch::Tensor resolutions,
                                torch::Tensor offsets) {
  check_inputs(x, table, resolutions, offsets);
  x = x.contiguous();
  table = table.contiguous();
  const auto levels = make_levels(resolutions.cpu().contiguous(), offsets.cpu().contiguous());
  const int64_t n = x.size(0), n_levels = static_cast<int64_t>(levels.size()), f = table.size(1);
  auto out = torch::empty({n, n_levels * f}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hash_grid_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = table.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // Points in chunks, levels outer within a chunk: one level's rows stay in cache while a
    // chunk of points reads them (the whole table does not fit in cache). Corners of a chunk are
    // computed first, then gathered with software prefetch a few points ahead (the random row
    // reads of hashed levels are latency bound).
    at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
      std::vector<Corners<scalar_t>> cs(kChunk);
      for (int64_t cb = begin; cb < end; cb += kChunk) {
        const int64_t m = std::min(end, cb + kChunk) - cb;
        for (int64_t l = 0; l < n_levels; ++l) {
          const Level lv = levels[l];
          for (int64_t i = 0; i < m; ++i) corners(xp + 3 * (cb + i), lv, cs[i]);
          for (int64_t i = 0; i < m; ++i) {
            if (i + kAhead < m)
              prefetch_rows(tp, cs[i + kAhead], f);
            const Corners<scalar_t>& c = cs[i];
            scalar_t* o = op + ((cb + i) * n_levels + l) * f;
            for (int64_t j = 0; j < f; ++j) {
              scalar_t acc = 0;
              for (int k = 0; k < 8; ++k) acc += c.w[k] * tp[c.row[k] * f + j];
              o[j] = acc;
            }
          }
        }
      }
    });
  });
  return out;
}

// Returns {grad_x or empty, grad_table or empty}. mode: 0 auto, 1 partition by level, 2 atomics.
std::vector<torch::Tensor> hash_grid_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor table,
                                              torch::Tensor resolutions, torch::Tensor offsets, bool need_x,
                                              bool need_table, int64_t mode) {
  check_inputs(x, table, resolutions, offsets);
  x = x.contiguous();
  table = table.contiguous();
  grad = grad.to(table.scalar_type()).contiguous();
  const auto levels = make_levels(resolutions.cpu().contiguous(), offsets.cpu().contiguous());
  const int64_t n = x.size(0), n_levels = static_cast<int64_t>(levels.size()), f = table.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == n && grad.size(1) == n_levels * f,
              "hash_grid_cpu: grad must be [N, L * F], got ", grad.sizes());
  torch::Tensor grad_x, grad_table;
  if (need_x) grad_x = torch::zeros_like(x);
  if (need_table) grad_table = torch::zeros_like(table);
  if (mode == 0) mode = at::get_num_threads() <= n_levels ? 1 : 2;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "hash_grid_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* tp = table.data_ptr<scalar_t>();
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* gxp = need_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* gtp = need_table ? grad_table.data_ptr<scalar_t>() : nullptr;

    // Point i at level l: scatter its table gradient (atomically) if asked, and add its position
    // gradient (before the clamp mask) to gx[3].
    auto level_point = [&](int64_t i, int64_t l, const Corners<scalar_t>& c, bool scatter, scalar_t* gx) {
      const scalar_t* g = gp + (i * n_levels + l) * f;
      if (scatter) {
        for (int k = 0; k < 8; ++k)
          for (int64_t j = 0; j < f; ++j) atomic_add(gtp + c.row[k] * f + j, c.w[k] * g[j]);
      }
      if (gx == nullptr) return;
      scalar_t gpos[3] = {0, 0, 0};
      for (int k = 0; k < 8; ++k) {
        scalar_t dot = 0;  // d loss / d w_k
        for (int64_t j = 0; j < f; ++j) dot += tp[c.row[k] * f + j] * g[j];
        const int b[3] = {(k >> 2) & 1, (k >> 1) & 1, k & 1};
        // d w_k / d frac_d = (+1 or -1) * product of the other two 1D weights
        const scalar_t w01 = c.wd[0][b[0]] * c.wd[1][b[1]];
        const scalar_t w02 = c.wd[0][b[0]] * c.wd[2][b[2]];
        const scalar_t w12 = c.wd[1][b[1]] * c.wd[2][b[2]];
        gpos[0] += (b[0] ? w12 : -w12) * dot;
        gpos[1] += (b[1] ? w02 : -w02) * dot;
        gpos[2] += (b[2] ? w01 : -w01) * dot;
      }
      const scalar_t r = static_cast<scalar_t>(levels[l].res);
      for (int d = 0; d < 3; ++d) gx[d] += gpos[d] * r;
    };

    const bool atomic = need_table && mode == 2;
    if (need_table && !atomic) {  // levels own disjoint rows: one level per task, no races, deterministic
      at::parallel_for(0, n_levels, 1, [&](int64_t lbegin, int64_t lend) {
        std::vector<Corners<scalar_t>> cs(kChunk);
        for (int64_t l = lbegin; l < lend; ++l) {
          for (int64_t cb = 0; cb < n; cb += kChunk) {
            const int64_t m = std::min(n, cb + kChunk) - cb;
            for (int64_t i = 0; i < m; ++i) corners(xp + 3 * (cb + i), levels[l], cs[i]);
            for (int64_t i = 0; i < m; ++i) {
              if (i + kAhead < m) prefetch_rows(gtp, cs[i + kAhead], f);
              const Corners<scalar_t>& c = cs[i];
              const scalar_t* g = gp + ((cb + i) * n_levels + l) * f;
              for (int k = 0; k < 8; ++k)
                for (int64_t j = 0; j < f; ++j) gtp[c.row[k] * f + j] += c.w[k] * g[j];
            }
          }
        }
      });
    }
    if (need_x || atomic) {  // points in chunks, levels outer within a chunk (cache blocking)
      at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
        std::vector<Corners<scalar_t>> cs(kChunk);
        std::vector<scalar_t> gx(need_x ? 3 * kChunk : 0);
        for (int64_t cb = begin; cb < end; cb += kChunk) {
          const int64_t ce = std::min(end, cb + kChunk), m = ce - cb;
          std::fill(gx.begin(), gx.end(), scalar_t(0));
          for (int64_t l = 0; l < n_levels; ++l) {
            for (int64_t i = 0; i < m; ++i) corners(xp + 3 * (cb + i), levels[l], cs[i]);
            for (int64_t i = 0; i < m; ++i) {
              if (i + kAhead < m) prefetch_rows(tp, cs[i + kAhead], f);
              level_point(cb + i, l, cs[i], atomic, need_x ? gx.data() + 3 * i : nullptr);
            }
          }
          if (!need_x) continue;
          for (int64_t i = cb; i < ce; ++i) {
            for (int d = 0; d < 3; ++d) {
              const scalar_t v = xp[3 * i + d];
              // the clamp to [0, 1] passes the gradient on its closed interval (like torch.clamp)
              gxp[3 * i + d] = (v >= scalar_t(0) && v <= scalar_t(1)) ? gx[3 * (i - cb) + d] : scalar_t(0);
            }
          }
        }
      });
    }
  });
  return {grad_x, grad_table};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield multiresolution hash encoding, C++ CPU kernel (OpenMP via at::parallel_for)";
  m.def("forward", &hash_grid_forward, "hash grid forward: (x [N,3], table [rows,F], resolutions [L], offsets [L+1]) -> [N, L*F]");
  m.def("backward", &hash_grid_backward,
        "hash grid backward: (grad, x, table, resolutions, offsets, need_x, need_table, mode) -> [grad_x, grad_table]");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
