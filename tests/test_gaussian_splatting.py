"""The ``3dgs`` scene: training through the generic Trainer, densification bookkeeping, checkpoints, resume,
splat export (library and CLI)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifield.cli.main import main
from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.renderers.gaussians import GaussianPrimitives, render_gaussians
from omnifield.scenes import runs
from omnifield.scenes.base import HasGaussians, HasPoints, ImageBatch
from omnifield.scenes.gaussian_splatting import GaussianSplattingConfig, build
from omnifield.scenes.gaussian_splatting.losses import ssim as train_ssim
from omnifield.scenes.metrics import ssim as eval_ssim
from omnifield.scenes.trainer import ImageSampler, Trainer, TrainerConfig, build_trainer

SMALL = dict(profile="cpu", num_random_points=300)
# A schedule in steps for the short convergence test (the cpu profile's fractions of a 150-step run
# would densify every step from step 3 on).
SHORT_RUN = dict(schedule_units="steps", sh_degree_every=40.0, densify_start=20.0, densify_every=20.0,
                 densify_stop=100.0, opacity_reset_every=1000.0, max_gaussians=3000)


def quiet(**kw) -> TrainerConfig:
    base = dict(max_steps=6, eval_every=0, checkpoint_every=0, checkpoint_minutes=None, log_every=1, progress=False)
    base.update(kw)
    return TrainerConfig(**base)


def look_at(pos, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world at ``pos`` looking at ``target``."""
    pos, target, up = (torch.tensor(v, dtype=torch.float32) for v in (pos, target, up))
    z = torch.nn.functional.normalize(target - pos, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up), dim=0)
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, torch.linalg.cross(z, x), z, pos
    return m


def ring_cameras(n: int, size: int, radius: float = 3.0) -> Cameras:
    c2w = []
    for k in range(n):
        a = 2 * math.pi * k / n
        c2w.append(look_at((radius * math.cos(a), radius * math.sin(a), 0.8 * math.sin(3 * a))))
    f = 0.5 * size / math.tan(0.5 * 0.8)
    return Cameras.create(torch.stack(c2w), fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size)


def coloured_gaussians() -> GaussianPrimitives:
    """Six opaque coloured blobs around the origin: the ground truth of the convergence test."""
    g = torch.Generator().manual_seed(3)
    n = 6
    return GaussianPrimitives(
        means=(torch.rand(n, 3, generator=g) - 0.5) * 1.2,
        opacities=torch.full((n,), 0.95),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
        scales=0.08 + 0.15 * torch.rand(n, 3, generator=g),
        colors=torch.rand(n, 3, generator=g),
    )


def gaussian_scene_data(root: Path, n: int = 16, size: int = 32) -> SceneData:
    """A SceneData whose RGB images are renders of :func:`coloured_gaussians` on white; every 4th view held out."""
    cams = ring_cameras(n, size)
    gt = coloured_gaussians()
    images = []
    with torch.no_grad():
        for c in range(n):
            rgb = render_gaussians(gt, cams, c, torch.ones(3)).rgb
            images.append((rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    store = ImageStore([root / f"r_{i}.png" for i in range(n)], lambda i: images[i])
    test = [i for i in range(n) if i % 4 == 0]
    return SceneData(root=root, format="test", cameras=cams, images=store,
                     splits={"train": [i for i in range(n) if i % 4], "val": test, "test": test},
                     scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]))


def blender_data(blender_dataset, root: Path, **kw):
    from omnifield.datasets.load import load_scene

    return load_scene(blender_dataset(root, **kw))


def scene_for(data, **kw):
    torch.manual_seed(0)
    return build(GaussianSplattingConfig(**{**SMALL, **kw}), data)


# -- basics ----------------------------------------------------------------------------------------
def test_training_ssim_matches_the_metric_and_has_gradients():
    a = torch.rand(20, 23, 3)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1).requires_grad_(True)
    s = train_ssim(b, a)
    assert abs(float(s.detach()) - eval_ssim(b.detach(), a)) < 1e-5
    s.backward()
    assert b.grad is not None and torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0


