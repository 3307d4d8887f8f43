// Emission-absorption weights of packed samples (Max 1995; NeRF eq. 3): C++ CPU kernel.
//
// Same semantics as the pure-PyTorch oracle cuda/reference/compositing.py render_weights:
//   s_i = sigma_i * (t_end_i - t_start_i), alpha_i = 1 - exp(-s_i),
//   T_i = exp(-sum_{j<i} s_j) (the sum over the ray's earlier samples, accumulated in double),
//   w_i = T_i * alpha_i.
// Samples of ray r are packed_info[r] = (first, count); rays own disjoint ranges, so the work is
// split over rays (at::parallel_for, torch.get_num_threads()) without races.
//
// Backward (first order), per ray in O(count) with a suffix sum (as nerfacc does), upstream grads
// gw, gT, ga of weights, transmittance and alphas (each optional):
//   dL/ds_k = exp(-s_k) * (ga_k + gw_k * T_k) - sum_{i>k} (gw_i * w_i + gT_i * T_i)
// since dalpha_k/ds_k = exp(-s_k), dT_i/ds_k = -T_i for i > k (0 otherwise), dw_i = a_i dT_i + T_i da_i.
// Then dL/dsigma = dL/ds * delta, dL/dt_end = dL/ds * sigma = -dL/dt_start.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kRayGrain = 256;  // rays per parallel task, at least

void check_samples(const torch::Tensor& sigmas, const torch::Tensor& t_starts, const torch::Tensor& t_ends,
                   const torch::Tensor& packed_info) {
  const auto dtype = sigmas.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kDouble, "compositing_cpu: float32 or float64 sigmas, got ", dtype);
  TORCH_CHECK(sigmas.dim() == 1, "compositing_cpu: sigmas must be [S], got ", sigmas.sizes());
  for (const auto* t : {&sigmas, &t_starts, &t_ends}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->sizes() == sigmas.sizes(),
                "compositing_cpu: sigmas, t_starts and t_ends must be CPU [S] tensors of one dtype");
  }
  TORCH_CHECK(packed_info.device().is_cpu() && packed_info.scalar_type() == torch::kLong && packed_info.dim() == 2 &&
                  packed_info.size(1) == 2,
              "compositing_cpu: packed_info must be CPU int64 [R, 2], got ", packed_info.sizes());
  const int64_t n = sigmas.size(0);
  const int64_t* info = packed_info.data_ptr<int64_t>();
  for (int64_t r = 0; r < packed_info.size(0); ++r) {
    const int64_t first = info[2 * r], count = info[2 * r + 1];
    TORCH_CHECK(count >= 0 && (count == 0 || (first >= 0 && first + count <= n)), "compositing_cpu: packed_info[", r,
                "] = (", first, ", ", count, ") is outside the ", n, " samples");
  }
}

template <typename scalar_t>
inline scalar_t sigma_delta(const scalar_t* sg, const scalar_t* ts, const scalar_t* te, int64_t i) {
  return sg[i] * (te[i] - ts[i]);
}

}  // namespace

// -> {weights [S], transmittance [S], alphas [S]}
std::vector<torch::Tensor> render_weights_forward(torch::Tensor sigmas, torch::Tensor t_starts, torch::Tensor t_ends,
                                                  torch::Tensor packed_info) {
  packed_info = packed_info.contiguous();
  check_samples(sigmas, t_starts, t_ends, packed_info);
  sigmas = sigmas.contiguous();
  t_starts = t_starts.contiguous();
  t_ends = t_ends.contiguous();
  // Zeros: samples outside every ray's range (a malformed packed_info) stay defined.
  auto weights = torch::zeros_like(sigmas);
  auto trans = torch::zeros_like(sigmas);
  auto alphas = torch::zeros_like(sigmas);
  const int64_t n_rays = packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_weights_forward_cpu", [&] {
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* ts = t_starts.data_ptr<scalar_t>();
    const scalar_t* te = t_ends.data_ptr<scalar_t>();
    const int64_t* info = packed_info.data_ptr<int64_t>();
    scalar_t* wp = weights.data_ptr<scalar_t>();
    scalar_t* tp = trans.data_ptr<scalar_t>();
    scalar_t* ap = alphas.data_ptr<scalar_t>();
    at::parallel_for(0, n_rays, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t first = info[2 * r], last = first + info[2 * r + 1];
        double optical_depth = 0;  // exclusive prefix sum, in double like the reference
        for (int64_t i = first; i < last; ++i) {
          const scalar_t s = sigma_delta(sg, ts, te, i);
          const scalar_t a = scalar_t(1) - std::exp(-s);
          const scalar_t t = std::exp(-static_cast<scalar_t>(optical_depth));
          ap[i] = a;
          tp[i] = t;
          wp[i] = t * a;
          optical_depth += static_cast<double>(s);
        }
      }
    });
  });
  return {weights, trans, alphas};
}

