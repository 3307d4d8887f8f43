"""Viewer sources: scenes rendered chunk by chunk (interruptible), point clouds, meshes, open_source."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from omnifield.errors import DataError
from omnifield.renderers.types import RenderOutput
from omnifield.scenes import registry
from omnifield.scenes.base import RenderOptions, Scene, SceneConfig
from omnifield.scenes.registry import MethodSpec
from omnifield.viewer.camera import default_view, to_cameras
from omnifield.viewer.sources import MeshSource, PointSource, SceneSource, ViewSource, open_source

NEVER = lambda: False  # noqa: E731


@dataclass(frozen=True)
class DirConfig(SceneConfig):
    method: str = "test-viewer-dir"
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


class DirScene(Scene):
    """Colour from the ray direction; records what the viewer hands it."""

    method = "test-viewer-dir"

    def __init__(self, config=DirConfig(), scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]), lock=None):
        super().__init__(config, scene_box)
        self.lin = nn.Linear(3, 3)
        self.calls: list[dict] = []
        self.lock = lock

    def render_rays(self, rays, background, options=None):
        self.calls.append(dict(n=len(rays), training=self.training, options=options,
                               times=None if rays.times is None else rays.times.clone(),
                               locked=None if self.lock is None else self.lock.locked()))
        rgb = torch.sigmoid(self.lin(rays.directions))
        ones = torch.ones_like(rgb[:, :1])
        return RenderOutput(rgb=rgb, alpha=ones, depth=2 * ones, extras={"num_samples": 3 * ones})

    def training_step(self, batch, step):
        return {"loss": ((self.render_rays(batch.rays, batch.background).rgb - batch.rgb) ** 2).mean()}


class DynamicScene(DirScene):
    time_range = (0.0, 2.0)


def _view_cams(w=12, h=9):
    return to_cameras(default_view(torch.tensor([[-1.0] * 3, [1.0] * 3])), w, h)


def test_scene_source_matches_scene_render_and_reports_channels():
    scene = DirScene()
    src = SceneSource(scene, name="dir")
    assert isinstance(src, ViewSource)
    cams = _view_cams()
    out = src.render(cams, None, RenderOptions(chunk=25), NEVER)
    ref = scene.render(cams)[0]
    torch.testing.assert_close(out.rgb, ref.rgb)
    assert out.rgb.shape == (9, 12, 3) and out.extras["num_samples"].shape == (9, 12, 1)
    assert src.channels == ("rgb", "alpha", "depth", "num_samples")
    assert src.time_range is None and src.dataset_cameras is None
    assert src.stats()["method"] == "test-viewer-dir"
    torch.testing.assert_close(src.scene_box, scene.scene_box)


def test_scene_source_stops_between_chunks():
    scene = DirScene()
    src = SceneSource(scene)
    scene.calls.clear()
    checks = []

    def should_stop():
        checks.append(1)
        return len(checks) > 2

    assert src.render(_view_cams(), None, RenderOptions(chunk=10), should_stop) is None
    assert len(scene.calls) == 2  # two chunks rendered, then it gave up (108 rays would be 11 chunks)


def test_scene_source_holds_the_lock_renders_in_eval_mode_and_passes_options_and_time():
    lock = threading.Lock()
    scene = DynamicScene(lock=lock)
    scene.train(True)
    src = SceneSource(scene, lock=lock)
    assert scene.calls[0]["locked"]  # the channel probe ran under the lock too
    assert src.time_range == (0.0, 2.0)
    box = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    scene.calls.clear()
    src.render(_view_cams(), 1.25, RenderOptions(chunk=50, crop_box=box), NEVER, lock=lock)
    assert len(scene.calls) == 3
    assert all(c["locked"] and not c["training"] and c["options"].crop_box == box for c in scene.calls)
    assert all(bool((c["times"] == 1.25).all()) for c in scene.calls)
    assert scene.training  # restored
    assert not lock.locked()


class RasterScene(Scene):
    """A scene that overrides ``render`` (as rasterizers do) and records its calls; ``render_rays`` is
    only there to check that the source does not prefer it over the scene's own ``render``."""

    method = "test-viewer-raster"
    time_range = (0.0, 1.0)

    def __init__(self, lock=None):
        super().__init__(DirConfig(), torch.tensor([[-1.0] * 3, [1.0] * 3]))
        self.calls: list[dict] = []
        self.lock = lock

    def render(self, cameras, time=None, options=None):
        self.calls.append(dict(n=len(cameras), time=time, options=options, training=self.training,
                               locked=None if self.lock is None else self.lock.locked()))
        h, w = int(cameras.height[0]), int(cameras.width[0])
        rgb = torch.full((h, w, 3), 0.25 if time is None else float(time))
        return [RenderOutput(rgb=rgb, alpha=torch.ones(h, w, 1), depth=torch.ones(h, w, 1))]

    def render_rays(self, rays, background, options=None):
        raise AssertionError("the viewer must render this scene through scene.render")


