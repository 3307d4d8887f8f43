"""The ``tensorf`` scene: the VM decomposition against a dense grid, upsampling, the PVD field split,
training on the tiny synthetic scene, checkpoints across an upsampling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from omnifield.fields.activations import trunc_exp
from omnifield.fields.tensor_grids import MAT_MODE, VEC_MODE, TensorVM, vm_resolution, voxel_schedule
from omnifield.renderers.types import RayBundle
from omnifield.scenes.base import HasDensity, HasFieldFeatures, RayBatch
from omnifield.scenes.registry import available_methods, get_method

# Tolerances of this file (STYLE.md 7; candidates for the shared table in conftest.py).
TOL = {
    # float32 grid_sample vs the float64 hand-made trilinear interpolation of the dense grid.
    "vm_vs_dense": {"rtol": 1e-5, "atol": 1e-6},
    # resampling a field that is linear along each axis is exact up to float32 rounding.
    "upsample_linear": {"rtol": 0.0, "atol": 1e-6},
    # a smooth field resampled from 48 to 80 vertices: the interpolation error h^2/8 |f''| stays below this.
    "upsample_smooth": {"rtol": 0.0, "atol": 1e-4},
}
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
TINY = dict(profile="cpu", density_components=4, app_components=6, n_voxels_init=12**3, n_voxels_final=24**3,
            upsample_at=(4.0, 8.0), schedule_units="steps", grid_resolution=16, render_step_size=0.04,
            target_samples_per_batch=4096, init_rays_per_batch=128, max_rays_per_batch=512, hidden_dim=16,
            grid_warmup_steps=16, grid_update_every=4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _info(**kw):
    return SimpleNamespace(scene_box=BOX, unbounded=False, near=0.5, far=6.0, background=(1.0, 1.0, 1.0), **kw)


def _scene(**overrides):
    spec = get_method("tensorf")
    return spec.build(spec.config_cls(**{**TINY, **overrides}), _info())


# -- the VM decomposition ---------------------------------------------------------------------------
def _dense(vm: TensorVM) -> torch.Tensor:
    """``[sum C, Rx, Ry, Rz]`` float64: every rank-one term ``plane (x) line`` written out on the vertices."""
    rx, ry, rz = vm.resolution
    idx = torch.meshgrid(torch.arange(rx), torch.arange(ry), torch.arange(rz), indexing="ij")
    parts = []
    for (a, b), c, plane, line in zip(MAT_MODE, VEC_MODE, vm.planes, vm.lines):
        p, v = plane.detach().double()[0], line.detach().double()[0, :, :, 0]
        parts.append(p[:, idx[b], idx[a]] * v[:, idx[c]])
    return torch.cat(parts)


def _trilinear(dense: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Hand-written trilinear interpolation of ``dense [C, Rx, Ry, Rz]`` at ``u [N, 3]`` in [0, 1] -> ``[N, C]``."""
    res = torch.tensor(dense.shape[1:], dtype=torch.float64)
    pos = u.double() * (res - 1)
    i0 = torch.minimum(pos.floor(), res - 2).long()
    f = pos - i0
    out = torch.zeros(u.shape[0], dense.shape[0], dtype=torch.float64)
    for corner in range(8):
        o = [(corner >> k) & 1 for k in range(3)]
        w = torch.ones(u.shape[0], dtype=torch.float64)
        for k in range(3):
            w = w * (f[:, k] if o[k] else 1 - f[:, k])
        out += w[:, None] * dense[:, i0[:, 0] + o[0], i0[:, 1] + o[1], i0[:, 2] + o[2]].t()
    return out


