"""The C++ CPU ray-marching kernel against the pure-PyTorch oracle: bit-identical samples (constant and
cone steps).

The extension is built once per session (module fixture) and cached on disk for later sessions;
every test here skips, with the reason, where no compiler is present or the build fails.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from omnifield.cuda import cpu_ray_marching, native
from omnifield.cuda.reference.occupancy import grid_lookup, march_occupancy_grid
from omnifield.cuda.reference.ray_aabb import ray_aabb_intersect

AABB = torch.tensor([[-1.0, -0.5, -1.5], [1.0, 1.5, 0.5]])  # not centred at 0, not a cube


@pytest.fixture(scope="module")
def ext(native_extension):
    return native_extension("ray_marching")


def _rays(n: int, levels: int, dtype=torch.float32, near: float = 0.0, far: float = math.inf):
    """Rays from outside and inside the outer box, some pointing away (misses), clipped like
    ``OccupancyGrid.sample`` does: ``t_min = max(t_enter, near)``, ``t_max = min(t_exit, far)``."""
    aabb = AABB.to(dtype)
    centre, half = aabb.mean(0), 0.5 * (aabb[1] - aabb[0]) * 2 ** (levels - 1)
    origins = centre + torch.randn(n, 3, dtype=dtype) * half * 1.5
    targets = centre + (torch.rand(n, 3, dtype=dtype) * 2 - 1) * half
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    directions[: n // 8] *= -1  # mostly misses
    directions[n // 8 : n // 4, 1] = 0.0  # axis-parallel components
    outer = torch.stack([centre - half, centre + half])
    t0, t1, _ = ray_aabb_intersect(origins, directions, outer)
    t_min = torch.clamp_min(t0, near)
    t_max = torch.clamp_max(t1, far)
    t_max[-4:] = t_min[-4:]  # empty segments
    return origins, directions.contiguous(), t_min, t_max


def _grid(levels: int, res: int, fraction: float = 0.3) -> torch.Tensor:
    bins = torch.rand(levels, res, res, res) < fraction
    bins[0, : res // 4] = False  # a slab of empty space: rays with zero samples
    return bins


def _assert_identical(got, ref):
    for name, a, b in zip(("ray_indices", "t_starts", "t_ends", "packed_info"), got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{name}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"
        assert torch.equal(a, b), f"{name}: {(a != b).sum().item()} of {a.numel()} entries differ"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("jitter", [False, True])
def test_samples_identical_to_reference(ext, dtype, levels, jitter):
    o, d, t_min, t_max = _rays(3000, levels, dtype, near=0.05)
    bins = _grid(levels, 24)
    offset = torch.rand(o.shape[0], dtype=dtype) if jitter else None
    step = math.sqrt(3) * 2 / 128
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, AABB, step, offset)
    got = cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, AABB, step, offset)
    _assert_identical(got, ref)
    counts = ref[3][:, 1]
    assert ref[0].numel() > 1000 and (counts == 0).sum() > 100  # many samples, many empty rays


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("jitter", [False, True])
@pytest.mark.parametrize("cone_angle", [1 / 256, 0.05])
def test_cone_samples_identical_to_reference(ext, dtype, levels, jitter, cone_angle):
    """Cone marching (``dt = clamp(t * cone_angle, step, max_step)``): the reference's samples bit for bit."""
    o, d, t_min, t_max = _rays(2000, levels, dtype, near=0.05)
    bins = _grid(levels, 24)
    offset = torch.rand(o.shape[0], dtype=dtype) if jitter else None
    step, max_step = math.sqrt(3) * 2 / 128, 0.07
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, AABB, step, offset, cone_angle, max_step)
    got = cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, AABB, step, offset, cone_angle, max_step)
    _assert_identical(got, ref)
    assert ref[0].numel() > 500 and (ref[3][:, 1] == 0).sum() > 100


def test_cone_stops_without_progress_like_reference(ext):
    """t + dt rounds back to t (tiny step far away): both stop the ray after one interval."""
    o, d = torch.zeros(3, 3), torch.eye(3)
    t_min, t_max = torch.full((3,), 1e4), torch.full((3,), 2e4)
    bins, box = torch.ones(1, 4, 4, 4, dtype=torch.bool), torch.tensor([[-3e4] * 3, [3e4] * 3])
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, box, 1e-8, None, 1e-14)
    _assert_identical(cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, box, 1e-8, None, 1e-14), ref)
    assert ref[0].tolist() == [0, 1, 2]


def test_far_plane_and_rays_starting_inside(ext):
    """``far`` cuts rays inside the box (last interval shortened to ``t_max``); origins inside the box."""
    o, d, t_min, t_max = _rays(2000, 2, near=0.0, far=1.3)
    o[:500] = AABB.mean(0) + torch.rand(500, 3) * 0.2  # inside: t_enter < 0 clipped to near
    t0, t1, _ = ray_aabb_intersect(o, d, AABB * 2 - AABB.mean(0))
    t_min[:500], t_max[:500] = t0[:500].clamp_min(0.0), t1[:500].clamp_max(1.3)
    bins = _grid(2, 16, fraction=0.6)
    step = 0.0371  # does not divide the segments: partial last intervals
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, AABB, step)
    _assert_identical(cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, AABB, step), ref)
    assert (ref[2] - ref[1] < step * 0.999).any()  # some shortened intervals


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_grids(ext, fill):
    o, d, t_min, t_max = _rays(500, 1)
    bins = torch.full((1, 8, 8, 8), fill)
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, AABB, 0.05)
    got = cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, AABB, 0.05)
    _assert_identical(got, ref)
    assert (ref[0].numel() == 0) != fill


