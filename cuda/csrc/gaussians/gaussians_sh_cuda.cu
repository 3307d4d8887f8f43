// View-dependent colour from real spherical harmonics (the 3DGS basis, degree 0..3) and the 4DGS
// slice (Yang et al. 2024): dense per-Gaussian math, one thread per Gaussian, forward and backward.
//
// SH: n = dir / max(|dir|, 1e-12); out = sum_{k < (degree+1)^2} basis_k(n) coeffs[k] (no +0.5).
// Backward: v_coeffs[k] = basis_k v_out (zero for unused k); v_n = sum_k (coeffs[k] . v_out) grad basis_k,
// then through the normalisation: v_dir = (v_n - n (n . v_n)) / |dir|.
//
// 4D slice: q_l, q_r normalised; R4 = L(q_l) R(q_r) with the left / right isoclinic matrices of
// the paper (L(a,b,c,d) = [[a,-b,-c,-d],[b,a,-d,c],[c,d,a,-b],[d,-c,b,a]],
// R(p,q,r,s) = [[p,-q,-r,-s],[q,p,s,-r],[r,-s,p,q],[s,r,-q,p]]), acting on (x, y, z, t);
// Sigma4 = R4 diag(s^2) R4^T; with S12 = Sigma4[0:3, 3], s_tt = Sigma4[3, 3], dt = t - mu_t:
// mu3 = mu_xyz + S12 dt / s_tt, Sigma3 = Sigma4[0:3, 0:3] - S12 S12^T / s_tt,
// marginal = exp(-0.5 dt^2 / s_tt), s_tt clamped below at 1e-12 like the reference
// (cuda/reference/gaussians4d.py, whose conventions these are). The backward accepts any (not only
// symmetric) v_Sigma3; the gradient w.r.t. t (dt = t - mu_t) is -sum v_mu_t, left to the caller.
#include "gaussians_cuda.h"
#include "gaussians_cuda_common.cuh"

