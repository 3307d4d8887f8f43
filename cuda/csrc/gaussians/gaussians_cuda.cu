// EWA projection of 3D Gaussians (Zwicker et al. 2002; 3DGS / gsplat persp_proj) and the
// covariance R S S R^T of a quaternion and scales, forward and backward. One thread per Gaussian.
//
// Forward, per Gaussian (float32, in the order of /work/gs_spec.md):
//   t = R x + T (viewmat rows 0..2); culled unless near < t.z < far;
//   J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]], tx = z clamp(t.x/z, -lim_x_neg, lim_x_pos)
//   (the 3DGS clamp, lim_x_pos = (W - cx)/fx + 0.3 tan_fovx, lim_x_neg = cx/fx + 0.3 tan_fovx);
//   cov2d = J (R Sigma R^T) J^T = [[A, B], [B, C]]; blur A, C += eps2d; culled when det <= 0;
//   conic = (C, -B, A) / det; compensation = sqrt(max(det_before / det, 0)) (antialias);
//   radius = ceil(3 sqrt(lambda_max)); culled when radius <= radius_clip or the radius box misses
//   the image; mean2d = (fx t.x/z + cx, fy t.y/z + cy); depth = t.z.
//
// Depth = t.z is written for every Gaussian (culled ones too, as the reference does); the other
// outputs are zero for culled Gaussians, whose only gradient path is the depth.
//
// Backward of visible Gaussians: through the conic
// (d inv(S) = -inv(S) dS inv(S)), the compensation, cov2d = J covc J^T (v_J = 2 G J covc,
// v_covc = J^T G J with G the symmetric gradient of cov2d), the Jacobian's dependence on t (the
// clamped coordinate has zero derivative, as torch.clamp's gradient), and t = R x + T. The
// viewmat gradient is summed over Gaussians: warp shuffles, one shared-memory pass per block,
// then 12 atomicAdds per block.
#include "gaussians_cuda.h"
#include "gaussians_cuda_common.cuh"

