// Torch glue of the CUDA marching and compositing kernels (the "marching" extension): checks,
// allocation, launch on the current stream. The kernels (ray_marching_cuda.cu, compositing_cuda.cu)
// know nothing of torch; layouts in their headers. Python wrappers with autograd:
// cuda/cuda_marching.py. Float tensors must be float32 CUDA tensors on one device; index tensors
// int64 (packed_info, cell_ids), binaries bool. Bad shapes raise ValueError naming the argument.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <tuple>

#include "ray_marching_cuda.h"
#if __has_include("../compositing/compositing_cuda.h")
#include "../compositing/compositing_cuda.h"
#else  // flat source folder (tests/cuda_emulation copies every file beside the glue)
#include "compositing_cuda.h"
#endif

namespace om = omnifield::marching;
namespace oc = omnifield::compositing;
using torch::Tensor;

namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "marching_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// `t` is a CUDA tensor of `dtype` on the device of `ref`, with `dim` dimensions whose sizes match
// `sizes` (-1: any). Returns it contiguous.
Tensor arg(const Tensor& t, const char* name, at::ScalarType dtype, const Tensor& ref,
           std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_VALUE(t.defined(), "marching_cuda: ", name, " is undefined");
  TORCH_CHECK_VALUE(t.is_cuda() && t.device() == ref.device(), "marching_cuda: ", name, " must be on ", ref.device(),
                    ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, "marching_cuda: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(sizes.size()), "marching_cuda: ", name, " must have ",
                    sizes.size(), " dimensions, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK_VALUE(s < 0 || t.size(d) == s, "marching_cuda: ", name, " has shape ", t.sizes(), ", dimension ", d,
                      " must be ", s);
    ++d;
  }
  return t.contiguous();
}

Tensor farg(const Tensor& t, const char* name, const Tensor& ref, std::initializer_list<int64_t> sizes) {
  return arg(t, name, at::kFloat, ref, sizes);
}

// An optional float tensor (None / undefined -> undefined).
Tensor opt_farg(const std::optional<Tensor>& t, const char* name, const Tensor& ref,
                std::initializer_list<int64_t> sizes) {
  if (!t.has_value() || !t->defined()) return Tensor();
  return farg(*t, name, ref, sizes);
}

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

Tensor aabb_arg(const Tensor& aabb, const Tensor& ref) {
  TORCH_CHECK_VALUE(aabb.numel() == 6, "marching_cuda: aabb must be [2, 3] or [6], got ", aabb.sizes());
  return farg(aabb.reshape({6}), "aabb", ref, {6});
}

// -> (t_min [R], t_max [R], hit [R] bool)
std::tuple<Tensor, Tensor, Tensor> ray_aabb_intersect(Tensor origins, Tensor directions, Tensor aabb) {
  const c10::cuda::OptionalCUDAGuard guard(origins.device());
  origins = farg(origins, "origins", origins, {-1, 3});
  const int64_t n = origins.size(0);
  directions = farg(directions, "directions", origins, {n, 3});
  aabb = aabb_arg(aabb, origins);
  Tensor t_min = torch::empty({n}, origins.options()), t_max = torch::empty({n}, origins.options());
  Tensor hit = torch::empty({n}, origins.options().dtype(torch::kBool));
  om::AabbParams p;
  p.n_rays = n;
  p.origins = origins.data_ptr<float>();
  p.directions = directions.data_ptr<float>();
  p.aabb = aabb.data_ptr<float>();
  p.t_min = t_min.data_ptr<float>();
  p.t_max = t_max.data_ptr<float>();
  p.hit = hit.data_ptr<bool>();
  check_launch(om::launch_ray_aabb_intersect(p, stream()), "ray_aabb_intersect");
  return {t_min, t_max, hit};
}

