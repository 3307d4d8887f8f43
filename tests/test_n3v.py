"""N3V multi-view video: decoding, frame times, LLFF poses, cam00 as the test view, cache, detection, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("imageio_ffmpeg", reason="N3V videos are decoded with imageio-ffmpeg")
iio = pytest.importorskip("imageio.v3")

from omnifield.cli.main import main  # noqa: E402
from omnifield.datasets.cameras import Cameras  # noqa: E402
from omnifield.datasets.io import similarity  # noqa: E402
from omnifield.datasets.llff import llff_world, parse_poses_bounds  # noqa: E402
from omnifield.datasets.load import detect_format, load_scene  # noqa: E402
from omnifield.datasets.n3v import CACHE_ENV, load_n3v  # noqa: E402
from omnifield.errors import DataError  # noqa: E402

W, H, FPS, N_FRAMES, N_CAMS = 32, 24, 10, 6, 3
FULL_W, FULL_H, FOCAL = 64, 48, 50.0  # poses_bounds hwf at twice the video size
# H.264 (yuv420p) of flat colour blocks: a few levels of error inside a block, away from its edges.
VIDEO_ATOL = 8


def colours(cam: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(top, bottom) RGB of frame ``k`` of camera ``cam``: both depend on the frame number and the camera."""
    top = np.array([30 + 35 * k, 220 - 30 * k, 60 + 50 * cam])
    bottom = np.array([230 - 35 * k, 40 + 25 * cam, 40 + 30 * k])
    return top, bottom


