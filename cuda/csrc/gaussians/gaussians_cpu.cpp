// Gaussian splatting rasterizer (3DGS, Kerbl et al. 2023): C++ CPU kernel, forward, backward and tile binning.
// This file: the rules, the work layout and the Python bindings; it includes the passes (gaussians_cpu_forward.h,
// gaussians_cpu_backward.h, gaussians_cpu_isect.h) and what they share (gaussians_cpu.h): one translation unit.
//
// Same semantics as the pure-PyTorch oracle cuda/reference/gaussians.py (rasterize_to_pixels, isect_tiles;
// pinned in the issue-4 spec). Per pixel centre p = (x + 0.5, y + 0.5), over the Gaussians of its tile in list
// order, with d = p - mean and conic (a, b, c), starting from T = 1:
//   sigma  = 0.5 * (a*dx*dx + c*dy*dy) + b*dx*dy            skip the Gaussian if sigma < 0
//   alpha  = min(0.99, opacity * exp(-sigma))                skip the Gaussian if alpha < 1/255
//   T_next = T * (1 - alpha)                                 stop the pixel (without it) if T_next <= 1e-4
//   out   += alpha * T * color;  T = T_next
//   colors = out + T * background,  alphas = 1 - T.
// The float operations are the reference's, in the same order and in the dtype of the inputs, except exp (ours,
// vexp below: within 1 ulp of torch's, equal for 90 % of inputs) and T, a running product in the input dtype
// (torch's cumprod rounds a double accumulator at each step: a few ulp apart after hundreds of Gaussians).
//
// Work layout. Tiles run in parallel (OpenMP, torch.get_num_threads() threads, dynamic schedule, busiest tiles
// first). A tile's pixels form groups of kLanes consecutive pixels of a row, one pixel per SIMD lane (GCC vector
// extensions). The tile's list is read in batches of kBatch intersections: a batch is gathered into SoA arrays
// (every Gaussian packed into one record beforehand, so one cache line per intersection) together with, for each
// pixel row, the batch's Gaussians that can reach the row; every group then composites the batch, its lane
// state carried over to the next batch. Lanes terminate independently; a group stops when all its lanes have,
// and the tile stops reading its list when all its groups have (a typical tile needs about a third of it).
// The per-tile work is compiled twice, portable (SSE2) and AVX2 without FMA, chosen at run time: every
// operation rounds identically in both, so results are bit-identical (tested).
//
// Culling that changes no result (only where the rules above would skip anyway):
//  * alpha >= 1/255 needs sigma <= thr = log(255 * opacity) + 1e-4: exp (and the blend) runs only there. The
//    1e-4 margin dwarfs the rounding of exp and of the product with the opacity.
//  * sigma <= thr holds only inside an axis-aligned box around the mean: the ellipse 0.5 d^T Q d <= thr'
//    (Q = [[a, b], [b, c]]) has half sizes sqrt(2 thr' c / det), sqrt(2 thr' a / det). thr' enlarges thr by
//    the rounding error of the computed sigma, at most ~10 u cond(Q) sigma (u the unit roundoff), plus a
//    margin. The box picks the rows and lane groups a Gaussian can reach; conics that are not positive
//    definite or too ill-conditioned get no box (every pixel of the tile is tested).
//
// Backward (first order), per pixel, walking back to front from its last contributing Gaussian as the 3DGS CUDA
// backward does. With contributors i = 1..n in order, T_1 = 1, T_{i+1} = T_i (1 - alpha_i), T_f = T_{n+1}, and
// G [C], gA the upstream gradients of the pixel's colours and alpha:
//   out = sum_i alpha_i T_i c_i + T_f bg,   alphas = 1 - T_f
//   dL/dc_i     = alpha_i T_i G
//   dL/dalpha_i = T_i G . (c_i - S_i) + gA T_f / (1 - alpha_i)
//   dL/dbg      = T_f G
// where S_i = (sum_{j>i} alpha_j T_j c_j + T_f bg) / T_{i+1} is the colour behind i as seen from just behind it
// (the terms behind i are proportional to T_{i+1} = T_i (1 - alpha_i), hence -T_i S_i; T_f likewise). Walking
// back from i = n, both are recurrences that need no per-pixel storage:
//   T_i = T_{i+1} / (1 - alpha_i)           (from the saved T_f; 1 - alpha >= 0.01)
//   S_n = bg (0 without background),   S_{i-1} = alpha_i c_i + (1 - alpha_i) S_i.
// Then, where alpha is not clamped (opacity * e <= 0.99, e = exp(-sigma); torch's clamp passes the gradient at
// equality): dL/dopacity = dL/dalpha e, dL/dsigma = -dL/dalpha opacity e, and from sigma:
//   dL/da = 0.5 dx^2 dL/dsigma,  dL/db = dx dy dL/dsigma,  dL/dc = 0.5 dy^2 dL/dsigma,
//   dL/dmean_x = -(a dx + b dy) dL/dsigma,  dL/dmean_y = -(b dx + c dy) dL/dsigma.
// Skipped Gaussians (sigma < 0, alpha < 1/255) are recomputed with the same operations, so they are skipped
// again; the batches are walked from the one holding the tile's last contributor down to the first. No races and
// deterministic sums: per lane into per-batch accumulators, whose lane sums (a fixed pairwise tree) give one row
// of gradients per intersection (each intersection belongs to one tile, hence one thread); these rows are summed
// into the per-Gaussian gradients in list order, each thread owning a range of Gaussians. Results do not depend
// on the number of threads.
//
// isect_tiles: the covering Gaussians are radix-sorted once by (depth, index), then appended to their tiles in
// that order (per-thread histograms and prefix sums, then a fill), so every tile's list comes out in the
// reference's (tile, depth, index) order without a sort per tile.

#include "gaussians_cpu.h"
#include "gaussians_cpu_forward.h"
#include "gaussians_cpu_backward.h"
#include "gaussians_cpu_isect.h"

using namespace omnifield::gaussians_cpu;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "omnifield Gaussian splatting rasterizer (3DGS), C++ CPU kernel (OpenMP over tiles, SIMD over pixels)";
  m.def("forward", &rasterize_forward,
        "forward: (means2d, conics, colors, opacities, backgrounds | None, width, height, tile_size, isect_offsets, "
        "flatten_ids) -> [colors [H,W,C], alphas [H,W,1], final T [H,W], last [H,W] int32, packed [N, 9 + C]]");
  m.def("backward", &rasterize_backward,
        "backward: (means2d, conics, colors, opacities, backgrounds | None, width, height, tile_size, isect_offsets, "
        "flatten_ids, packed, final T, last, grad_colors | None, grad_alphas | None) -> [grad_means2d, grad_conics, "
        "grad_colors, grad_opacities, grad_backgrounds | None]");
  m.def("isect_tiles", &isect_tiles,
        "isect_tiles: (means2d [N,2], radii [N] int32, depths [N], width, height, tile_size) -> "
        "[isect_offsets [tile_h, tile_w] int32, flatten_ids [M] int64]");
  m.def("num_threads", []() { return at::get_num_threads(); });
  m.def("set_avx2", [](bool allowed) { g_avx2_allowed = allowed; },
        "allow (default) or forbid the AVX2 copies of the per-tile work (tests compare the two)");
  m.def("uses_avx2", &use_avx2, "whether the per-tile work runs its AVX2 copy");
}