// -> (ray_indices [S] int64, t_starts [S], t_ends [S], packed_info [R,2] int64). Synchronises once
// to read S.
std::tuple<Tensor, Tensor, Tensor, Tensor> march(Tensor origins, Tensor directions, Tensor t_min, Tensor t_max,
                                                 Tensor binaries, Tensor aabb, double step_size,
                                                 std::optional<Tensor> t_offset, double cone_angle, double max_step) {
  const c10::cuda::OptionalCUDAGuard guard(origins.device());
  TORCH_CHECK_VALUE(step_size > 0 && cone_angle >= 0 && max_step >= step_size, "marching_cuda: need step_size > 0, "
                    "cone_angle >= 0 and max_step >= step_size; got ", step_size, ", ", cone_angle, ", ", max_step);
  origins = farg(origins, "origins", origins, {-1, 3});
  const int64_t n = origins.size(0);
  directions = farg(directions, "directions", origins, {n, 3});
  t_min = farg(t_min, "t_min", origins, {n});
  t_max = farg(t_max, "t_max", origins, {n});
  const Tensor offset = opt_farg(t_offset, "t_offset", origins, {n});
  binaries = arg(binaries, "binaries", at::kBool, origins, {-1, -1, -1, -1});
  const int64_t levels = binaries.size(0), res = binaries.size(1);
  TORCH_CHECK_VALUE(levels >= 1 && levels < 63 && res >= 1 && binaries.size(2) == res && binaries.size(3) == res,
                    "marching_cuda: binaries must be [Lv, G, G, G] with 1 <= Lv < 63, got ", binaries.sizes());
  aabb = aabb_arg(aabb, origins);
  const auto i64 = origins.options().dtype(torch::kInt64);
  Tensor packed_info = torch::zeros({n, 2}, i64);
  if (n == 0)
    return {torch::empty({0}, i64), torch::empty({0}, origins.options()), torch::empty({0}, origins.options()),
            packed_info};
  om::MarchParams p;
  p.n_rays = n;
  p.origins = origins.data_ptr<float>();
  p.directions = directions.data_ptr<float>();
  p.t_min = t_min.data_ptr<float>();
  p.t_max = t_max.data_ptr<float>();
  p.t_offset = ptr_or_null<float>(offset);
  p.step_size = static_cast<float>(step_size);
  p.cone_angle = static_cast<float>(cone_angle);
  p.max_step = static_cast<float>(max_step);
  p.grid.binaries = binaries.data_ptr<bool>();
  p.grid.levels = static_cast<int>(levels);
  p.grid.res = static_cast<int>(res);
  p.grid.aabb = aabb.data_ptr<float>();
  om::MarchOut out;
  out.packed_info = packed_info.data_ptr<int64_t>();
  const cudaStream_t s = stream();
  check_launch(om::launch_march_count(p, out, s), "march count");
  // Exclusive scan of the counts into the first slots (torch's scan runs on the current stream).
  const Tensor counts = packed_info.select(1, 1);
  const Tensor cum = counts.cumsum(0);
  packed_info.select(1, 0).copy_(cum - counts);
  const int64_t total = cum[n - 1].item<int64_t>();
  Tensor ray_indices = torch::empty({total}, i64);
  Tensor t_starts = torch::empty({total}, origins.options()), t_ends = torch::empty({total}, origins.options());
  if (total > 0) {
    out.ray_indices = ray_indices.data_ptr<int64_t>();
    out.t_starts = t_starts.data_ptr<float>();
    out.t_ends = t_ends.data_ptr<float>();
    check_launch(om::launch_march_fill(p, out, s), "march fill");
  }
  return {ray_indices, t_starts, t_ends, packed_info};
}

// In place: occs[c] = max(occs[c] * decay, v), duplicates keep the largest v. -> occs
Tensor occupancy_ema_update(Tensor occs, Tensor cell_ids, Tensor values, double decay) {
  const c10::cuda::OptionalCUDAGuard guard(occs.device());
  TORCH_CHECK_VALUE(occs.dim() == 1 && occs.is_contiguous(), "marching_cuda: occs must be a contiguous [cells] tensor "
                    "(updated in place), got shape ", occs.sizes());
  occs = farg(occs, "occs", occs, {-1});
  cell_ids = arg(cell_ids, "cell_ids", at::kLong, occs, {-1});
  const int64_t n = cell_ids.size(0);
  values = farg(values, "values", occs, {n});
  if (n == 0 || occs.numel() == 0) return occs;
  Tensor scratch = torch::empty({occs.numel()}, occs.options().dtype(torch::kInt32));
  om::EmaParams p;
  p.n = n;
  p.n_cells = occs.numel();
  p.occs = occs.data_ptr<float>();
  p.cell_ids = cell_ids.data_ptr<int64_t>();
  p.values = values.data_ptr<float>();
  p.decay = static_cast<float>(decay);
  p.scratch = reinterpret_cast<uint32_t*>(scratch.data_ptr<int32_t>());
  check_launch(om::launch_occupancy_ema_update(p, stream()), "occupancy_ema_update");
  return occs;
}

// Checked packed samples; keeps the contiguous tensors alive while the params point into them.
struct SampleInputs {
  Tensor sigmas, t_starts, t_ends, packed_info;
  oc::Samples s;
};