def test_vm_products_equal_trilinear_interpolation_of_the_dense_grid():
    vm = TensorVM((2, 3, 1), (4, 5, 6), init_scale=1.0, generator=torch.Generator().manual_seed(0))
    assert vm.out_dim == 6 and vm.resolution == (4, 5, 6)
    assert tuple(vm.planes[0].shape) == (1, 2, 5, 4) and tuple(vm.lines[0].shape) == (1, 2, 6, 1)
    dense = _dense(vm)
    u = torch.cat([torch.rand(200, 3, generator=torch.Generator().manual_seed(1)),
                   torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1 / 3, 0.25, 0.2]])])  # last: a vertex
    got = vm(u)
    torch.testing.assert_close(got.double(), _trilinear(dense, u), **TOL["vm_vs_dense"])
    torch.testing.assert_close(got[-1].double(), dense[:, 1, 1, 1], **TOL["vm_vs_dense"])
    # the L1 regulariser is TensoRF's sum of mean absolute values
    l1 = sum(p.abs().mean() + v.abs().mean() for p, v in zip(vm.planes, vm.lines))
    torch.testing.assert_close(vm.l1(), l1)


def _set_field(vm: TensorVM, fn) -> None:
    """Plane and line values from ``fn(k, s, t)`` of the normalised vertex coordinates (line: ``t = 0``)."""
    with torch.no_grad():
        for plane, line in zip(vm.planes, vm.lines):
            k = torch.arange(plane.shape[1], dtype=torch.float64)[:, None, None]
            rows, cols = plane.shape[2], plane.shape[3]
            t = torch.linspace(0, 1, rows, dtype=torch.float64)[None, :, None]
            s = torch.linspace(0, 1, cols, dtype=torch.float64)[None, None, :]
            plane.copy_(fn(k, s, t)[None].float())
            z = torch.linspace(0, 1, line.shape[2], dtype=torch.float64)[None, :, None]
            line.copy_(fn(k, z, 0 * z)[None].float())


@pytest.mark.parametrize("kind", ["upsample_linear", "upsample_smooth"])
def test_upsampling_preserves_the_field(kind):
    if kind == "upsample_linear":  # (bi)linear per axis: resampling is exact
        fn, before, after = (lambda k, s, t: 0.3 + 0.1 * k - 0.7 * s + 0.4 * t + 0.5 * s * t), (4, 5, 6), (9, 7, 13)
    else:  # smooth: the change is the interpolation error, ~h^2/8 |f''| < 1e-4 at 48 vertices
        fn, before, after = (lambda k, s, t: 0.5 * torch.cos(1.0 * s + 0.3 * k) * torch.cos(0.8 * t)), (48,) * 3, (80,) * 3
    vm = TensorVM(2, before)
    _set_field(vm, fn)
    u = torch.rand(500, 3, generator=torch.Generator().manual_seed(2))
    ref = vm(u).detach()
    ids = [id(p) for p in vm.parameters()]
    changed = vm.upsample(after)
    assert vm.resolution == after and len(changed) == 6
    assert [id(p) for p in vm.parameters()] == ids  # the same Parameter objects (the optimiser keeps them)
    torch.testing.assert_close(vm(u).detach(), ref, **TOL[kind])


def test_resolution_schedule_is_tensorfs():
    assert vm_resolution(128**3, (3.0, 3.0, 3.0)) == (128, 128, 128)
    assert vm_resolution(1000, (1.0, 2.0, 4.0)) == (5, 10, 20)  # cubic voxels of side 0.2
    counts = voxel_schedule(128**3, 300**3, 5)
    assert len(counts) == 5 and counts[-1] == 300**3
    ratios = [b / a for a, b in zip([128**3] + counts[:-1], counts)]
    assert max(ratios) / min(ratios) < 1.0001  # log-linear


# -- the scene --------------------------------------------------------------------------------------
def test_registry_profiles_and_capabilities():
    assert "tensorf" in available_methods()
    scene = get_method("tensorf").build(get_method("tensorf").config_cls(profile="paper"), _info())
    c = scene.config
    assert (c.density_components, c.app_components, c.n_voxels_init, c.n_voxels_final) == (16, 48, 128**3, 300**3)
    assert c.upsample_at == (2000.0, 3000.0, 4000.0, 5500.0, 7000.0) and c.density_clamp == (-2.0, 7.0)
    assert tuple(scene.vm_resolution.tolist()) == (128, 128, 128) and scene.basis.in_features == 144
    assert scene.basis.out_features == 15 and scene.basis.bias is None
    assert isinstance(scene, HasDensity) and isinstance(scene, HasFieldFeatures)


