// Occupancy-grid ray marching (Instant-NGP; nerfacc OccGridEstimator): C++ CPU kernel.
//
// Same semantics, sample positions and order as the pure-PyTorch oracle cuda/reference/occupancy.py,
// operation for operation in the input dtype (so float32 results are bit-identical):
//   start = t_min (+ t_offset * step); n = t_max > start ? ceil(max(t_max - start, 0) / step) : 0;
//   t0_j = start + j * step, t1_j = min(t0_j + step, t_max), mid = 0.5 * (t0 + t1),
//   p = o + d * mid; the sample is kept when p's cell is occupied (grid_lookup below).
// Cone marching (cone_angle > 0, Instant-NGP for unbounded scenes): dt(t) = min(max(t * cone_angle,
//   step), max_step), start = t_min (+ t_offset * dt(t_min)), t_{i+1} = t_i + dt(t_i) while
//   t_i < t_max and t_{i+1} > t_i (progress), t1_i = min(t_{i+1}, t_max); kept as above.
// Cascaded grid binaries [Lv, G, G, G] bool: level l covers the level-0 box scaled by 2^l about its
// centre; a point goes to level max(0, ceil(log2(max_k |u_k|))) with u = (p - centre) / half, and
// is empty when that level is >= Lv.
//
// Two passes over rays (count, then fill at the exclusive prefix sum of the counts), both run by
// at::parallel_for (torch.get_num_threads()) with a shared atomic block counter, so threads take
// blocks of rays dynamically (rays cost very different amounts).

// No fused multiply-add: every product and sum is rounded like the reference's separate torch ops
// (x86-64 has no FMA without -mfma, but aarch64 and -march=native builds would contract).
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // rays per dynamically scheduled block

template <typename scalar_t>
struct Grid {
  const bool* bins;
  int64_t levels;
  int64_t res;
  scalar_t centre[3];
  scalar_t half[3];
};

template <typename scalar_t>
Grid<scalar_t> make_grid(const torch::Tensor& binaries, const torch::Tensor& aabb) {
  Grid<scalar_t> g;
  g.bins = binaries.data_ptr<bool>();
  g.levels = binaries.size(0);
  g.res = binaries.size(1);
  const scalar_t* b = aabb.data_ptr<scalar_t>();
  for (int d = 0; d < 3; ++d) {
    g.centre[d] = scalar_t(0.5) * (b[d] + b[3 + d]);
    g.half[d] = scalar_t(0.5) * (b[3 + d] - b[d]);
  }
  return g;
}

// Occupancy of one world point: reference grid_lookup, in the same operation order.
template <typename scalar_t>
inline bool occupied(const Grid<scalar_t>& g, scalar_t px, scalar_t py, scalar_t pz) {
  const scalar_t u[3] = {(px - g.centre[0]) / g.half[0], (py - g.centre[1]) / g.half[1],
                         (pz - g.centre[2]) / g.half[2]};
  const scalar_t extent = std::max(std::max(std::abs(u[0]), std::abs(u[1])), std::abs(u[2]));
  int64_t level = 0;
  scalar_t inv_scale = 1;  // 2^-level: u * 2^-level == u / 2^level exactly (power-of-two scaling)
  if (!(extent <= scalar_t(1))) {  // ceil(log2(extent)) > 0 exactly when extent > 1
    if (g.levels == 1 || !std::isfinite(extent)) return false;
    level = static_cast<int64_t>(std::ceil(std::log2(extent)));
    if (level >= g.levels) return false;
    inv_scale = std::ldexp(scalar_t(1), static_cast<int>(-level));
  }
  const int64_t r = g.res;
  const scalar_t rs = static_cast<scalar_t>(r);
  int64_t c[3];
  for (int k = 0; k < 3; ++k) {
    const scalar_t v = (u[k] * inv_scale + scalar_t(1)) * scalar_t(0.5) * rs;
    // Truncation instead of floor (no libm call): they differ only for v in (-1, 0), where floor
    // gives -1 and truncation 0, and the clamp maps both to 0. |v| <= 2 * res here (finite).
    c[k] = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(v), 0), r - 1);
  }
  return g.bins[((level * r + c[0]) * r + c[1]) * r + c[2]];
}