SampleInputs sample_inputs(const Tensor& sigmas, const Tensor& t_starts, const Tensor& t_ends,
                           const Tensor& packed_info) {
  SampleInputs r;
  r.sigmas = farg(sigmas, "sigmas", sigmas, {-1});
  const int64_t n = r.sigmas.size(0);
  r.t_starts = farg(t_starts, "t_starts", sigmas, {n});
  r.t_ends = farg(t_ends, "t_ends", sigmas, {n});
  r.packed_info = arg(packed_info, "packed_info", at::kLong, sigmas, {-1, 2});
  r.s.n_rays = r.packed_info.size(0);
  r.s.n_samples = n;
  r.s.packed_info = r.packed_info.data_ptr<int64_t>();
  r.s.sigmas = r.sigmas.data_ptr<float>();
  r.s.t_starts = r.t_starts.data_ptr<float>();
  r.s.t_ends = r.t_ends.data_ptr<float>();
  return r;
}

// -> (weights [S], transmittance [S], alphas [S])
std::tuple<Tensor, Tensor, Tensor> render_weights_forward(Tensor sigmas, Tensor t_starts, Tensor t_ends,
                                                          Tensor packed_info) {
  const c10::cuda::OptionalCUDAGuard guard(sigmas.device());
  const SampleInputs in = sample_inputs(sigmas, t_starts, t_ends, packed_info);
  Tensor weights = torch::zeros_like(in.sigmas), trans = torch::zeros_like(in.sigmas);
  Tensor alphas = torch::zeros_like(in.sigmas);
  oc::WeightsIO io;
  io.weights = weights.data_ptr<float>();
  io.trans = trans.data_ptr<float>();
  io.alphas = alphas.data_ptr<float>();
  check_launch(oc::launch_render_weights_forward(in.s, io, stream()), "render_weights_forward");
  return {weights, trans, alphas};
}

// -> (v_sigmas, v_t_starts, v_t_ends), undefined where not asked; upstream gradients may be None.
std::tuple<Tensor, Tensor, Tensor> render_weights_backward(Tensor sigmas, Tensor t_starts, Tensor t_ends,
                                                           Tensor packed_info, Tensor trans,
                                                           std::optional<Tensor> v_weights,
                                                           std::optional<Tensor> v_trans,
                                                           std::optional<Tensor> v_alphas, bool need_sigmas,
                                                           bool need_times) {
  const c10::cuda::OptionalCUDAGuard guard(sigmas.device());
  const SampleInputs in = sample_inputs(sigmas, t_starts, t_ends, packed_info);
  const int64_t n = in.s.n_samples;
  trans = farg(trans, "transmittance", sigmas, {n});
  const Tensor gw = opt_farg(v_weights, "v_weights", sigmas, {n});
  const Tensor gt = opt_farg(v_trans, "v_transmittance", sigmas, {n});
  const Tensor ga = opt_farg(v_alphas, "v_alphas", sigmas, {n});
  Tensor v_sigmas = need_sigmas ? torch::zeros_like(in.sigmas) : Tensor();
  Tensor v_starts = need_times ? torch::zeros_like(in.sigmas) : Tensor();
  Tensor v_ends = need_times ? torch::zeros_like(in.sigmas) : Tensor();
  if (!need_sigmas && !need_times) return {v_sigmas, v_starts, v_ends};
  oc::WeightsIO io;
  io.saved_trans = trans.data_ptr<float>();
  io.v_weights = ptr_or_null<float>(gw);
  io.v_trans = ptr_or_null<float>(gt);
  io.v_alphas = ptr_or_null<float>(ga);
  io.v_sigmas = ptr_or_null<float>(v_sigmas);
  io.v_t_starts = ptr_or_null<float>(v_starts);
  io.v_t_ends = ptr_or_null<float>(v_ends);
  check_launch(oc::launch_render_weights_backward(in.s, io, stream()), "render_weights_backward");
  return {v_sigmas, v_starts, v_ends};
}

Tensor values_arg(const Tensor& values, const Tensor& sigmas) {
  return farg(values, "values", sigmas, {sigmas.size(0), -1});
}