def test_build_resolves_profile_and_initialises_from_points_or_box(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "d")
    scene = scene_for(data)
    c = scene.config
    assert c.profile == "cpu" and c.schedule_units == "fraction" and c.extent > 0 and c.background == (1.0, 1.0, 1.0)
    assert len(scene) == 300 and scene.sh_rest.shape == (300, 15, 3)
    box = data.scene_box
    assert ((scene.means >= box[0]) & (scene.means <= box[1])).all()
    assert isinstance(scene, HasGaussians) and isinstance(scene, HasPoints)
    pts, cols = scene.points()
    assert pts.shape == (300, 3) and cols.shape == (300, 3) and (cols >= 0).all() and (cols <= 1).all()
    coloured = replace(data, points=torch.rand(50, 3), point_colors=torch.randint(0, 256, (50, 3), dtype=torch.uint8))
    s2 = scene_for(coloured)
    assert len(s2) == 50 and torch.equal(s2.means.detach(), coloured.points)
    assert torch.allclose(s2.points()[1], coloured.point_colors.float() / 255, atol=1e-6)
    info = runs.SceneInfo.from_data(data)  # what load_run builds from: no images, no points
    assert len(scene_for(info)) == 300


def test_image_sampler_walks_permutations_and_recomposites_alpha(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "d", n=9, size=8)
    train = data.split("train")
    s = ImageSampler(data, train)
    g = torch.Generator().manual_seed(0)
    seen = [int(s.sample(1, g)[0][0]) for _ in range(2 * len(train))]
    assert sorted(seen[: len(train)]) == sorted(train) and sorted(seen[len(train):]) == sorted(train)
    state, gstate = s.state_dict(), g.get_state()
    ahead = [s.sample(1, g) for _ in range(3)]
    s2 = ImageSampler(data, train)
    s2.load_state_dict(state)
    g.set_state(gstate)
    again = [s2.sample(1, g) for _ in range(3)]
    for a, b in zip(ahead, again):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    cams, rgb, bg, alpha = ahead[0]
    k = train.index(int(cams[0]))
    raw = data.images.rgb(train[k]).float() / 255
    expected = (raw + (bg[0] - 1.0) * (1 - alpha[0])).clamp(0, 1)  # data background is white
    assert rgb.shape == (1, 8, 8, 3) and torch.allclose(rgb[0], expected, atol=1e-6)


# -- training ------------------------------------------------------------------------------------
def test_two_step_training_smoke_through_the_trainer(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "d", image="gradient", size=16)
    scene = scene_for(data)
    trainer = Trainer(scene, data, quiet(max_steps=2), tmp_path / "run")
    assert isinstance(trainer.sample_images(1), ImageBatch)
    result = trainer.train()
    assert result.status == "finished" and result.step == 2 and math.isfinite(result.loss)
    records = runs.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert {"loss", "l1", "ssim", "psnr", "num_gaussians"} <= set(records[-1])


def held_out_psnr(scene, data) -> float:
    from omnifield.scenes.evaluate import score_images

    rows, _ = score_images(scene, data, data.split("test"), with_ssim=False)
    return sum(r["psnr"] for r in rows) / len(rows)


def test_short_training_raises_held_out_psnr(tmp_path):
    data = gaussian_scene_data(tmp_path)
    scene = scene_for(data, num_random_points=400, **SHORT_RUN)
    before = held_out_psnr(scene, data)
    Trainer(scene, data, quiet(max_steps=150), None).train()
    after = held_out_psnr(scene, data)
    assert after > before + 8 and after > 22, (before, after)


# -- densification -------------------------------------------------------------------------------
def _adam_rows(opt, p):
    st = opt.state.get(p, {})
    return [st[k] for k in ("exp_avg", "exp_avg_sq") if k in st]