template <typename scalar_t>
struct Rays {
  const scalar_t* o;
  const scalar_t* d;
  const scalar_t* t_min;
  const scalar_t* t_max;
  const scalar_t* t_offset;  // nullptr: no jitter
  scalar_t step;
  scalar_t cone_angle;  // 0: constant steps
  scalar_t max_step;
};

// Cone step at distance t: the reference's clamp(t * cone_angle, step, max_step).
template <typename scalar_t>
inline scalar_t cone_dt(const Rays<scalar_t>& rays, scalar_t t) {
  return std::min(std::max(t * rays.cone_angle, rays.step), rays.max_step);
}

// Candidate intervals of ray i: (start, count), exactly as the reference computes them.
template <typename scalar_t>
inline int64_t candidates(const Rays<scalar_t>& rays, int64_t i, scalar_t& start) {
  start = rays.t_offset ? rays.t_min[i] + rays.t_offset[i] * rays.step : rays.t_min[i];
  const scalar_t t_max = rays.t_max[i];
  if (!(t_max > start)) return 0;
  const scalar_t length = std::max(t_max - start, scalar_t(0));
  const scalar_t n = std::ceil(length / rays.step);
  TORCH_CHECK(std::isfinite(n) && n < scalar_t(9.0e15), "ray_marching_cpu: ray ", i,
              " has a non-finite or huge number of steps (t_min ", rays.t_min[i], ", t_max ", t_max, ")");
  return static_cast<int64_t>(n);
}

// Whether the interval [t0, t1] of the ray (o, d) has an occupied midpoint.
template <typename scalar_t>
inline bool keep(const Grid<scalar_t>& grid, const scalar_t* o, const scalar_t* d, scalar_t t0, scalar_t t1) {
  const scalar_t mid = scalar_t(0.5) * (t0 + t1);
  return occupied(grid, o[0] + d[0] * mid, o[1] + d[1] * mid, o[2] + d[2] * mid);
}

// Cone marching of ray i (see the header comment); emit(t0, t1) per kept interval.
template <typename scalar_t, typename Emit>
inline int64_t march_ray_cone(const Rays<scalar_t>& rays, const Grid<scalar_t>& grid, int64_t i, Emit&& emit) {
  const scalar_t t_min = rays.t_min[i], t_max = rays.t_max[i];
  const scalar_t* o = rays.o + 3 * i;
  const scalar_t* d = rays.d + 3 * i;
  scalar_t t = rays.t_offset ? t_min + rays.t_offset[i] * cone_dt(rays, t_min) : t_min;
  int64_t kept = 0;
  while (t < t_max) {
    const scalar_t t_next = t + cone_dt(rays, t);
    const scalar_t t1 = std::min(t_next, t_max);
    if (keep(grid, o, d, t, t1)) {
      emit(t, t1);
      ++kept;
    }
    if (!(t_next > t)) break;  // no progress: the reference stops the ray too
    t = t_next;
  }
  return kept;
}

// March ray i; calls emit(t0, t1) for each kept interval in order; returns the number kept.
template <typename scalar_t, typename Emit>
inline int64_t march_ray(const Rays<scalar_t>& rays, const Grid<scalar_t>& grid, int64_t i, Emit&& emit) {
  if (rays.cone_angle > scalar_t(0)) return march_ray_cone(rays, grid, i, emit);
  scalar_t start;
  const int64_t n = candidates(rays, i, start);
  const scalar_t t_max = rays.t_max[i];
  const scalar_t* o = rays.o + 3 * i;
  const scalar_t* d = rays.d + 3 * i;
  int64_t kept = 0;
  for (int64_t j = 0; j < n; ++j) {
    const scalar_t t0 = start + static_cast<scalar_t>(j) * rays.step;
    const scalar_t t1 = std::min(t0 + rays.step, t_max);
    if (keep(grid, o, d, t0, t1)) {
      emit(t0, t1);
      ++kept;
    }
  }
  return kept;
}