// -> {grad_sigmas, grad_t_starts, grad_t_ends} (undefined where not asked). Upstream grads may be None.
std::vector<torch::Tensor> render_weights_backward(c10::optional<torch::Tensor> grad_weights,
                                                   c10::optional<torch::Tensor> grad_trans,
                                                   c10::optional<torch::Tensor> grad_alphas, torch::Tensor sigmas,
                                                   torch::Tensor t_starts, torch::Tensor t_ends, torch::Tensor packed_info,
                                                   torch::Tensor trans, bool need_sigmas, bool need_times) {
  packed_info = packed_info.contiguous();
  check_samples(sigmas, t_starts, t_ends, packed_info);
  TORCH_CHECK(trans.sizes() == sigmas.sizes() && trans.scalar_type() == sigmas.scalar_type(),
              "compositing_cpu: saved transmittance must be [S] like sigmas");
  sigmas = sigmas.contiguous();
  t_starts = t_starts.contiguous();
  t_ends = t_ends.contiguous();
  trans = trans.contiguous();
  auto upstream = [&](c10::optional<torch::Tensor>& g) {
    if (!g.has_value() || !g->defined()) return torch::Tensor();
    TORCH_CHECK(g->sizes() == sigmas.sizes(), "compositing_cpu: upstream gradients must be [S], got ", g->sizes());
    return g->to(sigmas.scalar_type()).contiguous();
  };
  const torch::Tensor gw = upstream(grad_weights), gt = upstream(grad_trans), ga = upstream(grad_alphas);
  torch::Tensor grad_sigmas, grad_starts, grad_ends;
  if (need_sigmas) grad_sigmas = torch::zeros_like(sigmas);
  if (need_times) {
    grad_starts = torch::zeros_like(sigmas);
    grad_ends = torch::zeros_like(sigmas);
  }
  if (!need_sigmas && !need_times) return {grad_sigmas, grad_starts, grad_ends};
  const int64_t n_rays = packed_info.size(0);
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "render_weights_backward_cpu", [&] {
    const scalar_t* sg = sigmas.data_ptr<scalar_t>();
    const scalar_t* ts = t_starts.data_ptr<scalar_t>();
    const scalar_t* te = t_ends.data_ptr<scalar_t>();
    const scalar_t* tp = trans.data_ptr<scalar_t>();
    const int64_t* info = packed_info.data_ptr<int64_t>();
    const scalar_t* gwp = gw.defined() ? gw.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gtp = gt.defined() ? gt.data_ptr<scalar_t>() : nullptr;
    const scalar_t* gap = ga.defined() ? ga.data_ptr<scalar_t>() : nullptr;
    scalar_t* gsp = need_sigmas ? grad_sigmas.data_ptr<scalar_t>() : nullptr;
    scalar_t* gsta = need_times ? grad_starts.data_ptr<scalar_t>() : nullptr;
    scalar_t* gend = need_times ? grad_ends.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, n_rays, kRayGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t first = info[2 * r], last = first + info[2 * r + 1];
        double suffix = 0;  // sum_{i>k} (gw_i w_i + gT_i T_i)
        for (int64_t k = last - 1; k >= first; --k) {
          const scalar_t s = sigma_delta(sg, ts, te, k);
          const scalar_t e = std::exp(-s);
          const double t = static_cast<double>(tp[k]);
          const double w = t * static_cast<double>(scalar_t(1) - e);
          const double gwk = gwp ? static_cast<double>(gwp[k]) : 0.0;
          const double gak = gap ? static_cast<double>(gap[k]) : 0.0;
          const double g = static_cast<double>(e) * (gak + gwk * t) - suffix;
          suffix += gwk * w + (gtp ? static_cast<double>(gtp[k]) * t : 0.0);
          if (gsp) gsp[k] = static_cast<scalar_t>(g * static_cast<double>(te[k] - ts[k]));
          if (gsta) {
            const double gt_end = g * static_cast<double>(sg[k]);
            gend[k] = static_cast<scalar_t>(gt_end);
            gsta[k] = static_cast<scalar_t>(-gt_end);
          }
        }
      }
    });
  });
  return {grad_sigmas, grad_starts, grad_ends};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield packed volume-rendering weights, C++ CPU kernel (OpenMP via at::parallel_for)";
  m.def("forward", &render_weights_forward,
        "forward: (sigmas [S], t_starts [S], t_ends [S], packed_info [R,2]) -> [weights, transmittance, alphas]");
  m.def("backward", &render_weights_backward,
        "backward: (grad_weights, grad_trans, grad_alphas (each [S] or None), sigmas, t_starts, t_ends, packed_info, "
        "transmittance, need_sigmas, need_times) -> [grad_sigmas, grad_t_starts, grad_t_ends]");
  m.def("num_threads", []() { return at::get_num_threads(); });
}
