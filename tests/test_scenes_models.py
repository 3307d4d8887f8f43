"""The nerf and instant-ngp scenes: registry, two training steps, capabilities, and a fit of an analytic scene."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from omnifield.renderers.types import RayBundle
from omnifield.scenes.base import HasDensity, RayBatch, RenderOptions
from omnifield.scenes.registry import available_methods, get_method

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
TINY = {
    "instant-ngp": dict(profile="cpu", n_levels=4, log2_hashmap_size=12, max_resolution=64, grid_resolution=16,
                        target_samples_per_batch=4096, hidden_dim=16),
    "nerf": dict(hidden_dim=32, n_layers=4, skip_layer=2, color_hidden_dim=16, n_coarse=8, n_fine=8, batch_rays=64),
}


def _data():
    return SimpleNamespace(scene_box=BOX, unbounded=False, near=0.5, far=5.0, background=(1.0, 1.0, 1.0))


def _sphere_rays(n: int, gen: torch.Generator | None = None):
    """Rays towards a unit-box scene: an orange sphere of radius 0.5 on a white background."""
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    o = -3.0 * d + 0.6 * torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - 0.25)
    hit = (disc > 0) & (-b > 0)
    rgb = torch.where(hit[:, None], torch.tensor([1.0, 0.5, 0.1]), torch.ones(3))
    return RayBatch(RayBundle(o, d), rgb, torch.ones(n, 3))


@pytest.mark.parametrize("method", ["instant-ngp", "nerf"])
def test_two_training_steps(method):
    assert method in available_methods()
    spec = get_method(method)
    scene = spec.build(spec.config_cls(**TINY[method]), _data())
    assert isinstance(scene, HasDensity)
    opt, sched = scene.configure_optimizers(10)
    before = [p.detach().clone() for p in scene.parameters()]
    for step in range(2):
        scene.train()
        scene.on_step_begin(step)
        batch = _sphere_rays(scene.rays_per_batch())
        losses = scene.training_step(batch, step)
        assert torch.isfinite(losses["loss"]) and "psnr" in losses
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        sched.step()
        scene.on_step_end(step)
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, scene.parameters()))
    assert changed >= len(before) // 2
    x = torch.rand(10, 3) - 0.5
    assert scene.density(x).shape == (10,)
    c = scene.color(x, torch.nn.functional.normalize(torch.randn(10, 3), dim=-1))
    assert c.shape == (10, 3) and bool(((c >= 0) & (c <= 1)).all())
    scene.eval()
    with torch.no_grad():
        out = scene.render_rays(_sphere_rays(17).rays, torch.ones(3), RenderOptions())
    assert out.rgb.shape == (17, 3) and out.depth.shape == (17, 1)


def test_instant_ngp_fits_an_analytic_sphere():
    spec = get_method("instant-ngp")
    cfg = spec.config_cls(profile="cpu", n_levels=6, log2_hashmap_size=13, max_resolution=96, grid_resolution=32,
                          target_samples_per_batch=2**12, grid_warmup_steps=16, grid_update_every=8,
                          lr_warmup_steps=5, hidden_dim=32)
    scene = spec.build(cfg, _data())
    opt, sched = scene.configure_optimizers(200)
    gen = torch.Generator().manual_seed(0)
    test = _sphere_rays(512, gen)
    scene.eval()
    with torch.no_grad():
        before = torch.nn.functional.mse_loss(scene.render_rays(test.rays, torch.ones(3)).rgb, test.rgb)
    step = 0
    while step < 60:  # a few seconds on an idle 2-core CPU
        scene.train()
        scene.on_step_begin(step)
        losses = scene.training_step(_sphere_rays(scene.rays_per_batch(), gen), step)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        sched.step()
        scene.on_step_end(step)
        step += 1
    scene.eval()
    with torch.no_grad():
        out = scene.render_rays(test.rays, torch.ones(3))
    after = torch.nn.functional.mse_loss(out.rgb, test.rgb)
    assert float(after) < 0.25 * float(before), (step, float(before), float(after))
    assert scene.grid.occupied_fraction() < 0.9  # the grid learned some empty space


def test_instant_ngp_single_pass_inference_equals_the_two_pass_render():
    # Under no_grad, instant-ngp evaluates its field once and applies early termination itself; the
    # result must equal the training path (sampler density pass + second evaluation), crop box included.
    spec = get_method("instant-ngp")
    scene = spec.build(spec.config_cls(**TINY["instant-ngp"]), _data())
    opt, _ = scene.configure_optimizers(20)
    gen = torch.Generator().manual_seed(1)
    for step in range(20):  # a little structure, so early termination actually drops samples
        scene.train()
        scene.on_step_begin(step)
        losses = scene.training_step(_sphere_rays(256, gen), step)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    scene.eval()
    rays = _sphere_rays(300, gen).rays
    for options in (RenderOptions(), RenderOptions(crop_box=((-1.0, -1.0, -1.0), (1.0, 0.0, 1.0)))):
        with torch.no_grad():
            fast = scene.render_rays(rays, torch.ones(3), options)
            n_fast = scene._last_samples
        with torch.enable_grad():
            slow = scene.render_rays(rays, torch.ones(3), options)
            n_slow = scene._last_samples
        assert n_fast == n_slow > 0
        for a, b in ((fast.rgb, slow.rgb), (fast.alpha, slow.alpha), (fast.depth, slow.depth)):
            torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)


def test_instant_ngp_step_scale_marches_coarser_for_previews():
    spec = get_method("instant-ngp")
    scene = spec.build(spec.config_cls(**TINY["instant-ngp"]), _data()).eval()
    rays = _sphere_rays(200, torch.Generator().manual_seed(2)).rays
    counts = {}
    for scale in (1.0, 2.0):
        with torch.no_grad():
            scene.render_rays(rays, torch.ones(3), RenderOptions(step_scale=scale))
        counts[scale] = scene._last_samples
    # The untrained grid is fully occupied: twice the step, about half the samples.
    assert 0.4 * counts[1.0] < counts[2.0] < 0.6 * counts[1.0]


@pytest.mark.parametrize("heads", ["paper", "shared"])
def test_nerf_grid_single_pass_inference_equals_the_two_pass_render(heads):
    # With the occupancy grid, inference evaluates the field once and terminates rays in compositing;
    # it must equal the training path (the sampler's density pass drops the samples, then a second pass).
    torch.manual_seed(0)
    spec = get_method("nerf")
    cfg = spec.config_cls(**TINY["nerf"], use_occupancy_grid=True, grid_resolution=16, heads=heads,
                          render_step_size=0.04, lr=1e-2, lr_final=1e-2)
    scene = spec.build(cfg, _data())
    opt, _ = scene.configure_optimizers(20)
    gen = torch.Generator().manual_seed(3)
    for step in range(20):  # some opacity, so termination drops samples
        scene.train()
        scene.on_step_begin(step)
        losses = scene.training_step(_sphere_rays(64, gen), step)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    scene.eval()
    rays = _sphere_rays(200, gen).rays
    with torch.no_grad():
        fast = scene.render_rays(rays, torch.ones(3))
    with torch.enable_grad():
        slow = scene.render_rays(rays, torch.ones(3))
    assert float(slow.alpha.detach().max()) > 0.5
    for a, b in ((fast.rgb, slow.rgb), (fast.alpha, slow.alpha), (fast.depth, slow.depth)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