def write_video(path, cam: int, n_frames: int = N_FRAMES, size=(W, H), shift: int = 0) -> None:
    w, h = size
    frames = np.zeros((n_frames, h, w, 3), np.uint8)
    for k in range(n_frames):
        top, bottom = colours(cam, k)
        frames[k, : h // 2] = np.clip(top + shift, 0, 255)
        frames[k, h // 2:] = np.clip(bottom + shift, 0, 255)
    iio.imwrite(path, frames, fps=FPS, macro_block_size=1)


def rig_poses(n: int = N_CAMS) -> np.ndarray:
    """``[n, 17]`` poses_bounds rows: a forward-facing rig, OpenCV poses written in LLFF's [down, right, back]."""
    rows = []
    for c in range(n):
        a = 0.15 * (c - 1)
        r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # OpenCV c2w rotation
        t = np.array([0.3 * (c - 1), 0.05 * c, -0.1 * c])
        m = np.stack([r[:, 1], r[:, 0], -r[:, 2], t, [FULL_H, FULL_W, FOCAL]], axis=1)
        rows.append(np.concatenate([m.reshape(-1), [2.0 + 0.1 * c, 20.0]]))
    return np.array(rows)


def write_n3v(root, n_cams: int = N_CAMS, n_poses: int | None = None):
    root.mkdir(parents=True, exist_ok=True)
    for c in range(n_cams):
        write_video(root / f"cam{c:02d}.mp4", c)
    np.save(root / "poses_bounds.npy", rig_poses(n_cams if n_poses is None else n_poses))
    return root


@pytest.fixture
def n3v(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return write_n3v(tmp_path / "scene")


def block_means(img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour inside the top and bottom blocks, two pixels away from every block edge."""
    a = img.numpy().astype(np.float64)
    h, w = a.shape[:2]
    return a[2: h // 2 - 2, 2: w - 2].mean((0, 1)), a[h // 2 + 2: h - 2, 2: w - 2].mean((0, 1))


def expected_rig(root) -> Cameras:
    c2w, hwf, bounds = parse_poses_bounds(np.load(root / "poses_bounds.npy"), root)
    scale, rot, t = llff_world(c2w, bounds)
    return Cameras.create(torch.tensor(c2w, dtype=torch.float32), hwf[:, 2] * W / FULL_W, hwf[:, 2] * H / FULL_H,
                          W / 2, H / 2, W, H).transformed(similarity(scale, t, rot))


def test_frames_times_poses_and_splits(n3v, tmp_path, tol):
    data = load_n3v(n3v, cache_dir=tmp_path / "cache")
    assert data.format == "n3v" and len(data) == N_CAMS * N_FRAMES
    assert data.image_size("train") == (H, W)
    times = np.linspace(0, 1, N_FRAMES)
    np.testing.assert_allclose(data.cameras.times.numpy(), np.tile(times, N_CAMS), atol=1e-7)
    assert data.time_range == pytest.approx((0.0, (N_FRAMES - 1) / FPS))
    assert data.splits["test"] == list(range(N_FRAMES)) == data.splits["val"]  # cam00 at every frame
    assert data.splits["train"] == list(range(N_FRAMES, N_CAMS * N_FRAMES))
    assert data.metadata["test_camera"] == "cam00.mp4"
    rig = expected_rig(n3v)
    for c in range(N_CAMS):
        for k in (0, N_FRAMES - 1):
            i = c * N_FRAMES + k
            np.testing.assert_allclose(data.cameras.c2w[i].numpy(), rig.c2w[c].numpy(), **tol["float32"])
            for name in ("fx", "fy", "cx", "cy"):
                assert float(getattr(data.cameras, name)[i]) == pytest.approx(float(getattr(rig, name)[c]))
    assert float(data.cameras.fx[0]) == pytest.approx(FOCAL * W / FULL_W)
    assert data.unbounded and data.near > 0 and data.far > data.near
    for c in range(N_CAMS):
        for k in range(N_FRAMES):
            top, bottom = block_means(data.images.rgb(c * N_FRAMES + k))
            np.testing.assert_allclose(top, colours(c, k)[0], atol=VIDEO_ATOL)
            np.testing.assert_allclose(bottom, colours(c, k)[1], atol=VIDEO_ATOL)


def test_stride_max_frames_and_downscale(n3v, tmp_path):
    data = load_n3v(n3v, frame_stride=2, max_frames=2, downscale=2, cache_dir=tmp_path / "cache")
    assert len(data) == N_CAMS * 2 and data.image_size("test") == (H // 2, W // 2)
    np.testing.assert_allclose(data.cameras.times.numpy(), [0, 1] * N_CAMS)
    assert data.time_range == pytest.approx((0.0, 2 / FPS))
    assert float(data.cameras.fx[0]) == pytest.approx(FOCAL * W / FULL_W / 2)
    top, bottom = block_means(data.images.rgb(1 * 2 + 1))  # camera 1, kept frame 1 = video frame 2
    np.testing.assert_allclose(top, colours(1, 2)[0], atol=VIDEO_ATOL)
    np.testing.assert_allclose(bottom, colours(1, 2)[1], atol=VIDEO_ATOL)
    assert data.images.rgb(0).shape == (H // 2, W // 2, 3) and data.images.rgb(0).dtype == torch.uint8


def test_frame_cache_is_reused_and_invalidated(n3v, tmp_path):
    cache = tmp_path / "cache"
    first = load_n3v(n3v, cache_dir=cache)
    before = first.images.rgb(N_FRAMES + 3).clone()
    files = sorted(cache.rglob("cam01.npy"))
    assert len(files) == 1 and np.load(files[0]).shape == (N_FRAMES, H, W, 3)
    again = load_n3v(n3v, cache_dir=cache)
    assert torch.equal(again.images.rgb(N_FRAMES + 3), before)
    assert sorted(cache.rglob("cam01.npy")) == files  # same key: no second decode
    write_video(n3v / "cam01.mp4", 1, shift=-25)  # a changed video is decoded again
    changed = load_n3v(n3v, cache_dir=cache)
    top, _ = block_means(changed.images.rgb(N_FRAMES + 3))
    np.testing.assert_allclose(top, np.clip(colours(1, 3)[0] - 25, 0, 255), atol=VIDEO_ATOL)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_detection_and_load_scene(n3v, capsys):
    assert detect_format(n3v) == "n3v"
    assert detect_format(n3v / "poses_bounds.npy") == "n3v"
    data = load_scene(n3v)  # frame cache under $OMNIFIELD_CACHE_DIR (the fixture's tmp folder)
    assert data.format == "n3v" and len(data.split("test")) == N_FRAMES
    assert main(["data", "info", str(n3v)]) == 0
    out = capsys.readouterr().out
    assert "n3v" in out and "cam00.mp4" in out
    for p in n3v.glob("cam*.mp4"):  # without videos the folder is LLFF again
        p.unlink()
    assert detect_format(n3v) == "llff" and detect_format(n3v / "poses_bounds.npy") == "llff"


def _one_line_error(root, name, **kw) -> str:
    with pytest.raises(DataError) as err:
        load_n3v(root, **kw)
    text = str(err.value)
    assert "\n" not in text and str(root / name) in text, text
    return text


def test_mismatched_videos_and_poses(tmp_path):
    root = write_n3v(tmp_path / "s", n_cams=3, n_poses=2)
    assert "3 videos" in _one_line_error(root, "poses_bounds.npy", cache_dir=tmp_path / "c")


def test_unreadable_video(tmp_path):
    root = write_n3v(tmp_path / "s")
    (root / "cam01.mp4").write_bytes(b"not a video" * 50)
    assert "cannot read video" in _one_line_error(root, "cam01.mp4", cache_dir=tmp_path / "c")


def test_videos_of_different_frame_counts(tmp_path):
    root = write_n3v(tmp_path / "s")
    write_video(root / "cam02.mp4", 2, n_frames=4)
    assert "4 frames" in _one_line_error(root, "cam02.mp4", cache_dir=tmp_path / "c")
    assert "4 frames" in _one_line_error(root, "cam02.mp4", max_frames=5, cache_dir=tmp_path / "c")
    data = load_n3v(root, max_frames=3, cache_dir=tmp_path / "c")  # only frames every video has
    assert len(data) == 3 * N_CAMS
    top, _ = block_means(data.images.rgb(2 * 3 + 2))
    np.testing.assert_allclose(top, colours(2, 2)[0], atol=VIDEO_ATOL)


def test_videos_of_different_sizes_and_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    root = write_n3v(tmp_path / "s")
    write_video(root / "cam01.mp4", 1, size=(W + 2, H))
    assert "34x24" in _one_line_error(root, "cam01.mp4")
    assert main(["data", "info", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnifield: error: ") and "cam01.mp4" in err and "\n" not in err


def test_bad_options(n3v):
    with pytest.raises(ValueError, match="frame_stride"):
        load_n3v(n3v, frame_stride=0)
    with pytest.raises(ValueError, match="max_frames"):
        load_n3v(n3v, max_frames=0)


def test_a_run_keeps_the_frames_it_was_trained_on(n3v, tmp_path, capsys):
    """--max-frames / --frame-stride reach the loader, the run records them, and eval / resume reload
    exactly those frames; other formats refuse them."""
    out = tmp_path / "run"
    small = ["profile=cpu", "sh_degree=0", "n_time=1", "num_random_points=50"]
    args = ["train", "4dgs", "--data", str(n3v), "--out", str(out), "--max-steps", "1", "--max-frames", "2",
            "--frame-stride", "2", "--eval-every", "0", "--no-progress", "--threads", "1", "--set", *small]
    assert main(args) == 0, capsys.readouterr().err
    from omnifield.scenes.runs import load_run

    run = load_run(out)
    assert run.info.time_range == pytest.approx((0.0, 2 / FPS))
    data = run.load_data()
    assert len(data) == N_CAMS * 2 and data.cameras.times.unique().tolist() == pytest.approx([0.0, 1.0])
    top, _ = block_means(data.images.rgb(1 * 2 + 1))  # camera 1, kept frame 1 = video frame 2
    np.testing.assert_allclose(top, colours(1, 2)[0], atol=VIDEO_ATOL)
    capsys.readouterr()
    assert main(["train", "4dgs", "--out", str(out), "--resume", "--max-steps", "2", "--no-progress",
                 "--threads", "1"]) == 0, capsys.readouterr().err
    assert main(["train", "4dgs", "--out", str(out), "--resume", "--max-frames", "3", "--no-progress"]) == 2
    assert "--max-frames" in capsys.readouterr().err
    args = ["train", "4dgs", "--data", str(n3v / "poses_bounds.npy"), "--out", str(tmp_path / "llff"), "--max-frames", "2"]
    for p in n3v.glob("cam*.mp4"):  # without videos the folder is LLFF: no frames to choose
        p.unlink()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "n3v" in err and "llff" in err and "poses_bounds.npy" in err, err