def test_scene_source_renders_scenes_that_override_render_in_one_call():
    lock = threading.Lock()
    scene = RasterScene(lock=lock)
    scene.train(True)
    src = SceneSource(scene, lock=lock)
    assert src.channels == ("rgb", "alpha", "depth") and src.time_range == (0.0, 1.0)
    scene.calls.clear()
    options = RenderOptions(chunk=7, crop_box=((-0.5,) * 3, (0.5,) * 3), background=(0.0, 0.0, 1.0), step_scale=2.0)
    out = src.render(_view_cams(), 0.75, options, NEVER, lock=lock)
    assert out.rgb.shape == (9, 12, 3) and torch.all(out.rgb == 0.75)
    assert len(scene.calls) == 1  # one call, not ray chunks
    call = scene.calls[0]
    assert call["n"] == 1 and call["time"] == 0.75 and call["options"] is options
    assert call["locked"] and not call["training"] and scene.training
    assert src.render(_view_cams(), 0.75, options, lambda: True) is None and len(scene.calls) == 1


def test_point_source_renders_and_crops():
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    src = PointSource(pts, torch.tensor([[255, 0, 0], [0, 255, 0]], dtype=torch.uint8), "two")
    assert src.channels == ("rgb", "alpha", "depth") and src.time_range is None
    cams = _view_cams(32, 24)
    out = src.render(cams, None, RenderOptions(), NEVER)
    assert float(out.alpha.sum()) >= 2
    cropped = src.render(cams, None, RenderOptions(crop_box=((-0.1,) * 3, (0.1,) * 3)), NEVER)
    assert 0 < float(cropped.alpha.sum()) < float(out.alpha.sum())
    reds = cropped.rgb[cropped.alpha[..., 0] > 0]
    torch.testing.assert_close(reds, torch.tensor([[1.0, 0.0, 0.0]]).expand_as(reds))
    assert src.render(cams, None, RenderOptions(), lambda: True) is None
    assert src.stats()["points"] == "2"
    assert bool((src.scene_box[0] < pts.min(0).values).all() and (src.scene_box[1] > pts.max(0).values).all())


def _box_mesh():
    import trimesh

    m = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    m.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(m.vertices), 1)).astype(np.uint8)
    return m


def test_mesh_source_samples_the_surface_with_vertex_colours(tol):
    m = _box_mesh()
    src = MeshSource(m.vertices, m.faces, m.visual.vertex_colors, "box", samples=4000)
    assert src.channels == ("rgb", "alpha", "depth", "normals")
    # Samples lie on the surface of the unit box: max |coordinate| = 0.5.
    np.testing.assert_allclose(src.points.abs().max(-1).values.numpy(), 0.5, atol=tol["float32"]["atol"])
    out = src.render(_view_cams(32, 24), None, RenderOptions(), NEVER)
    hit = out.alpha[..., 0] > 0
    assert int(hit.sum()) > 50
    torch.testing.assert_close(out.rgb[hit], torch.tensor([1.0, 0.0, 0.0]).expand(int(hit.sum()), 3))
    assert "faces" in src.stats()


# -- open_source -----------------------------------------------------------------------------------
def test_open_point_and_mesh_files(tmp_path, tol):
    import trimesh

    pts = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    trimesh.PointCloud(pts, colors=np.tile([0, 255, 0, 255], (50, 1))).export(tmp_path / "cloud.ply")
    src = open_source(tmp_path / "cloud.ply")
    assert isinstance(src, PointSource) and not isinstance(src, MeshSource)
    np.testing.assert_allclose(src.points.numpy(), pts, atol=tol["float32"]["atol"])  # file coordinates kept
    torch.testing.assert_close(src.colors, torch.tensor([[0.0, 1.0, 0.0]]).expand(50, 3))
    torch.testing.assert_close(src.world_from_dataset, torch.eye(4))
    m = _box_mesh()
    for suffix in (".ply", ".obj", ".glb"):
        m.export(tmp_path / f"box{suffix}")
        src = open_source(tmp_path / f"box{suffix}", mesh_samples=500)
        assert isinstance(src, MeshSource), suffix
        torch.testing.assert_close(src.colors, torch.tensor([[1.0, 0.0, 0.0]]).expand(500, 3), msg=suffix)