def test_no_rays(ext):
    z = torch.zeros(0, 3)
    got = cpu_ray_marching.march_occupancy_grid_cpu(z, z, z[:, 0], z[:, 0], _grid(1, 4), AABB, 0.1)
    assert [tuple(t.shape) for t in got] == [(0,), (0,), (0,), (0, 2)]


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_identical_results(ext, threads):
    o, d, t_min, t_max = _rays(4000, 2)
    bins = _grid(2, 32)
    ref = march_occupancy_grid(o, d, t_min, t_max, bins, AABB, 0.02)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, bins, AABB, 0.02)
    finally:
        torch.set_num_threads(previous)
    _assert_identical(got, ref)


@pytest.mark.parametrize("levels", [1, 4])
def test_grid_lookup_identical_including_boundaries(ext, levels):
    """Random points, points on cell faces and on cascade-level boundaries (extent exactly 2^k)."""
    res = 8
    bins = _grid(levels, res, fraction=0.5)
    box = torch.tensor([[-0.5, -0.5, -0.5], [1.5, 1.5, 1.5]])  # centre 0.5, half 1: u below is exact
    centre, half = box.mean(0), 0.5 * (box[1] - box[0])
    u = torch.rand(6000, 3) * 2 ** levels * 2.2 - 2 ** levels * 1.1
    u[:1000] = torch.randint(-res * 2, res * 2 + 1, (1000, 3)) / res  # cell faces of levels 0 and 1
    for k in range(levels + 1):  # one axis exactly on the boundary of level k
        u[1000 + 100 * k : 1100 + 100 * k] = torch.rand(100, 3) * 2 - 1
        u[1000 + 100 * k : 1100 + 100 * k, k % 3] = 2.0**k * torch.sign(torch.randn(100))
    points = centre + u * half
    ref = grid_lookup(points, bins, box)
    got = cpu_ray_marching.grid_lookup_cpu(points, bins, box)
    assert torch.equal(got, ref), f"{(got != ref).sum().item()} points differ"


def test_grid_lookup_within_ulps_of_level_boundaries(ext):
    """Extents 2^k (1 + m 2^-23), m in -3..3: where float32 log2 rounds to the integer k (k >= 4)."""
    levels = 8
    bins = torch.zeros(levels, 4, 4, 4, dtype=torch.bool)
    bins[::2] = True  # alternate levels: a level mix-up flips the answer
    k = torch.arange(levels + 1, dtype=torch.float32)[:, None]
    u = (2**k * (1 + torch.arange(-3, 4, dtype=torch.float32) * 2**-23)).reshape(-1).repeat(20)
    points = torch.stack([u, torch.rand_like(u) - 0.5, -torch.rand_like(u)], dim=-1)
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    assert torch.equal(cpu_ray_marching.grid_lookup_cpu(points, bins, box), grid_lookup(points, bins, box))


def test_bad_inputs_raise(ext):
    o, d, t_min, t_max = _rays(10, 1)
    bins = _grid(1, 4)
    march = cpu_ray_marching.march_occupancy_grid_cpu
    with pytest.raises(TypeError, match="dtype"):
        march(o.double(), d, t_min, t_max, bins, AABB, 0.1)
    with pytest.raises(TypeError, match="binaries"):
        march(o, d, t_min, t_max, bins.float(), AABB, 0.1)
    with pytest.raises(ValueError, match=r"\[R, 3\]"):
        march(o[:, :2], d, t_min, t_max, bins, AABB, 0.1)
    with pytest.raises(ValueError, match="t_offset"):
        march(o, d, t_min, t_max, bins, AABB, 0.1, torch.rand(3))
    with pytest.raises(ValueError, match="binaries"):
        march(o, d, t_min, t_max, bins[0], AABB, 0.1)
    with pytest.raises(ValueError, match="step_size"):
        march(o, d, t_min, t_max, bins, AABB, 0.0)
    with pytest.raises(ValueError, match="max_step"):
        march(o, d, t_min, t_max, bins, AABB, 0.1, None, 0.01, 0.05)
    assert not cpu_ray_marching.supports(o, d, t_min.double(), t_max, bins)
    assert not cpu_ray_marching.supports(o.half(), d.half(), t_min.half(), t_max.half(), bins)
    assert cpu_ray_marching.supports(o, d, t_min, t_max, bins, torch.rand(10))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    assert not cpu_ray_marching.available()
    o, d, t_min, t_max = _rays(4, 1)
    with pytest.raises(RuntimeError, match="unavailable"):
        cpu_ray_marching.march_occupancy_grid_cpu(o, d, t_min, t_max, _grid(1, 4), AABB, 0.1)


def test_nothing_is_built_at_import(tmp_path):
    """Importing the wrappers compiles and loads nothing (STYLE.md: no import-time side effects)."""
    code = (
        "import omnifield.cuda.cpu_ray_marching, omnifield.cuda.cpu_compositing, omnifield.cuda.native as n, sys;"
        "assert not n._loaded and not n._errors;"
        "assert not any(m.startswith(('omnifield_ray_marching', 'omnifield_compositing')) for m in sys.modules)"
    )
    env = {**os.environ, native.CACHE_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "extensions").exists()