def test_field_outputs_and_density_head():
    scene = _scene(density_shift=3.0)
    with torch.no_grad():  # spread sigma_pre over and beyond the clamp range (-2, 7)
        for p in scene.density_vm.parameters():
            p.mul_(10.0)
    x = torch.rand(300, 3, generator=torch.Generator().manual_seed(3)) * 1.98 - 0.99
    d = torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    out = scene.field_outputs(x, d)
    assert out.sigma_pre.shape == (300,) and out.features.shape == (300, 16) and out.rgb.shape == (300, 3)
    assert torch.equal(out.features[:, 0], out.sigma_pre)
    assert float(out.sigma_pre.detach().min()) < -2.0 and float(out.sigma_pre.detach().max()) > 7.0
    torch.testing.assert_close(scene.density(x), trunc_exp(out.sigma_pre.clamp(-2.0, 7.0)))
    torch.testing.assert_close(scene.color(x, d), out.rgb)
    assert scene.field_outputs(x).rgb is None
    assert torch.equal(scene.density(torch.tensor([[1.5, 0.0, 0.0]])), torch.zeros(1))  # outside the box
    unclamped = _scene(density_shift=3.0, density_clamp=None)
    unclamped.load_state_dict(scene.state_dict())
    torch.testing.assert_close(unclamped.density(x), trunc_exp(out.sigma_pre))
    out.rgb.sum().backward()  # differentiable into the appearance grids
    assert scene.app_vm.planes[0].grad is not None and scene.basis.weight.grad is not None


def test_march_has_no_density_termination_and_loss_is_mse_plus_l1():
    scene = _scene()
    gen = torch.Generator().manual_seed(4)
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=gen), dim=-1)
    rays = RayBundle(-3.0 * d, d)
    samples = scene.march(rays)
    expected = scene.grid.sample(rays, 0.5, 6.0, scene.config.render_step_size, None)
    assert torch.equal(samples.t_starts, expected.t_starts) and len(samples) > 0
    batch = RayBatch(rays, torch.rand(64, 3, generator=gen), torch.ones(3))
    scene.train()
    losses = scene.training_step(batch, 0)
    torch.testing.assert_close(losses["loss"].detach(), losses["mse"] + 1e-4 * scene.density_vm.l1().detach())


def test_upsample_in_training_keeps_the_field_and_resets_grid_optimiser_state():
    scene = _scene(n_voxels_init=40**3, n_voxels_final=64**3, upsample_at=(0.5,), schedule_units="fraction")
    opt, _ = scene.configure_optimizers(10)
    x = torch.rand(400, 3, generator=torch.Generator().manual_seed(5)) * 1.9 - 0.95
    scene.train()
    out = scene.field_outputs(x, torch.nn.functional.normalize(x, dim=-1))
    (out.rgb.sum() + out.sigma_pre.sum()).backward()
    opt.step()
    assert len(opt.state) == len(list(scene.parameters()))
    _set_field(scene.density_vm, lambda k, s, t: 0.1 * torch.cos(s + 0.2 * k) * torch.cos(0.5 * t))
    ref = scene.field_outputs(x).sigma_pre.detach()
    scene.on_step_end(3)  # before 0.5 x 10 steps: nothing
    assert tuple(scene.vm_resolution.tolist()) == (40, 40, 40)
    scene.on_step_end(5)
    assert tuple(scene.vm_resolution.tolist()) == (64, 64, 64) == scene.density_vm.resolution == scene.app_vm.resolution
    grids = {id(p) for m in (scene.density_vm, scene.app_vm) for p in m.parameters()}
    assert not any(id(p) in grids for p in opt.state) and len(opt.state) == len(list(scene.parameters())) - len(grids)
    torch.testing.assert_close(scene.field_outputs(x).sigma_pre.detach(), ref, **TOL["upsample_smooth"])