// Runs body(ray) for every ray, threads taking blocks of kBlock rays from a shared counter.
template <typename Body>
void for_each_ray_dynamic(int64_t n_rays, Body&& body) {
  const int64_t n_blocks = (n_rays + kBlock - 1) / kBlock;
  if (n_blocks == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_blocks));
  at::parallel_for(0, workers, 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w) {
      for (int64_t b = next.fetch_add(1, std::memory_order_relaxed); b < n_blocks;
           b = next.fetch_add(1, std::memory_order_relaxed)) {
        const int64_t end = std::min(n_rays, (b + 1) * kBlock);
        for (int64_t i = b * kBlock; i < end; ++i) body(i);
      }
    }
  });
}

void check_grid(const torch::Tensor& binaries, const torch::Tensor& aabb, c10::ScalarType dtype) {
  TORCH_CHECK(binaries.device().is_cpu() && aabb.device().is_cpu(), "ray_marching_cpu: binaries and aabb must be CPU tensors");
  TORCH_CHECK(binaries.scalar_type() == torch::kBool, "ray_marching_cpu: binaries must be bool, got ", binaries.scalar_type());
  TORCH_CHECK(binaries.dim() == 4 && binaries.size(0) >= 1 && binaries.size(1) >= 1 &&
                  binaries.size(1) == binaries.size(2) && binaries.size(1) == binaries.size(3),
              "ray_marching_cpu: binaries must be [Lv, G, G, G], got ", binaries.sizes());
  TORCH_CHECK(aabb.numel() == 6 && aabb.scalar_type() == dtype, "ray_marching_cpu: aabb must be [2, 3] of ", dtype);
}

}  // namespace

// -> {ray_indices [S] int64, t_starts [S], t_ends [S], packed_info [R, 2] int64}
std::vector<torch::Tensor> march_occupancy_grid(torch::Tensor origins, torch::Tensor directions, torch::Tensor t_min,
                                                torch::Tensor t_max, torch::Tensor binaries, torch::Tensor aabb,
                                                double step_size, c10::optional<torch::Tensor> t_offset,
                                                double cone_angle, double max_step) {
  const auto dtype = origins.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kDouble, "ray_marching_cpu: float32 or float64 rays, got ", dtype);
  TORCH_CHECK(origins.device().is_cpu(), "ray_marching_cpu: rays must be CPU tensors");
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3, "ray_marching_cpu: origins must be [R, 3], got ", origins.sizes());
  const int64_t n_rays = origins.size(0);
  TORCH_CHECK(directions.sizes() == origins.sizes() && directions.scalar_type() == dtype && directions.device().is_cpu(),
              "ray_marching_cpu: directions must be [R, 3] like origins");
  for (const auto* t : {&t_min, &t_max}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == n_rays && t->scalar_type() == dtype && t->device().is_cpu(),
                "ray_marching_cpu: t_min and t_max must be [R] like origins");
  }
  const bool jitter = t_offset.has_value() && t_offset->defined();
  if (jitter) {
    TORCH_CHECK(t_offset->dim() == 1 && t_offset->size(0) == n_rays && t_offset->scalar_type() == dtype &&
                    t_offset->device().is_cpu(),
                "ray_marching_cpu: t_offset must be [R] like origins");
  }
  TORCH_CHECK(step_size > 0 && std::isfinite(step_size), "ray_marching_cpu: step_size must be > 0, got ", step_size);
  TORCH_CHECK(cone_angle >= 0 && max_step >= step_size, "ray_marching_cpu: need cone_angle >= 0 and max_step >= "
              "step_size, got ", cone_angle, ", ", max_step);
  check_grid(binaries, aabb, dtype);
  origins = origins.contiguous();
  directions = directions.contiguous();
  t_min = t_min.contiguous();
  t_max = t_max.contiguous();
  binaries = binaries.contiguous();
  aabb = aabb.contiguous();
  torch::Tensor offset = jitter ? t_offset->contiguous() : torch::Tensor();

  const auto long_opts = origins.options().dtype(torch::kLong);
  torch::Tensor packed_info = torch::empty({n_rays, 2}, long_opts);
  torch::Tensor ray_indices, t_starts, t_ends;
  AT_DISPATCH_FLOATING_TYPES(dtype, "march_occupancy_grid_cpu", [&] {
    const Grid<scalar_t> grid = make_grid<scalar_t>(binaries, aabb);
    const Rays<scalar_t> rays{origins.data_ptr<scalar_t>(), directions.data_ptr<scalar_t>(), t_min.data_ptr<scalar_t>(),
                              t_max.data_ptr<scalar_t>(), jitter ? offset.data_ptr<scalar_t>() : nullptr,
                              static_cast<scalar_t>(step_size), static_cast<scalar_t>(cone_angle),
                              static_cast<scalar_t>(max_step)};
    int64_t* info = packed_info.data_ptr<int64_t>();
    // Pass 1: kept samples per ray.
    for_each_ray_dynamic(n_rays, [&](int64_t i) { info[2 * i + 1] = march_ray(rays, grid, i, [](scalar_t, scalar_t) {}); });
    int64_t total = 0;
    for (int64_t i = 0; i < n_rays; ++i) {
      info[2 * i] = total;
      total += info[2 * i + 1];
    }
    ray_indices = torch::empty({total}, long_opts);
    t_starts = torch::empty({total}, origins.options());
    t_ends = torch::empty({total}, origins.options());
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    scalar_t* ts = t_starts.data_ptr<scalar_t>();
    scalar_t* te = t_ends.data_ptr<scalar_t>();
    // Pass 2: the same march, writing at the ray's first slot.
    for_each_ray_dynamic(n_rays, [&](int64_t i) {
      int64_t k = info[2 * i];
      march_ray(rays, grid, i, [&](scalar_t t0, scalar_t t1) {
        ri[k] = i;
        ts[k] = t0;
        te[k] = t1;
        ++k;
      });
    });
  });
  return {ray_indices, t_starts, t_ends, packed_info};
}

