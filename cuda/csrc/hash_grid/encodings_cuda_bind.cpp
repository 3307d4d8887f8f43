// Torch glue of the CUDA encodings (hash grid and SH): checks, allocation, launch on the current
// stream. The kernels (hash_grid_cuda.cu, ../sh/sh_cuda.cu) know nothing of torch; see their
// headers for the layouts. Python wrappers with autograd: cuda/cuda_encodings.py.
//
// Tensors: CUDA tensors on one device, float32 (the hash table float32 or float16); the grid
// layout (resolutions [L], offsets [L + 1]) int64 CPU tensors, validated here (ValueError naming
// the argument): rows == offsets[L] < 2^31, res >= 1, hashed levels of power-of-two size.
#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "hash_grid_cuda.h"
#if __has_include("../sh/sh_cuda.h")
#include "../sh/sh_cuda.h"
#else  // the emulated build (tests/cuda_emulation) copies every source and header into one folder
#include "sh_cuda.h"
#endif

namespace oe = omnifield::encodings;
using torch::Tensor;

namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "encodings_cuda: ", what, " failed: ", cudaGetErrorString(err));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// `t` is a CUDA tensor on the device of `ref` with `dim` dimensions whose sizes match `sizes`
// (-1: any). Returns it contiguous (dtype checked by the callers).
Tensor on_device(const Tensor& t, const char* name, const Tensor& ref, std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_VALUE(t.defined(), "encodings_cuda: ", name, " is undefined");
  TORCH_CHECK_VALUE(t.is_cuda() && t.device() == ref.device(), "encodings_cuda: ", name, " must be on ",
                    ref.device(), ", got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == static_cast<int64_t>(sizes.size()), "encodings_cuda: ", name, " must have ",
                    sizes.size(), " dimensions, got shape ", t.sizes());
  int64_t d = 0;
  for (int64_t s : sizes) {
    TORCH_CHECK_VALUE(s < 0 || t.size(d) == s, "encodings_cuda: ", name, " has shape ", t.sizes(), ", dimension ",
                      d, " must be ", s);
    ++d;
  }
  return t.contiguous();
}

Tensor farg(const Tensor& t, const char* name, const Tensor& ref, std::initializer_list<int64_t> sizes) {
  TORCH_CHECK_VALUE(!t.defined() || t.scalar_type() == at::kFloat, "encodings_cuda: ", name,
                    " must be float32, got ", t.scalar_type());
  return on_device(t, name, ref, sizes);
}

