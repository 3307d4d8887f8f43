// Torch glue of the CUDA Gaussian splatting kernels: checks, allocation, launch on the current
// stream. The kernels (gaussians_*_cuda.cu) know nothing of torch; see gaussians_cuda.h for the
// layouts. Python wrappers with autograd: cuda/cuda_gaussians.py. Every tensor argument must be a
// CUDA tensor on one device; float tensors float32, index tensors as documented per function.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "gaussians_cuda.h"

namespace og = omnifield::gaussians;
using torch::Tensor;

namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "gaussians_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// `t` is a CUDA tensor of `dtype` on the device of `ref`, with `dim` dimensions whose sizes match
// `sizes` (-1: any). Returns it contiguous.
Tensor arg(const Tensor& t, const char* name, at::ScalarType dtype, const Tensor& ref,
           std::initializer_list<int64_t> sizes) {
  TORCH_CHECK(t.defined(), "gaussians_cuda: ", name, " is undefined");
  TORCH_CHECK(t.is_cuda() && t.device() == ref.device(), "gaussians_cuda: ", name, " must be on ", ref.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "gaussians_cuda: ", name, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(sizes.size()), "gaussians_cuda: ", name, " must have ",
                    sizes.size(), " dimensions, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK_VALUE(s < 0 || t.size(d) == s, "gaussians_cuda: ", name, " has shape ", t.sizes(), ", dimension ", d,
                      " must be ", s);
    ++d;
  }
  return t.contiguous();
}

