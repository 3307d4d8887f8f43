"""instant-ngp options added with the CUDA backend (issue 5): cone marching and early termination."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from omnifield.renderers.types import RayBundle
from omnifield.scenes.base import RenderOptions
from omnifield.scenes.instant_ngp import InstantNGPConfig, build, resolve_config

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
TINY = dict(profile="cpu", n_levels=4, log2_hashmap_size=12, max_resolution=64, grid_resolution=16,
            target_samples_per_batch=4096, hidden_dim=16)


def test_cone_angle_resolves_from_the_scene_bounds():
    assert resolve_config(InstantNGPConfig(profile="cpu"), BOX, unbounded=False).cone_angle == 0.0
    assert resolve_config(InstantNGPConfig(profile="paper"), BOX, unbounded=True).cone_angle == 1.0 / 256.0
    assert resolve_config(InstantNGPConfig(profile="cpu", cone_angle=0.01), BOX, unbounded=False).cone_angle == 0.01
    assert resolve_config(InstantNGPConfig(profile="cpu", cone_angle=0.0), BOX, unbounded=True).cone_angle == 0.0


def _data(unbounded: bool):
    return SimpleNamespace(scene_box=BOX, unbounded=unbounded, near=0.1, far=50.0, background=(1.0, 1.0, 1.0))


def test_unbounded_scene_marches_cones_and_renders():
    torch.manual_seed(0)
    n = 64
    d = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    rays = RayBundle(-3.0 * d, d)
    counts = {}
    for cone in (0.0, None):  # None: 1/256 for an unbounded scene
        scene = build(InstantNGPConfig(**TINY, cone_angle=cone), _data(True)).eval()
        assert scene.grid.levels == 4
        with torch.no_grad():
            out = scene.render_rays(rays, torch.ones(3), RenderOptions())
        assert out.rgb.shape == (n, 3) and bool(torch.isfinite(out.rgb).all())
        counts[cone] = scene._last_samples
    assert 0 < counts[None] < counts[0.0]  # the outer cascades are marched with growing steps