// `t` (contiguous) aligned to `bytes` for the kernels' vector loads; a copy otherwise (a view with
// an odd storage offset).
Tensor aligned(const Tensor& t, int64_t bytes) {
  if (t.numel() == 0 || reinterpret_cast<uintptr_t>(t.data_ptr()) % static_cast<uintptr_t>(bytes) == 0) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

// Bytes of the vector loads over a chunk of features (see hash_grid_cuda.cu).
int64_t chunk_bytes(int64_t features, int64_t elem) {
  const int64_t nf = features % 8 == 0 ? 8 : features % 4 == 0 ? 4 : features % 2 == 0 ? 2 : 1;
  return std::min<int64_t>(16, nf * elem);
}

// The kernel parameters of x [N,3], table [rows,F] and the host layout; x and table are replaced
// by their contiguous (aligned) forms.
oe::HashGridParams grid_params(Tensor& x, Tensor& table, const Tensor& resolutions, const Tensor& offsets) {
  x = farg(x, "x", x, {-1, 3});
  TORCH_CHECK_VALUE(table.defined() && (table.scalar_type() == at::kFloat || table.scalar_type() == at::kHalf),
                    "encodings_cuda: table must be float32 or float16, got ",
                    table.defined() ? table.scalar_type() : at::ScalarType::Undefined);
  table = on_device(table, "table", x, {-1, -1});
  table = aligned(table, chunk_bytes(table.size(1), table.element_size()));
  TORCH_CHECK_VALUE(resolutions.device().is_cpu() && offsets.device().is_cpu() &&
                        resolutions.scalar_type() == at::kLong && offsets.scalar_type() == at::kLong,
                    "encodings_cuda: resolutions and offsets must be int64 CPU tensors");
  TORCH_CHECK_VALUE(resolutions.dim() == 1 && resolutions.size(0) <= oe::kMaxHashLevels,
                    "encodings_cuda: resolutions must be [L] with L <= ", oe::kMaxHashLevels, ", got shape ",
                    resolutions.sizes());
  const int64_t n_levels = resolutions.size(0);
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) == n_levels + 1,
                    "encodings_cuda: offsets must be [L + 1] = [",
                    n_levels + 1, "], got shape ", offsets.sizes());
  const Tensor res_c = resolutions.contiguous(), off_c = offsets.contiguous();
  const int64_t* res = res_c.data_ptr<int64_t>();
  const int64_t* off = off_c.data_ptr<int64_t>();
  const int64_t rows = table.size(0);
  TORCH_CHECK_VALUE(off[n_levels] == rows, "encodings_cuda: table has ", rows, " rows but offsets[-1] = ",
                    off[n_levels]);
  TORCH_CHECK_VALUE(rows < (int64_t{1} << 31), "encodings_cuda: table with ", rows, " rows exceeds int32 indexing");
  TORCH_CHECK_VALUE(table.size(1) < (int64_t{1} << 16), "encodings_cuda: table has too many features per row: ",
                    table.size(1));
  oe::HashGridParams p;
  p.n = x.size(0);
  p.n_levels = static_cast<int>(n_levels);
  p.n_features = static_cast<int>(table.size(1));
  p.x = x.data_ptr<float>();
  p.table = table.data_ptr();
  p.table_half = table.scalar_type() == at::kHalf;
  for (int64_t l = 0; l < n_levels; ++l) {
    const int64_t r = res[l], size = off[l + 1] - off[l];
    TORCH_CHECK_VALUE(r >= 1 && r < (int64_t{1} << 30), "encodings_cuda: resolutions[", l, "] = ", r,
                      " must be in [1, 2^30)");
    TORCH_CHECK_VALUE(off[l] >= 0 && size >= 0, "encodings_cuda: offsets must be non-decreasing from 0, got offsets[",
                      l, "] = ", off[l], ", offsets[", l + 1, "] = ", off[l + 1]);
    const int64_t side = r + 1;
    const bool dense = side <= size && side * side <= size / side && side * side * side <= size;  // no overflow
    TORCH_CHECK_VALUE(dense || (size > 0 && (size & (size - 1)) == 0), "encodings_cuda: hashed level ", l,
                      " needs a power-of-two size, got ", size, " rows (offsets[", l + 1, "] - offsets[", l, "])");
    p.levels[l].offset = static_cast<uint32_t>(off[l]);
    p.levels[l].res = static_cast<uint32_t>(r);
    p.levels[l].mask = dense ? 0u : static_cast<uint32_t>(size - 1);
    p.levels[l].dense = dense ? 1u : 0u;
  }
  return p;
}

// The [N, L*F] float32 argument `name` of grid p (aligned for the kernels' vector loads).
Tensor level_features(const Tensor& t, const char* name, const Tensor& x, const oe::HashGridParams& p) {
  return aligned(farg(t, name, x, {p.n, static_cast<int64_t>(p.n_levels) * p.n_features}),
                 chunk_bytes(p.n_features, 4));
}

// Float32 accumulator of the table gradient -> the table's dtype.
Tensor table_grad(const Tensor& acc, const Tensor& table) {
  return table.scalar_type() == at::kFloat ? acc : acc.to(table.scalar_type());
}

// hash_forward(x [N,3], table [rows,F], resolutions [L], offsets [L+1]) -> [N, L*F] float32
Tensor hash_forward(Tensor x, Tensor table, Tensor resolutions, Tensor offsets) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const oe::HashGridParams p = grid_params(x, table, resolutions, offsets);
  Tensor out = torch::empty({p.n, static_cast<int64_t>(p.n_levels) * p.n_features}, x.options());
  check_launch(oe::launch_hash_forward(p, out.data_ptr<float>(), stream()), "hash_forward");
  return out;
}

// -> (grad_table [rows,F] in the table's dtype or None, grad_x [N,3] or None)
std::tuple<Tensor, Tensor> hash_backward(Tensor grad_out, Tensor x, Tensor table, Tensor resolutions, Tensor offsets,
                                         bool need_table, bool need_x) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const oe::HashGridParams p = grid_params(x, table, resolutions, offsets);
  grad_out = level_features(grad_out, "grad_out", x, p);
  const auto f = x.options();
  Tensor gt = need_table ? torch::zeros({table.size(0), table.size(1)}, f) : Tensor();
  Tensor gx = need_x ? torch::zeros({p.n, 3}, f) : Tensor();
  oe::HashBackwardIO io;
  io.grad_out = grad_out.data_ptr<float>();
  io.grad_table = need_table ? gt.data_ptr<float>() : nullptr;
  io.grad_x = need_x ? gx.data_ptr<float>() : nullptr;
  check_launch(oe::launch_hash_backward(p, io, stream()), "hash_backward");
  return {need_table ? table_grad(gt, table) : Tensor(), gx};
}