namespace omnifield {
namespace gaussians {
namespace {

using detail::mat3_mul;
using detail::mat3_mul_at;
using detail::mat3_mul_bt;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Everything the forward computes per Gaussian before culling by radius; the backward recomputes it.
struct Ewa {
  float x[3];     // world mean
  float R[9];     // viewmat rotation
  float t[3];     // camera-space mean
  float sigma[9]; // world covariance (as given)
  float covc[9];  // R Sigma R^T
  float j00, j02, j11, j12;
  float txc, tyc;         // the clamped coordinates of the Jacobian
  bool free_x, free_y;    // not clamped (gradient flows to t.x / t.y)
  float A, B, C;          // cov2d before the blur
};

__device__ __forceinline__ void load_rigid(const float* viewmat, float* R, float* T) {
#pragma unroll
  for (int r = 0; r < 3; ++r) {
#pragma unroll
    for (int c = 0; c < 3; ++c) R[3 * r + c] = viewmat[4 * r + c];
    T[r] = viewmat[4 * r + 3];
  }
}

// Camera-space mean of Gaussian i; returns false when outside (near, far).
__device__ __forceinline__ bool camera_mean(const ProjectParams& p, int64_t i, Ewa& e) {
  float T[3];
  load_rigid(p.viewmat, e.R, T);
#pragma unroll
  for (int k = 0; k < 3; ++k) e.x[k] = p.means[3 * i + k];
#pragma unroll
  for (int r = 0; r < 3; ++r) e.t[r] = e.R[3 * r] * e.x[0] + e.R[3 * r + 1] * e.x[1] + e.R[3 * r + 2] * e.x[2] + T[r];
  const float z = e.t[2];
  return z > p.near_plane && z < p.far_plane;  // false for NaN too
}

// Jacobian, camera covariance and the (unblurred) 2D covariance of Gaussian i.
__device__ __forceinline__ void ewa_cov2d(const ProjectParams& p, int64_t i, Ewa& e) {
  const float fx = p.K[0], cx = p.K[2], fy = p.K[4], cy = p.K[5];
  const float w = static_cast<float>(p.width), h = static_cast<float>(p.height);
  const float z = e.t[2];
  const float tan_fovx = 0.5f * w / fx, tan_fovy = 0.5f * h / fy;
  const float lim_x_pos = (w - cx) / fx + 0.3f * tan_fovx, lim_x_neg = cx / fx + 0.3f * tan_fovx;
  const float lim_y_pos = (h - cy) / fy + 0.3f * tan_fovy, lim_y_neg = cy / fy + 0.3f * tan_fovy;
  const float rx = e.t[0] / z, ry = e.t[1] / z;
  e.free_x = rx >= -lim_x_neg && rx <= lim_x_pos;
  e.free_y = ry >= -lim_y_neg && ry <= lim_y_pos;
  e.txc = z * fminf(fmaxf(rx, -lim_x_neg), lim_x_pos);
  e.tyc = z * fminf(fmaxf(ry, -lim_y_neg), lim_y_pos);
  const float z2 = z * z;
  e.j00 = fx / z;
  e.j02 = -fx * e.txc / z2;
  e.j11 = fy / z;
  e.j12 = -fy * e.tyc / z2;
#pragma unroll
  for (int k = 0; k < 9; ++k) e.sigma[k] = p.covars[9 * i + k];
  float rs[9];
  mat3_mul(e.R, e.sigma, rs);
  mat3_mul_bt(rs, e.R, e.covc);
  const float* c = e.covc;
  const float r0[3] = {e.j00 * c[0] + e.j02 * c[6], e.j00 * c[1] + e.j02 * c[7], e.j00 * c[2] + e.j02 * c[8]};
  const float r1[3] = {e.j11 * c[3] + e.j12 * c[6], e.j11 * c[4] + e.j12 * c[7], e.j11 * c[5] + e.j12 * c[8]};
  e.A = r0[0] * e.j00 + r0[2] * e.j02;
  e.B = r0[1] * e.j11 + r0[2] * e.j12;
  e.C = r1[1] * e.j11 + r1[2] * e.j12;
}

__global__ void __launch_bounds__(kThreads) project_forward_kernel(ProjectParams p, ProjectForwardOut out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  out.radii[i] = 0;
  out.means2d[2 * i] = 0.f;
  out.means2d[2 * i + 1] = 0.f;
  out.conics[3 * i] = 0.f;
  out.conics[3 * i + 1] = 0.f;
  out.conics[3 * i + 2] = 0.f;
  out.compensations[i] = 0.f;
  Ewa e;
  const bool in_depth = camera_mean(p, i, e);
  out.depths[i] = e.t[2];  // t.z for every Gaussian, culled ones too (as the reference)
  if (!in_depth) return;
  ewa_cov2d(p, i, e);
  const float det_orig = e.A * e.C - e.B * e.B;
  const float Ab = e.A + p.eps2d, Cb = e.C + p.eps2d;
  const float det = Ab * Cb - e.B * e.B;
  if (!(det > 0.f)) return;
  const float b = 0.5f * (Ab + Cb);
  const float lambda_max = b + sqrtf(fmaxf(b * b - det, 0.f));
  const float radius = ceilf(3.f * sqrtf(lambda_max));
  if (!(radius > p.radius_clip)) return;
  const float fx = p.K[0], cx = p.K[2], fy = p.K[4], cy = p.K[5];
  const float z = e.t[2];
  const float u = fx * e.t[0] / z + cx, v = fy * e.t[1] / z + cy;
  if (u + radius <= 0.f || u - radius >= static_cast<float>(p.width) || v + radius <= 0.f ||
      v - radius >= static_cast<float>(p.height))
    return;
  out.radii[i] = static_cast<int32_t>(radius);
  out.means2d[2 * i] = u;
  out.means2d[2 * i + 1] = v;
  out.conics[3 * i] = Cb / det;
  out.conics[3 * i + 1] = -e.B / det;
  out.conics[3 * i + 2] = Ab / det;
  out.compensations[i] = p.antialias ? sqrtf(fmaxf(det_orig / det, 0.f)) : 1.f;
}

// Gradient (v_A, v_B, v_C) of the loss w.r.t. the unblurred cov2d entries (B: the off-diagonal
// parameter, appearing twice in the matrix) from the conic's and the compensation's gradients.
__device__ __forceinline__ void cov2d_grad(const ProjectParams& p, const Ewa& e, const float* v_conic, float v_comp,
                                           float& v_A, float& v_B, float& v_C) {
  const float Ab = e.A + p.eps2d, Cb = e.C + p.eps2d, B = e.B;
  const float det = Ab * Cb - B * B;
  const float inv_det2 = 1.f / (det * det);
  const float va = v_conic[0], vb = v_conic[1], vc = v_conic[2];
  v_A = (-Cb * Cb * va + B * Cb * vb - B * B * vc) * inv_det2;
  v_B = (2.f * B * Cb * va - (Ab * Cb + B * B) * vb + 2.f * Ab * B * vc) * inv_det2;
  v_C = (-B * B * va + Ab * B * vb - Ab * Ab * vc) * inv_det2;
  if (p.antialias && v_comp != 0.f) {
    const float det_orig = e.A * e.C - B * B;
    const float ratio = det_orig / det;
    if (ratio > 0.f) {
      const float v_ratio = v_comp * 0.5f / sqrtf(ratio);
      v_A += v_ratio * (e.C * det - det_orig * Cb) * inv_det2;
      v_C += v_ratio * (e.A * det - det_orig * Ab) * inv_det2;
      v_B += v_ratio * 2.f * B * (det_orig - det) * inv_det2;
    }
  }
}

// Sums the 12 viewmat gradients of a block and adds them to v_viewmat (all threads must call).
__device__ __forceinline__ void add_viewmat_grad(float* vals, float* v_viewmat) {
  __shared__ float partial[kWarps][12];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < 12; ++k) {
    const float s = detail::warp_sum(vals[k]);
    if (lane == 0) partial[warp][k] = s;
  }
  __syncthreads();
  if (threadIdx.x < 12) {
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += partial[w][threadIdx.x];
    const int k = threadIdx.x;  // 0..8: R row-major, 9..11: T
    const int index = k < 9 ? 4 * (k / 3) + (k % 3) : 4 * (k - 9) + 3;
    if (s != 0.f) atomicAdd(v_viewmat + index, s);
  }
}

__global__ void __launch_bounds__(kThreads) project_backward_kernel(ProjectParams p, ProjectBackwardIO io) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  float vview[12];  // v_R (row-major) then v_T
#pragma unroll
  for (int k = 0; k < 12; ++k) vview[k] = 0.f;
  const bool valid = i < p.n && io.radii[i] > 0;
  if (i < p.n && !valid) {
    // Culled: only the depth output (t.z, written for every Gaussian) carries a gradient.
    Ewa e;
    camera_mean(p, i, e);
    const float vz = io.v_depths[i];
#pragma unroll
    for (int k = 0; k < 3; ++k) io.v_means[3 * i + k] = e.R[6 + k] * vz;
#pragma unroll
    for (int k = 0; k < 9; ++k) io.v_covars[9 * i + k] = 0.f;
#pragma unroll
    for (int c = 0; c < 3; ++c) vview[6 + c] = vz * e.x[c];
    vview[11] = vz;
  }
  if (valid) {
    Ewa e;
    camera_mean(p, i, e);
    ewa_cov2d(p, i, e);
    const float fx = p.K[0], fy = p.K[4];
    const float z = e.t[2], z2 = z * z, z3 = z2 * z;
    const float v_conic[3] = {io.v_conics[3 * i], io.v_conics[3 * i + 1], io.v_conics[3 * i + 2]};
    const float v_comp = io.v_comps != nullptr ? io.v_comps[i] : 0.f;
    float v_A, v_B, v_C;
    cov2d_grad(p, e, v_conic, v_comp, v_A, v_B, v_C);
    const float g00 = v_A, g01 = 0.5f * v_B, g11 = v_C;  // symmetric gradient of cov2d
    // v_covc = J^T G J with J rows (j00, 0, j02) and (0, j11, j12).
    const float J0[3] = {e.j00, 0.f, e.j02}, J1[3] = {0.f, e.j11, e.j12};
    float jg0[3], jg1[3], v_covc[9];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      jg0[k] = g00 * J0[k] + g01 * J1[k];
      jg1[k] = g01 * J0[k] + g11 * J1[k];
    }
#pragma unroll
    for (int a = 0; a < 3; ++a)
#pragma unroll
      for (int b = 0; b < 3; ++b) v_covc[3 * a + b] = J0[a] * jg0[b] + J1[a] * jg1[b];
    // v_J = G J (covc + covc^T); only the four non-constant entries are needed.
    float S[9];
#pragma unroll
    for (int a = 0; a < 3; ++a)
#pragma unroll
      for (int b = 0; b < 3; ++b) S[3 * a + b] = e.covc[3 * a + b] + e.covc[3 * b + a];
    float js0[3], js1[3];
#pragma unroll
    for (int k = 0; k < 3; ++k) {
      js0[k] = e.j00 * S[k] + e.j02 * S[6 + k];
      js1[k] = e.j11 * S[3 + k] + e.j12 * S[6 + k];
    }
    const float v_j00 = g00 * js0[0] + g01 * js1[0], v_j02 = g00 * js0[2] + g01 * js1[2];
    const float v_j11 = g01 * js0[1] + g11 * js1[1], v_j12 = g01 * js0[2] + g11 * js1[2];
    // Camera-space mean: mean2d, depth and the Jacobian.
    const float vu = io.v_means2d[2 * i], vv = io.v_means2d[2 * i + 1];
    float v_t[3];
    v_t[0] = vu * fx / z;
    v_t[1] = vv * fy / z;
    v_t[2] = -(vu * fx * e.t[0] + vv * fy * e.t[1]) / z2 + io.v_depths[i];
    v_t[2] += -v_j00 * fx / z2 - v_j11 * fy / z2;
    if (e.free_x) {
      v_t[0] += -v_j02 * fx / z2;
      v_t[2] += v_j02 * 2.f * fx * e.txc / z3;
    } else {
      v_t[2] += v_j02 * fx * e.txc / z3;
    }
    if (e.free_y) {
      v_t[1] += -v_j12 * fy / z2;
      v_t[2] += v_j12 * 2.f * fy * e.tyc / z3;
    } else {
      v_t[2] += v_j12 * fy * e.tyc / z3;
    }
    // t = R x + T and covc = R Sigma R^T.
#pragma unroll
    for (int k = 0; k < 3; ++k) io.v_means[3 * i + k] = e.R[k] * v_t[0] + e.R[3 + k] * v_t[1] + e.R[6 + k] * v_t[2];
    float tmp[9], v_sigma[9];
    mat3_mul_at(e.R, v_covc, tmp);  // R^T v_covc
    mat3_mul(tmp, e.R, v_sigma);    // R^T v_covc R
#pragma unroll
    for (int k = 0; k < 9; ++k) io.v_covars[9 * i + k] = v_sigma[k];
    if (io.v_viewmat != nullptr) {
      // v_R = v_covc R (Sigma + Sigma^T) + v_t x^T; v_T = v_t.
      float ss[9], vr[9];
#pragma unroll
      for (int a = 0; a < 3; ++a)
#pragma unroll
        for (int b = 0; b < 3; ++b) ss[3 * a + b] = e.sigma[3 * a + b] + e.sigma[3 * b + a];
      mat3_mul(v_covc, e.R, tmp);
      mat3_mul(tmp, ss, vr);
#pragma unroll
      for (int r = 0; r < 3; ++r) {
#pragma unroll
        for (int c = 0; c < 3; ++c) vview[3 * r + c] = vr[3 * r + c] + v_t[r] * e.x[c];
        vview[9 + r] = v_t[r];
      }
    }
  }
  if (io.v_viewmat != nullptr) add_viewmat_grad(vview, io.v_viewmat);  // uniform branch: all threads
}

