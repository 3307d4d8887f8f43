"""The ``plenoxels`` scene and its dense voxel grid: interpolation, SH colour, total variation, upsampling,
row-sparse Adam, the PVD field split, training on a tiny synthetic scene, checkpoints after an upsample."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from omnifield.fields import trunc_exp
from omnifield.fields.voxel_grid import VoxelGrid, interpolate, resample, sh_color, total_variation, trilinear
from omnifield.renderers.types import RayBundle
from omnifield.scenes.base import HasDensity, HasFieldFeatures, RenderOptions
from omnifield.scenes.registry import available_methods, get_method

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
TINY = dict(profile="cpu", resolution=12, upsample_resolutions=(), upsample_at=(), grid_resolution=8,
            target_samples_per_batch=2048, tv_voxels=256)


def _info():
    return SimpleNamespace(scene_box=BOX, unbounded=False, near=0.5, far=5.0, background=(1.0, 1.0, 1.0))


def _vertex_u(res: int) -> torch.Tensor:
    """``[R^3, 3]`` unit-cube positions of the vertices in row order (x slowest)."""
    i = torch.arange(res, dtype=torch.float32) / (res - 1)
    return torch.stack(torch.meshgrid(i, i, i, indexing="ij"), -1).reshape(-1, 3)


def _grid_sample(values: torch.Tensor, u: torch.Tensor, res: int) -> torch.Tensor:
    """The oracle: ``F.grid_sample`` (align_corners) of the same grid; grid_sample's (x, y, z) index (W, H, D)."""
    vol = values.view(res, res, res, -1).permute(3, 0, 1, 2)[None]  # [1, C, x, y, z]
    g = (u * 2 - 1).flip(-1).view(1, 1, 1, -1, 3)
    return F.grid_sample(vol, g, mode="bilinear", align_corners=True).view(values.shape[1], -1).t()


# -- the voxel grid ---------------------------------------------------------------------------------------
def test_interpolation_at_vertices_midpoints_and_against_grid_sample(tol):
    res, c = 5, 4
    values = torch.randn(res**3, c)
    assert torch.allclose(trilinear(values, _vertex_u(res), res), values, **tol["float32"])
    h = 0.5 / (res - 1)
    idx = lambda i, j, k: (i * res + j) * res + k  # noqa: E731
    edge = torch.tensor([[1 / (res - 1) + h, 2 / (res - 1), 3 / (res - 1)]])  # between (1,2,3) and (2,2,3)
    expected = 0.5 * (values[idx(1, 2, 3)] + values[idx(2, 2, 3)])
    assert torch.allclose(trilinear(values, edge, res)[0], expected, **tol["float32"])
    centre = torch.tensor([[2 / (res - 1) + h, 1 / (res - 1) + h, 0 + h]])  # centre of the cell at (2, 1, 0)
    corners = [idx(2 + a, 1 + b, c_) for a in (0, 1) for b in (0, 1) for c_ in (0, 1)]
    assert torch.allclose(trilinear(values, centre, res)[0], values[corners].mean(0), **tol["float32"])
    u = torch.rand(300, 3)
    assert torch.allclose(trilinear(values, u, res), _grid_sample(values, u, res), **tol["float32"])
    outside = torch.tensor([[1.5, -0.2, 0.5]])  # clamped to the nearest face
    assert torch.allclose(trilinear(values, outside, res), trilinear(values, outside.clamp(0, 1), res))


def test_sparse_and_dense_gradients_equal_autograd_of_grid_sample(tol):
    res, c = 4, 3
    base = torch.randn(res**3, c)
    u, extra = torch.rand(200, 3), torch.tensor([0, 5, 5, 63])
    g_out, g_extra = torch.randn(200, c), torch.randn(4, c)
    ref = base.clone().requires_grad_(True)
    ((_grid_sample(ref, u, res) * g_out).sum() + (ref[extra] * g_extra).sum()).backward()
    for sparse in (False, True):
        v = base.clone().requires_grad_(True)
        out, gathered = interpolate(v, u, res, extra, sparse_grad=sparse)
        ((out * g_out).sum() + (gathered * g_extra).sum()).backward()
        assert v.grad.is_sparse == sparse
        grad = v.grad.to_dense() if sparse else v.grad
        assert torch.allclose(grad, ref.grad, **tol["float32"]), sparse
    rows = v.grad._indices()[0]
    assert bool((rows[1:] > rows[:-1]).all())  # unique, sorted: what RowSparseAdam reads without re-sorting


def test_sh_colour_hand_computed():
    c0 = torch.tensor([[0.7, -1.2, 2.0]])
    d = torch.tensor([[0.0, 0.6, 0.8]])
    from omnifield.cuda import ops

    assert torch.allclose(sh_color(c0, ops.sh_encode(d, 1)), torch.sigmoid(c0 * 0.28209479177387814))
    # degree 2: [C0, -C1 y, C1 z, -C1 x] per channel (red only here)
    coeffs = torch.tensor([[0.1, 0.2, 0.3, 0.4] + [0.0] * 8])
    c1 = 0.48860251190291987
    red = 0.1 * 0.28209479177387814 - 0.2 * c1 * 0.6 + 0.3 * c1 * 0.8 - 0.4 * c1 * 0.0
    expected = torch.tensor([[torch.sigmoid(torch.tensor(red)), 0.5, 0.5]])
    assert torch.allclose(sh_color(coeffs, ops.sh_encode(d, 2)), expected, atol=1e-6)


