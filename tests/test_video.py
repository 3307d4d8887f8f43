"""Videos and frames of camera paths: decodable MP4s with the right frame count, size and content."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.errors import ConfigError
from omnifield.renderers.types import RenderOutput
from omnifield.scenes.base import Scene, SceneConfig
from omnifield.scenes.camera_paths import look_at
from omnifield.scenes.video import render_path, to_frame, turbo


class CodeScene(Scene):
    """Renders a flat image whose red level encodes the camera's x position (0..1) and depth its z."""

    def __init__(self):
        super().__init__(SceneConfig(method="code"), torch.tensor([[-1.0, -1, -1], [1, 1, 1]]))

    @torch.no_grad()
    def render(self, cameras, time=None, options=None):
        outs = []
        for c in range(len(cameras)):
            h, w = int(cameras.height[c]), int(cameras.width[c])
            x = float(cameras.c2w[c, 0, 3])
            rgb = torch.tensor([x, 0.5, 1 - x]).expand(h, w, 3)
            depth = torch.linspace(1, 3, w).expand(h, w)[..., None]
            outs.append(RenderOutput(rgb=rgb, alpha=torch.ones(h, w, 1), depth=depth))
        return outs


def path_cameras(n: int, width=33, height=20) -> Cameras:
    c2w = torch.stack([look_at((x, -3.0, 0.0), (x, 0.0, 0.0)) for x in np.linspace(0, 1, n)])
    return Cameras.create(c2w, 20.0, 20.0, width / 2, height / 2, width, height)


@dataclass
class FakeRun:
    scene: Scene = field(default_factory=CodeScene)
    path: Path | None = None
    world_from_dataset: torch.Tensor = field(default_factory=lambda: torch.eye(4))


def test_mp4_decodes_to_the_right_frame_count_size_and_content(tmp_path):
    import imageio.v2 as imageio

    out = render_path(FakeRun(), path_cameras(7), out=tmp_path / "video.mp4", fps=10, progress=False)
    assert out == tmp_path / "video.mp4" and out.is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    reader = imageio.get_reader(str(out), format="FFMPEG")
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == 7
    assert frames[0].shape == (20, 34, 3)  # odd width 33 padded to even
    red = [float(f[..., 0].mean()) for f in frames]
    np.testing.assert_allclose(red, np.linspace(0, 255, 7), atol=12)  # lossy H.264


def test_png_frames_and_downscale(tmp_path):
    import imageio.v2 as imageio

    d = render_path(FakeRun(), path_cameras(3, 40, 24), frames_dir=tmp_path / "frames", downscale=2, progress=False)
    files = sorted(d.glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png", "00002.png"]
    img = imageio.imread(files[2])
    assert img.shape == (12, 20, 3) and img[..., 0].min() == 255  # lossless: exact red level of x = 1


def test_depth_is_colour_mapped_and_default_output_goes_into_the_run(tmp_path):
    out = to_frame(CodeScene().render(path_cameras(1))[0], "depth", (1.0, 3.0))
    np.testing.assert_array_equal(out[0, 0], np.round(turbo(np.array(0.0)) * 255).astype(np.uint8))
    np.testing.assert_array_equal(out[0, -1], np.round(turbo(np.array(1.0)) * 255).astype(np.uint8))
    near, far = out[0, 4].astype(int), out[0, -1].astype(int)
    assert near[2] > near[0] + 50 and far[0] > far[2] + 50  # near is blue, far is red
    run = FakeRun(path=tmp_path / "run")
    video = render_path(run, path_cameras(2), channel="depth", progress=False)
    assert video == tmp_path / "run" / "renders" / "path_depth.mp4" and video.is_file()
    with pytest.raises(ConfigError, match="unknown channel"):
        render_path(run, path_cameras(2), channel="flow", progress=False)


def test_missing_ffmpeg_is_a_clear_error(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    with pytest.raises(ConfigError, match="imageio-ffmpeg"):
        render_path(FakeRun(), path_cameras(2), out=tmp_path / "v.mp4", progress=False)
    assert not list(tmp_path.iterdir())