// Rotation of the normalised quaternion (w, x, y, z).
__device__ __forceinline__ void quat_to_rotation(const float* q, float* R) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  R[0] = 1.f - 2.f * (y * y + z * z);
  R[1] = 2.f * (x * y - w * z);
  R[2] = 2.f * (x * z + w * y);
  R[3] = 2.f * (x * y + w * z);
  R[4] = 1.f - 2.f * (x * x + z * z);
  R[5] = 2.f * (y * z - w * x);
  R[6] = 2.f * (x * z - w * y);
  R[7] = 2.f * (y * z + w * x);
  R[8] = 1.f - 2.f * (x * x + y * y);
}

__device__ __forceinline__ float load_unit_quat(const float* src, float* q) {
  const float norm = sqrtf(src[0] * src[0] + src[1] * src[1] + src[2] * src[2] + src[3] * src[3]);
#pragma unroll
  for (int k = 0; k < 4; ++k) q[k] = src[k] / norm;
  return norm;
}

__global__ void __launch_bounds__(kThreads) quat_scale_forward_kernel(QuatScaleParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float q[4], R[9], M[9];
  load_unit_quat(p.quats + 4 * i, q);
  quat_to_rotation(q, R);
#pragma unroll
  for (int k = 0; k < 9; ++k) M[k] = R[k] * p.scales[3 * i + k % 3];  // M = R diag(s)
  float cov[9];
  mat3_mul_bt(M, M, cov);
#pragma unroll
  for (int k = 0; k < 9; ++k) p.covars[9 * i + k] = cov[k];
}