// -> occupancy [N] bool of world points [N, 3] (reference grid_lookup).
torch::Tensor grid_lookup(torch::Tensor points, torch::Tensor binaries, torch::Tensor aabb) {
  const auto dtype = points.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kDouble, "ray_marching_cpu: float32 or float64 points, got ", dtype);
  TORCH_CHECK(points.device().is_cpu() && points.dim() == 2 && points.size(1) == 3,
              "ray_marching_cpu: points must be CPU [N, 3], got ", points.sizes());
  check_grid(binaries, aabb, dtype);
  points = points.contiguous();
  binaries = binaries.contiguous();
  aabb = aabb.contiguous();
  const int64_t n = points.size(0);
  torch::Tensor out = torch::empty({n}, points.options().dtype(torch::kBool));
  AT_DISPATCH_FLOATING_TYPES(dtype, "grid_lookup_cpu", [&] {
    const Grid<scalar_t> grid = make_grid<scalar_t>(binaries, aabb);
    const scalar_t* p = points.data_ptr<scalar_t>();
    bool* op = out.data_ptr<bool>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) op[i] = occupied(grid, p[3 * i], p[3 * i + 1], p[3 * i + 2]);
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield occupancy-grid ray marching, C++ CPU kernel (OpenMP via at::parallel_for)";
  m.def("march", &march_occupancy_grid,
        "march: (origins [R,3], directions [R,3], t_min [R], t_max [R], binaries [Lv,G,G,G] bool, aabb [2,3], "
        "step_size, t_offset [R] or None, cone_angle, max_step) -> [ray_indices [S], t_starts [S], t_ends [S], "
        "packed_info [R,2]]",
        py::arg("origins"), py::arg("directions"), py::arg("t_min"), py::arg("t_max"), py::arg("binaries"),
        py::arg("aabb"), py::arg("step_size"), py::arg("t_offset") = py::none(), py::arg("cone_angle") = 0.0,
        py::arg("max_step") = 1e10);
  m.def("grid_lookup", &grid_lookup, "grid_lookup: (points [N,3], binaries [Lv,G,G,G] bool, aabb [2,3]) -> [N] bool");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
