"""Point-cloud sequences in the viewer: frames by time, ego poses, colour modes, scene flow drawn as line
segments (the ``flow`` channel, from ground truth or a ``flow.npz``). The source tests need no display;
the window tests run under Xvfb and skip when Xvfb or dearpygui is not installed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifield.errors import DataError
from omnifield.scenes.base import RenderOptions
from omnifield.viewer import camera as vc

NEVER = lambda: False  # noqa: E731
W, H = 96, 64


def frame(points, **kw):
    from omnifield.datasets.pointclouds import PointCloudFrame

    return PointCloudFrame(np.asarray(points, np.float32), **kw)


def sequence(frames, fmt="test", **metadata):
    from omnifield.datasets.pointclouds import PointCloudSequence

    return PointCloudSequence(frames, "seq", fmt, dict(metadata))


def pose(tx=0.0, ty=0.0, tz=0.0) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = tx, ty, tz
    return m


def top_view(centre=(0.0, 0.0, 0.0), height=10.0, fov=60.0):
    """Looking straight down at ``centre`` with +x to the right of the image and +y up."""
    c = np.asarray(centre, np.float64)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2] = (1, 0, 0), (0, -1, 0), (0, 0, -1)  # OpenCV: x right, y down, z forward
    c2w[:3, 3] = c + (0, 0, height)
    return vc.ViewCamera(c2w, c, fov, np.array([0.0, 1.0, 0.0]))


def render(src, cam, t=None, **options):
    out = src.render(vc.to_cameras(cam, W, H), t, RenderOptions(**options), NEVER)
    return out.channels()


def ft3d_npz(path: Path, n: int = 400, seed: int = 0) -> Path:
    """A FlyingThings3D-style pair (points1, points2, flow, valid_mask1): a block moving 1 m along +x."""
    rng = np.random.default_rng(seed)
    p1 = rng.uniform((-2, -2, 0), (2, 2, 1), (n, 3)).astype(np.float32)
    flow = np.tile(np.float32([1.0, 0.0, 0.0]), (n, 1))
    np.savez(path, points1=p1, points2=p1 + flow, flow=flow, valid_mask1=np.ones(n, bool))
    return path


# -- the source (no display) ---------------------------------------------------------------------------
def test_frames_by_time_in_world_coordinates():
    from omnifield.viewer.sequence import SequenceSource

    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    frames = [frame(pts, time=0.5 + 0.1 * i, ego_pose=pose(tx=2.0 * i)) for i in range(3)]
    src = SequenceSource(sequence(frames))
    assert src.time_range == pytest.approx((0.5, 0.7))
    assert [src.frame_at(t) for t in (None, 0.5, 0.56, 0.64, 0.7, 9.0)] == [0, 0, 1, 1, 2, 2]
    assert src.time_label(0.7) == "frame 3 / 3 (t 0.7)"
    np.testing.assert_allclose(src.world_points(2), pts + (4.0, 0, 0))  # ego pose applied
    assert src.channels == ("rgb", "alpha", "depth") and src.stats()["poses"] == "ego poses"
    cam = top_view((2.0, 0.0, 0.0))
    cols = [(render(src, cam, t)["alpha"][..., 0] > 0).nonzero()[:, 1].float().mean() for t in (0.5, 0.6, 0.7)]
    assert cols[0] < cols[1] < cols[2]  # the points move right in the image frame by frame


def test_no_timestamps_use_frame_indices_and_relative_poses_chain():
    from omnifield.viewer.sequence import SequenceSource, frame_poses, frame_times

    rel = pose(tx=-1.5)  # ego_1 <- ego_0: the ego drove 1.5 m forward
    seq = sequence([frame(np.zeros((1, 3))), frame(np.zeros((1, 3)))], next_from_this=[rel])
    np.testing.assert_array_equal(frame_times(seq), [0.0, 1.0])
    np.testing.assert_allclose(frame_poses(seq)[1], pose(tx=1.5))
    assert SequenceSource(seq).time_range == (0.0, 1.0)
    assert SequenceSource(sequence([frame(np.zeros((1, 3)))])).time_range is None  # one frame: static


def _line_pixels(img: np.ndarray, background=1.0) -> np.ndarray:
    """Pixels that are neither the background nor the grey of points in the flow channel."""
    from omnifield.viewer.sequence import POINT_GREY

    x = img.numpy() if isinstance(img, torch.Tensor) else img
    return (np.abs(x - background).max(-1) > 0.05) & (np.abs(x - np.float32(POINT_GREY)).max(-1) > 0.05)


def test_flow_channel_draws_a_segment_where_the_flow_points():
    from omnifield.viewer.sequence import SequenceSource

    seq = sequence([frame([[-2.0, 0.0, 0.0]], flow=np.float32([[4.0, 0.0, 0.0]])), frame([[2.0, 0.0, 0.0]])])
    src = SequenceSource(seq)
    assert "flow" in src.channels and "gt_flow" not in src.channels
    cam = top_view(height=6.0)
    out = render(src, cam, 0.0)
    lines = _line_pixels(out["flow"])
    (u0, v0), (u1, v1) = vc.project_points(cam, W, H, np.array([[-2.0, 0, 0], [2.0, 0, 0]]))[0]
    assert abs(v0 - v1) < 1e-6 and u1 - u0 > 30  # the flow runs along the image row
    row = int(v0)
    along = np.arange(int(math.ceil(u0)) + 1, int(u1) - 1)
    assert lines[row - 1 : row + 2, along].any(0).all()  # every pixel of the way from start to end
    assert lines.sum() < 6 * len(along)  # a thin line, nothing else
    assert not lines[:, : int(u0) - 3].any() and not lines[:, int(u1) + 3 :].any()
    assert _line_pixels(out["rgb"]).sum() <= 5  # the rgb channel shows only the point (a 5-pixel splat)
    assert not _line_pixels(render(src, cam, 0.0, crop_box=((0.0, -1, -1), (3.0, 1, 1)))["flow"]).any()  # start cropped
    turned = sequence([frame([[-2.0, 0.0, 0.0]], flow=np.float32([[0.0, 4.0, 0.0]])), frame([[2.0, 0.0, 0.0]])])
    up = _line_pixels(render(SequenceSource(turned), cam, 0.0)["flow"])
    assert not up[row - 1 : row + 2, along[3:]].any() and up[: row - 5].any()  # along +y: up in the image


def test_flow_includes_ego_motion_so_static_points_draw_nothing():
    from omnifield.viewer.sequence import SequenceSource

    pts = np.array([[5.0, 0.0, 0.0], [5.0, 3.0, 0.0]], np.float32)
    # The ego drives 1 m forward: the static point is 1 m closer in frame 1's ego coordinates (flow -1 m);
    # the other moves 2 m along +x in the world (flow +1 m).
    flow = np.float32([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    seq = sequence([frame(pts, ego_pose=pose(), flow=flow), frame(pts, ego_pose=pose(tx=1.0), time=0.1)])
    src = SequenceSource(seq)
    (seg,) = [v["flow"].segments for v in src.vectors if "flow" in v]
    assert len(seg) == 3  # one arrow: the shaft and two barbs
    np.testing.assert_allclose(seg[0], [[5.0, 3.0, 0.0], [7.0, 3.0, 0.0]])  # only the moving point, in world


def test_colour_modes():
    from omnifield.viewer.sequence import DYNAMIC_COLOR, SequenceSource

    pts = np.array([[-2.0, 0.0, 0.0], [2.0, 0.0, 3.0]], np.float32)
    f0 = frame(pts, intensity=np.float32([0.0, 50.0]), dynamic=np.array([False, True]),
               is_ground=np.array([True, False]))
    src = SequenceSource(sequence([f0, frame(pts, time=1.0)]))
    assert src.channels == ("rgb", "alpha", "depth", "intensity", "dynamic")
    cam = top_view(height=12.0)
    (ua, va), (ub, vb) = (p.astype(int) for p in vc.project_points(cam, W, H, pts.astype(np.float64))[0])
    out = render(src, cam, 0.0)
    for name in ("rgb", "intensity", "dynamic"):
        a, b = out[name][va, ua], out[name][vb, ub]
        assert (a - b).abs().max() > 0.3, name  # the two points differ in every mode
    torch.testing.assert_close(out["dynamic"][vb, ub], torch.tensor(DYNAMIC_COLOR))
    low, high = out["rgb"][va, ua], out["rgb"][vb, ub]
    assert low[2] > low[0] and high[0] > high[2]  # height: low blue, high red
    assert out["intensity"][vb, ub].sum() > out["intensity"][va, ua].sum()
    later = render(src, cam, 1.0)  # frame 1 has no labels: grey
    assert (later["dynamic"][vb, ub] - later["dynamic"][vb, ub].mean()).abs().max() < 1e-6
    crop = render(src, cam, 0.0, crop_box=((-3.0, -1, -1), (0.0, 1, 1)))
    assert crop["alpha"][vb, ub] == 0 and crop["alpha"][va, ua] == 1


def test_open_source_reads_a_scene_flow_npz_and_a_flow_file(tmp_path):
    from omnifield.viewer.sequence import SequenceSource
    from omnifield.viewer.sources import open_source

    path = ft3d_npz(tmp_path / "pair.npz")
    src = open_source(path)
    assert isinstance(src, SequenceSource) and len(src.times) == 2 and src.time_range is not None
    assert "flow" in src.channels and src.stats()["frames"] == "2"
    p1 = np.load(path)["points1"]
    rows = np.arange(0, len(p1), 2)
    est = np.tile(np.float32([0.0, 1.0, 0.0]), (len(rows), 1))  # an estimate along +y, unlike the truth
    np.savez(tmp_path / "flow.npz", flow=est, points=p1[rows], indices=rows, loss=0.1)
    both = open_source(path, flow=tmp_path / "flow.npz")
    assert both.channels[-2:] == ("flow", "gt_flow")
    seg = both.vectors[0]["flow"].segments
    seg = seg[: len(seg) // 3]  # the shafts
    np.testing.assert_allclose(seg[:, 1] - seg[:, 0], np.tile([0.0, 1.0, 0.0], (len(seg), 1)), atol=1e-6)
    assert both.vectors[0]["gt_flow"].source == "ground truth" and "flow.npz" in both.stats()["flow"]
    cam = top_view(height=8.0)
    out = render(both, cam, both.time_range[0])
    assert (_line_pixels(out["flow"]) != _line_pixels(out["gt_flow"])).mean() > 0.02
    np.savez(tmp_path / "bad.npz", flow=est)
    with pytest.raises(DataError, match="bad.npz.*missing points, indices"):
        open_source(path, flow=tmp_path / "bad.npz")
    np.savez(tmp_path / "odd.npz", something=np.zeros(3))
    with pytest.raises(DataError, match="odd.npz"):
        open_source(tmp_path / "odd.npz")


def test_open_source_reads_folders_of_sweeps_and_synth_lidar(tmp_path):
    from omnifield.viewer.sequence import SequenceSource
    from omnifield.viewer.sources import open_source

    sweeps = tmp_path / "sweeps"
    sweeps.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):  # KITTI velodyne layout: float32 x, y, z, intensity
        rng.uniform(-5, 5, (200, 4)).astype(np.float32).tofile(sweeps / f"{k:06d}.bin")
    src = open_source(sweeps)
    assert isinstance(src, SequenceSource) and len(src.times) == 3 and "intensity" in src.channels
    assert [src.frame_at(t) for t in src.times] == [0, 1, 2]
    pytest.importorskip("open3d", reason="the synthetic lidar sequence needs open3d (omnifield[synth])")
    from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar

    synth = synthesize_lidar(tmp_path / "synth", LidarSynthConfig(frames=2, beams=4, azimuths=64, buildings=2,
                                                                   poles=2, cars=2))
    src = open_source(synth)
    assert src.channels == ("rgb", "alpha", "depth", "dynamic", "flow") and src.time_range == pytest.approx((0.0, 0.1))
    seg = src.vectors[0]["flow"].segments
    assert len(seg) > 0 and src.stats()["poses"] == "ego poses"


def test_av2_pair_static_points_have_no_world_motion(shared_data):
    from omnifield.viewer.sequence import MIN_VECTOR_LENGTH
    from omnifield.viewer.sources import open_source

    path = shared_data / "av2_flow_pair" / "pair.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    src = open_source(path)
    assert {"dynamic", "flow"} <= set(src.channels)
    f0 = src.seq.frames[0]
    start = f0.points @ src.poses[0][:3, :3].T + src.poses[0][:3, 3]
    end = (f0.points + f0.flow) @ src.poses[1][:3, :3].T + src.poses[1][:3, 3]
    moved = np.linalg.norm(end - start, axis=-1) >= MIN_VECTOR_LENGTH
    assert moved[~f0.dynamic].mean() < 0.01 and moved[f0.dynamic].mean() > 0.5  # the labels include ego motion
    assert 0 < len(src.vectors[0]["flow"].segments) // 3 <= moved.sum()


def test_flow_file_matching_no_frame_is_drawn_on_the_first():
    from omnifield.viewer.sequence import SequenceSource

    seq = sequence([frame(np.zeros((3, 3))), frame(np.ones((3, 3)))])
    data = {"flow": np.float32([[1.0, 0, 0]]), "points": np.float32([[9.0, 9, 9]]), "indices": np.array([0])}
    src = SequenceSource(seq, flow=data)
    assert "flow" in src.vectors[0] and "match no frame" in src.stats()["flow"]


def test_many_vectors_are_thinned_evenly_and_short_ones_dropped():
    from omnifield.viewer.sequence import arrow_segments, select_vectors

    rng = np.random.default_rng(0)
    start = np.concatenate([rng.uniform(0, 1, (4990, 3)), rng.uniform(50, 51, (10, 3))]).astype(np.float32)
    end = start.copy()
    end[:, 0] += 1.0
    end[:1000] = start[:1000]  # zero flow: not drawn
    rows = select_vectors(start, end, max_vectors=300, min_length=0.05, spacing=0.0)
    assert 0 < len(rows) <= 300 and rows.min() >= 1000 and (np.diff(rows) > 0).all()
    assert (rows >= 4990).sum() >= 8  # the sparse cluster keeps (nearly) all of its 10, the dense one is thinned
    assert len(select_vectors(start, end, max_vectors=10_000, spacing=0.0)) == 4000
    spaced = select_vectors(start, end, spacing=0.5)  # 1 m vectors at least ~0.5 m apart: <= 3^3 in the dense cube
    assert (spaced < 4990).sum() <= 27 and (spaced >= 4990).sum() >= 1
    arrows = arrow_segments(np.zeros((1, 3)), np.array([[2.0, 0.0, 0.0]]))
    np.testing.assert_allclose(arrows[:, 0], [[0, 0, 0], [2, 0, 0], [2, 0, 0]])
    np.testing.assert_allclose(arrows[1:, 1], [[1.5, -0.25, 0.0], [1.5, 0.25, 0.0]], atol=1e-6)  # barbs point back


# -- the window (Xvfb) ---------------------------------------------------------------------------------


def test_window_time_slider_switches_frames_and_flow_channel(xvfb, tmp_path):
    from omnifield.viewer.app import Viewer, ViewerConfig
    from omnifield.viewer.sources import open_source

    src = open_source(ft3d_npz(tmp_path / "pair.npz"))
    with Viewer(src, config=ViewerConfig(width=W, height=H, levels=(), vsync=False)) as v:
        v.set_camera(top_view(height=9.0))
        assert v.wait_idle(20)
        first = v.view_pixels().astype(int)
        assert src.frame_at(v.time) == 0 and "frame 1 / 2" in v.dpg.get_value(v.ui.readouts)
        v.set_time(v.time_range[1])
        assert v.wait_idle(20)
        second = v.view_pixels().astype(int)
        assert src.frame_at(v.time) == 1 and np.abs(second - first).mean() > 1.0
        v.step_ui(2)
        v.ui.last_readout = 0.0
        v.step_ui(1)
        assert "frame 2 / 2" in v.dpg.get_value(v.ui.readouts)
        v.set_time(v.time_range[0])
        v.set_channel("flow")
        assert v.wait_idle(20)
        assert _line_pixels(v.view_pixels() / 255.0, background=1.0).mean() > 0.02
        shot = v.screenshot(tmp_path / "flow.png")
    import imageio.v3 as iio

    assert _line_pixels(iio.imread(shot) / 255.0).mean() > 0.02  # the vectors are in the screenshot


def test_open_viewer_with_a_flow_file_writes_a_screenshot(xvfb, tmp_path):
    import imageio.v3 as iio

    from omnifield.viewer.app import ViewerConfig, open_viewer

    path = ft3d_npz(tmp_path / "pair.npz", n=50)
    p1 = np.load(path)["points1"]
    np.savez(tmp_path / "flow.npz", flow=np.zeros_like(p1) + (0, 2.0, 0), points=p1, indices=np.arange(len(p1)))
    out = open_viewer(path, flow=tmp_path / "flow.npz", screenshot=tmp_path / "shot.png", device="cpu",
                      config=ViewerConfig(width=W, height=H, levels=(), channel="flow", vsync=False))
    assert iio.imread(out).shape == (H, W, 3) and _line_pixels(iio.imread(out) / 255.0).mean() > 0.01