def test_densification_keeps_parameters_and_adam_state_consistent(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "d", image="gradient", size=16)
    scene = scene_for(data, num_random_points=40)
    trainer = Trainer(scene, data, quiet(max_steps=100), None)
    scene.active_sh_degree.fill_(3)  # every parameter gets a gradient, so Adam has state for each
    trainer.step()
    opt, n = trainer.optimizer, len(scene)
    params = scene.param_dict()
    before = {k: p.detach().clone() for k, p in params.items()}
    adam_before = {k: [s.clone() for s in _adam_rows(opt, p)] for k, p in params.items()}
    assert all(len(v) == 2 for v in adam_before.values())
    c = scene.config
    small = math.log(0.5 * c.percent_dense * c.extent)
    with torch.no_grad():
        scene.log_scales[:10] = small  # 0..9 small, the rest large
        scene.log_scales[10:] = math.log(0.05 * c.extent)
        scene.opacity_logits[20:25] = -10.0  # pruned
    before["log_scales"] = scene.log_scales.detach().clone()
    before["opacity_logits"] = scene.opacity_logits.detach().clone()
    st = scene.densifier.state
    st.grad_accum.zero_()
    st.count.fill_(1.0)
    st.grad_accum[[0, 1, 2]] = 1.0  # clone 0, 1, 2
    st.grad_accum[[10, 11]] = 1.0  # split 10, 11
    torch.manual_seed(0)
    counts = scene.densifier.densify_and_prune(params, opt, c.extent, prune_large=False)
    assert counts == {"cloned": 3, "split": 2, "pruned": 5, "total": n + 3 + 2 * 2 - 2 - 5}
    m = len(scene)
    assert m == counts["total"] and len(scene.densifier.state) == m
    for k, p in params.items():
        assert p is getattr(scene, k) and p.shape[0] == m  # the same Parameter objects, resized
        assert all(s.shape == p.shape for s in _adam_rows(opt, p)), k
    survivors = [i for i in range(n) if i not in (10, 11, 20, 21, 22, 23, 24)]
    s = len(survivors)
    for k, p in params.items():
        assert torch.equal(p[:s], before[k][survivors]), k
        old_rows = adam_before[k]
        for new, old in zip(_adam_rows(opt, p), old_rows):
            assert torch.equal(new[:s], old[survivors]) and not new[s:].any(), k  # new rows start at zero
        assert torch.equal(p[s : s + 3], before[k][[0, 1, 2]]), k  # clones are exact copies
    children = slice(s + 3, s + 7)
    for k in ("quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(scene.param_dict()[k][children], before[k][[10, 10, 11, 11]]), k
    assert torch.allclose(scene.log_scales[children], before["log_scales"][[10, 10, 11, 11]] - math.log(1.6))
    assert not torch.equal(scene.means[children], before["means"][[10, 10, 11, 11]])
    scene.densifier.reset_opacity(params, opt)
    assert torch.sigmoid(scene.opacity_logits).max() <= 0.01 + 1e-6
    assert all(not s.any() for s in _adam_rows(opt, scene.opacity_logits))
    trainer.step()  # the Trainer's optimizer still steps the resized parameters
    assert all(s.shape[0] == len(scene) for p in params.values() for s in _adam_rows(opt, p))


def test_max_gaussians_caps_growth(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "d", size=8)
    scene = scene_for(data, num_random_points=40, max_gaussians=45)
    st = scene.densifier.state
    st.count.fill_(1.0)
    st.grad_accum[:] = torch.linspace(1.0, 2.0, 40)  # all candidates; the largest gradients win
    scene.densifier.densify_and_prune(scene.param_dict(), None, scene.config.extent, prune_large=False)
    assert len(scene) <= 45


# -- checkpoints, resume, export -----------------------------------------------------------------
def _train_run(tmp_path, blender_dataset, steps=8, name="run"):
    data = blender_data(blender_dataset, tmp_path / "data", image="gradient", size=16)
    scene = scene_for(data, num_random_points=60)
    trainer = Trainer(scene, data, quiet(max_steps=steps), tmp_path / name)
    trainer.train()
    return tmp_path / name, scene, data


def test_save_load_run_render_equal(tmp_path, blender_dataset):
    run_dir, scene, data = _train_run(tmp_path, blender_dataset)
    assert len(scene) != 60  # densification changed the count; load_run builds 60 and resizes
    run = runs.load_run(run_dir)
    assert len(run.scene) == len(scene) and int(run.scene.active_sh_degree) == int(scene.active_sh_degree)
    scene.eval()
    cam = data.cameras[[1]]
    a, b = scene.render(cam)[0], run.scene.render(cam)[0]
    assert torch.equal(a.rgb, b.rgb) and torch.equal(a.alpha, b.alpha) and torch.equal(a.depth, b.depth)
    assert torch.equal(scene.densifier.state.grad_accum, run.scene.densifier.state.grad_accum)


def _snapshot(trainer):
    return ({k: v.clone() for k, v in trainer.scene.state_dict().items()}, trainer.optimizer.state_dict(),
            trainer.generator.get_state(), trainer.scene.densifier.state_dict())


def test_resume_after_densification_matches_uninterrupted_run(tmp_path, blender_dataset):
    data = blender_data(blender_dataset, tmp_path / "data", image="gradient", size=16)
    straight = Trainer(scene_for(data, num_random_points=60), data, quiet(max_steps=8), tmp_path / "a")
    straight.train()
    first_scene = scene_for(data, num_random_points=60)
    first = Trainer(first_scene, data, quiet(max_steps=8), tmp_path / "b")
    end = first_scene.on_step_end
    first_scene.on_step_end = lambda step: (end(step), first.stop() if step == 3 else None)
    assert first.train().step == 4
    assert len(first_scene) != 60
    torch.manual_seed(123)  # another process: other global RNG state, a fresh scene of another size
    second = Trainer(scene_for(data, num_random_points=60), data, quiet(max_steps=8), tmp_path / "b")
    assert second.resume() == 4 and len(second.scene) == len(first_scene)
    second.train()
    a, b = _snapshot(straight), _snapshot(second)
    assert a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    for i, st in a[1]["state"].items():
        assert all(torch.equal(v, b[1]["state"][i][k]) for k, v in st.items())
    assert torch.equal(a[2], b[2]) and all(torch.equal(a[3][k], b[3][k]) for k in a[3])
    resumed = build_trainer("3dgs", None, out=tmp_path / "b", resume=True, trainer_overrides={"max_steps": 9,
                                                                                           "progress": False})
    assert resumed.global_step == 8 and len(resumed.scene) == len(second.scene)
    resumed.train()


def test_export_splat_round_trip(tmp_path, blender_dataset):
    from omnifield.scenes.export import export_splat
    from omnifield.scenes.splat_ply import read_splat_ply

    _, scene, _ = _train_run(tmp_path, blender_dataset)
    with torch.no_grad():
        scene.sh_rest.normal_(0, 0.1)
    scene.active_sh_degree.fill_(3)
    out = export_splat(scene, tmp_path / "s.ply")
    back = read_splat_ply(out)
    assert len(back) == len(scene) and back.sh_degree == 3
    assert np.array_equal(back.means, scene.means.detach().numpy())
    assert np.allclose(back.log_scales, scene.log_scales.detach().numpy(), atol=1e-6)
    q = torch.nn.functional.normalize(scene.quats.detach(), dim=-1).numpy()
    assert np.allclose(back.quats, q, atol=1e-6)
    assert np.allclose(back.opacity_logits, scene.opacity_logits.detach().numpy(), rtol=1e-4, atol=1e-4)
    sh = torch.cat([scene.sh_dc, scene.sh_rest], 1).detach().numpy()
    assert np.array_equal(back.sh, sh)
    o3d = pytest.importorskip("open3d")
    pcd = o3d.io.read_point_cloud(str(out))
    assert len(pcd.points) == len(scene)


def test_splat_fields_in_dataset_coordinates_render_the_same(tol):
    """A similarity transform of the world moves means, covariances and SH together: the exported
    Gaussians rendered from the transformed camera give the same image."""
    from omnifield.scenes.export import splat_fields

    g = torch.Generator().manual_seed(1)
    n = 30
    prims = GaussianPrimitives(means=(torch.rand(n, 3, generator=g) - 0.5), opacities=torch.rand(n, generator=g),
                               quats=torch.randn(n, 4, generator=g), scales=0.05 + 0.1 * torch.rand(n, 3, generator=g),
                               sh=0.3 * torch.randn(n, 16, 3, generator=g))
    angle = 0.7
    rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1]])
    rot = rot @ torch.tensor([[1.0, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]])
    m = torch.eye(4)
    m[:3, :3], m[:3, 3] = 2.5 * rot, torch.tensor([0.3, -1.0, 2.0])  # dataset_from_world
    f = splat_fields(prims, m)
    moved = GaussianPrimitives(means=f["means"], opacities=torch.sigmoid(f["opacity_logits"]), quats=f["quats"],
                               scales=f["log_scales"].exp(), sh=f["sh"])
    cams = ring_cameras(3, 24)
    with torch.no_grad():
        for c in range(3):
            a = render_gaussians(prims, cams, c, torch.ones(3)).rgb
            b = render_gaussians(moved, cams.transformed(m), c, torch.ones(3)).rgb
            assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    covars = 0.01 * torch.eye(3).expand(n, 3, 3) + 0.002 * torch.ones(n, 3, 3)  # 4DGS-style: covariances
    from omnifield.cuda.reference.gaussians import quat_scale_to_covar

    f = splat_fields(GaussianPrimitives(means=prims.means, opacities=prims.opacities, covars=covars,
                                        colors=torch.full((n, 3), 0.25)))
    assert torch.allclose(quat_scale_to_covar(f["quats"], f["log_scales"].exp()), covars, atol=1e-7)
    assert torch.allclose(f["sh"][:, 0] * 0.28209479177387814 + 0.5, torch.full((n, 3), 0.25), atol=1e-6)
    assert not f["sh"][:, 1:].any()