Tensor farg(const Tensor& t, const char* name, const Tensor& ref, std::initializer_list<int64_t> sizes) {
  return arg(t, name, at::kFloat, ref, sizes);
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

og::ProjectParams project_params(const Tensor& means, const Tensor& covars, const Tensor& viewmat, const Tensor& K,
                                 int64_t width, int64_t height, double near_plane, double far_plane, double eps2d,
                                 double radius_clip, bool antialias) {
  TORCH_CHECK_VALUE(width > 0 && height > 0, "gaussians_cuda: width and height must be positive, got ", width, "x",
                    height);
  og::ProjectParams p;
  p.n = means.size(0);
  p.means = means.data_ptr<float>();
  p.covars = covars.data_ptr<float>();
  p.viewmat = viewmat.data_ptr<float>();
  p.K = K.data_ptr<float>();
  p.width = static_cast<int>(width);
  p.height = static_cast<int>(height);
  p.near_plane = static_cast<float>(near_plane);
  p.far_plane = static_cast<float>(far_plane);
  p.eps2d = static_cast<float>(eps2d);
  p.radius_clip = static_cast<float>(radius_clip);
  p.antialias = antialias;
  return p;
}

// -> (means2d [N,2], conics [N,3], depths [N], radii [N] int32, compensations [N])
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> project_forward(Tensor means, Tensor covars, Tensor viewmat,
                                                                   Tensor K, int64_t width, int64_t height,
                                                                   double near_plane, double far_plane, double eps2d,
                                                                   double radius_clip, bool antialias) {
  const c10::cuda::OptionalCUDAGuard guard(means.device());
  means = farg(means, "means", means, {-1, 3});
  const int64_t n = means.size(0);
  covars = farg(covars, "covars", means, {n, 3, 3});
  viewmat = farg(viewmat, "viewmat", means, {4, 4});
  K = farg(K, "K", means, {3, 3});
  const auto p = project_params(means, covars, viewmat, K, width, height, near_plane, far_plane, eps2d, radius_clip,
                                antialias);
  const auto f = means.options();
  Tensor means2d = torch::empty({n, 2}, f), conics = torch::empty({n, 3}, f), depths = torch::empty({n}, f);
  Tensor radii = torch::empty({n}, f.dtype(torch::kInt32)), comps = torch::empty({n}, f);
  og::ProjectForwardOut out;
  out.means2d = means2d.data_ptr<float>();
  out.conics = conics.data_ptr<float>();
  out.depths = depths.data_ptr<float>();
  out.radii = radii.data_ptr<int32_t>();
  out.compensations = comps.data_ptr<float>();
  check_launch(og::launch_project_forward(p, out, stream()), "project_forward");
  return {means2d, conics, depths, radii, comps};
}

// -> (v_means [N,3], v_covars [N,3,3], v_viewmat [4,4] or None)
std::tuple<Tensor, Tensor, Tensor> project_backward(Tensor means, Tensor covars, Tensor viewmat, Tensor K,
                                                    int64_t width, int64_t height, double near_plane,
                                                    double far_plane, double eps2d, double radius_clip, bool antialias,
                                                    Tensor radii, Tensor v_means2d, Tensor v_conics, Tensor v_depths,
                                                    std::optional<Tensor> v_comps, bool viewmat_grad) {
  const c10::cuda::OptionalCUDAGuard guard(means.device());
  means = farg(means, "means", means, {-1, 3});
  const int64_t n = means.size(0);
  covars = farg(covars, "covars", means, {n, 3, 3});
  viewmat = farg(viewmat, "viewmat", means, {4, 4});
  K = farg(K, "K", means, {3, 3});
  radii = arg(radii, "radii", at::kInt, means, {n});
  v_means2d = farg(v_means2d, "v_means2d", means, {n, 2});
  v_conics = farg(v_conics, "v_conics", means, {n, 3});
  v_depths = farg(v_depths, "v_depths", means, {n});
  Tensor vc;
  if (v_comps.has_value() && v_comps->defined()) vc = farg(*v_comps, "v_compensations", means, {n});
  const auto p = project_params(means, covars, viewmat, K, width, height, near_plane, far_plane, eps2d, radius_clip,
                                antialias);
  Tensor v_means = torch::empty({n, 3}, means.options()), v_covars = torch::empty({n, 3, 3}, means.options());
  Tensor v_view = viewmat_grad ? torch::zeros({4, 4}, means.options()) : Tensor();
  og::ProjectBackwardIO io;
  io.radii = radii.data_ptr<int32_t>();
  io.v_means2d = v_means2d.data_ptr<float>();
  io.v_conics = v_conics.data_ptr<float>();
  io.v_depths = v_depths.data_ptr<float>();
  io.v_comps = vc.defined() ? vc.data_ptr<float>() : nullptr;
  io.v_means = v_means.data_ptr<float>();
  io.v_covars = v_covars.data_ptr<float>();
  io.v_viewmat = viewmat_grad ? v_view.data_ptr<float>() : nullptr;
  check_launch(og::launch_project_backward(p, io, stream()), "project_backward");
  return {v_means, v_covars, v_view};
}

Tensor quat_scale_to_covar_forward(Tensor quats, Tensor scales) {
  const c10::cuda::OptionalCUDAGuard guard(quats.device());
  quats = farg(quats, "quats", quats, {-1, 4});
  const int64_t n = quats.size(0);
  scales = farg(scales, "scales", quats, {n, 3});
  Tensor covars = torch::empty({n, 3, 3}, quats.options());
  og::QuatScaleParams p;
  p.n = n;
  p.quats = quats.data_ptr<float>();
  p.scales = scales.data_ptr<float>();
  p.covars = covars.data_ptr<float>();
  check_launch(og::launch_quat_scale_to_covar_forward(p, stream()), "quat_scale_to_covar_forward");
  return covars;
}

std::tuple<Tensor, Tensor> quat_scale_to_covar_backward(Tensor quats, Tensor scales, Tensor v_covars) {
  const c10::cuda::OptionalCUDAGuard guard(quats.device());
  quats = farg(quats, "quats", quats, {-1, 4});
  const int64_t n = quats.size(0);
  scales = farg(scales, "scales", quats, {n, 3});
  v_covars = farg(v_covars, "v_covars", quats, {n, 3, 3});
  Tensor v_quats = torch::empty({n, 4}, quats.options()), v_scales = torch::empty({n, 3}, quats.options());
  og::QuatScaleParams p;
  p.n = n;
  p.quats = quats.data_ptr<float>();
  p.scales = scales.data_ptr<float>();
  p.v_covars = v_covars.data_ptr<float>();
  p.v_quats = v_quats.data_ptr<float>();
  p.v_scales = v_scales.data_ptr<float>();
  check_launch(og::launch_quat_scale_to_covar_backward(p, stream()), "quat_scale_to_covar_backward");
  return {v_quats, v_scales};
}

Tensor byte_buffer(size_t bytes, const Tensor& ref) {
  return torch::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, ref.options().dtype(torch::kUInt8));
}

