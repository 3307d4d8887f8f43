"""CUDA ray marching and compositing kernels against the pure-PyTorch references, forward and backward.

GPU tier: every test marked ``gpu`` skips without a CUDA device. Marching (ray/box test, occupancy
grid with cascades, constant and cone steps, jitter) must equal the reference run on the same device
bit for bit; the EMA update too. Compositing (render_weights, composite_rays with early termination)
is compared with the tolerances ``marching_cuda_forward`` / ``marching_cuda_backward`` of
conftest.py (float32 with other summation orders), then backpropagated with the same random upstream
gradients. ``tests/test_cuda_emulated_marching.py`` runs these functions on CPU tensors against the
emulated build, with the smaller sizes below.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from omnifield.cuda import cuda_marching as cm
from omnifield.cuda import native
from omnifield.cuda.reference import compositing as ref_comp
from omnifield.cuda.reference import occupancy as ref_occ
from omnifield.cuda.reference.ray_aabb import ray_aabb_intersect as ref_aabb

DEVICE = "cuda"  # the tier under test (tests/test_cuda_emulated_marching.py sets "cpu" and the sizes below)
N_RAYS = 3000  # marching
GRID_RES = 24
N_COMPOSITE_RAYS = 600
MAX_SAMPLES = 64  # per ray, compositing
AABB = torch.tensor([[-1.0, -0.5, -1.5], [1.0, 1.5, 0.5]])  # not centred at 0, not a cube
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA kernels vs references)")


@pytest.fixture(scope="module")
def ext(cuda_extension):
    """The built extension; a build failure on a GPU machine fails (a missing nvcc skips)."""
    return cuda_extension("marching")


def _close(got, ref, tol, what):
    """assert_close with the table's tolerances, atol scaled by max(1, max |ref|)."""
    assert (got is None) == (ref is None), f"{what}: one of them is None"
    if ref is None:
        return
    atol = tol["atol"] * (max(1.0, float(ref.detach().abs().max())) if ref.numel() else 1.0)
    torch.testing.assert_close(got, ref, rtol=tol["rtol"], atol=atol, msg=lambda m: f"{what}: {m}")


def _identical(got, ref, names):
    for name, a, b in zip(names, got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} " \
            f"{tuple(b.shape)}"
        assert torch.equal(a, b), f"{name}: {int((a != b).sum())} of {a.numel()} entries differ"