def test_open_gaussian_ply_uses_dc_colours(tmp_path):
    n = 4
    props = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
    data = np.zeros(n, dtype=[(p, "<f4") for p in props])
    data["x"] = np.arange(n)
    data["f_dc_0"] = (1.0 - 0.5) / 0.28209479177387814  # red channel 1.0
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join(f"property float {p}\n" for p in props) + "end_header\n"
    (tmp_path / "splat.ply").write_bytes(header.encode() + data.tobytes())
    src = open_source(tmp_path / "splat.ply")
    torch.testing.assert_close(src.colors, torch.tensor([[1.0, 0.5, 0.5]]).expand(n, 3))


def test_open_bad_paths_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.ply"):
        open_source(tmp_path / "missing.ply")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        open_source(tmp_path / "notes.txt")
    (tmp_path / "broken.ply").write_bytes(b"ply\nformat garbage\n")
    with pytest.raises(DataError, match="broken.ply"):
        open_source(tmp_path / "broken.ply")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        open_source(tmp_path / "empty")


def test_open_dataset_folder_shows_camera_centres_and_frusta(tmp_path, blender_dataset):
    src = open_source(blender_dataset(tmp_path / "data", n=4))
    assert isinstance(src, PointSource)
    assert src.dataset_cameras is not None and len(src.dataset_cameras) == 4
    torch.testing.assert_close(src.points, src.dataset_cameras.c2w[:, :3, 3])
    assert src.stats()["showing"] == "camera centres"
    assert src.dataset_images(2).shape == (8, 8, 3) and src.dataset_images(2).dtype == np.uint8
    solid = open_source(blender_dataset(tmp_path / "solid", n=4, image=(250, 20, 240)))
    assert all((solid.dataset_images(i) == (250, 20, 240)).all() for i in range(4))
    assert PointSource(torch.zeros(1, 3)).dataset_images is None


def test_thumbnails_average_areas_and_keep_small_images():
    from omnifield.viewer.panels import load_thumbnails, thumbnail

    img = np.zeros((200, 100, 3), np.uint8)
    img[:, 50:] = 200  # right half bright
    t = thumbnail(img, 64)
    assert t.shape == (64, 32, 3) and t.dtype == np.uint8
    assert (t[:, :16] == 0).all() and (t[:, 16:] == 200).all()
    odd = thumbnail(np.full((130, 7, 4), 9, np.uint8), 64)  # long and thin, RGBA in
    assert odd.shape == (64, 3, 3) and (odd == 9).all()
    small = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    np.testing.assert_array_equal(thumbnail(small), small)
    thumbs = load_thumbnails(lambda i: np.full((100, 80, 3), i, np.uint8), 3)
    assert [t.shape for t in thumbs] == [(64, 51, 3)] * 3 and [int(t[0, 0, 0]) for t in thumbs] == [0, 1, 2]


@pytest.fixture
def dir_method(monkeypatch):
    try:
        registry.available_methods()
    except ImportError:
        monkeypatch.setattr(registry, "_scanned", True)
    monkeypatch.setitem(registry._REGISTRY, "test-viewer-dir",
                        MethodSpec("test-viewer-dir", DirConfig, lambda c, d: DirScene(c, d.scene_box)))


def test_open_run_directory(tmp_path, dir_method, blender_dataset):
    from omnifield.datasets.load import load_scene
    from omnifield.scenes.trainer import Trainer, TrainerConfig

    data = load_scene(blender_dataset(tmp_path / "data", n=4))
    scene = DirScene(DirConfig(), data.scene_box)
    cfg = TrainerConfig(max_steps=1, eval_every=0, checkpoint_every=0, checkpoint_minutes=None, progress=False)
    Trainer(scene, data, cfg, tmp_path / "run").train()
    src = open_source(tmp_path / "run")
    assert isinstance(src, SceneSource) and src.name == "run"
    assert src.stats()["step"] == "1" and len(src.dataset_cameras) == 4
    out = src.render(src.dataset_cameras[0], None, RenderOptions(), NEVER)
    torch.testing.assert_close(out.rgb, src.scene.render(src.dataset_cameras[0])[0].rgb)
    # the frusta's images come from the run's dataset, in the run's camera order
    for i in (0, 3):
        np.testing.assert_array_equal(src.dataset_images(i), data.images.rgb(i).numpy())
    shutil.rmtree(tmp_path / "data")
    src = open_source(tmp_path / "run")  # a run whose dataset is gone opens; its images name the folder
    with pytest.raises(DataError, match="data"):
        src.dataset_images(0)