// -> (isect_offsets [tile_h, tile_w] int32, flatten_ids [M] int64). Synchronises once to read M.
std::tuple<Tensor, Tensor> isect_tiles(Tensor means2d, Tensor radii, Tensor depths, int64_t width, int64_t height,
                                       int64_t tile_size) {
  const c10::cuda::OptionalCUDAGuard guard(means2d.device());
  TORCH_CHECK_VALUE(width > 0 && height > 0 && tile_size > 0, "gaussians_cuda: isect_tiles needs positive width, "
                    "height and tile_size, got ", width, ", ", height, ", ", tile_size);
  means2d = farg(means2d, "means2d", means2d, {-1, 2});
  const int64_t n = means2d.size(0);
  TORCH_CHECK_VALUE(n < std::numeric_limits<int32_t>::max(), "gaussians_cuda: too many Gaussians: ", n);
  radii = arg(radii, "radii", at::kInt, means2d, {n});
  depths = farg(depths, "depths", means2d, {n});
  og::IsectParams p;
  p.n = n;
  p.means2d = means2d.data_ptr<float>();
  p.radii = radii.data_ptr<int32_t>();
  p.depths = depths.data_ptr<float>();
  p.width = static_cast<int>(width);
  p.height = static_cast<int>(height);
  p.tile_size = static_cast<int>(tile_size);
  p.tile_w = static_cast<int>((width + tile_size - 1) / tile_size);
  p.tile_h = static_cast<int>((height + tile_size - 1) / tile_size);
  const int64_t n_tiles = static_cast<int64_t>(p.tile_w) * p.tile_h;
  TORCH_CHECK_VALUE(n_tiles < std::numeric_limits<int32_t>::max(), "gaussians_cuda: too many tiles: ", n_tiles);
  const auto i64 = means2d.options().dtype(torch::kInt64);
  Tensor offsets = torch::zeros({p.tile_h, p.tile_w}, means2d.options().dtype(torch::kInt32));
  if (n == 0) return {offsets, torch::empty({0}, i64)};
  const cudaStream_t s = stream();
  Tensor counts = torch::empty({n}, i64), cum = torch::empty({n}, i64);
  check_launch(og::launch_isect_count(p, counts.data_ptr<int64_t>(), s), "isect count");
  const size_t scan_bytes = og::isect_scan_temp_bytes(n);
  Tensor scan_temp = byte_buffer(scan_bytes, means2d);
  check_launch(og::launch_isect_scan(scan_temp.data_ptr(), scan_bytes, counts.data_ptr<int64_t>(),
                                     cum.data_ptr<int64_t>(), n, s),
               "isect scan");
  const int64_t m = cum[n - 1].item<int64_t>();
  TORCH_CHECK(m < std::numeric_limits<int32_t>::max(), "gaussians_cuda: too many intersections: ", m);
  if (m == 0) return {offsets, torch::empty({0}, i64)};
  Tensor keys = torch::empty({m}, i64), ids = torch::empty({m}, means2d.options().dtype(torch::kInt32));
  Tensor keys_sorted = torch::empty_like(keys), ids_sorted = torch::empty_like(ids);
  auto* kp = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
  auto* ksp = reinterpret_cast<uint64_t*>(keys_sorted.data_ptr<int64_t>());
  check_launch(og::launch_isect_fill(p, counts.data_ptr<int64_t>(), cum.data_ptr<int64_t>(), kp,
                                     ids.data_ptr<int32_t>(), s),
               "isect fill");
  const int end_bit = 32 + og::isect_tile_bits(static_cast<int>(n_tiles));
  const size_t sort_bytes = og::isect_sort_temp_bytes(m, end_bit);
  Tensor sort_temp = byte_buffer(sort_bytes, means2d);
  check_launch(og::launch_isect_sort(sort_temp.data_ptr(), sort_bytes, kp, ksp, ids.data_ptr<int32_t>(),
                                     ids_sorted.data_ptr<int32_t>(), m, end_bit, s),
               "isect sort");
  check_launch(og::launch_isect_offsets(ksp, m, static_cast<int>(n_tiles), offsets.data_ptr<int32_t>(), s),
               "isect offsets");
  Tensor flatten_ids = torch::empty({m}, i64);
  check_launch(og::launch_widen_ids(ids_sorted.data_ptr<int32_t>(), m, flatten_ids.data_ptr<int64_t>(), s),
               "isect ids");
  return {offsets, flatten_ids};
}