def test_cli_export_splat_and_one_line_error(tmp_path, blender_dataset, capsys, monkeypatch):
    from omnifield.renderers.types import RenderOutput
    from omnifield.scenes import registry
    from omnifield.scenes.base import Scene, SceneConfig
    from omnifield.scenes.splat_ply import read_splat_ply

    run_dir, scene, data = _train_run(tmp_path, blender_dataset)
    out = tmp_path / "cli.ply"
    code = main(["export", str(run_dir), "splat", "--out", str(out), "--device", "cpu"])
    assert code == 0 and out.is_file() and len(read_splat_ply(out)) == len(scene)

    class Flat(Scene):  # a method without Gaussians
        method = "test-gs-flat"

        def render_rays(self, rays, background, options=None):
            rgb = self.colour.expand(len(rays), 3)
            return RenderOutput(rgb=rgb, alpha=torch.ones_like(rgb[:, :1]), depth=torch.ones_like(rgb[:, :1]))

        def training_step(self, batch, step):
            return {"loss": ((self.render_rays(batch.rays, batch.background).rgb - batch.rgb) ** 2).mean()}

    def make_flat(config, data):
        flat = Flat(config, data.scene_box)
        flat.colour = torch.nn.Parameter(torch.zeros(1, 3))
        return flat

    monkeypatch.setitem(registry._REGISTRY, "test-gs-flat", registry.MethodSpec(
        "test-gs-flat", SceneConfig, make_flat))
    Trainer(make_flat(SceneConfig("test-gs-flat"), data), data, quiet(max_steps=1), tmp_path / "flat").train()
    capsys.readouterr()
    code = main(["export", str(tmp_path / "flat"), "splat", "--out", str(tmp_path / "x.ply"), "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("omnifield: error: ") and "HasGaussians" in err[0]
    assert not (tmp_path / "x.ply").exists()