def test_total_variation_zero_on_constant_and_analytic_on_linear(tol):
    res = 6
    const = torch.full((res**3, 2), 0.3)
    assert torch.equal(total_variation(const, res), torch.zeros(2))
    u = _vertex_u(res)
    linear = torch.stack([2.0 * u[:, 0], u[:, 0] - 3.0 * u[:, 2]], -1)  # steps of 2/(R-1); 1/(R-1) and -3/(R-1)
    h = 1.0 / (res - 1)
    expected = torch.tensor([(2 * h) ** 2, h**2 + (3 * h) ** 2])
    assert torch.allclose(total_variation(linear, res), expected, **tol["float32"])
    gen = torch.Generator().manual_seed(1)
    assert torch.allclose(total_variation(linear, res, 10, gen), expected, **tol["float32"])  # the same on any cell
    noisy = const + 0.01 * torch.randn_like(const)
    assert bool((total_variation(noisy, res) > 0).all())
    grid = VoxelGrid(res, 2, init_std=0.0, init_mean=0.3)
    _, tv = grid.interpolate_with_tv(torch.rand(5, 3), 20)
    assert torch.equal(tv, torch.zeros(2))


def test_upsampling_preserves_a_linear_field_exactly(tol):
    def field(u):
        return torch.stack([0.5 + u[:, 0] - 2 * u[:, 1] + 0.25 * u[:, 2], 3 * u[:, 2] - 1], -1)

    grid = VoxelGrid(5, 2, init_std=0.0)
    grid.values.data = field(_vertex_u(5))
    u = torch.rand(400, 3)
    before = grid(u)
    grid.upsample(9)
    assert grid.res == 9 and grid.values.shape == (9**3, 2) and int(grid.resolution) == 9
    assert torch.allclose(grid.values, field(_vertex_u(9)), **tol["float32"])
    assert torch.allclose(grid(u), before, **tol["float32"])
    assert resample(grid.values, 9, 9).equal(grid.values)