// Checked raster inputs; keeps the contiguous tensors alive while the params point into them.
struct RasterInputs {
  Tensor means2d, conics, colors, opacities, backgrounds, offsets, flatten_ids;
  og::RasterParams p;
};

RasterInputs raster_inputs(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                           const Tensor& opacities, const std::optional<Tensor>& backgrounds, int64_t width,
                           int64_t height, int64_t tile_size, const Tensor& offsets, const Tensor& flatten_ids) {
  TORCH_CHECK_VALUE(width > 0 && height > 0, "gaussians_cuda: width and height must be positive");
  TORCH_CHECK_VALUE(tile_size >= 1 && tile_size <= 32, "gaussians_cuda: tile_size must be in 1..32, got ", tile_size);
  RasterInputs r;
  r.means2d = farg(means2d, "means2d", means2d, {-1, 2});
  const int64_t n = r.means2d.size(0);
  r.conics = farg(conics, "conics", means2d, {n, 3});
  r.colors = farg(colors, "colors", means2d, {n, -1});
  const int64_t c = r.colors.size(1);
  TORCH_CHECK_VALUE(c >= 1, "gaussians_cuda: colors needs at least one channel");
  r.opacities = farg(opacities, "opacities", means2d, {n});
  if (backgrounds.has_value() && backgrounds->defined())
    r.backgrounds = farg(*backgrounds, "backgrounds", means2d, {c});
  const int64_t tile_w = (width + tile_size - 1) / tile_size, tile_h = (height + tile_size - 1) / tile_size;
  r.offsets = arg(offsets, "isect_offsets", at::kInt, means2d, {tile_h, tile_w});
  r.flatten_ids = arg(flatten_ids, "flatten_ids", at::kLong, means2d, {-1});
  auto& p = r.p;
  p.n = n;
  p.channels = static_cast<int>(c);
  p.width = static_cast<int>(width);
  p.height = static_cast<int>(height);
  p.tile_size = static_cast<int>(tile_size);
  p.tile_w = static_cast<int>(tile_w);
  p.tile_h = static_cast<int>(tile_h);
  p.n_isects = r.flatten_ids.size(0);
  p.means2d = r.means2d.data_ptr<float>();
  p.conics = r.conics.data_ptr<float>();
  p.colors = r.colors.data_ptr<float>();
  p.opacities = r.opacities.data_ptr<float>();
  p.backgrounds = r.backgrounds.defined() ? r.backgrounds.data_ptr<float>() : nullptr;
  p.isect_offsets = r.offsets.data_ptr<int32_t>();
  p.flatten_ids = r.flatten_ids.data_ptr<int64_t>();
  return r;
}

// -> (colors [H,W,C], alphas [H,W,1], transmittance [H,W], last_ids [H,W] int32)
std::tuple<Tensor, Tensor, Tensor, Tensor> rasterize_forward(Tensor means2d, Tensor conics, Tensor colors,
                                                             Tensor opacities, std::optional<Tensor> backgrounds,
                                                             int64_t width, int64_t height, int64_t tile_size,
                                                             Tensor offsets, Tensor flatten_ids) {
  const c10::cuda::OptionalCUDAGuard guard(means2d.device());
  const RasterInputs r = raster_inputs(means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                                       offsets, flatten_ids);
  const auto f = r.means2d.options();
  Tensor image = torch::empty({height, width, r.p.channels}, f), alphas = torch::empty({height, width, 1}, f);
  Tensor trans = torch::empty({height, width}, f), last = torch::empty({height, width}, f.dtype(torch::kInt32));
  og::RasterForwardOut out;
  out.colors = image.data_ptr<float>();
  out.alphas = alphas.data_ptr<float>();
  out.transmittance = trans.data_ptr<float>();
  out.last_ids = last.data_ptr<int32_t>();
  check_launch(og::launch_rasterize_forward(r.p, out, stream()), "rasterize_forward");
  return {image, alphas, trans, last};
}

