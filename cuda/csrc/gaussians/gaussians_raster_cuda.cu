// Tile rasterization of projected Gaussians: front-to-back alpha blending and its backward.
//
// One block per tile, one thread per pixel: blockDim.x = tile_size^2 rounded up to whole warps
// (threads past tile_size^2 own no pixel but load and reduce like the others). The tile's sorted
// intersections [isect_offsets[t], isect_offsets[t + 1]) are staged through shared memory in
// batches of blockDim.x Gaussians (mean2d, conic + opacity, id; and colours in the backward).
//
// Forward, per pixel with centre (x + 0.5, y + 0.5), T = 1 (gs_spec.md):
//   sigma = 0.5 (a dx^2 + c dy^2) + b dx dy; skip if sigma < 0;
//   alpha = min(0.99, opacity exp(-sigma)); skip if alpha < 1/255;
//   if T (1 - alpha) <= 1e-4 stop (this Gaussian not added); out += alpha T colour; T *= 1 - alpha.
//   colours = out + T background; alphas = 1 - T. The last added intersection index and T are kept.
// sigma, alpha and T use round-to-nearest intrinsics (no FMA contraction), so the backward
// re-derives exactly the forward's skip decisions.
//
// Backward, per pixel back to front from its last added Gaussian (T recovered by division):
//   dL/dalpha_i = sum_k (c_ik T_i - S_ik / (1 - alpha_i)) g_k + (v_alpha - bg . g) T_final / (1 - alpha_i)
// with S_i = sum_{j > i} c_j alpha_j T_j; then through alpha = opacity exp(-sigma) (zero where the
// 0.99 clamp is active) to opacity, conic and mean2d. Per-Gaussian sums: warp shuffles, then one
// atomicAdd per warp and value into the zero-filled gradients.
//
// Channels: templates for 1..4 channels; C > 4 runs ceil(C / 4) launches over channel chunks. The
// forward of each chunk recomputes T (identical), the first chunk writes alphas / T / last ids.
// The backward's mean/conic/opacity gradients are linear in dL/dalpha, whose channel sum splits
// over the chunks (the alpha-image term goes with the first chunk), so chunked sums are exact.
#include "gaussians_cuda.h"
#include "gaussians_cuda_common.cuh"

