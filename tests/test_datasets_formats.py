"""Parsers against tiny fixtures written into tmp_path: conventions, distortion, splits, downscale, errors.

One known camera and one known 3D point are written in every format; each parser must put the
point on the same pixel (through ``world_from_dataset`` and ``Cameras.project``).
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from omnifield.datasets import CameraModel, describe, load_scene
from omnifield.datasets.info import format_info
from omnifield.datasets.load import detect_format
from omnifield.errors import DataError

W, H = 8, 6
# The known camera (dataset coordinates, OpenCV axes) and point.
FX, FY, CX, CY = 5.0, 6.0, 4.1, 2.9


def rot(axis, angle) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def look_at(center, target) -> np.ndarray:
    """OpenCV c2w looking from ``center`` at ``target`` (y roughly down = -z world)."""
    z = np.asarray(target, float) - np.asarray(center, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = center
    return c2w


# Several cameras (so normalisations are not trivial); camera 0 is the known one.
POSES = np.stack(
    [look_at([3.0, -2.0, 1.5], [0.2, 0.1, 0.0])]
    + [look_at([4 * math.cos(a), 4 * math.sin(a), 1.0 + 0.3 * i], [0, 0, 0]) for i, a in enumerate(np.linspace(0.5, 5.5, 9))]
)
POSES[0, :3, :3] = POSES[0, :3, :3] @ rot([0.3, 1.0, 0.2], 0.1)  # not a look-at: a generic rotation
POINT = np.array([0.3, -0.2, 0.25])


def expected_pixel(c2w, fx, fy, cx, cy, point=POINT) -> np.ndarray:
    pc = c2w[:3, :3].T @ (point - c2w[:3, 3])
    return np.array([fx * pc[0] / pc[2] + cx, fy * pc[1] / pc[2] + cy])


def projected(data, index: int, point=POINT) -> np.ndarray:
    world = data.to_world(torch.tensor(point, dtype=torch.float32)[None])
    uv, z = data.cameras[index].project(world)
    assert float(z[0, 0]) > 0
    return uv[0, 0].double().numpy()


def gl(c2w: np.ndarray) -> np.ndarray:
    out = c2w.copy()
    out[:3, 1:3] *= -1
    return out


def write_image(path: Path, w=W, h=H, channels=3, seed=0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    iio.imwrite(path, img)
    return img


def rotmat_to_qvec(r: np.ndarray) -> np.ndarray:
    w = math.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    return np.array([w, x, y, z])


# ----------------------------------------------------------------------------- writers


def write_blender(root: Path, splits=("train",), fx=FX, poses=POSES, times=None, channels=4) -> None:
    per = {s: list(range(len(poses))) if len(splits) == 1 else list(range(i, len(poses), len(splits))) for i, s in enumerate(splits)}
    for s in splits:
        frames = []
        for i in per[s]:
            fr = {"file_path": f"./{s}/r_{i}", "transform_matrix": gl(poses[i]).tolist()}
            if times is not None:
                fr["time"] = times[i]
            frames.append(fr)
            write_image(root / s / f"r_{i}.png", channels=channels, seed=i)
        (root / f"transforms_{s}.json").write_text(json.dumps({"camera_angle_x": 2 * math.atan(W / (2 * fx)), "frames": frames}))


def write_ngp(root: Path, extra: dict | None = None, frame_extra=None, missing=(), n=len(POSES)) -> Path:
    frames = []
    for i in range(n):
        fr = {"file_path": f"images/{i:04d}.png", "transform_matrix": gl(POSES[i]).tolist()}
        fr.update((frame_extra or {}).get(i, {}))
        frames.append(fr)
        if i not in missing:
            write_image(root / "images" / f"{i:04d}.png", seed=i)
    meta = {"fl_x": FX, "fl_y": FY, "cx": CX, "cy": CY, "w": W, "h": H, "frames": frames}
    meta.update(extra or {})
    (root / "transforms.json").write_text(json.dumps(meta))
    return root / "transforms.json"


def _f(values) -> list[str]:
    return [repr(float(v)) for v in values]


def _colmap_items(model="PINHOLE", params=(FX, FY, CX, CY)):
    names = [f"img_{i:03d}.png" for i in range(len(POSES))]
    w2c = np.linalg.inv(POSES)
    return names, w2c, model, params


def write_colmap_text(root: Path, model="PINHOLE", params=(FX, FY, CX, CY), points=True) -> None:
    names, w2c, model, params = _colmap_items(model, params)
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(f"# Camera list\n1 {model} {W} {H} " + " ".join(_f(params)) + "\n")
    lines = ["# Image list", "# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME"]
    for i, name in enumerate(names):
        q, t = rotmat_to_qvec(w2c[i, :3, :3]), w2c[i, :3, 3]
        lines.append(f"{i + 1} " + " ".join(_f([*q, *t])) + f" 1 {name}")
        lines.append("1.0 2.0 -1" if i % 2 else "")  # empty POINTS2D lines happen
        write_image(root / "images" / name, seed=i)
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    if points:
        (sparse / "points3D.txt").write_text(
            "# 3D point list\n1 " + " ".join(_f(POINT)) + " 10 20 30 0.5 1 0\n2 0 0 0 1 2 3 0.1\n"
        )


def colmap_binary_bytes(model="PINHOLE", params=(FX, FY, CX, CY)) -> dict[str, bytes]:
    from omnifield.datasets.colmap import MODEL_IDS

    names, w2c, model, params = _colmap_items(model, params)
    cams = struct.pack("<Q", 1) + struct.pack("<iiQQ", 1, MODEL_IDS[model][0], W, H) + struct.pack(f"<{len(params)}d", *params)
    imgs = struct.pack("<Q", len(names))
    for i, name in enumerate(names):
        q, t = rotmat_to_qvec(w2c[i, :3, :3]), w2c[i, :3, 3]
        imgs += struct.pack("<idddddddi", i + 1, *q, *t, 1) + name.encode() + b"\x00"
        imgs += struct.pack("<Q", 1) + struct.pack("<ddq", 1.0, 2.0, -1)
    pts = struct.pack("<Q", 2)
    pts += struct.pack("<QdddBBBd", 1, *POINT, 10, 20, 30, 0.5) + struct.pack("<Q", 1) + struct.pack("<ii", 1, 0)
    pts += struct.pack("<QdddBBBd", 2, 0, 0, 0, 1, 2, 3, 0.1) + struct.pack("<Q", 0)
    return {"cameras.bin": cams, "images.bin": imgs, "points3D.bin": pts}


def write_colmap_binary(root: Path, model="PINHOLE", params=(FX, FY, CX, CY)) -> Path:
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    for name, data in colmap_binary_bytes(model, params).items():
        (sparse / name).write_bytes(data)
    for i in range(len(POSES)):
        write_image(root / "images" / f"img_{i:03d}.png", seed=i)
    return sparse


def write_llff(root: Path, folder="images", w=W, h=H, f=FX, bounds=(2.0, 9.0)) -> None:
    rows = []
    for c2w in POSES:
        r, t = c2w[:3, :3], c2w[:3, 3]
        m = np.stack([r[:, 1], r[:, 0], -r[:, 2], t, [h, w, f]], axis=1)  # [down, right, back, t, hwf]
        rows.append(np.concatenate([m.reshape(-1), bounds]))
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "poses_bounds.npy", np.stack(rows))
    for i in range(len(POSES)):
        write_image(root / folder / f"image{i:03d}.png", w=w, h=h, seed=i)


SCALE_MAT = np.array([[2.5, 0, 0, 0.4], [0, 2.5, 0, -0.3], [0, 0, 2.5, 0.2], [0, 0, 0, 1.0]])


def dtu_world_mat(c2w, fx=FX, fy=FY, cx=CX, cy=CY) -> np.ndarray:
    k = np.eye(4)
    k[:3, :3] = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    return k @ np.linalg.inv(c2w)


def write_dtu(root: Path, layout="monosdf", masks=False) -> None:
    arrays = {}
    for i, c2w in enumerate(POSES):
        arrays[f"world_mat_{i}"] = dtu_world_mat(c2w)
        arrays[f"scale_mat_{i}"] = SCALE_MAT
        if layout == "monosdf":
            write_image(root / f"{i:06d}_rgb.png", seed=i)
        else:
            write_image(root / "image" / f"{i:03d}.png", seed=i)
            if masks:
                write_image(root / "mask" / f"{i:03d}.png", seed=100 + i)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "cameras.npz", **arrays)


# ----------------------------------------------------------------------------- conventions


@pytest.mark.parametrize(
    "fmt, writer, intr",
    [
        ("blender", lambda r: write_blender(r), (FX, FX, W / 2, H / 2)),
        ("ngp", lambda r: write_ngp(r, {"scale": 0.5, "offset": [0.6, 0.4, 0.5], "aabb_scale": 8}), (FX, FY, CX, CY)),
        ("nerfstudio", lambda r: write_ngp(r, {"camera_model": "PINHOLE"}), (FX, FY, CX, CY)),
        ("colmap", write_colmap_text, (FX, FY, CX, CY)),
        ("colmap", write_colmap_binary, (FX, FY, CX, CY)),
        ("llff", write_llff, (FX, FX, W / 2, H / 2)),
        ("dtu", write_dtu, (FX, FY, CX, CY)),
    ],
    ids=["blender", "ngp", "nerfstudio", "colmap_text", "colmap_binary", "llff", "dtu"],
)
def test_known_point_projects_to_known_pixel(tmp_path, tol, fmt, writer, intr):
    writer(tmp_path)
    data = load_scene(tmp_path)
    assert data.format == fmt
    expected = expected_pixel(POSES[0], *intr)
    np.testing.assert_allclose(projected(data, 0), expected, **tol["camera_pixels"])
    # Cameras are rigid and in OpenCV axes: camera 0's optical axis in the world is R @ z.
    r = data.cameras.c2w[0, :3, :3].double()
    torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-5, rtol=0)
    world_rot = data.world_from_dataset[:3, :3].double() / data.world_scale
    axis = world_rot @ torch.tensor(POSES[0][:3, 2])
    torch.testing.assert_close(r[:, 2], axis, atol=1e-5, rtol=0)


def test_colmap_text_and_binary_agree(tmp_path):
    write_colmap_text(tmp_path / "t")
    write_colmap_binary(tmp_path / "b")
    a, b = load_scene(tmp_path / "t"), load_scene(tmp_path / "b")
    torch.testing.assert_close(a.cameras.c2w, b.cameras.c2w)
    torch.testing.assert_close(a.points, b.points)
    assert a.point_colors.tolist() == b.point_colors.tolist() == [[10, 20, 30], [1, 2, 3]]
    torch.testing.assert_close(a.world_from_dataset, b.world_from_dataset)


@pytest.mark.parametrize("fmt", ["colmap", "nerfstudio", "ngp", "llff", "dtu"])
def test_world_normalisation(tmp_path, fmt):
    {"colmap": write_colmap_text, "nerfstudio": lambda r: write_ngp(r, {"camera_model": "PINHOLE"}),
     "ngp": write_ngp, "llff": write_llff, "dtu": write_dtu}[fmt](tmp_path)
    data = load_scene(tmp_path)
    centers = data.cameras.c2w[:, :3, 3]
    if fmt == "colmap":  # centred, farthest camera at radius 1
        torch.testing.assert_close(centers.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        assert abs(float(centers.norm(dim=-1).max()) - 1) < 1e-5
        assert data.unbounded
    elif fmt == "nerfstudio":  # centred, cameras in [-1, 1]^3
        torch.testing.assert_close(centers.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        assert abs(float(centers.abs().max()) - 1) < 1e-5
        assert data.scene_box.tolist() == [[-1, -1, -1], [1, 1, 1]] and data.unbounded
    elif fmt == "ngp":  # defaults: scale 0.33, offset 0.5 -> world = 0.33 x
        torch.testing.assert_close(data.world_from_dataset, torch.diag(torch.tensor([0.33, 0.33, 0.33, 1.0])))
        assert data.scene_box.tolist() == [[-0.5] * 3, [0.5] * 3] and not data.unbounded
    elif fmt == "llff":  # bd_factor: min bound -> 1/0.75; recentred on the average camera
        torch.testing.assert_close(centers.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        assert abs(data.world_scale - 1 / (2.0 * 0.75)) < 1e-6
        assert abs(data.near - 0.9 / 0.75) < 1e-5 and abs(data.far - 9.0 / 1.5) < 1e-5
        # the average camera looks along world -z (OpenGL convention of NeRF's recentring)
        fwd = data.cameras.c2w[:, :3, 2].mean(0)
        assert float(fwd[2]) < -0.5 * float(fwd.norm())
    else:  # dtu: world = inv(scale_mat)
        torch.testing.assert_close(data.world_from_dataset, torch.tensor(np.linalg.inv(SCALE_MAT), dtype=torch.float32))
    # with_world round trip: re-expressing in the dataset's own world is the identity on pixels.
    same = data.with_world(data.world_from_dataset)
    torch.testing.assert_close(same.cameras.c2w, data.cameras.c2w, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- distortion


def opencv_distort(x, y, k1, k2, p1, p2, k3=0.0):
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    return x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y


def test_ngp_distortion_round_trip_and_projection(tmp_path, tol):
    k = {"k1": 0.05, "k2": -0.08, "p1": -0.001, "p2": 0.0015}
    write_ngp(tmp_path, k)
    data = load_scene(tmp_path)
    assert data.format == "ngp"
    assert data.cameras.model.tolist() == [CameraModel.OPENCV] * len(POSES)
    torch.testing.assert_close(data.cameras.distortion[0], torch.tensor([0.05, -0.08, -0.001, 0.0015, 0, 0]))
    pc = POSES[0][:3, :3].T @ (POINT - POSES[0][:3, 3])
    xd, yd = opencv_distort(pc[0] / pc[2], pc[1] / pc[2], *k.values())
    np.testing.assert_allclose(projected(data, 0), [FX * xd + CX, FY * yd + CY], **tol["camera_pixels"])


def test_nerfstudio_fisheye_round_trip(tmp_path):
    write_ngp(tmp_path, {"camera_model": "OPENCV_FISHEYE", "k1": 0.1, "k2": 0.02, "k3": -0.01, "k4": 0.003})
    data = load_scene(tmp_path)
    assert data.format == "nerfstudio"
    assert set(data.cameras.model.tolist()) == {int(CameraModel.OPENCV_FISHEYE)}
    torch.testing.assert_close(data.cameras.distortion[3], torch.tensor([0.1, 0.02, 0, 0, -0.01, 0.003]))


@pytest.mark.parametrize(
    "model, params, dist, cam_model",
    [
        ("OPENCV", (FX, FY, CX, CY, 0.1, -0.05, 0.002, -0.003), [0.1, -0.05, 0.002, -0.003, 0, 0], CameraModel.OPENCV),
        ("OPENCV_FISHEYE", (FX, FY, CX, CY, 0.1, -0.05, 0.02, -0.01), [0.1, -0.05, 0, 0, 0.02, -0.01], CameraModel.OPENCV_FISHEYE),
        ("SIMPLE_RADIAL", (FX, CX, CY, 0.07), [0.07, 0, 0, 0, 0, 0], CameraModel.OPENCV),
        ("RADIAL", (FX, CX, CY, 0.07, -0.02), [0.07, -0.02, 0, 0, 0, 0], CameraModel.OPENCV),
        ("SIMPLE_PINHOLE", (FX, CX, CY), [0.0] * 6, CameraModel.PINHOLE),
    ],
)
@pytest.mark.parametrize("binary", [False, True])
def test_colmap_camera_models(tmp_path, tol, model, params, dist, cam_model, binary):
    (write_colmap_binary if binary else write_colmap_text)(tmp_path, model=model, params=params)
    data = load_scene(tmp_path)
    cams = data.cameras
    assert cams.model.tolist() == [int(cam_model)] * len(POSES)
    torch.testing.assert_close(cams.distortion[0], torch.tensor(dist, dtype=torch.float32))
    fy = params[0] if model.startswith(("SIMPLE", "RADIAL")) else params[1]
    assert abs(float(cams.fx[0]) - FX) < 1e-6 and abs(float(cams.fy[0]) - fy) < 1e-6
    if model == "OPENCV":
        pc = POSES[0][:3, :3].T @ (POINT - POSES[0][:3, 3])
        xd, yd = opencv_distort(pc[0] / pc[2], pc[1] / pc[2], *params[4:])
        np.testing.assert_allclose(projected(data, 0), [FX * xd + CX, FY * yd + CY], **tol["camera_pixels"])


# ----------------------------------------------------------------------------- features


def test_blender_splits_alpha_and_background(tmp_path):
    write_blender(tmp_path, splits=("train", "test"))
    data = load_scene(tmp_path, background=(0.0, 0.0, 0.0))
    assert data.format == "blender"
    assert data.splits["train"] == [0, 1, 2, 3, 4] and data.splits["test"] == [5, 6, 7, 8, 9]
    assert data.splits["val"] == data.splits["test"]
    raw = iio.imread(data.images.paths[0])
    a = raw[..., 3:4].astype(np.float32) / 255
    np.testing.assert_allclose(data.images.rgb(0).numpy(), np.round(raw[..., :3] * a), atol=1)
    assert data.images.alpha(0)[..., 0].tolist() == raw[..., 3].tolist()
    assert data.near == 2 and data.far == 6 and data.scene_box.tolist() == [[-1.5] * 3, [1.5] * 3]


def test_blender_holdout_when_only_train(tmp_path):
    write_blender(tmp_path)
    data = load_scene(tmp_path, holdout_every=4)
    assert data.splits["test"] == [0, 4, 8] and data.splits["val"] == [0, 4, 8]
    assert data.splits["train"] == [1, 2, 3, 5, 6, 7, 9]


def test_dnerf_times(tmp_path):
    times = [0.5 + 0.25 * i for i in range(len(POSES))]
    write_blender(tmp_path, times=times)
    data = load_scene(tmp_path)
    assert data.format == "dnerf" and data.time_range == (0.5, 0.5 + 0.25 * 9)
    torch.testing.assert_close(data.cameras.times, torch.linspace(0, 1, len(POSES)))


def test_ngp_missing_frames_skipped_with_one_warning(tmp_path):
    write_ngp(tmp_path, missing=(2, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_scene(tmp_path)
    assert len(caught) == 1 and "images/0002.png" in str(caught[0].message) and "images/0005.png" in str(caught[0].message)
    assert len(data) == len(POSES) - 2
    assert data.metadata["skipped_frames"] == ["images/0002.png", "images/0005.png"]
    assert describe(data)["skipped_frames"] == ["images/0002.png", "images/0005.png"]


def test_nerfstudio_per_frame_intrinsics_and_splits(tmp_path, tol):
    per = {i: {"fl_x": FX + i, "fl_y": FY, "cx": CX, "cy": CY, "w": W, "h": H} for i in range(len(POSES))}
    json_path = write_ngp(tmp_path, frame_extra=per)
    meta = json.loads(json_path.read_text())
    for k in ("fl_x", "fl_y", "cx", "cy"):
        del meta[k]
    meta["train_filenames"] = [f"images/{i:04d}.png" for i in range(1, 10)]
    meta["test_filenames"] = ["images/0000.png"]
    json_path.write_text(json.dumps(meta))
    data = load_scene(tmp_path)
    assert data.format == "nerfstudio"
    assert data.cameras.fx.tolist() == [FX + i for i in range(len(POSES))]
    assert data.splits == {"train": list(range(1, 10)), "test": [0], "val": [0]}
    np.testing.assert_allclose(projected(data, 0), expected_pixel(POSES[0], FX, FY, CX, CY), **tol["camera_pixels"])


def test_downscale_block_average(tmp_path, tol):
    write_colmap_text(tmp_path)
    data = load_scene(tmp_path, downscale=2)
    assert data.cameras.width[0] == W // 2 and data.cameras.height[0] == H // 2
    assert abs(float(data.cameras.fx[0]) - FX / 2) < 1e-6 and abs(float(data.cameras.cx[0]) - CX / 2) < 1e-6
    raw = iio.imread(data.images.paths[0]).astype(np.float32)
    expected = raw.reshape(H // 2, 2, W // 2, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(data.images.rgb(0).numpy(), np.round(expected), atol=1)
    np.testing.assert_allclose(projected(data, 0), expected_pixel(POSES[0], FX, FY, CX, CY) / 2, **tol["camera_pixels"])
    assert data.metadata["downscale"] == 2


def test_predownscaled_folder_used(tmp_path):
    write_ngp(tmp_path)
    for i in range(len(POSES)):
        write_image(tmp_path / "images_2" / f"{i:04d}.png", w=W // 2, h=H // 2, seed=50 + i)
    data = load_scene(tmp_path, downscale=2)
    assert data.images.paths[0] == tmp_path / "images_2" / "0000.png"
    assert data.images.rgb(0).numpy().tolist() == iio.imread(tmp_path / "images_2" / "0000.png").tolist()


def test_llff_downscale_folders(tmp_path, tol):
    write_llff(tmp_path, folder="images_2", w=W // 2, h=H // 2, f=FX / 2)
    # hwf says full resolution: rewrite it to 2x the images.
    arr = np.load(tmp_path / "poses_bounds.npy")
    arr[:, [4, 9, 14]] = [H, W, FX]
    np.save(tmp_path / "poses_bounds.npy", arr)
    data = load_scene(tmp_path, downscale=2)
    assert data.metadata["downscale"] == 2 and data.cameras.width[0] == W // 2
    np.testing.assert_allclose(projected(data, 0), expected_pixel(POSES[0], FX, FX, W / 2, H / 2) / 2, **tol["camera_pixels"])
    with pytest.warns(UserWarning, match="images_2"):
        full = load_scene(tmp_path)  # no images/: falls back to images_2 with a warning
    assert full.metadata["downscale"] == 2


def test_dtu_neus_layout_with_masks(tmp_path, tol):
    write_dtu(tmp_path, layout="neus", masks=True)
    data = load_scene(tmp_path, downscale=2)
    assert data.format == "dtu" and data.masks is not None
    m = data.masks(0)
    assert m.shape == (H // 2, W // 2, 1) and m.dtype == torch.uint8
    np.testing.assert_allclose(projected(data, 0), expected_pixel(POSES[0], FX, FY, CX, CY) / 2, **tol["camera_pixels"])


def test_dtu_cropped_and_resized_intrinsics(tmp_path, tol):
    """MonoSDF keeps world_mat of the 1600x1200 originals for 384x384 crops: K[0,2] -= 200; K[:2] *= 384/1200."""
    arrays = {}
    for i, c2w in enumerate(POSES):
        arrays[f"world_mat_{i}"] = dtu_world_mat(c2w, 2900.0, 2890.0, 823.2, 619.1)
        arrays[f"scale_mat_{i}"] = SCALE_MAT
        write_image(tmp_path / f"{i:06d}_rgb.png", w=384, h=384, seed=i)
    np.savez(tmp_path / "cameras.npz", **arrays)
    data = load_scene(tmp_path)
    s = 384 / 1200
    expected = expected_pixel(POSES[0], 2900.0 * s, 2890.0 * s, (823.2 - 200) * s, 619.1 * s)
    np.testing.assert_allclose(projected(data, 0), expected, **tol["dtu_pixels"])


def test_detection_and_info(tmp_path):
    write_colmap_text(tmp_path / "c")
    write_ngp(tmp_path / "n")
    assert detect_format(tmp_path / "c") == "colmap"
    assert detect_format(tmp_path / "n" / "transforms.json") == "ngp"
    data = load_scene(tmp_path / "c")
    info = describe(data)
    assert info["format"] == "colmap" and info["num_cameras"] == len(POSES) and info["num_points"] == 2
    assert info["resolutions"] == {f"{W}x{H}": len(POSES)} and info["camera_models"] == {"PINHOLE": len(POSES)}
    assert info["splits"] == {"train": 8, "val": 2, "test": 2}
    json.dumps(info)  # JSON-friendly
    text = format_info(info)
    assert "colmap" in text and "points:        2" in text


# ----------------------------------------------------------------------------- bad input


def _raises(match_path, fn, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    assert str(match_path) in str(e.value), f"{e.value} does not name {match_path}"
    return e.value


def test_missing_and_malformed_json(tmp_path):
    write_blender(tmp_path)
    (tmp_path / "transforms_train.json").write_text("{not json")
    _raises(tmp_path / "transforms_train.json", load_scene, tmp_path)
    _raises(tmp_path / "nothing.json", load_scene, tmp_path / "nothing.json")
    (tmp_path / "transforms.json").write_text("[1, 2]")
    _raises(tmp_path / "transforms.json", load_scene, tmp_path, format="ngp")


def test_malformed_npz_and_npy(tmp_path):
    write_dtu(tmp_path / "d")
    (tmp_path / "d" / "cameras.npz").write_bytes(b"PK\x03\x04 garbage")
    _raises(tmp_path / "d" / "cameras.npz", load_scene, tmp_path / "d")
    write_llff(tmp_path / "l")
    np.save(tmp_path / "l" / "poses_bounds.npy", np.zeros((10, 15)))
    _raises(tmp_path / "l" / "poses_bounds.npy", load_scene, tmp_path / "l")


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_truncated_colmap_binary(tmp_path, name):
    sparse = write_colmap_binary(tmp_path)
    data = (sparse / name).read_bytes()
    (sparse / name).write_bytes(data[: len(data) - 5])
    _raises(sparse / name, load_scene, tmp_path)


def test_malformed_colmap_text(tmp_path):
    write_colmap_text(tmp_path)
    path = tmp_path / "sparse" / "0" / "cameras.txt"
    path.write_text("1 PINHOLE 8 six 5 6 4 3\n")
    _raises(path, load_scene, tmp_path)
    path.write_text("1 FOO 8 6 5 6 4 3\n")
    _raises(path, load_scene, tmp_path)


def test_missing_and_undecodable_image_raise_on_first_load(tmp_path):
    write_colmap_text(tmp_path)
    (tmp_path / "images" / "img_001.png").unlink()
    (tmp_path / "images" / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = load_scene(tmp_path)  # lazily: parsing does not decode
    data.images.rgb(0)
    _raises(tmp_path / "images" / "img_001.png", data.images.rgb, 1)
    _raises(tmp_path / "images" / "img_002.png", data.images.rgb, 2)


def test_image_size_must_match_its_camera(tmp_path):
    write_colmap_text(tmp_path)
    write_image(tmp_path / "images" / "img_003.png", w=W + 2, h=H)
    data = load_scene(tmp_path)
    err = _raises(tmp_path / "images" / "img_003.png", data.images.rgb, 3)
    assert f"{W + 2}x{H}" in str(err)


def test_different_sizes_within_a_split(tmp_path):
    json_path = write_ngp(tmp_path, frame_extra={3: {"w": W + 2}}, extra={"camera_model": "PINHOLE"})
    _raises(json_path, load_scene, tmp_path)


@pytest.mark.parametrize("bad", ["nan", "scaled", "reflection"])
def test_bad_poses(tmp_path, bad):
    poses = POSES.copy()
    if bad == "nan":
        poses[4, 0, 3] = np.nan
    elif bad == "scaled":
        poses[4, :3, :3] *= 1.1
    else:
        poses[4, :3, 0] *= -1
    write_blender(tmp_path, poses=poses)
    _raises(tmp_path / "transforms_train.json", load_scene, tmp_path)


def test_bad_llff_pose(tmp_path):
    write_llff(tmp_path)
    arr = np.load(tmp_path / "poses_bounds.npy")
    arr[2, 0] *= 3.0
    np.save(tmp_path / "poses_bounds.npy", arr)
    _raises(tmp_path / "poses_bounds.npy", load_scene, tmp_path)


def test_bad_colmap_quaternion(tmp_path):
    write_colmap_text(tmp_path)
    path = tmp_path / "sparse" / "0" / "images.txt"
    lines = path.read_text().splitlines()
    f = lines[2].split()
    f[1] = str(float(f[1]) * 2)  # not a unit quaternion
    lines[2] = " ".join(f)
    path.write_text("\n".join(lines) + "\n")
    _raises(path, load_scene, tmp_path)


def test_empty_split(tmp_path):
    write_blender(tmp_path, splits=("train", "test"))
    (tmp_path / "transforms_test.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": []}))
    _raises(tmp_path / "transforms_test.json", load_scene, tmp_path)
    write_ngp(tmp_path / "one", n=1)
    _raises(tmp_path / "one" / "transforms.json", load_scene, tmp_path / "one")  # 1 frame: train split empty


def test_no_recognisable_format(tmp_path):
    write_image(tmp_path / "a.png")
    _raises(tmp_path, load_scene, tmp_path)
    _raises(tmp_path / "missing", load_scene, tmp_path / "missing")


def test_importing_datasets_is_light(tmp_path):
    import subprocess
    import sys

    probe = "import sys; from omnifield.datasets import load_scene, describe; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_format_override_and_bad_options(tmp_path):
    write_ngp(tmp_path)
    assert load_scene(tmp_path, format="nerfstudio").format == "nerfstudio"
    with pytest.raises(ValueError, match="downscale"):
        load_scene(tmp_path, downscale=0)
    with pytest.raises(ValueError, match="unknown format"):
        load_scene(tmp_path, format="obj")


# ----------------------------------------------------------------------------- sparse points next to transforms


def _write_points_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    import trimesh

    trimesh.PointCloud(xyz, colors=np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)).export(str(path))


def test_points_ply_next_to_transforms(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-1, 1, (50, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    blender, ngp = tmp_path / "blender", tmp_path / "ngp"
    write_blender(blender)
    _write_points_ply(blender / "points3d.ply", xyz, rgb)
    data = load_scene(blender)
    torch.testing.assert_close(data.points, torch.from_numpy(xyz))  # Blender: world = dataset
    assert torch.equal(data.point_colors, torch.from_numpy(rgb))
    write_ngp(ngp)
    _write_points_ply(ngp / "points3D.ply", xyz, rgb)
    data = load_scene(ngp)
    torch.testing.assert_close(data.points, data.to_world(torch.from_numpy(xyz)))  # ngp: world = 0.33 x
    torch.testing.assert_close(data.points, 0.33 * torch.from_numpy(xyz))


def _write_timed_points_ply(path: Path, xyz: np.ndarray, time: np.ndarray, name: str = "time") -> None:
    """A binary PLY vertex list with x y z and a time property (``time``, as ``data synth --dynamic``
    writes, or ``t``, as 4DGS reads)."""
    rows = np.zeros(len(xyz), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), (name, "<f4")])
    for c, axis in enumerate("xyz"):
        rows[axis] = xyz[:, c]
    rows[name] = time
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(rows)}\n"
              + "".join(f"property float {n}\n" for n in rows.dtype.names) + "end_header\n")
    path.write_bytes(header.encode("ascii") + rows.tobytes())


def test_point_times_of_a_dynamic_scene_are_normalised_as_the_camera_times(tmp_path):
    times = [0.5 + 0.25 * i for i in range(len(POSES))]  # time stamps 0.5 .. 2.75
    xyz = np.random.default_rng(1).uniform(-1, 1, (6, 3)).astype(np.float32)
    write_blender(tmp_path / "dnerf", times=times)
    _write_timed_points_ply(tmp_path / "dnerf" / "points3d.ply", xyz, np.array([0.5, 0.5, 1.625, 1.625, 2.75, 2.75]))
    data = load_scene(tmp_path / "dnerf")
    torch.testing.assert_close(data.points, torch.from_numpy(xyz))
    torch.testing.assert_close(data.point_times, torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 1.0]))
    assert describe(data)["points_have_times"] and "6 (each with a time)" in format_info(describe(data))
    _write_timed_points_ply(tmp_path / "dnerf" / "points3d.ply", xyz, np.array([2.75, 0.5] * 3), name="t")
    torch.testing.assert_close(load_scene(tmp_path / "dnerf").point_times, torch.tensor([1.0, 0.0] * 3))
    write_blender(tmp_path / "static")  # a static scene ignores a time property
    _write_timed_points_ply(tmp_path / "static" / "points3d.ply", xyz, np.zeros(6))
    data = load_scene(tmp_path / "static")
    assert data.point_times is None and data.points.shape == (6, 3)
    assert not describe(data)["points_have_times"]
    write_blender(tmp_path / "plain", times=times)  # no time property: no point times
    _write_points_ply(tmp_path / "plain" / "points3d.ply", xyz, np.zeros((6, 3), np.uint8))
    assert load_scene(tmp_path / "plain").point_times is None


def test_non_finite_point_times_name_the_file(tmp_path):
    write_blender(tmp_path, times=[float(i) for i in range(len(POSES))])
    _write_timed_points_ply(tmp_path / "points3d.ply", np.zeros((2, 3), np.float32), np.array([0.0, np.nan]))
    with pytest.raises(DataError, match=r"points3d\.ply.*non-finite 'time'"):
        load_scene(tmp_path)


def test_bad_points_ply_names_the_file(tmp_path):
    write_blender(tmp_path)
    (tmp_path / "points3d.ply").write_bytes(b"ply\nformat nonsense\n")
    with pytest.raises(DataError, match="points3d.ply"):
        load_scene(tmp_path)