// -> (v_means2d [N,2], v_conics [N,3], v_colors [N,C], v_opacities [N])
std::tuple<Tensor, Tensor, Tensor, Tensor> rasterize_backward(
    Tensor means2d, Tensor conics, Tensor colors, Tensor opacities, std::optional<Tensor> backgrounds, int64_t width,
    int64_t height, int64_t tile_size, Tensor offsets, Tensor flatten_ids, Tensor transmittance, Tensor last_ids,
    Tensor v_image, Tensor v_alphas) {
  const c10::cuda::OptionalCUDAGuard guard(means2d.device());
  const RasterInputs r = raster_inputs(means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                                       offsets, flatten_ids);
  const int64_t n = r.p.n, c = r.p.channels;
  transmittance = farg(transmittance, "transmittance", means2d, {height, width});
  last_ids = arg(last_ids, "last_ids", at::kInt, means2d, {height, width});
  v_image = farg(v_image, "v_colors", means2d, {height, width, c});
  v_alphas = farg(v_alphas, "v_alphas", means2d, {height, width, 1});
  const auto f = r.means2d.options();
  Tensor v_means2d = torch::zeros({n, 2}, f), v_conics = torch::zeros({n, 3}, f);
  Tensor v_colors = torch::zeros({n, c}, f), v_opacities = torch::zeros({n}, f);
  og::RasterBackwardIO io;
  io.transmittance = transmittance.data_ptr<float>();
  io.last_ids = last_ids.data_ptr<int32_t>();
  io.v_colors = v_image.data_ptr<float>();
  io.v_alphas = v_alphas.data_ptr<float>();
  io.v_means2d = v_means2d.data_ptr<float>();
  io.v_conics = v_conics.data_ptr<float>();
  io.v_colors_g = v_colors.data_ptr<float>();
  io.v_opacities = v_opacities.data_ptr<float>();
  check_launch(og::launch_rasterize_backward(r.p, io, stream()), "rasterize_backward");
  return {v_means2d, v_conics, v_colors, v_opacities};
}

og::SHParams sh_params(int64_t degree, Tensor& dirs, Tensor& coeffs) {
  TORCH_CHECK_VALUE(degree >= 0 && degree <= 3, "gaussians_cuda: SH degree must be in 0..3, got ", degree);
  dirs = farg(dirs, "dirs", dirs, {-1, 3});
  const int64_t n = dirs.size(0);
  coeffs = farg(coeffs, "coeffs", dirs, {n, -1, 3});
  TORCH_CHECK_VALUE(coeffs.size(1) >= (degree + 1) * (degree + 1), "gaussians_cuda: coeffs [N, K, 3] needs K >= ",
                    (degree + 1) * (degree + 1), " for degree ", degree, ", got ", coeffs.sizes());
  og::SHParams p;
  p.n = n;
  p.degree = static_cast<int>(degree);
  p.num_coeffs = static_cast<int>(coeffs.size(1));
  p.dirs = dirs.data_ptr<float>();
  p.coeffs = coeffs.data_ptr<float>();
  return p;
}

Tensor sh_forward(int64_t degree, Tensor dirs, Tensor coeffs) {
  const c10::cuda::OptionalCUDAGuard guard(dirs.device());
  og::SHParams p = sh_params(degree, dirs, coeffs);
  Tensor out = torch::empty({p.n, 3}, dirs.options());
  p.out = out.data_ptr<float>();
  check_launch(og::launch_sh_forward(p, stream()), "sh_forward");
  return out;
}

// -> (v_dirs [N,3] or None, v_coeffs [N,K,3] or None)
std::tuple<Tensor, Tensor> sh_backward(int64_t degree, Tensor dirs, Tensor coeffs, Tensor v_out, bool need_dirs,
                                       bool need_coeffs) {
  const c10::cuda::OptionalCUDAGuard guard(dirs.device());
  og::SHParams p = sh_params(degree, dirs, coeffs);
  v_out = farg(v_out, "v_colors", dirs, {p.n, 3});
  p.v_out = v_out.data_ptr<float>();
  Tensor v_dirs = need_dirs ? torch::empty({p.n, 3}, dirs.options()) : Tensor();
  Tensor v_coeffs = need_coeffs ? torch::empty_like(coeffs) : Tensor();
  p.v_dirs = need_dirs ? v_dirs.data_ptr<float>() : nullptr;
  p.v_coeffs = need_coeffs ? v_coeffs.data_ptr<float>() : nullptr;
  if (need_dirs || need_coeffs) check_launch(og::launch_sh_backward(p, stream()), "sh_backward");
  return {v_dirs, v_coeffs};
}