__global__ void __launch_bounds__(kThreads) quat_scale_backward_kernel(QuatScaleParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float q[4], R[9], M[9], s[3], G[9], vM[9];
  const float norm = load_unit_quat(p.quats + 4 * i, q);
  quat_to_rotation(q, R);
#pragma unroll
  for (int k = 0; k < 3; ++k) s[k] = p.scales[3 * i + k];
#pragma unroll
  for (int k = 0; k < 9; ++k) M[k] = R[k] * s[k % 3];
  // covar = M M^T: v_M = (V + V^T) M.
#pragma unroll
  for (int a = 0; a < 3; ++a)
#pragma unroll
    for (int b = 0; b < 3; ++b) G[3 * a + b] = p.v_covars[9 * i + 3 * a + b] + p.v_covars[9 * i + 3 * b + a];
  mat3_mul(G, M, vM);
  float vR[9];
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    p.v_scales[3 * i + c] = vM[c] * R[c] + vM[3 + c] * R[3 + c] + vM[6 + c] * R[6 + c];
#pragma unroll
    for (int r = 0; r < 3; ++r) vR[3 * r + c] = vM[3 * r + c] * s[c];
  }
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  float vq[4];
  vq[0] = 2.f * (-z * vR[1] + y * vR[2] + z * vR[3] - x * vR[5] - y * vR[6] + x * vR[7]);
  vq[1] = 2.f * (y * vR[1] + z * vR[2] + y * vR[3] - 2.f * x * vR[4] - w * vR[5] + z * vR[6] + w * vR[7] -
                 2.f * x * vR[8]);
  vq[2] = 2.f * (-2.f * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + z * vR[5] - w * vR[6] + z * vR[7] -
                 2.f * y * vR[8]);
  vq[3] = 2.f * (-2.f * z * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2.f * z * vR[4] + y * vR[5] + x * vR[6] +
                 y * vR[7]);
  // Through the normalisation q / |q|.
  const float dot = q[0] * vq[0] + q[1] * vq[1] + q[2] * vq[2] + q[3] * vq[3];
#pragma unroll
  for (int k = 0; k < 4; ++k) p.v_quats[4 * i + k] = (vq[k] - q[k] * dot) / norm;
}

}  // namespace

cudaError_t launch_project_forward(const ProjectParams& p, const ProjectForwardOut& out, cudaStream_t stream) {
  if (p.n > 0) project_forward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p, out);
  return cudaGetLastError();
}

cudaError_t launch_project_backward(const ProjectParams& p, const ProjectBackwardIO& io, cudaStream_t stream) {
  if (p.n > 0) project_backward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p, io);
  return cudaGetLastError();
}

cudaError_t launch_quat_scale_to_covar_forward(const QuatScaleParams& p, cudaStream_t stream) {
  if (p.n > 0) quat_scale_forward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t launch_quat_scale_to_covar_backward(const QuatScaleParams& p, cudaStream_t stream) {
  if (p.n > 0) quat_scale_backward_kernel<<<detail::blocks_for(p.n, kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace gaussians
}  // namespace omnifield
