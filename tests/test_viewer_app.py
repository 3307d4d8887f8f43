"""The dearpygui viewer under Xvfb: frames read back from the window, the CLI's screenshot mode, the
camera-path editor, exports, live training. Skips only when Xvfb or dearpygui is not installed.

Fixtures: ``Sphere``, an analytic time-varying scene with density (fast, deterministic), and a tiny
instant-ngp run trained 30 steps on a 32x32 synthetic scene (module scope).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnifield.cli.main import main
from omnifield.renderers.types import RenderOutput
from omnifield.scenes import registry
from omnifield.scenes.base import Scene, SceneConfig
from omnifield.scenes.registry import MethodSpec
from omnifield.viewer.display import display_available

SIZE = dict(width=64, height=48)




# -- scenes ------------------------------------------------------------------------------------------
class Sphere(Scene):
    """A sphere of radius 0.5 at the origin coloured by position; at time t it fades to red. Has density."""

    time_range = (0.0, 1.0)

    def __init__(self):
        super().__init__(SceneConfig(method="sphere"), torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))

    def density(self, x, t=None):
        return torch.where(x.norm(dim=-1) < 0.5, 50.0, 0.0)

    def color(self, x, d, t=None):
        return (x + 0.5).clamp(0, 1)

    def render_rays(self, rays, background, options=None):
        o, d = rays.origins, rays.directions
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - 0.25)
        t = -b - torch.sqrt(disc.clamp_min(0))
        hit = (disc > 0) & (t > 0)
        p = o + d * t[:, None]
        if options is not None and options.crop_box is not None:
            box = torch.tensor(options.crop_box, dtype=p.dtype)
            hit = hit & ((p >= box[0]) & (p <= box[1])).all(-1)
        tt = (rays.times if rays.times is not None else torch.zeros_like(t))[:, None]
        col = self.color(p, d) * (1 - tt) + tt * torch.tensor([1.0, 0.0, 0.0])
        a = hit.float()[:, None]
        return RenderOutput(rgb=col * a + background * (1 - a), alpha=a, depth=torch.where(hit, t, 0.0)[:, None])


def sphere_source(cameras: int = 0):
    """The :class:`Sphere` as a source; with ``cameras`` > 0, a run-like source with that many training
    cameras on a ring around it (what point-cloud export renders)."""
    from omnifield.datasets.cameras import Cameras
    from omnifield.scenes.camera_paths import look_at
    from omnifield.scenes.runs import SceneInfo
    from omnifield.viewer.sources import SceneSource

    if cameras == 0:
        return SceneSource(Sphere(), name="sphere")
    ring = [look_at((2.5 * math.cos(a), 2.5 * math.sin(a), 0.8), (0, 0, 0))
            for a in np.linspace(0, 2 * math.pi, cameras, endpoint=False)]
    cams = Cameras.create(torch.stack(ring), 40.0, 40.0, 16.0, 16.0, 32, 32)
    info = SceneInfo(root=Path("."), format="test", cameras=cams, splits={"train": list(range(cameras))},
                     scene_box=torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))
    return SceneSource(Sphere(), info, name="sphere")


def viewer_for(source, **config):
    from omnifield.viewer.app import Viewer, ViewerConfig

    return Viewer(source, config=ViewerConfig(**{**SIZE, "vsync": False, **config}))


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# -- a tiny dataset and runs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    pytest.importorskip("open3d", reason="the synthetic scene needs open3d (omnifield[synth])")
    from omnifield.datasets.synth import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("synth") / "data", SynthConfig(n_train=8, n_test=2, width=32, height=32))


@pytest.fixture(scope="module")
def ngp_run(synth_data, tmp_path_factory):
    from omnifield.scenes.trainer import train_method

    run = tmp_path_factory.mktemp("ngp") / "run"
    small = ["grid_resolution=16", "n_levels=4", "log2_hashmap_size=12", "max_resolution=64", "hidden_dim=16",
             "render_step_size=0.03", "target_samples_per_batch=8192", "init_rays_per_batch=256",
             "max_rays_per_batch=1024"]  # CPU-cheap: ~0.1 s per step on 2 cores
    train_method("instant-ngp", synth_data, out=run, scene_overrides=small, device="cpu",
                 trainer_overrides=dict(max_steps=30, eval_every=0, checkpoint_every=0, progress=False))
    return run


@dataclass(frozen=True)
class TinyConfig(SceneConfig):
    method: str = "test-viewer-tiny"
    batch_rays: int = 64


class TinyScene(Scene):
    method = "test-viewer-tiny"

    def __init__(self, config, scene_box):
        super().__init__(config, scene_box)
        self.mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))

    def render_rays(self, rays, background, options=None):
        rgb = torch.sigmoid(self.mlp(rays.directions))
        return RenderOutput(rgb=rgb, alpha=torch.ones_like(rgb[:, :1]), depth=torch.ones_like(rgb[:, :1]))

    def training_step(self, batch, step):
        mse = ((self.render_rays(batch.rays, batch.background).rgb - batch.rgb) ** 2).mean()
        return {"loss": mse, "psnr": -10 * torch.log10(mse.detach())}


@pytest.fixture
def tiny_method(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "test-viewer-tiny", MethodSpec(
        "test-viewer-tiny", TinyConfig, lambda c, d: TinyScene(c, d.scene_box), "a test scene"))


# -- no display --------------------------------------------------------------------------------------
def test_display_detection_without_a_server():
    assert display_available({}, "linux")[0] is False
    ok, why = display_available({"DISPLAY": ":4321"}, "linux")
    assert not ok and "X4321" in why
    assert display_available({"WAYLAND_DISPLAY": "wayland-0"}, "linux")[0]
    assert display_available({}, "darwin")[0] and display_available({}, "win32")[0]


def test_view_without_a_display_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("omnifield: error: no display") and "omnifield render" in err[0]
    assert main(["train", "instant-ngp", "--data", str(tmp_path), "--view"]) == 2  # checked before loading anything
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# -- the window ----------------------------------------------------------------------------------------
def test_orbit_channels_crop_and_time_change_the_window(xvfb):
    with viewer_for(sphere_source()) as v:
        v.zoom(0.5)
        assert v.wait_idle(20)
        rgb = v.view_pixels()
        assert rgb.shape == (48, 64, 3)
        assert (rgb.reshape(-1, 3) < 200).any(axis=1).mean() > 0.05  # the sphere is visible
        v.orbit(1.2, 0.4)
        assert v.wait_idle(20)
        orbited = v.view_pixels()
        assert diff(orbited, rgb) > 2.0
        v.set_channel("depth")
        assert v.wait_idle(20)
        assert diff(v.view_pixels(), orbited) > 2.0
        v.set_channel("rgb")
        v.set_crop([[-1.0, -1.0, -1.0], [1.0, 1.0, -0.45]])  # keeps a thin cap of the sphere
        assert v.wait_idle(20)
        cropped = v.view_pixels()
        white = np.full_like(cropped, 255)
        assert diff(cropped, white) < 0.5 * diff(orbited, white)
        v.set_crop(None)
        v.set_time(1.0)  # the sphere turns red
        assert v.wait_idle(20)
        red = v.view_pixels()
        assert diff(red, orbited) > 2.0 and red[..., 0].mean() > red[..., 1].mean() + 5
        v.set_time(0.0)
        v.set_playing(True)
        v.step_ui(5)
        assert v.time > 0.0


def test_screenshot_cli_writes_the_requested_size(xvfb, ngp_run, tmp_path, capsys):
    import imageio.v3 as iio

    out = tmp_path / "shot.png"
    code = main(["view", str(ngp_run), "--screenshot", str(out), "--width", "40", "--height", "24",
                 "--camera", "0", "--channel", "depth", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert iio.imread(out).shape == (24, 40, 3)


def test_frusta_path_json_round_trip_and_video(xvfb, ngp_run, tmp_path, tol):
    import imageio.v2 as imageio

    from omnifield.scenes.camera_paths import load_camera_path
    from omnifield.scenes.runs import load_run
    from omnifield.viewer.sources import open_source

    with viewer_for(open_source(ngp_run, device="cpu"), width=32, height=32) as v:
        v.zoom(3.0)  # from afar: the dataset cameras are in view
        v.step_ui(2)
        assert len(v.dpg.get_item_children(v.ui.overlay, 2)) > 0  # dataset frusta drawn
        v.snap_to_camera(1)
        v.add_keyframe()
        v.orbit(0.6, 0.1)
        v.add_keyframe()
        v.orbit(0.6, -0.1)
        v.add_keyframe()
        v.path_frames = 5
        path = v.save_path(tmp_path / "path.json")
        doc = json.loads(path.read_text())
        assert doc["coordinates"] == "dataset" and len(doc["cameras"]) == 5
        run = load_run(ngp_run)
        back = load_camera_path(path, run)
        torch.testing.assert_close(back.c2w, v.path_cameras().c2w, **tol["float32"])
        video = v.render_video(tmp_path / "path.mp4", json_path=path)
        v.wait_jobs(60)
        assert video.result() == tmp_path / "path.mp4"
    reader = imageio.get_reader(str(tmp_path / "path.mp4"), format="FFMPEG")
    frames = [f for f in reader]  # list() asks the reader's length, which is inf
    reader.close()
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3)


def test_exports_respect_the_crop_box(xvfb, tmp_path):
    import trimesh

    with viewer_for(sphere_source(cameras=6)) as v:
        v.set_crop([[-1.0, -1.0, -1.0], [1.0, 1.0, 0.0]])
        mesh_job = v.export_mesh(tmp_path / "half.ply", resolution=24)
        points_job = v.export_pointcloud(tmp_path / "half-points.ply")
        v.wait_jobs(60)
        assert v.wait_idle(20)
        v.screenshot(tmp_path / "shot.png")
    mesh = trimesh.load(mesh_job.result(), process=False)
    assert len(mesh.faces) > 0
    assert mesh.vertices[:, 2].max() < 0.1 and mesh.vertices[:, 2].min() < -0.4  # the lower half only
    points = np.asarray(trimesh.load(points_job.result(), process=False).vertices)  # world = dataset coordinates here
    assert len(points) > 100 and points[:, 2].max() <= 1e-4 and points[:, 2].min() < -0.3
    assert (tmp_path / "shot.png").is_file()


def test_frusta_show_their_images_when_asked(xvfb, tmp_path, blender_dataset):
    from omnifield.viewer import camera as vc
    from omnifield.viewer.sources import open_source

    colour = np.array([250, 20, 240])  # magenta: neither the frusta, the camera-centre points nor white

    def share(img):  # fraction of pixels of the image's colour
        return float((np.abs(img.astype(int) - colour).max(-1) < 40).mean())

    source = open_source(blender_dataset(tmp_path / "data", n=4, image=tuple(colour)))
    with viewer_for(source) as v:
        behind = vc.fly(vc.from_cameras(source.dataset_cameras, 0), -v.frustum_scale, 0.0, 0.0)
        v.set_camera(behind)  # camera 0's image fills the middle half of the view
        assert v.wait_idle(20)
        assert share(v.view_pixels()) == 0.0
        v.set_show_frustum_images(True)
        v.wait_jobs(30)
        v.step_ui(3)
        shown = v.view_pixels()
        assert share(shown[14:34, 22:42]) > 0.6 and share(shown) > 0.08  # the frustum's lines cross it

        def quads():
            return sum("ImageQuad" in v.dpg.get_item_type(i) for i in v.dpg.get_item_children(v.ui.overlay, 2))

        assert quads() >= 1
        v.set_camera(vc.look(behind, math.pi, 0.0))  # turn around: the cameras are behind the view
        v.step_ui(3)
        assert share(v.view_pixels()) == 0.0 and quads() == 0
        v.set_camera(behind)
        v.set_show_frustum_images(False)
        v.step_ui(3)
        assert share(v.view_pixels()) == 0.0


def test_live_training_pause_resume_and_close_saves(xvfb, synth_data, tiny_method, tmp_path):
    from omnifield.scenes.runs import load_trainer_state
    from omnifield.scenes.trainer import build_trainer
    from omnifield.viewer.app import Viewer, ViewerConfig, live_source

    trainer = build_trainer("test-viewer-tiny", synth_data, out=tmp_path / "run", device="cpu", trainer_overrides=dict(
        max_steps=10**6, eval_every=0, checkpoint_every=0, checkpoint_minutes=None, log_every=0, progress=False))
    v = Viewer(live_source(trainer), trainer=trainer, config=ViewerConfig(**SIZE, vsync=False))
    try:
        deadline = time.monotonic() + 20
        while len(v.metrics["step"]) < 3 and time.monotonic() < deadline:
            v.step_ui()
        assert len(v.metrics["step"]) >= 3 and np.isfinite(v.metrics["loss"]).all()
        v.pause_training()
        time.sleep(0.2)
        paused_at = trainer.global_step
        v.step_ui(5)
        time.sleep(0.2)
        assert trainer.global_step == paused_at and v.training_state == "paused"
        v.resume_training()
        deadline = time.monotonic() + 10
        while trainer.global_step == paused_at and time.monotonic() < deadline:
            v.step_ui()
        assert trainer.global_step > paused_at
        assert v.wait_idle(20)
    finally:
        v.close()
    assert v.train_result.status == "stopped"
    assert load_trainer_state(tmp_path / "run").step == trainer.global_step == v.train_result.step


def test_train_view_cli_trains_and_saves(xvfb, synth_data, tiny_method, tmp_path, monkeypatch, capsys):
    from omnifield.viewer import app

    def run_until_trained(self):  # stands in for a user who closes the window when training ends
        try:
            deadline = time.monotonic() + 30
            while self.train_result is None and self.training_error is None and time.monotonic() < deadline:
                self.step_ui()
        finally:
            self.close()

    monkeypatch.setattr(app.Viewer, "run", run_until_trained)
    code = main(["train", "test-viewer-tiny", "--data", str(synth_data), "--out", str(tmp_path / "run"),
                 "--max-steps", "20", "--eval-every", "0", "--no-progress", "--device", "cpu", "--view"])
    out = capsys.readouterr().out
    assert code == 0 and "finished: 20 steps" in out
    assert (tmp_path / "run" / "model.safetensors").is_file()