namespace omnifield {
namespace gaussians {
namespace {

constexpr int kThreads = 256;

constexpr float C0 = 0.28209479177387814f;
constexpr float C1 = 0.4886025119029199f;
constexpr float C20 = 1.0925484305920792f, C21 = -1.0925484305920792f, C22 = 0.31539156525252005f,
                C23 = -1.0925484305920792f, C24 = 0.5462742152960396f;
constexpr float C30 = -0.5900435899266435f, C31 = 2.890611442640554f, C32 = -0.4570457994644658f,
                C33 = 0.3731763325901154f, C34 = -0.4570457994644658f, C35 = 1.445305721320277f,
                C36 = -0.5900435899266435f;

// Basis values b[0..(degree+1)^2) at the unit direction (x, y, z); with grad, also d b / d(x, y, z).
__device__ __forceinline__ void sh_basis(int degree, float x, float y, float z, float* b, float (*g)[3]) {
  b[0] = C0;
  if (g) g[0][0] = g[0][1] = g[0][2] = 0.f;
  if (degree < 1) return;
  b[1] = -C1 * y;
  b[2] = C1 * z;
  b[3] = -C1 * x;
  if (g) {
    g[1][0] = 0.f, g[1][1] = -C1, g[1][2] = 0.f;
    g[2][0] = 0.f, g[2][1] = 0.f, g[2][2] = C1;
    g[3][0] = -C1, g[3][1] = 0.f, g[3][2] = 0.f;
  }
  if (degree < 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = C20 * xy;
  b[5] = C21 * yz;
  b[6] = C22 * (2.f * zz - xx - yy);
  b[7] = C23 * xz;
  b[8] = C24 * (xx - yy);
  if (g) {
    g[4][0] = C20 * y, g[4][1] = C20 * x, g[4][2] = 0.f;
    g[5][0] = 0.f, g[5][1] = C21 * z, g[5][2] = C21 * y;
    g[6][0] = -2.f * C22 * x, g[6][1] = -2.f * C22 * y, g[6][2] = 4.f * C22 * z;
    g[7][0] = C23 * z, g[7][1] = 0.f, g[7][2] = C23 * x;
    g[8][0] = 2.f * C24 * x, g[8][1] = -2.f * C24 * y, g[8][2] = 0.f;
  }
  if (degree < 3) return;
  b[9] = C30 * y * (3.f * xx - yy);
  b[10] = C31 * xy * z;
  b[11] = C32 * y * (4.f * zz - xx - yy);
  b[12] = C33 * z * (2.f * zz - 3.f * xx - 3.f * yy);
  b[13] = C34 * x * (4.f * zz - xx - yy);
  b[14] = C35 * z * (xx - yy);
  b[15] = C36 * x * (xx - 3.f * yy);
  if (g) {
    g[9][0] = 6.f * C30 * xy, g[9][1] = 3.f * C30 * (xx - yy), g[9][2] = 0.f;
    g[10][0] = C31 * yz, g[10][1] = C31 * xz, g[10][2] = C31 * xy;
    g[11][0] = -2.f * C32 * xy, g[11][1] = C32 * (4.f * zz - xx - 3.f * yy), g[11][2] = 8.f * C32 * yz;
    g[12][0] = -6.f * C33 * xz, g[12][1] = -6.f * C33 * yz, g[12][2] = C33 * (6.f * zz - 3.f * xx - 3.f * yy);
    g[13][0] = C34 * (4.f * zz - 3.f * xx - yy), g[13][1] = -2.f * C34 * xy, g[13][2] = 8.f * C34 * xz;
    g[14][0] = 2.f * C35 * xz, g[14][1] = -2.f * C35 * yz, g[14][2] = C35 * (xx - yy);
    g[15][0] = 3.f * C36 * (xx - yy), g[15][1] = -6.f * C36 * xy, g[15][2] = 0.f;
  }
}

__device__ __forceinline__ float unit_dir(const float* d, float* n) {
  const float norm = fmaxf(sqrtf(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
#pragma unroll
  for (int k = 0; k < 3; ++k) n[k] = d[k] / norm;
  return norm;
}

__global__ void __launch_bounds__(kThreads) sh_forward_kernel(SHParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float n[3], b[16];
  unit_dir(p.dirs + 3 * i, n);
  sh_basis(p.degree, n[0], n[1], n[2], b, nullptr);
  const int used = (p.degree + 1) * (p.degree + 1);
  const float* c = p.coeffs + 3 * p.num_coeffs * i;
  float out[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < 16; ++k) {  // unrolled: b stays in registers
    if (k < used) {
#pragma unroll
      for (int ch = 0; ch < 3; ++ch) out[ch] += b[k] * c[3 * k + ch];
    }
  }
#pragma unroll
  for (int ch = 0; ch < 3; ++ch) p.out[3 * i + ch] = out[ch];
}

__global__ void __launch_bounds__(kThreads) sh_backward_kernel(SHParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float n[3], b[16], g[16][3];
  const float norm = unit_dir(p.dirs + 3 * i, n);
  sh_basis(p.degree, n[0], n[1], n[2], b, g);
  const int used = (p.degree + 1) * (p.degree + 1);
  const float vo[3] = {p.v_out[3 * i], p.v_out[3 * i + 1], p.v_out[3 * i + 2]};
  if (p.v_coeffs != nullptr) {
    float* vc = p.v_coeffs + 3 * p.num_coeffs * i;
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      if (k < p.num_coeffs) {
#pragma unroll
        for (int ch = 0; ch < 3; ++ch) vc[3 * k + ch] = k < used ? b[k] * vo[ch] : 0.f;
      }
    }
    for (int k = 16; k < p.num_coeffs; ++k)
#pragma unroll
      for (int ch = 0; ch < 3; ++ch) vc[3 * k + ch] = 0.f;
  }
  if (p.v_dirs == nullptr) return;
  const float* c = p.coeffs + 3 * p.num_coeffs * i;
  float vn[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 1; k < 16; ++k) {
    if (k < used) {
      const float w = c[3 * k] * vo[0] + c[3 * k + 1] * vo[1] + c[3 * k + 2] * vo[2];
#pragma unroll
      for (int a = 0; a < 3; ++a) vn[a] += w * g[k][a];
    }
  }
  const float dot = n[0] * vn[0] + n[1] * vn[1] + n[2] * vn[2];
#pragma unroll
  for (int a = 0; a < 3; ++a) p.v_dirs[3 * i + a] = (vn[a] - n[a] * dot) / norm;
}

// ------------------------------------------------------------------------------------------
// 4D slicing

__device__ __forceinline__ float load_unit4(const float* src, float* q) {
  const float norm = sqrtf(src[0] * src[0] + src[1] * src[1] + src[2] * src[2] + src[3] * src[3]);
#pragma unroll
  for (int k = 0; k < 4; ++k) q[k] = src[k] / norm;
  return norm;
}

// Left isoclinic matrix L(a, b, c, d), row-major 4x4.
__device__ __forceinline__ void iso_left(const float* q, float* L) {
  const float a = q[0], b = q[1], c = q[2], d = q[3];
  const float m[16] = {a, -b, -c, -d, b, a, -d, c, c, d, a, -b, d, -c, b, a};
#pragma unroll
  for (int k = 0; k < 16; ++k) L[k] = m[k];
}

// Right isoclinic matrix R(p, q, r, s).
__device__ __forceinline__ void iso_right(const float* q, float* R) {
  const float p = q[0], x = q[1], r = q[2], s = q[3];
  const float m[16] = {p, -x, -r, -s, x, p, s, -r, r, -s, p, x, s, r, -x, p};
#pragma unroll
  for (int k = 0; k < 16; ++k) R[k] = m[k];
}

// Gradients of the quaternions from the gradients of L and R (transposes of the layouts above).
__device__ __forceinline__ void iso_left_grad(const float* v, float* vq) {
  vq[0] = v[0] + v[5] + v[10] + v[15];
  vq[1] = -v[1] + v[4] - v[11] + v[14];
  vq[2] = -v[2] + v[7] + v[8] - v[13];
  vq[3] = -v[3] - v[6] + v[9] + v[12];
}

__device__ __forceinline__ void iso_right_grad(const float* v, float* vq) {
  vq[0] = v[0] + v[5] + v[10] + v[15];
  vq[1] = -v[1] + v[4] + v[11] - v[14];
  vq[2] = -v[2] - v[7] + v[8] + v[13];
  vq[3] = -v[3] + v[6] - v[9] + v[12];
}

// c = a b (4x4).
__device__ __forceinline__ void mat4_mul(const float* a, const float* b, float* c) {
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
      c[4 * i + j] = a[4 * i] * b[j] + a[4 * i + 1] * b[4 + j] + a[4 * i + 2] * b[8 + j] + a[4 * i + 3] * b[12 + j];
}

struct Slice {
  float ql[4], qr[4], nl, nr;  // unit quaternions and the input norms
  float L[16], Rr[16], R4[16];
  float s[4], var[4];          // scales and their squares
  float sig[16];               // Sigma4
  float dt;
};

__device__ __forceinline__ void slice_setup(const Slice4DParams& p, int64_t i, Slice& e) {
  e.nl = load_unit4(p.q_left + 4 * i, e.ql);
  e.nr = load_unit4(p.q_right + 4 * i, e.qr);
  iso_left(e.ql, e.L);
  iso_right(e.qr, e.Rr);
  mat4_mul(e.L, e.Rr, e.R4);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    e.s[k] = p.scales4[4 * i + k];
    e.var[k] = e.s[k] * e.s[k];
  }
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) acc += e.R4[4 * a + k] * e.var[k] * e.R4[4 * b + k];
      e.sig[4 * a + b] = acc;
    }
  e.dt = p.t - p.means4[4 * i + 3];
}

// s_tt clamped below (the reference's MIN_TIME_VARIANCE; inactive for scales above 1e-6).
constexpr float kMinTimeVariance = 1e-12f;

__global__ void __launch_bounds__(kThreads) slice_forward_kernel(Slice4DParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  Slice e;
  slice_setup(p, i, e);
  const float stt = fmaxf(e.sig[15], kMinTimeVariance);
  const float S12[3] = {e.sig[3], e.sig[7], e.sig[11]};
#pragma unroll
  for (int r = 0; r < 3; ++r) {
    p.means3[3 * i + r] = p.means4[4 * i + r] + S12[r] / stt * e.dt;
#pragma unroll
    for (int c = 0; c < 3; ++c) p.covars3[9 * i + 3 * r + c] = e.sig[4 * r + c] - S12[r] * S12[c] / stt;
  }
  p.marginal[i] = expf(-0.5f * e.dt * e.dt / stt);
}

__global__ void __launch_bounds__(kThreads) slice_backward_kernel(Slice4DParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  Slice e;
  slice_setup(p, i, e);
  const bool stt_free = e.sig[15] >= kMinTimeVariance;  // torch.clamp_min passes the gradient at the bound
  const float stt = fmaxf(e.sig[15], kMinTimeVariance), stt2 = stt * stt, dt = e.dt;
  const float S12[3] = {e.sig[3], e.sig[7], e.sig[11]};
  const float marg = expf(-0.5f * dt * dt / stt);
  float vmu[3], G[9];
#pragma unroll
  for (int r = 0; r < 3; ++r) vmu[r] = p.v_means3[3 * i + r];
#pragma unroll
  for (int k = 0; k < 9; ++k) G[k] = p.v_covars3[9 * i + k];
  const float vm = p.v_marginal[i];
  const float mu_dot = vmu[0] * S12[0] + vmu[1] * S12[1] + vmu[2] * S12[2];
  float sgs = 0.f;  // S12^T G S12
  float G4[16];
#pragma unroll
  for (int r = 0; r < 3; ++r) {
    float row = 0.f;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      sgs += S12[r] * G[3 * r + c] * S12[c];
      row += (G[3 * r + c] + G[3 * c + r]) * S12[c];
      G4[4 * r + c] = G[3 * r + c];
    }
    G4[4 * r + 3] = vmu[r] * dt / stt - row / stt;  // v_S12
    G4[12 + r] = 0.f;
  }
  G4[15] = stt_free ? -mu_dot * dt / stt2 + vm * marg * 0.5f * dt * dt / stt2 + sgs / stt2 : 0.f;  // v_s_tt
  const float v_dt = mu_dot / stt - vm * marg * dt / stt;
#pragma unroll
  for (int r = 0; r < 3; ++r) p.v_means4[4 * i + r] = vmu[r];
  p.v_means4[4 * i + 3] = -v_dt;
  // Sigma4 = R4 D R4^T: v_R4 = (G4 + G4^T) R4 D, v_var_k = (R4^T G4 R4)_kk.
  float H[16], vR4[16];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) H[4 * a + b] = G4[4 * a + b] + G4[4 * b + a];
  mat4_mul(H, e.R4, vR4);
#pragma unroll
  for (int k = 0; k < 16; ++k) vR4[k] *= e.var[k % 4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    float acc = 0.f;
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b) acc += e.R4[4 * a + k] * G4[4 * a + b] * e.R4[4 * b + k];
    p.v_scales4[4 * i + k] = 2.f * e.s[k] * acc;
  }
  // R4 = L Rr: v_L = v_R4 Rr^T, v_Rr = L^T v_R4.
  float vL[16], vRr[16];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      float l = 0.f, r = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        l += vR4[4 * a + k] * e.Rr[4 * b + k];
        r += e.L[4 * k + a] * vR4[4 * k + b];
      }
      vL[4 * a + b] = l;
      vRr[4 * a + b] = r;
    }
  float vql[4], vqr[4];
  iso_left_grad(vL, vql);
  iso_right_grad(vRr, vqr);
  const float dl = e.ql[0] * vql[0] + e.ql[1] * vql[1] + e.ql[2] * vql[2] + e.ql[3] * vql[3];
  const float dr = e.qr[0] * vqr[0] + e.qr[1] * vqr[1] + e.qr[2] * vqr[2] + e.qr[3] * vqr[3];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    p.v_q_left[4 * i + k] = (vql[k] - e.ql[k] * dl) / e.nl;
    p.v_q_right[4 * i + k] = (vqr[k] - e.qr[k] * dr) / e.nr;
  }
}

}  // namespace

cudaError_t launch_sh_forward(const SHParams& p, cudaStream_t stream) {
  if (p.n > 0) sh_forward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_sh_backward(const SHParams& p, cudaStream_t stream) {
  if (p.n > 0) sh_backward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_slice_4d_forward(const Slice4DParams& p, cudaStream_t stream) {
  if (p.n > 0) slice_forward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_slice_4d_backward(const Slice4DParams& p, cudaStream_t stream) {
  if (p.n > 0) slice_backward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace gaussians
}  // namespace omnifield
