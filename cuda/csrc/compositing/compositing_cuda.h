// CUDA kernels of volume-rendering compositing on packed samples (issue 5): emission-absorption
// weights and fused compositing with early ray termination, forward and backward. No torch.
//
// Packed samples (nerfacc): ray r owns samples [first, first + count) with packed_info[r] =
// (first, count) (int64 [R,2]); a range outside [0, S) is treated as an empty ray. One thread per
// ray walks its samples in order (the reference accumulates along the ray in float64: so do these).
// Per sample: s = sigma * (t_end - t_start), alpha = 1 - exp(-s), T = exp(-(float)sum_{j<i} s_j)
// with the sum in double, w = T * alpha (the float32 operations of cuda/reference/compositing.py).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace omnifield {
namespace compositing {

struct Samples {
  int64_t n_rays = 0;
  int64_t n_samples = 0;
  const int64_t* packed_info = nullptr;  // [R,2]
  const float* sigmas = nullptr;         // [S]
  const float* t_starts = nullptr;       // [S]
  const float* t_ends = nullptr;         // [S]
};

// render_weights. Forward writes weights, trans, alphas [S] (the glue zero-fills them: samples
// outside every ray stay 0). Backward, per ray from the last sample to the first with a suffix
// sum (nerfacc), upstream gradients gw, gT, ga (each optional: nullptr = zero):
//   dL/ds_k = exp(-s_k) (ga_k + gw_k T_k) - sum_{i>k} (gw_i w_i + gT_i T_i),
//   dL/dsigma_k = dL/ds_k * delta_k, dL/dt_end_k = dL/ds_k * sigma_k = -dL/dt_start_k.
struct WeightsIO {
  float* weights = nullptr;         // forward outputs [S]
  float* trans = nullptr;
  float* alphas = nullptr;
  const float* saved_trans = nullptr;  // backward: the forward's transmittance [S]
  const float* v_weights = nullptr;    // backward upstream [S] or nullptr
  const float* v_trans = nullptr;
  const float* v_alphas = nullptr;
  float* v_sigmas = nullptr;        // backward outputs [S] or nullptr (zero-filled by the glue)
  float* v_t_starts = nullptr;
  float* v_t_ends = nullptr;
};

cudaError_t launch_render_weights_forward(const Samples& s, const WeightsIO& io, cudaStream_t stream);
cudaError_t launch_render_weights_backward(const Samples& s, const WeightsIO& io, cudaStream_t stream);

// composite_rays: out [R,C] = sum w v, depth [R] = sum w t_mid (t_mid = 0.5 (t_start + t_end)),
// acc [R] = sum w over the samples of a ray until the first with T < early_stop_eps (when eps > 0;
// with non-negative sigma * delta T never increases, so this equals the reference's mask).
// Forward: channels in chunks of 4 (one thread per ray and chunk, double accumulators).
// Backward (Instant-NGP), one thread per ray from the saved outputs: with u_i = sum_c g_c v_ic +
// g_depth t_mid_i + g_acc and U = sum_c g_c out_c + g_depth depth + g_acc acc,
//   dL/ds_k = T_k exp(-s_k) u_k - (U - sum_{i<=k} w_i u_i), dL/dv_kc = w_k g_c,
// and the intervals' gradients as for render_weights.
struct CompositeIO {
  int channels = 0;                  // C
  float early_stop_eps = 0.0f;
  const float* values = nullptr;     // [S,C]
  float* out = nullptr;              // forward outputs (zero-filled by the glue): [R,C]
  float* depth = nullptr;            // [R]
  float* acc = nullptr;              // [R]
  const float* saved_out = nullptr;  // backward: the forward's outputs
  const float* saved_depth = nullptr;
  const float* saved_acc = nullptr;
  const float* v_out = nullptr;      // backward upstream (nullptr = zero): [R,C]
  const float* v_depth = nullptr;    // [R]
  const float* v_acc = nullptr;      // [R]
  float* v_sigmas = nullptr;         // backward outputs (zero-filled by the glue) or nullptr: [S]
  float* v_values = nullptr;         // [S,C]
  float* v_t_starts = nullptr;       // [S]
  float* v_t_ends = nullptr;         // [S]
};

cudaError_t launch_composite_forward(const Samples& s, const CompositeIO& io, cudaStream_t stream);
cudaError_t launch_composite_backward(const Samples& s, const CompositeIO& io, cudaStream_t stream);

}  // namespace compositing
}  // namespace omnifield