def _rays(n: int, levels: int, near: float = 0.05):
    """Rays from outside and inside the outer box (on CPU, then moved: the same numbers on every
    device): a quarter pointing away (misses), axis-parallel ones (zero direction components), a few
    empty segments; t_min / t_max clipped like ``OccupancyGrid.sample``."""
    centre, half = AABB.mean(0), 0.5 * (AABB[1] - AABB[0]) * 2 ** (levels - 1)
    origins = centre + torch.randn(n, 3) * half * 1.5
    targets = centre + (torch.rand(n, 3) * 2 - 1) * half
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    directions[: n // 8] *= -1
    directions[n // 8 : n // 4, 1] = 0.0
    directions[n // 4 : n // 4 + n // 16, 0] = 0.0
    t0, t1, _ = ref_aabb(origins, directions, torch.stack([centre - half, centre + half]))
    t_min, t_max = t0.clamp_min(near), t1
    t_max[-2:] = t_min[-2:]  # empty segments
    return [t.to(DEVICE) for t in (origins, directions.contiguous(), t_min, t_max)]


def _grid(levels: int, res: int, fraction: float = 0.3):
    bins = torch.rand(levels, res, res, res) < fraction
    bins[0, : max(1, res // 4)] = False  # a slab of empty space: rays with zero samples
    return bins.to(DEVICE)


def _march_both(o, d, t_min, t_max, bins, step, offset=None, cone_angle=0.0, max_step=1e10, aabb=AABB):
    aabb = aabb.to(DEVICE)
    got = cm.march_occupancy_grid(o, d, t_min, t_max, bins, aabb, step, offset, cone_angle, max_step)
    want = ref_occ.march_occupancy_grid(o, d, t_min, t_max, bins, aabb, step, offset, cone_angle, max_step)
    _identical(got, want, ("ray_indices", "t_starts", "t_ends", "packed_info"))
    return want


# --------------------------------------------------------------------------------------------
# CPU tier


def test_cpu_tensors_are_not_supported():
    assert not cm.supports(torch.zeros(3))
    assert not cm.supports()
    assert not cm.supports(None)
    with pytest.raises(TypeError, match="CUDA float32"):
        cm.render_weights(*[torch.zeros(2)] * 4, torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_no_gpu_means_no_extension_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load_cuda_extension("marching") is None
        assert not cm.available()
    with pytest.raises(RuntimeError, match="CUDA ray-marching kernel is unavailable"):
        native.require_cuda_extension("marching", "ray-marching")


# --------------------------------------------------------------------------------------------
# GPU tier: marching (bit-identical)


@gpu
def test_ray_aabb_intersect_identical(ext):
    o, d, _, _ = _rays(N_RAYS, 2)
    d[:7] = 0.0  # all-zero directions
    d[7:12, 2] = -0.0
    o[12:20] = AABB.mean(0).to(DEVICE)  # inside: t_min < 0
    got = cm.ray_aabb_intersect(o, d, AABB.to(DEVICE))
    want = ref_aabb(o, d, AABB.to(DEVICE))
    _identical(got, want, ("t_min", "t_max", "hit"))
    assert got[2].dtype == torch.bool and 0 < int(got[2].sum()) < N_RAYS
    empty = cm.ray_aabb_intersect(o[:0], d[:0], AABB.to(DEVICE).reshape(-1))
    assert [tuple(t.shape) for t in empty] == [(0,), (0,), (0,)]


@gpu
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 256])
@pytest.mark.parametrize("jitter", [False, True])
def test_march_identical(ext, levels, cone_angle, jitter):
    o, d, t_min, t_max = _rays(N_RAYS, levels)
    bins = _grid(levels, GRID_RES)
    offset = torch.rand(N_RAYS).to(DEVICE) if jitter else None
    step = math.sqrt(3) * 2 / 128
    want = _march_both(o, d, t_min, t_max, bins, step, offset, cone_angle, max_step=0.1)
    counts = want[3][:, 1]
    assert want[0].numel() > N_RAYS // 3 and (counts == 0).sum() > N_RAYS // 10  # samples and empty rays


@gpu
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 256, 0.05])
def test_march_far_segments_and_partial_intervals(ext, cone_angle):
    """Cone steps reaching max_step, far planes cutting the last interval, large jitter."""
    o, d, t_min, t_max = _rays(N_RAYS, 3, near=0.0)
    t_max = torch.minimum(t_max, torch.full_like(t_max, 3.3))
    bins = _grid(3, GRID_RES, fraction=0.7)
    want = _march_both(o, d, t_min, t_max, bins, 0.0371, torch.rand(N_RAYS).to(DEVICE) * 0.999, cone_angle, 0.09)
    assert (want[2] - want[1] < 0.0371 * 0.999).any()  # shortened last intervals


@gpu
@pytest.mark.parametrize("fill", [False, True])
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 256])
def test_march_empty_and_full_grids(ext, fill, cone_angle):
    o, d, t_min, t_max = _rays(N_RAYS // 2, 1)
    bins = torch.full((1, 8, 8, 8), fill, device=DEVICE)
    want = _march_both(o, d, t_min, t_max, bins, 0.05, None, cone_angle)
    assert (want[0].numel() == 0) != fill


@gpu
def test_march_samples_on_cell_boundaries(ext):
    """Dyadic box, step and origins: sample midpoints land exactly on cell faces and level boundaries."""
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    n = max(8, N_RAYS // 20)
    o = torch.zeros(n, 3)
    o[:, 0] = -4.0
    o[:, 1:] = torch.randint(-8, 9, (n, 2)) / 4.0  # on cell faces of levels 0 and 1 (G = 8)
    d = torch.zeros(n, 3)
    d[:, 0] = 1.0
    t_min = torch.randint(0, 8, (n,)) / 8.0 - 1 / 16  # midpoints at multiples of 1/8 (cell faces)
    t_max = torch.full((n,), 8.0)
    bins = torch.rand(2, 8, 8, 8) < 0.5
    args = [t.to(DEVICE) for t in (o, d, t_min, t_max, bins)]
    want = _march_both(*args, 0.125, aabb=box)
    assert want[0].numel() > 0


@gpu
def test_march_no_rays_and_no_samples(ext):
    o, d, t_min, t_max = _rays(8, 1)
    bins = _grid(1, 4)
    got = cm.march_occupancy_grid(o[:0], d[:0], t_min[:0], t_max[:0], bins, AABB.to(DEVICE), 0.1)
    assert [tuple(t.shape) for t in got] == [(0,), (0,), (0,), (0, 2)]
    got = _march_both(o, d, t_max, t_max, bins, 0.1)  # empty segments: R rays, S = 0
    assert got[0].numel() == 0 and got[3].shape == (8, 2) and not got[3].any()


@gpu
def test_march_bad_inputs_raise(ext):
    o, d, t_min, t_max = _rays(8, 1)
    bins, box = _grid(1, 4), AABB.to(DEVICE)
    with pytest.raises(ValueError, match="step_size"):
        cm.march_occupancy_grid(o, d, t_min, t_max, bins, box, 0.0)
    with pytest.raises(ValueError, match="max_step"):
        cm.march_occupancy_grid(o, d, t_min, t_max, bins, box, 0.1, None, 0.01, 0.05)
    with pytest.raises(ValueError, match="t_max"):
        cm.march_occupancy_grid(o, d, t_min, t_max[:3], bins, box, 0.1)
    with pytest.raises(ValueError, match="binaries"):
        cm.march_occupancy_grid(o, d, t_min, t_max, bins[0], box, 0.1)


@gpu
def test_occupancy_ema_update_identical(ext):
    cells = 2 * GRID_RES**3
    occs = torch.rand(cells).to(DEVICE)
    occs[:10] = -1.0  # never-updated cells of nerfacc's grid
    ids = torch.randint(0, cells, (cells // 2,))
    ids = torch.cat([ids, ids[: cells // 8], torch.arange(12)]).to(DEVICE)  # duplicates, the -1 cells
    values = (torch.rand(ids.shape[0]) * 3 - 0.5).to(DEVICE)  # some negative
    got = cm.occupancy_ema_update(occs.clone(), ids, values, 0.95)
    want = ref_occ.occupancy_ema_update(occs.clone(), ids, values, 0.95)
    _identical([got], [want], ["occs"])
    same = occs.clone()
    assert cm.occupancy_ema_update(same, ids[:0], values[:0], 0.95) is same and torch.equal(same, occs)


# --------------------------------------------------------------------------------------------
# GPU tier: compositing (forward and backward)


def _samples(n_rays: int, max_count: int = MAX_SAMPLES):
    """Ragged packed samples: a quarter of the rays empty, empty space, opaque surfaces."""
    counts = torch.randint(0, max_count, (n_rays,))
    counts[torch.rand(n_rays) < 0.25] = 0
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    packed_info = ref_comp.packed_info_from_ray_indices(ray_indices, n_rays)
    s = ray_indices.shape[0]
    deltas = torch.rand(s) * 0.05 + 1e-3
    t_ends = torch.cumsum(deltas, 0)
    t_starts = t_ends - deltas
    sigmas = torch.rand(s) * 30
    sigmas[torch.rand(s) < 0.3] = 0.0
    sigmas[torch.rand(s) < 0.02] = 1e3
    return [t.to(DEVICE) for t in (sigmas, t_starts, t_ends, ray_indices, packed_info)]


def _grads(outputs, leaves, upstream):
    loss = sum((o * g).sum() for o, g in zip(outputs, upstream) if g is not None)
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@gpu
@pytest.mark.parametrize("upstream", ["all", "weights", "trans"])
def test_render_weights(ext, tol, upstream):
    sigmas, t_starts, t_ends, ray_indices, packed_info = _samples(N_COMPOSITE_RAYS)
    lc, lr = _leaves(sigmas, t_starts, t_ends), _leaves(sigmas, t_starts, t_ends)
    got = cm.render_weights(*lc, ray_indices, packed_info)
    want = ref_comp.render_weights(*lr, ray_indices, packed_info)
    for name, a, b in zip(("weights", "transmittance", "alphas"), got, want):
        _close(a, b, tol["marching_cuda_forward"], name)
    up = [torch.randn_like(w) for w in want]
    if upstream != "all":
        up = [u if name == upstream else None for u, name in zip(up, ("weights", "trans", "alphas"))]
    for name, a, b in zip(("sigmas", "t_starts", "t_ends"), _grads(got, lc, up), _grads(want, lr, up)):
        _close(a, b, tol["marching_cuda_backward"], f"d/d{name}")


@gpu
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("early_stop_eps", [0.0, 1e-2])
def test_composite_rays(ext, tol, channels, early_stop_eps):
    sigmas, t_starts, t_ends, ray_indices, packed_info = _samples(N_COMPOSITE_RAYS)
    values = torch.rand(sigmas.shape[0], channels).to(DEVICE)
    lc, lr = _leaves(sigmas, values, t_starts, t_ends), _leaves(sigmas, values, t_starts, t_ends)
    got = cm.composite_rays(lc[0], lc[1], lc[2], lc[3], ray_indices, packed_info, early_stop_eps)
    want = ref_comp.composite_rays(lr[0], lr[1], lr[2], lr[3], ray_indices, packed_info, early_stop_eps)
    for name, a, b in zip(("out", "depth", "acc"), got, want):
        _close(a, b, tol["marching_cuda_forward"], name)
    if early_stop_eps > 0:
        _, trans, _ = ref_comp.render_weights(sigmas, t_starts, t_ends, ray_indices, packed_info)
        assert (trans < early_stop_eps).any(), "some samples should be terminated"
    up = [torch.randn_like(w) for w in want]
    for name, a, b in zip(("sigmas", "values", "t_starts", "t_ends"), _grads(got, lc, up), _grads(want, lr, up)):
        _close(a, b, tol["marching_cuda_backward"], f"d/d{name}")


@gpu
def test_composite_rays_partial_upstream(ext, tol):
    """Only the colour is used (depth and acc get no gradient): None upstream gradients."""
    sigmas, t_starts, t_ends, ray_indices, packed_info = _samples(N_COMPOSITE_RAYS // 2)
    values = torch.rand(sigmas.shape[0], 3).to(DEVICE)
    lc, lr = _leaves(sigmas, values), _leaves(sigmas, values)
    got = cm.composite_rays(lc[0], lc[1], t_starts, t_ends, ray_indices, packed_info, 1e-3)[0]
    want = ref_comp.composite_rays(lr[0], lr[1], t_starts, t_ends, ray_indices, packed_info, 1e-3)[0]
    up = [torch.randn_like(want)]
    for name, a, b in zip(("sigmas", "values"), _grads([got], lc, up), _grads([want], lr, up)):
        _close(a, b, tol["marching_cuda_backward"], f"d/d{name}")


@gpu
def test_compositing_empty_inputs(ext):
    """S = 0 (rays without samples) and R = 0."""
    z = torch.zeros(0, device=DEVICE)
    info = torch.zeros(4, 2, dtype=torch.long, device=DEVICE)
    ri = torch.zeros(0, dtype=torch.long, device=DEVICE)
    sig = z.clone().requires_grad_()
    w, t, a = cm.render_weights(sig, z, z, ri, info)
    assert w.shape == t.shape == a.shape == (0,)
    out, depth, acc = cm.composite_rays(sig, torch.zeros(0, 3, device=DEVICE), z, z, ri, info, 1e-4)
    assert out.shape == (4, 3) and not out.any() and not depth.any() and not acc.any()
    (out.sum() + w.sum()).backward()
    assert sig.grad.shape == (0,)
    out, depth, acc = cm.composite_rays(z, torch.zeros(0, 2, device=DEVICE), z, z, ri, info[:0])
    assert out.shape == (0, 2) and depth.shape == acc.shape == (0,)