namespace omnifield {
namespace gaussians {
namespace {

constexpr float kMinAlpha = 1.f / 255.f;
constexpr float kMaxAlpha = 0.99f;
constexpr float kMinTransmittance = 1e-4f;
constexpr int kMaxChunk = 4;

// sigma = 0.5 (a dx dx + c dy dy) + b dx dy in torch's operation order, without FMA contraction.
__device__ __forceinline__ float splat_sigma(float a, float b, float c, float dx, float dy) {
  const float q = __fadd_rn(__fmul_rn(__fmul_rn(a, dx), dx), __fmul_rn(__fmul_rn(c, dy), dy));
  return __fadd_rn(__fmul_rn(0.5f, q), __fmul_rn(__fmul_rn(b, dx), dy));
}

// The pixel a thread owns and the tile's intersection range.
struct PixelSlot {
  bool inside;
  int64_t pix;
  float cx, cy;
  int64_t start, end;
};

__device__ __forceinline__ PixelSlot pixel_slot(const RasterParams& p) {
  PixelSlot s;
  const int ts = p.tile_size, tr = threadIdx.x;
  const int px = blockIdx.x * ts + tr % ts, py = blockIdx.y * ts + tr / ts;
  s.inside = tr < ts * ts && px < p.width && py < p.height;
  s.pix = static_cast<int64_t>(py) * p.width + px;
  s.cx = static_cast<float>(px) + 0.5f;
  s.cy = static_cast<float>(py) + 0.5f;
  const int tile = blockIdx.y * p.tile_w + blockIdx.x;
  const int n_tiles = p.tile_w * p.tile_h;
  s.start = p.isect_offsets[tile];
  s.end = tile + 1 < n_tiles ? static_cast<int64_t>(p.isect_offsets[tile + 1]) : p.n_isects;
  return s;
}

// Shared-memory batch: conic + opacity (float4), mean2d (float2), id, [colours].
struct Batch {
  float4* conic_opacity;
  float2* xy;
  int32_t* id;
  float* rgb;
};

__device__ __forceinline__ Batch carve(float4* smem, int nthreads) {
  Batch b;
  b.conic_opacity = smem;
  b.xy = reinterpret_cast<float2*>(b.conic_opacity + nthreads);
  b.id = reinterpret_cast<int32_t*>(b.xy + nthreads);
  b.rgb = reinterpret_cast<float*>(b.id + nthreads);
  return b;
}

__device__ __forceinline__ void stage(const RasterParams& p, const Batch& b, int slot, int64_t isect) {
  const int64_t g = p.flatten_ids[isect];
  b.id[slot] = static_cast<int32_t>(g);
  b.xy[slot] = make_float2(p.means2d[2 * g], p.means2d[2 * g + 1]);
  b.conic_opacity[slot] = make_float4(p.conics[3 * g], p.conics[3 * g + 1], p.conics[3 * g + 2], p.opacities[g]);
}

template <int CH>
__global__ void rasterize_forward_kernel(RasterParams p, RasterForwardOut out, int channel_offset) {
  extern __shared__ float4 smem[];
  const int nthreads = blockDim.x, tr = threadIdx.x;
  const Batch batch = carve(smem, nthreads);
  const PixelSlot s = pixel_slot(p);
  const float* colors = p.colors + channel_offset;
  float T = 1.f;
  int32_t last = -1;
  bool done = !s.inside;
  float acc[CH];
#pragma unroll
  for (int k = 0; k < CH; ++k) acc[k] = 0.f;

  for (int64_t b0 = s.start; b0 < s.end; b0 += nthreads) {
    if (__syncthreads_count(done) == nthreads) break;  // also: the previous batch is consumed
    if (b0 + tr < s.end) stage(p, batch, tr, b0 + tr);
    __syncthreads();
    const int count = static_cast<int>(min(static_cast<int64_t>(nthreads), s.end - b0));
    for (int j = 0; j < count && !done; ++j) {
      const float4 co = batch.conic_opacity[j];
      const float2 xy = batch.xy[j];
      const float dx = s.cx - xy.x, dy = s.cy - xy.y;
      const float sigma = splat_sigma(co.x, co.y, co.z, dx, dy);
      if (sigma < 0.f) continue;
      const float alpha = fminf(kMaxAlpha, __fmul_rn(co.w, expf(-sigma)));
      if (alpha < kMinAlpha) continue;
      const float next_T = __fmul_rn(T, __fsub_rn(1.f, alpha));
      if (next_T <= kMinTransmittance) {
        done = true;
        break;
      }
      const float vis = __fmul_rn(alpha, T);
      const float* c = colors + static_cast<int64_t>(batch.id[j]) * p.channels;
#pragma unroll
      for (int k = 0; k < CH; ++k) acc[k] += vis * c[k];
      T = next_T;
      last = static_cast<int32_t>(b0 + j);
    }
  }
  if (!s.inside) return;
  float* o = out.colors + s.pix * p.channels + channel_offset;
#pragma unroll
  for (int k = 0; k < CH; ++k)
    o[k] = p.backgrounds != nullptr ? acc[k] + T * p.backgrounds[channel_offset + k] : acc[k];
  if (channel_offset == 0) {
    out.alphas[s.pix] = 1.f - T;
    out.transmittance[s.pix] = T;
    out.last_ids[s.pix] = last;
  }
}

// Warp-sums v and lets lane 0 add it to *dst (all lanes must call).
__device__ __forceinline__ void warp_add(float v, float* dst, bool lane0) {
  v = detail::warp_sum(v);
  if (lane0 && v != 0.f) atomicAdd(dst, v);
}

template <int CH>
__global__ void rasterize_backward_kernel(RasterParams p, RasterBackwardIO io, int channel_offset) {
  extern __shared__ float4 smem[];
  __shared__ int max_last;
  const int nthreads = blockDim.x, tr = threadIdx.x;
  const bool lane0 = (tr & 31) == 0;
  const Batch batch = carve(smem, nthreads);
  const PixelSlot s = pixel_slot(p);
  if (tr == 0) max_last = -1;
  __syncthreads();

  float T_final = 1.f, v_alpha_img = 0.f, bg_dot = 0.f;
  int32_t last = -1;
  float v_out[CH], buffer[CH];
#pragma unroll
  for (int k = 0; k < CH; ++k) v_out[k] = buffer[k] = 0.f;
  if (s.inside) {
    T_final = io.transmittance[s.pix];
    last = io.last_ids[s.pix];
#pragma unroll
    for (int k = 0; k < CH; ++k) v_out[k] = io.v_colors[s.pix * p.channels + channel_offset + k];
    if (channel_offset == 0) v_alpha_img = io.v_alphas[s.pix];
    if (p.backgrounds != nullptr)
#pragma unroll
      for (int k = 0; k < CH; ++k) bg_dot += p.backgrounds[channel_offset + k] * v_out[k];
    if (last >= 0) atomicMax(&max_last, last);
  }
  __syncthreads();
  const int64_t stop = min(s.end, static_cast<int64_t>(max_last) + 1);  // no pixel used anything later
  float T = T_final;

  for (int64_t b_end = stop; b_end > s.start; b_end -= nthreads) {
    __syncthreads();  // the previous batch is consumed
    const int64_t isect = b_end - 1 - tr;
    if (isect >= s.start) {
      stage(p, batch, tr, isect);
      const float* c = p.colors + static_cast<int64_t>(batch.id[tr]) * p.channels + channel_offset;
#pragma unroll
      for (int k = 0; k < CH; ++k) batch.rgb[tr * CH + k] = c[k];
    }
    __syncthreads();
    const int count = static_cast<int>(min(static_cast<int64_t>(nthreads), b_end - s.start));
    for (int j = 0; j < count; ++j) {
      bool valid = s.inside && b_end - 1 - j <= last;
      float4 co = make_float4(0.f, 0.f, 0.f, 0.f);
      float dx = 0.f, dy = 0.f, vis = 0.f, alpha = 0.f;
      if (valid) {
        co = batch.conic_opacity[j];
        const float2 xy = batch.xy[j];
        dx = s.cx - xy.x;
        dy = s.cy - xy.y;
        const float sigma = splat_sigma(co.x, co.y, co.z, dx, dy);
        if (sigma < 0.f) {
          valid = false;
        } else {
          vis = expf(-sigma);
          alpha = fminf(kMaxAlpha, __fmul_rn(co.w, vis));
          valid = alpha >= kMinAlpha;
        }
      }
      if (!__any_sync(detail::kFullMask, valid)) continue;
      float g_rgb[CH], g_a = 0.f, g_b = 0.f, g_c = 0.f, g_x = 0.f, g_y = 0.f, g_op = 0.f;
#pragma unroll
      for (int k = 0; k < CH; ++k) g_rgb[k] = 0.f;
      if (valid) {
        const float ra = 1.f / (1.f - alpha);
        T *= ra;  // transmittance in front of this Gaussian
        const float fac = alpha * T;
        float v_alpha = (v_alpha_img - bg_dot) * T_final * ra;
#pragma unroll
        for (int k = 0; k < CH; ++k) {
          const float c = batch.rgb[j * CH + k];
          g_rgb[k] = fac * v_out[k];
          v_alpha += (c * T - buffer[k] * ra) * v_out[k];
          buffer[k] += c * fac;
        }
        if (__fmul_rn(co.w, vis) <= kMaxAlpha) {
          const float v_sigma = -co.w * vis * v_alpha;
          g_a = 0.5f * v_sigma * dx * dx;
          g_b = v_sigma * dx * dy;
          g_c = 0.5f * v_sigma * dy * dy;
          g_x = -v_sigma * (co.x * dx + co.y * dy);
          g_y = -v_sigma * (co.y * dx + co.z * dy);
          g_op = vis * v_alpha;
        }
      }
      const int64_t g = batch.id[j];
      warp_add(g_x, io.v_means2d + 2 * g, lane0);
      warp_add(g_y, io.v_means2d + 2 * g + 1, lane0);
      warp_add(g_a, io.v_conics + 3 * g, lane0);
      warp_add(g_b, io.v_conics + 3 * g + 1, lane0);
      warp_add(g_c, io.v_conics + 3 * g + 2, lane0);
      warp_add(g_op, io.v_opacities + g, lane0);
#pragma unroll
      for (int k = 0; k < CH; ++k) warp_add(g_rgb[k], io.v_colors_g + g * p.channels + channel_offset + k, lane0);
    }
  }
}

int block_threads(int tile_size) { return (tile_size * tile_size + 31) / 32 * 32; }

template <int CH>
void forward_chunk(const RasterParams& p, const RasterForwardOut& out, int offset, cudaStream_t stream) {
  const int nthreads = block_threads(p.tile_size);
  const size_t smem = static_cast<size_t>(nthreads) * (sizeof(float4) + sizeof(float2) + sizeof(int32_t));
  const dim3 grid(p.tile_w, p.tile_h);
  rasterize_forward_kernel<CH><<<grid, nthreads, smem, stream>>>(p, out, offset);
}

template <int CH>
void backward_chunk(const RasterParams& p, const RasterBackwardIO& io, int offset, cudaStream_t stream) {
  const int nthreads = block_threads(p.tile_size);
  const size_t smem =
      static_cast<size_t>(nthreads) * (sizeof(float4) + sizeof(float2) + sizeof(int32_t) + CH * sizeof(float));
  const dim3 grid(p.tile_w, p.tile_h);
  rasterize_backward_kernel<CH><<<grid, nthreads, smem, stream>>>(p, io, offset);
}

}  // namespace

cudaError_t launch_rasterize_forward(const RasterParams& p, const RasterForwardOut& out, cudaStream_t stream) {
  if (p.tile_w <= 0 || p.tile_h <= 0 || p.channels <= 0) return cudaSuccess;
  for (int offset = 0; offset < p.channels; offset += kMaxChunk) {
    switch (p.channels - offset < kMaxChunk ? p.channels - offset : kMaxChunk) {
      case 1: forward_chunk<1>(p, out, offset, stream); break;
      case 2: forward_chunk<2>(p, out, offset, stream); break;
      case 3: forward_chunk<3>(p, out, offset, stream); break;
      default: forward_chunk<4>(p, out, offset, stream); break;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

cudaError_t launch_rasterize_backward(const RasterParams& p, const RasterBackwardIO& io, cudaStream_t stream) {
  if (p.tile_w <= 0 || p.tile_h <= 0 || p.channels <= 0) return cudaSuccess;
  for (int offset = 0; offset < p.channels; offset += kMaxChunk) {
    switch (p.channels - offset < kMaxChunk ? p.channels - offset : kMaxChunk) {
      case 1: backward_chunk<1>(p, io, offset, stream); break;
      case 2: backward_chunk<2>(p, io, offset, stream); break;
      case 3: backward_chunk<3>(p, io, offset, stream); break;
      default: backward_chunk<4>(p, io, offset, stream); break;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace gaussians
}  // namespace omnifield
