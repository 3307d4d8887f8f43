"""The ``4dgs`` scene: slicing limits, the 4D split, training through the Trainer and the CLI, save/load,
per-time splat export and the time sweep of ``omnifield render``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omnifield.cli.main import main
from omnifield.datasets.cameras import Cameras
from omnifield.datasets.load import load_scene
from omnifield.datasets.synth_dynamic import DynamicSynthConfig, write_dynamic_scene
from omnifield.errors import ConfigError
from omnifield.renderers.gaussians import GaussianPrimitives, render_gaussians
from omnifield.scenes.base import HasGaussians, HasPoints, TimeVarying
from omnifield.scenes.evaluate import score_images
from omnifield.scenes.gaussians_4d import Gaussians4D, Gaussians4DConfig, build, resolve_config
from omnifield.scenes.gaussians_4d.model import InitialGaussians4D
from omnifield.scenes.gaussians_4d.strategy import Densifier4D
from omnifield.scenes.gaussian_splatting.strategy import DensifyParams
from omnifield.scenes.runs import load_run
from omnifield.scenes.trainer import Trainer, TrainerConfig, build_trainer
from omnifield.scenes.video import frame_times

# Small, fast settings for the tiny 2-step run (the paper's step schedule: no densification or opacity
# reset in 2 steps, so the run's Gaussians keep their strong, short-lived initial opacities).
TINY = ["profile=paper", "views_per_batch=2", "max_init_points=400", "num_random_points=400", "sh_degree=1",
        "init_time_scale=0.25", "init_opacity=0.5"]


@pytest.fixture(scope="module")
def dyn_data(tmp_path_factory) -> Path:
    """A tiny D-NeRF folder: 6 cameras (2 held out), 4 times, 32x32, written by the dynamic synthesiser."""
    root = tmp_path_factory.mktemp("dyn") / "scene"
    cfg = DynamicSynthConfig(n_cameras=6, holdout_camera_every=3, n_times=4, width=32, height=32, supersample=1,
                             n_points=200)
    return write_dynamic_scene(root, cfg)


@pytest.fixture(scope="module")
def trained(dyn_data, tmp_path_factory):
    """A 2-step 4dgs run (the path ``omnifield train 4dgs`` takes) and its scene in memory."""
    out = tmp_path_factory.mktemp("runs") / "run"
    trainer = build_trainer("4dgs", dyn_data, out=out, scene_overrides=TINY,
                            trainer_overrides={"max_steps": 2, "eval_every": 0, "progress": False})
    result = trainer.train()
    assert result.status == "finished" and result.step == 2 and math.isfinite(result.loss)
    return out, trainer.scene


@pytest.fixture(scope="module")
def tiny_run(trained) -> Path:
    return trained[0]


# -- hand-built scenes -------------------------------------------------------------------------------
def _camera(width=48, height=48, f=48.0) -> Cameras:
    """One camera at z = -3 looking along +z (camera axes = world axes)."""
    c2w = torch.eye(4)
    c2w[2, 3] = -3.0
    return Cameras.create(c2w[None], f, f, width / 2, height / 2, width, height)


def _scene(n: int, **overrides) -> Gaussians4D:
    """A resolved cpu-profile scene of ``n`` Gaussians (parameters to be set by the test)."""
    cams = _camera()
    data = SimpleNamespace(cameras=Cameras.create(cams.c2w.expand(2, 4, 4), 48.0, 48.0, 24.0, 24.0, 48, 48,
                                                  times=[0.0, 1.0]),
                           splits={"train": [0, 1]}, scene_box=torch.tensor([[-1.5] * 3, [1.5] * 3]),
                           background=(0.0, 0.0, 0.0))
    config = resolve_config(Gaussians4DConfig(**{"profile": "cpu", "sh_degree": 0, "n_time": 1, **overrides}), data)
    init = InitialGaussians4D(torch.zeros(n, 3), torch.full((n,), 0.5), torch.full((n, 3), 0.9))
    return Gaussians4D(config, data.scene_box, init)


def _set(p: torch.nn.Parameter, value) -> None:
    with torch.no_grad():
        p.copy_(torch.as_tensor(value, dtype=p.dtype).reshape(p.shape))


def _centroid(alpha: torch.Tensor) -> torch.Tensor:
    """``(u, v)`` alpha-weighted centre of an ``[H, W, 1]`` image."""
    h, w = alpha.shape[:2]
    a = alpha[..., 0].double()
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([(a * u).sum(), (a * v).sum()]) / a.sum()


def test_capabilities_and_time_range():
    scene = _scene(1)
    assert isinstance(scene, TimeVarying) and isinstance(scene, HasGaussians) and isinstance(scene, HasPoints)
    assert scene.time_range == (0.0, 1.0) and scene.views_per_batch() == 2


def test_static_limit_renders_the_same_image_at_every_time():
    scene = _scene(1)
    _set(scene.log_scales, [math.log(0.2)] * 3)
    _set(scene.log_scale_t, math.log(1e3))
    images = [scene.render(_camera(), time=t)[0] for t in (0.0, 0.5, 1.0)]
    assert float(images[0].alpha.max()) > 0.05
    for r in images[1:]:
        torch.testing.assert_close(r.rgb, images[0].rgb, rtol=0, atol=1e-6)
        torch.testing.assert_close(r.alpha, images[0].alpha, rtol=0, atol=1e-6)


def test_gaussian_moving_along_x_appears_at_different_pixels():
    """Rotation by 45 degrees in the x-t plane: velocity Sigma_xt / Sigma_tt ~ 0.99 along +x."""
    scene = _scene(1)
    theta = math.pi / 4  # q_l = q_r = (cos(theta / 2), 0, 0, sin(theta / 2)): rotation by theta in the x-t plane
    q = [math.cos(theta / 2), 0.0, 0.0, math.sin(theta / 2)]
    _set(scene.q_left, q)
    _set(scene.q_right, q)
    _set(scene.log_scales, [0.0, math.log(0.08), math.log(0.08)])  # long axis along the x-t diagonal
    _set(scene.log_scale_t, math.log(0.05))
    cam = _camera()
    r0, r1 = (scene.render(cam, time=t)[0] for t in (0.0, 1.0))
    c0, c1 = _centroid(r0.alpha), _centroid(r1.alpha)
    velocity = float(ref_velocity(scene))
    expected_du = velocity * 1.0 * 48.0 / 3.0  # one time unit, fx / depth pixels per world unit
    assert velocity > 0.9
    assert float(c1[0] - c0[0]) == pytest.approx(expected_du, rel=0.05)
    assert abs(float(c1[1] - c0[1])) < 0.5


def ref_velocity(scene: Gaussians4D) -> torch.Tensor:
    from omnifield.cuda.reference.gaussians4d import scale_rotation_to_covar4

    s4 = torch.cat([scene.log_scales, scene.log_scale_t], -1).exp()
    cov = scale_rotation_to_covar4(s4, scene.q_left, scene.q_right).detach()
    return cov[0, 0, 3] / cov[0, 3, 3]


def test_culled_by_marginal_and_opacity_scaled():
    scene = _scene(2)
    _set(scene.times, [0.0, 1.0])
    _set(scene.log_scale_t, [math.log(0.1)] * 2)
    assert scene.visible_at(0.0).tolist() == [0]
    assert scene.visible_at(1.0).tolist() == [1]
    _, prims = scene.primitives_at(0.1, torch.tensor([0.0, 0.0, -3.0]))
    torch.testing.assert_close(prims.opacities, torch.sigmoid(scene.opacity_logits[:1]) * math.exp(-0.5),
                               rtol=1e-5, atol=1e-7)


def _random_scene(n: int = 6, **overrides) -> Gaussians4D:
    torch.manual_seed(0)
    scene = _scene(n, **{"n_time": 3, "sh_degree": 2, **overrides})
    _set(scene.means, torch.randn(n, 3) * 0.3)
    _set(scene.times, torch.rand(n))
    _set(scene.log_scales, torch.log(torch.rand(n, 3) * 0.2 + 0.05))
    _set(scene.log_scale_t, torch.log(torch.rand(n, 1) * 0.3 + 0.1))
    _set(scene.q_left, torch.randn(n, 4))
    _set(scene.q_right, torch.randn(n, 4))
    _set(scene.sh_rest, torch.randn_like(scene.sh_rest) * 0.3)
    scene.active_sh_degree.fill_(scene.config.sh_degree)
    return scene


def test_batched_slice_form_equals_the_slicing_op(tol):
    """Training assembles slices at several times from one 4D covariance per Gaussian: same primitives
    (and gradients) as ``slice_gaussians_4d`` at each time."""
    scene = _random_scene(40)
    centre = torch.tensor([0.3, -0.2, -3.0])
    form = scene.slice_form()
    for t in (0.0, 0.37, 1.0):
        idx_a, a = scene.primitives_at(t, centre)
        idx_b, b = scene.primitives_at(t, centre, form)
        assert idx_a.tolist() == idx_b.tolist() and 0 < len(idx_a) < 40
        for name in ("means", "covars", "opacities", "colors"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), **tol["float32"])
    grads = []
    for f in (None, form):
        scene.zero_grad()
        _, p = scene.primitives_at(0.37, centre, f if f is None else scene.slice_form())
        (p.means.sum() + p.covars.sum() + p.opacities.sum() + p.colors.sum()).backward()
        grads.append([q.grad.clone() for q in scene.parameters()])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5)


def test_gaussians_at_t_render_like_the_scene():
    """``gaussians(t)`` (covariances + SH mixed at t) through the 3DGS SH path equals ``render(t)``."""
    scene = _random_scene()
    cam = _camera()
    prims = scene.gaussians(0.4)
    assert prims.covars is not None and prims.sh is not None and prims.colors is None
    ref = render_gaussians(prims, cam, 0, torch.zeros(3))
    out = scene.render(cam, time=0.4)[0]
    torch.testing.assert_close(ref.rgb, out.rgb, rtol=0, atol=2e-5)


def test_split_samples_children_along_the_4d_trajectory():
    torch.manual_seed(0)
    q = [math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]
    n = 1
    params = {
        "means": torch.nn.Parameter(torch.zeros(n, 3)), "times": torch.nn.Parameter(torch.full((n, 1), 0.5)),
        "log_scales": torch.nn.Parameter(torch.tensor([[0.0, -5.0, -5.0]])),
        "log_scale_t": torch.nn.Parameter(torch.full((n, 1), -5.0)),
        "q_left": torch.nn.Parameter(torch.tensor([q])), "q_right": torch.nn.Parameter(torch.tensor([q])),
        "opacity_logits": torch.nn.Parameter(torch.zeros(n)), "sh_dc": torch.nn.Parameter(torch.zeros(n, 1, 3)),
    }
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)
    sum(p.sum() for p in params.values()).backward()
    opt.step()
    dens = Densifier4D(DensifyParams(split_count=400), n)
    rows = dens._split_rows(params, torch.tensor([True]))
    dx, dt = rows["means"][:, 0] - params["means"].data[0, 0], rows["times"][:, 0] - params["times"].data[0, 0]
    assert float(torch.corrcoef(torch.stack([dx, dt]))[0, 1]) > 0.99  # offsets lie on the x = t diagonal
    assert float(dx.std()) == pytest.approx(math.sqrt(0.5), rel=0.15)
    torch.testing.assert_close(rows["log_scales"][0], params["log_scales"][0].detach() - math.log(1.6))
    torch.testing.assert_close(rows["log_scale_t"][0], params["log_scale_t"][0].detach())
    # a whole densification keeps every parameter and its Adam rows the same length
    dens.state.grad_accum.fill_(1.0)
    dens.state.count.fill_(1.0)
    counts = dens.densify_and_prune(params, opt, extent=1.0, prune_large=False)
    assert counts["split"] == 1 and counts["total"] == 400
    for p in params.values():
        assert p.shape[0] == 400 and opt.state[p]["exp_avg"].shape == p.shape


# -- training, runs, export, video --------------------------------------------------------------------
def test_needs_times():
    data = SimpleNamespace(cameras=_camera(), splits={"train": [0]}, scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]),
                           background=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="times"):
        resolve_config(Gaussians4DConfig(profile="cpu"), data)


def test_initial_gaussians_take_the_points_times(dyn_data):
    from omnifield.scenes.gaussians_4d.model import initial_gaussians_4d

    data = load_scene(dyn_data)  # the synthesiser's points3d.ply: the objects' points at every training time
    train_times = data.cameras.times[data.splits["train"]]
    assert data.point_times is not None
    gap = (data.point_times[:, None] - train_times.unique()[None]).abs()  # the file's float32 stamps, normalised
    assert float(gap.min(1).values.max()) < 1e-6 and bool((gap.min(0).values < 1e-6).all())
    # Each point keeps its own time through subsampling (x encodes the time here).
    t = torch.linspace(0.0, 1.0, 50)
    fake = SimpleNamespace(points=torch.stack([t, -t, 2 * t], 1), point_colors=None, point_times=t,
                           scene_box=data.scene_box)
    init = initial_gaussians_4d(Gaussians4DConfig(time_range=(0.0, 1.0), max_init_points=20), fake)
    assert len(init.means) == 20 and torch.equal(init.times, init.means[:, 0])
    fake.point_times = t[:10]
    with pytest.raises(ConfigError, match="point_times has 10 values for 50 points"):
        initial_gaussians_4d(Gaussians4DConfig(time_range=(0.0, 1.0)), fake)


def test_two_step_smoke_then_save_load_render_equal(trained, dyn_data):
    run_dir, scene = trained
    run = load_run(run_dir)
    assert run.method == "4dgs" and run.step == 2 and isinstance(run.scene, Gaussians4D)
    assert run.scene.config == scene.config and tuple(run.scene.config.time_range) == (0.0, 1.0)
    assert len(run.scene) == len(scene)
    data = load_scene(dyn_data)
    cams = data.cameras[data.split("test")]
    scene.eval()
    for a, b in zip(scene.render(cams), run.scene.render(cams)):
        torch.testing.assert_close(b.rgb, a.rgb, rtol=0, atol=0)
        torch.testing.assert_close(b.depth, a.depth, rtol=0, atol=0)


def test_short_training_raises_held_out_psnr(dyn_data):
    """From random Gaussians in the scene box x time range (no points), 100 steps clear the fog and
    fit the scene: held-out views at seen and unseen times gain well over 5 dB."""
    data = load_scene(dyn_data)
    data.points = None
    torch.manual_seed(0)
    config = Gaussians4DConfig(profile="cpu", num_random_points=2000, max_gaussians=4000, sh_degree=1, n_time=1)
    scene = build(config, data)
    held_out = data.split("test") + data.split("val")

    def mean_psnr():
        scene.eval()
        rows, _ = score_images(scene, data, held_out, with_ssim=False)
        return float(np.mean([r["psnr"] for r in rows]))

    before = mean_psnr()
    trainer = Trainer(scene, data, TrainerConfig(max_steps=100, eval_every=0, progress=False, checkpoint_minutes=None))
    result = trainer.train()
    after = mean_psnr()
    assert result.step == 100 and scene.last_densify  # densification ran
    assert after > before + 5.0, (before, after)


def test_export_splat_at_a_time(tiny_run, tmp_path):
    from omnifield.scenes.splat_ply import read_splat_ply

    out = tmp_path / "f.ply"
    assert main(["export", str(tiny_run), "splat", "--out", str(out), "--time", "0.5"]) == 0
    splat = read_splat_ply(out)
    run = load_run(tiny_run)
    assert len(splat) == len(run.scene.visible_at(0.5)) > 0
    # the file, rendered as a static 3DGS scene, is the 4D scene at t = 0.5 (the D-NeRF world is the dataset's)
    t = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    prims = GaussianPrimitives(means=t(splat.means), opacities=torch.sigmoid(t(splat.opacity_logits)),
                               quats=t(splat.quats), scales=t(splat.log_scales).exp(), sh=t(splat.sh))
    cams = run.info.cameras[run.info.split("test")]
    bg = torch.ones(3)
    for c in range(2):
        ref = run.scene.render(cams[c], time=0.5)[0].rgb
        torch.testing.assert_close(render_gaussians(prims, cams, c, bg).rgb, ref, rtol=0, atol=1e-3)


def _fixed_camera_path(run_dir: Path, data_dir: Path, path: Path, n: int) -> Path:
    """A camera-path JSON holding one held-out camera ``n`` times, without times (dataset coordinates)."""
    data = load_scene(data_dir)
    i = data.split("test")[0]
    c = data.cameras[[i]]
    frame = {"c2w": c.c2w[0].tolist(), "fx": float(c.fx[0]), "fy": float(c.fy[0]), "cx": float(c.cx[0]),
             "cy": float(c.cy[0]), "width": int(c.width[0]), "height": int(c.height[0])}
    path.write_text(json.dumps({"format": "omnifield-camera-path", "coordinates": "dataset", "cameras": [frame] * n}))
    return path


def _read_video(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return np.stack([np.asarray(f) for f in reader]).astype(np.float64)
    finally:
        reader.close()


def test_render_sweeps_time_and_time_fixes_it(tiny_run, dyn_data, tmp_path):
    cam_path = _fixed_camera_path(tiny_run, dyn_data, tmp_path / "still.json", 4)
    sweep, fixed = tmp_path / "sweep.mp4", tmp_path / "fixed.mp4"
    assert main(["render", str(tiny_run), "--path", str(cam_path), "--out", str(sweep)]) == 0
    assert main(["render", str(tiny_run), "--path", str(cam_path), "--out", str(fixed), "--time", "0.5"]) == 0
    frames, still = _read_video(sweep), _read_video(fixed)
    assert len(frames) == len(still) == 4
    assert np.abs(frames[0] - frames[-1]).max() > 20  # the same camera at t = 0 and t = 1
    assert np.abs(still[0] - still[-1]).max() <= 2  # one time: identical frames up to the codec
    # the default path is an orbit (times from the dynamic data); a static scene refuses --time
    assert main(["render", str(tiny_run), "--frames-count", "3"]) == 0
    assert (tiny_run / "renders" / "orbit_rgb.mp4").is_file()


def test_frame_times_rules():
    cams = _camera()
    cams3 = Cameras.create(cams.c2w.expand(3, 4, 4), 48.0, 48.0, 24.0, 24.0, 48, 48)
    scene = _scene(1)
    assert frame_times(scene, cams3).tolist() == [0.0, 0.5, 1.0]
    assert frame_times(scene, cams3, 0.25).tolist() == [0.25] * 3
    timed = Cameras.create(cams.c2w.expand(3, 4, 4), 48.0, 48.0, 24.0, 24.0, 48, 48, times=[0.3, 0.2, 0.1])
    assert frame_times(scene, timed).tolist() == pytest.approx([0.3, 0.2, 0.1])
    static = SimpleNamespace()
    assert frame_times(static, cams3) is None
    with pytest.raises(ConfigError, match="time"):
        frame_times(static, cams3, 0.5)