def test_row_sparse_adam_matches_adam_on_touched_rows():
    from omnifield.scenes.plenoxels import RowSparseAdam

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(10, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ref = torch.optim.Adam([a], lr=0.1, betas=(0.9, 0.99), eps=1e-15)
    opt = RowSparseAdam([b], lr=0.1, betas=(0.9, 0.99), eps=1e-15)
    for _ in range(3):  # every row has a gradient: lazy Adam is Adam
        g = torch.randn(10, 3)
        a.grad, b.grad = g.clone(), g.to_sparse()
        ref.step()
        opt.step()
    assert torch.allclose(a, b, atol=1e-6)
    frozen = b.detach().clone()
    rows = torch.tensor([2, 7])
    b.grad = torch.sparse_coo_tensor(rows[None], torch.ones(2, 3), (10, 3))
    opt.step()
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(b[untouched], frozen[untouched]) and not torch.equal(b[rows], frozen[rows])


# -- the scene --------------------------------------------------------------------------------------------
def _scene(**kw):
    spec = get_method("plenoxels")
    return spec.build(spec.config_cls(**{**TINY, **kw}), _info())


def test_registry_capabilities_and_the_pvd_field_split():
    assert "plenoxels" in available_methods()
    scene = _scene()
    assert isinstance(scene, HasDensity) and isinstance(scene, HasFieldFeatures)
    assert scene.voxels.values.shape == (12**3, 28)  # 1 + 3 * 3^2 values per vertex
    x = torch.rand(50, 3) * 2 - 1
    d = F.normalize(torch.randn(50, 3), dim=-1)
    with torch.no_grad():
        scene.voxels.values[:, 0] += torch.linspace(-5, 10, 12**3)  # some values beyond the clamp
    out = scene.field_outputs(x, d)
    assert out.features is None and out.sigma_pre.shape == (50,) and out.rgb.shape == (50, 3)
    assert scene.field_outputs(x).rgb is None
    assert torch.allclose(scene.density(x), trunc_exp(out.sigma_pre.clamp(-2.0, 7.0)))
    assert torch.allclose(scene.color(x, d), out.rgb) and bool(((out.rgb > 0) & (out.rgb < 1)).all())
    assert torch.equal(scene.density(torch.tensor([[1.5, 0.0, 0.0]])), torch.zeros(1))
    with torch.no_grad():
        assert torch.allclose(scene.density(x), trunc_exp(out.sigma_pre.clamp(-2.0, 7.0)))  # density-only path
    out.sigma_pre.sum().backward()
    assert scene.voxels.values.grad is not None
    d = F.normalize(torch.randn(4, 3) * 0.1 + torch.tensor([0.0, 0.0, 1.0]), dim=-1)
    rays = RayBundle(torch.tensor([[0.0, 0.0, -3.0]]).repeat(4, 1), d)
    samples = scene.march(rays)
    dt, step = samples.t_ends - samples.t_starts, scene.config.render_step_size
    assert len(samples) > 0 and bool((dt <= step + 1e-5).all())  # constant steps, the last one clipped at the box
    assert torch.equal(samples.packed_info[:, 1], torch.full((4,), 12))  # no early termination: every cell is occupied


def test_config_resolution_and_refusals():
    from omnifield.errors import ConfigError

    c = _scene(profile="paper", resolution=None, upsample_resolutions=None, upsample_at=None).config
    assert c.resolution == 128 and c.upsample_resolutions == () and c.density_clamp == (-2.0, 7.0)
    assert c.lr == 1e-2 and c.init_density == 0.0 and c.grid_resolution == 8  # the profile fills only None fields
    assert math.isclose(c.render_step_size, 0.5 * 2.0 / 127)
    with pytest.raises(ConfigError, match="increase"):
        _scene(upsample_resolutions=(8,), upsample_at=(0.5,))
    with pytest.raises(ConfigError, match="one entry each"):
        _scene(upsample_resolutions=(16,), upsample_at=())


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    pytest.importorskip("open3d", reason="synth renders with open3d (pip install open3d-cpu)")
    from omnifield.datasets.load import load_scene
    from omnifield.datasets.synth import SynthConfig, synthesize

    root = synthesize(tmp_path_factory.mktemp("synth") / "scene",
                      SynthConfig(n_train=12, n_test=2, n_val=0, width=24, height=24))
    return load_scene(root)


def _quiet(**kw):
    from omnifield.scenes.trainer import TrainerConfig

    base = dict(eval_every=0, checkpoint_every=0, checkpoint_minutes=None, log_every=1, progress=False)
    return TrainerConfig(**{**base, **kw})


def _test_psnr(scene, data) -> float:
    from omnifield.scenes.evaluate import score_images

    scene.eval()
    with torch.no_grad():
        rows, _ = score_images(scene, data, data.split("test"), with_ssim=False)
    return sum(r["psnr"] for r in rows) / len(rows)


def test_short_training_on_the_synthetic_scene_raises_held_out_psnr(synth_data, one_torch_thread):
    from omnifield.scenes.trainer import Trainer

    spec = get_method("plenoxels")
    scene = spec.build(spec.config_cls(profile="cpu", resolution=32, upsample_resolutions=(48,), upsample_at=(0.5,),
                                       grid_resolution=32, target_samples_per_batch=2**13, render_step_size=0.03),
                       synth_data)
    before = _test_psnr(scene, synth_data)
    Trainer(scene, synth_data, _quiet(max_steps=150, log_every=0), None).train()
    assert scene.voxels.res == 48
    after = _test_psnr(scene, synth_data)
    assert after > before + 6 and after > 18, (before, after)


def test_upsample_then_save_load_run_and_resume_are_exact(tmp_path, synth_data, one_torch_thread):
    from omnifield.scenes import runs
    from omnifield.scenes.trainer import Trainer

    spec = get_method("plenoxels")
    cfg = spec.config_cls(**{**TINY, "upsample_resolutions": (17,), "upsample_at": (0.5,)})
    torch.manual_seed(0)
    straight = Trainer(spec.build(cfg, synth_data), synth_data, _quiet(max_steps=6), tmp_path / "a")
    straight.train()
    scene = straight.scene
    assert scene.voxels.res == 17 and len(straight.optimizer.state[scene.voxels.values]) > 0
    assert straight.optimizer.state[scene.voxels.values]["exp_avg"].shape == (17**3, 28)  # restarted at the upsample
    run = runs.load_run(tmp_path / "a")
    assert run.scene.voxels.res == 17 and run.scene.config == scene.config
    scene.eval()
    cam = synth_data.cameras[[0]]
    a, b = scene.render(cam)[0], run.scene.render(cam)[0]
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.depth, b.depth)
    # 3 + 3 steps (stopped right after the upsample, resumed into a scene built at the start resolution) == 6 steps
    torch.manual_seed(0)  # the same initial grid as the straight run (as build_trainer seeds before building)
    first = Trainer(spec.build(cfg, synth_data), synth_data, _quiet(max_steps=6), tmp_path / "b")
    end = first.scene.on_step_end
    first.scene.on_step_end = lambda step: (end(step), first.stop() if step == 2 else None)
    assert first.train().step == 3 and first.scene.voxels.res == 17
    torch.manual_seed(123)
    second = Trainer(spec.build(cfg, synth_data), synth_data, _quiet(max_steps=6), tmp_path / "b")
    assert second.resume() == 3
    second.train()
    sa, sb = straight.scene.state_dict(), second.scene.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        out = second.scene.render_rays(RayBundle(torch.zeros(3, 3), torch.eye(3)), torch.ones(3), RenderOptions())
    assert out.rgb.shape == (3, 3)