// Backward of the input-grad op grad_x = hash_backward(grad_out, ...)[1]:
// -> (d/dgrad_out [N, L*F] or None, d/dtable [rows,F] in the table's dtype or None)
std::tuple<Tensor, Tensor> hash_double_backward(Tensor grad_grad_x, Tensor grad_out, Tensor x, Tensor table,
                                                Tensor resolutions, Tensor offsets, bool need_grad_out,
                                                bool need_table) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  const oe::HashGridParams p = grid_params(x, table, resolutions, offsets);
  grad_grad_x = farg(grad_grad_x, "grad_grad_x", x, {p.n, 3});
  grad_out = level_features(grad_out, "grad_out", x, p);
  const auto f = x.options();
  Tensor ggo = need_grad_out ? torch::empty({p.n, static_cast<int64_t>(p.n_levels) * p.n_features}, f) : Tensor();
  Tensor gt = need_table ? torch::zeros({table.size(0), table.size(1)}, f) : Tensor();
  oe::HashDoubleBackwardIO io;
  io.grad_grad_x = grad_grad_x.data_ptr<float>();
  io.grad_out = grad_out.data_ptr<float>();
  io.grad_grad_out = need_grad_out ? ggo.data_ptr<float>() : nullptr;
  io.grad_table = need_table ? gt.data_ptr<float>() : nullptr;
  check_launch(oe::launch_hash_double_backward(p, io, stream()), "hash_double_backward");
  return {ggo, need_table ? table_grad(gt, table) : Tensor()};
}

oe::SHEncodeParams sh_params(Tensor& dirs, int64_t degree) {
  TORCH_CHECK_VALUE(degree >= 1 && degree <= 4, "encodings_cuda: SH degree must be in 1..4, got ", degree);
  dirs = farg(dirs, "directions", dirs, {-1, 3});
  oe::SHEncodeParams p;
  p.n = dirs.size(0);
  p.degree = static_cast<int>(degree);
  p.dirs = dirs.data_ptr<float>();
  return p;
}

// sh_forward(directions [N,3], degree) -> [N, degree^2]
Tensor sh_forward(Tensor dirs, int64_t degree) {
  const c10::cuda::OptionalCUDAGuard guard(dirs.device());
  oe::SHEncodeParams p = sh_params(dirs, degree);
  Tensor out = torch::empty({p.n, degree * degree}, dirs.options());
  p.out = out.data_ptr<float>();
  check_launch(oe::launch_sh_encode_forward(p, stream()), "sh_forward");
  return out;
}

// sh_backward(grad_out [N, degree^2], directions [N,3], degree) -> grad_directions [N,3]
Tensor sh_backward(Tensor grad_out, Tensor dirs, int64_t degree) {
  const c10::cuda::OptionalCUDAGuard guard(dirs.device());
  oe::SHEncodeParams p = sh_params(dirs, degree);
  grad_out = farg(grad_out, "grad_out", dirs, {p.n, degree * degree});
  Tensor grad_dirs = torch::empty({p.n, 3}, dirs.options());
  p.grad_out = grad_out.data_ptr<float>();
  p.grad_dirs = grad_dirs.data_ptr<float>();
  check_launch(oe::launch_sh_encode_backward(p, stream()), "sh_backward");
  return grad_dirs;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield CUDA encodings (issue 5): hash grid and SH; wrappers: omnifield.cuda.cuda_encodings";
  m.def("hash_forward", &hash_forward, "hash encoding forward: (x, table, resolutions, offsets) -> [N, L*F]");
  m.def("hash_backward", &hash_backward,
        "hash encoding backward: (grad_out, x, table, resolutions, offsets, need_table, need_x) -> "
        "(grad_table, grad_x)");
  m.def("hash_double_backward", &hash_double_backward,
        "backward of the input-grad op: (grad_grad_x, grad_out, x, table, resolutions, offsets, need_grad_out, "
        "need_table) -> (grad_grad_out, grad_table)");
  m.def("sh_forward", &sh_forward, "SH encoding forward: (directions, degree) -> [N, degree^2]");
  m.def("sh_backward", &sh_backward, "SH encoding backward: (grad_out, directions, degree) -> grad_directions");
}