// -> (out [R,C], depth [R], acc [R])
std::tuple<Tensor, Tensor, Tensor> composite_forward(Tensor sigmas, Tensor values, Tensor t_starts, Tensor t_ends,
                                                     Tensor packed_info, double early_stop_eps) {
  const c10::cuda::OptionalCUDAGuard guard(sigmas.device());
  const SampleInputs in = sample_inputs(sigmas, t_starts, t_ends, packed_info);
  values = values_arg(values, in.sigmas);
  const int64_t n_rays = in.s.n_rays, c = values.size(1);
  const auto f = in.sigmas.options();
  Tensor out = torch::zeros({n_rays, c}, f), depth = torch::zeros({n_rays}, f), acc = torch::zeros({n_rays}, f);
  oc::CompositeIO io;
  io.channels = static_cast<int>(c);
  io.early_stop_eps = static_cast<float>(early_stop_eps);
  io.values = values.data_ptr<float>();
  io.out = out.data_ptr<float>();
  io.depth = depth.data_ptr<float>();
  io.acc = acc.data_ptr<float>();
  check_launch(oc::launch_composite_forward(in.s, io, stream()), "composite_forward");
  return {out, depth, acc};
}

// -> (v_sigmas [S], v_values [S,C], v_t_starts [S], v_t_ends [S]), undefined where not asked.
std::tuple<Tensor, Tensor, Tensor, Tensor> composite_backward(
    Tensor sigmas, Tensor values, Tensor t_starts, Tensor t_ends, Tensor packed_info, double early_stop_eps,
    Tensor out, Tensor depth, Tensor acc, std::optional<Tensor> v_out, std::optional<Tensor> v_depth,
    std::optional<Tensor> v_acc, bool need_sigmas, bool need_values, bool need_times) {
  const c10::cuda::OptionalCUDAGuard guard(sigmas.device());
  const SampleInputs in = sample_inputs(sigmas, t_starts, t_ends, packed_info);
  values = values_arg(values, in.sigmas);
  const int64_t n_rays = in.s.n_rays, c = values.size(1);
  out = farg(out, "out", sigmas, {n_rays, c});
  depth = farg(depth, "depth", sigmas, {n_rays});
  acc = farg(acc, "acc", sigmas, {n_rays});
  const Tensor g_out = opt_farg(v_out, "v_out", sigmas, {n_rays, c});
  const Tensor g_depth = opt_farg(v_depth, "v_depth", sigmas, {n_rays});
  const Tensor g_acc = opt_farg(v_acc, "v_acc", sigmas, {n_rays});
  Tensor v_sigmas = need_sigmas ? torch::zeros_like(in.sigmas) : Tensor();
  Tensor v_values = need_values ? torch::zeros_like(values) : Tensor();
  Tensor v_starts = need_times ? torch::zeros_like(in.sigmas) : Tensor();
  Tensor v_ends = need_times ? torch::zeros_like(in.sigmas) : Tensor();
  if (!need_sigmas && !need_values && !need_times) return {v_sigmas, v_values, v_starts, v_ends};
  oc::CompositeIO io;
  io.channels = static_cast<int>(c);
  io.early_stop_eps = static_cast<float>(early_stop_eps);
  io.values = values.data_ptr<float>();
  io.saved_out = out.data_ptr<float>();
  io.saved_depth = depth.data_ptr<float>();
  io.saved_acc = acc.data_ptr<float>();
  io.v_out = ptr_or_null<float>(g_out);
  io.v_depth = ptr_or_null<float>(g_depth);
  io.v_acc = ptr_or_null<float>(g_acc);
  io.v_sigmas = ptr_or_null<float>(v_sigmas);
  io.v_values = ptr_or_null<float>(v_values);
  io.v_t_starts = ptr_or_null<float>(v_starts);
  io.v_t_ends = ptr_or_null<float>(v_ends);
  check_launch(oc::launch_composite_backward(in.s, io, stream()), "composite_backward");
  return {v_sigmas, v_values, v_starts, v_ends};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield CUDA ray marching and compositing kernels (issue 5); wrappers: omnifield.cuda.cuda_marching";
  m.def("ray_aabb_intersect", &ray_aabb_intersect, "slab test: (t_min, t_max, hit)");
  m.def("march", &march, "occupancy-grid marching: (ray_indices, t_starts, t_ends, packed_info)");
  m.def("occupancy_ema_update", &occupancy_ema_update, "in-place occs = max(occs * decay, v)");
  m.def("render_weights_forward", &render_weights_forward, "packed weights, transmittance, alphas");
  m.def("render_weights_backward", &render_weights_backward, "backward of render_weights");
  m.def("composite_forward", &composite_forward, "fused compositing with early termination: (out, depth, acc)");
  m.def("composite_backward", &composite_backward, "backward of the fused compositing");
}