og::Slice4DParams slice_params(Tensor& means4, Tensor& scales4, Tensor& q_left, Tensor& q_right, double t) {
  means4 = farg(means4, "means4", means4, {-1, 4});
  const int64_t n = means4.size(0);
  scales4 = farg(scales4, "scales4", means4, {n, 4});
  q_left = farg(q_left, "q_left", means4, {n, 4});
  q_right = farg(q_right, "q_right", means4, {n, 4});
  og::Slice4DParams p;
  p.n = n;
  p.t = static_cast<float>(t);
  p.means4 = means4.data_ptr<float>();
  p.scales4 = scales4.data_ptr<float>();
  p.q_left = q_left.data_ptr<float>();
  p.q_right = q_right.data_ptr<float>();
  return p;
}

// -> (means3 [N,3], covars3 [N,3,3], marginal [N])
std::tuple<Tensor, Tensor, Tensor> slice_forward(Tensor means4, Tensor scales4, Tensor q_left, Tensor q_right,
                                                 double t) {
  const c10::cuda::OptionalCUDAGuard guard(means4.device());
  og::Slice4DParams p = slice_params(means4, scales4, q_left, q_right, t);
  const auto f = means4.options();
  Tensor means3 = torch::empty({p.n, 3}, f), covars3 = torch::empty({p.n, 3, 3}, f), marg = torch::empty({p.n}, f);
  p.means3 = means3.data_ptr<float>();
  p.covars3 = covars3.data_ptr<float>();
  p.marginal = marg.data_ptr<float>();
  check_launch(og::launch_slice_4d_forward(p, stream()), "slice_forward");
  return {means3, covars3, marg};
}

// -> (v_means4, v_scales4, v_q_left, v_q_right), each [N,4]
std::tuple<Tensor, Tensor, Tensor, Tensor> slice_backward(Tensor means4, Tensor scales4, Tensor q_left,
                                                          Tensor q_right, double t, Tensor v_means3,
                                                          Tensor v_covars3, Tensor v_marginal) {
  const c10::cuda::OptionalCUDAGuard guard(means4.device());
  og::Slice4DParams p = slice_params(means4, scales4, q_left, q_right, t);
  v_means3 = farg(v_means3, "v_means3", means4, {p.n, 3});
  v_covars3 = farg(v_covars3, "v_covars3", means4, {p.n, 3, 3});
  v_marginal = farg(v_marginal, "v_marginal", means4, {p.n});
  const auto f = means4.options();
  Tensor vm = torch::empty({p.n, 4}, f), vs = torch::empty({p.n, 4}, f);
  Tensor vl = torch::empty({p.n, 4}, f), vr = torch::empty({p.n, 4}, f);
  p.v_means3 = v_means3.data_ptr<float>();
  p.v_covars3 = v_covars3.data_ptr<float>();
  p.v_marginal = v_marginal.data_ptr<float>();
  p.v_means4 = vm.data_ptr<float>();
  p.v_scales4 = vs.data_ptr<float>();
  p.v_q_left = vl.data_ptr<float>();
  p.v_q_right = vr.data_ptr<float>();
  check_launch(og::launch_slice_4d_backward(p, stream()), "slice_backward");
  return {vm, vs, vl, vr};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield CUDA Gaussian splatting kernels (issue 4); wrappers: omnifield.cuda.cuda_gaussians";
  m.def("project_forward", &project_forward, "EWA projection forward");
  m.def("project_backward", &project_backward, "EWA projection backward");
  m.def("quat_scale_to_covar_forward", &quat_scale_to_covar_forward, "R S S R^T from quats and scales");
  m.def("quat_scale_to_covar_backward", &quat_scale_to_covar_backward, "backward of quat_scale_to_covar");
  m.def("isect_tiles", &isect_tiles, "tile intersections: (isect_offsets, flatten_ids)");
  m.def("rasterize_forward", &rasterize_forward, "tile rasterization forward");
  m.def("rasterize_backward", &rasterize_backward, "tile rasterization backward");
  m.def("sh_forward", &sh_forward, "3DGS spherical harmonics forward");
  m.def("sh_backward", &sh_backward, "3DGS spherical harmonics backward");
  m.def("slice_forward", &slice_forward, "4DGS conditional slice forward");
  m.def("slice_backward", &slice_backward, "4DGS conditional slice backward");
}