# -- training, checkpoints --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    pytest.importorskip("open3d", reason="the synthetic scene needs open3d (omnifield[synth])")
    from omnifield.datasets.synth import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", SynthConfig(n_train=8, n_test=2, width=32, height=32))


def _overrides(**kw) -> list[str]:
    cfg = {**TINY, **kw}
    cfg.pop("profile")
    fmt = lambda v: ",".join(str(x) for x in v) if isinstance(v, tuple) else str(v)  # noqa: E731
    return ["profile=cpu"] + [f"{k}={fmt(v)}" for k, v in cfg.items()]


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A run of 200 steps (~6 s) on the tiny synthetic scene (upsampled at steps 40 and 80), with the test
    PSNR of the untrained and the trained scene."""
    from omnifield.datasets.load import load_scene
    from omnifield.scenes.evaluate import score_images
    from omnifield.scenes.trainer import build_trainer

    run = tmp_path_factory.mktemp("tensorf") / "run"
    trainer = build_trainer("tensorf", synth_data, out=run, device="cpu",
                            scene_overrides=_overrides(upsample_at=(40.0, 80.0), target_samples_per_batch=8192,
                                                       max_rays_per_batch=2048),
                            trainer_overrides=dict(max_steps=200, eval_every=0, checkpoint_every=0, progress=False))
    data = load_scene(synth_data)
    test = data.split("test")
    before = sum(r["psnr"] for r in score_images(trainer.scene.eval(), data, test, with_ssim=False)[0]) / len(test)
    trainer.train()
    after = sum(r["psnr"] for r in score_images(trainer.scene.eval(), data, test, with_ssim=False)[0]) / len(test)
    return SimpleNamespace(run=run, scene=trainer.scene, data=data, before=before, after=after)


def test_training_on_the_synthetic_scene_improves_psnr(trained):
    assert trained.after > trained.before + 8.0 and trained.after > 18.0, (trained.before, trained.after)  # 10.4 -> 20.7
    assert tuple(trained.scene.vm_resolution.tolist()) == (24, 24, 24)
    assert trained.scene.grid.occupied_fraction() < 0.9  # the grid learned some empty space


def test_load_run_after_upsampling_renders_the_same(trained):
    from omnifield.scenes.runs import load_run

    run = load_run(trained.run, device="cpu")
    assert tuple(run.scene.vm_resolution.tolist()) == (24, 24, 24) == run.scene.density_vm.resolution
    cams = trained.data.cameras[trained.data.split("test")]
    a = trained.scene.eval().render(cams)
    b = run.scene.render(cams)
    for x, y in zip(a, b):
        assert torch.equal(x.rgb, y.rgb) and torch.equal(x.depth, y.depth)


def test_resume_across_an_upsampling_matches_an_uninterrupted_run(synth_data, tmp_path):
    # upsampled after step 2; stopped at 3 (the grids' Adam state was just dropped), resumed to 6
    from omnifield.scenes.trainer import build_trainer

    def trainer(out, steps, resume=False):
        return build_trainer("tensorf", synth_data, out=out, device="cpu", resume=resume,
                             scene_overrides=() if resume else _overrides(upsample_at=(2.0, 4.0)),
                             trainer_overrides=dict(max_steps=steps, eval_every=0, checkpoint_every=0, progress=False))

    straight = trainer(tmp_path / "a", 6)
    straight.train()
    first = trainer(tmp_path / "b", 6)
    end = first.scene.on_step_end
    first.scene.on_step_end = lambda step: (end(step), first.stop() if step == 2 else None)
    assert first.train().status == "stopped"
    torch.manual_seed(123)
    second = trainer(tmp_path / "b", 6, resume=True)
    assert second.global_step == 3
    second.train()
    sa, sb = straight.scene.state_dict(), second.scene.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert tuple(sb["vm_resolution"].tolist()) == (24, 24, 24)
    assert math.isclose(straight.optimizer.param_groups[0]["lr"], second.optimizer.param_groups[0]["lr"])
