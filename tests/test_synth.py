"""The embedded default scene generator: Blender layout, ground truth consistent with the mesh, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("open3d", reason="synth renders with open3d (pip install open3d-cpu)")
trimesh = pytest.importorskip("trimesh")
iio = pytest.importorskip("imageio.v3")

from omnifield.datasets.synth import SynthConfig, load_synth_ground_truth, synthesize  # noqa: E402

SMALL = SynthConfig(seed=3, n_train=3, n_test=2, n_val=1, width=32, height=32)
SPLITS = {"train": SMALL.n_train, "val": SMALL.n_val, "test": SMALL.n_test}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "scene", SMALL)


def _frames(root, split):
    return json.loads((root / f"transforms_{split}.json").read_text())


def _views(root):
    """Yield (split, frame, rgba, depth, normal) for every written view."""
    for split in SPLITS:
        meta = _frames(root, split)
        for frame in meta["frames"]:
            base = root / frame["file_path"]
            rgba = iio.imread(base.with_name(base.name + ".png"))
            depth = np.load(base.with_name(base.name + "_depth.npy"))
            normal = np.load(base.with_name(base.name + "_normal.npy"))
            yield split, meta, frame, rgba, depth, normal


def _centre_rays(meta, frame, width, height):
    """World origins and unit directions [H, W, 3] through pixel centres, from the written files only."""
    c2w = np.asarray(frame["transform_matrix"], np.float64)
    c2w_cv = c2w.copy()
    c2w_cv[:3, 1:3] *= -1  # OpenGL -> OpenCV
    f = 0.5 * width / math.tan(0.5 * meta["camera_angle_x"])
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    cam = np.stack([(u + 0.5 - 0.5 * width) / f, (v + 0.5 - 0.5 * height) / f, np.ones(u.shape)], -1)
    d = cam @ c2w_cv[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape), d


def test_blender_layout(synth_dir):
    assert sorted(p.name for p in synth_dir.iterdir()) == sorted(
        ["mesh_gt.ply", "mesh_gt_visible.ply", "synth.json", "train", "val", "test",
         "transforms_train.json", "transforms_val.json", "transforms_test.json"]
    )
    for split, n in SPLITS.items():
        meta = _frames(synth_dir, split)
        assert meta["camera_angle_x"] == pytest.approx(SMALL.camera_angle_x)
        assert len(meta["frames"]) == n
        for i, frame in enumerate(meta["frames"]):
            assert frame["file_path"] == f"./{split}/r_{i}"
            c2w = np.asarray(frame["transform_matrix"])
            assert c2w.shape == (4, 4)
            np.testing.assert_allclose(c2w[3], [0, 0, 0, 1])
            np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-6)
            assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0, abs=1e-6)
            pos = c2w[:3, 3]
            assert np.linalg.norm(pos) == pytest.approx(SMALL.radius, abs=1e-6)
            assert pos[2] > 0  # upper hemisphere
            # OpenGL: the camera looks down -z, at the origin
            np.testing.assert_allclose(-c2w[:3, 2], -pos / np.linalg.norm(pos), atol=1e-6)
    for _, _, _, rgba, depth, normal in _views(synth_dir):
        assert rgba.dtype == np.uint8 and rgba.shape == (SMALL.height, SMALL.width, 4)
        assert depth.dtype == np.float32 and depth.shape == (SMALL.height, SMALL.width)
        assert normal.dtype == np.float32 and normal.shape == (SMALL.height, SMALL.width, 3)
    meta = json.loads((synth_dir / "synth.json").read_text())
    assert meta["config"]["n_train"] == SMALL.n_train and meta["config"]["seed"] == SMALL.seed
    assert [o["name"] for o in meta["objects"]] == list(SMALL.objects)


def test_alpha_and_background(synth_dir):
    for _, _, _, rgba, depth, _ in _views(synth_dir):
        alpha = rgba[..., 3]
        assert (alpha[[0, 0, -1, -1], [0, -1, 0, -1]] == 0).all()
        assert (rgba[alpha == 0, :3] == 255).all()  # white background
        assert (alpha == 255).sum() > 0.1 * alpha.size
        hit = depth > 0
        assert (alpha[~hit] == 255).mean() < 0.02  # a centre-ray miss is (nearly always) an edge
        assert (alpha[hit] > 0).mean() > 0.98
        assert ((alpha > 0) & (alpha < 255)).any()  # antialiased edges


def test_depth_lies_on_the_ground_truth_mesh(synth_dir, tol):
    vertices, faces = load_synth_ground_truth(synth_dir)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert (np.abs(vertices) <= 1.0).all()
    for _, meta, frame, _, depth, normal in _views(synth_dir):
        origin, dirs = _centre_rays(meta, frame, SMALL.width, SMALL.height)
        hit = depth > 0
        assert hit.mean() > 0.1
        points = origin[hit] + depth[hit, None] * dirs[hit]
        closest, dist, tri = trimesh.proximity.closest_point(mesh, points)
        np.testing.assert_allclose(dist, 0.0, **tol["synth_depth"])
        # normals: unit, facing the camera, close to the mesh face normal (smooth vs flat shading)
        n = normal[hit]
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, **tol["float32"])
        assert (np.sum(n * dirs[hit], axis=-1) < 0).all()
        face_n = mesh.face_normals[tri]
        assert np.median(np.abs(np.sum(n * face_n, axis=-1))) > 0.99
        assert (np.abs(np.sum(n * face_n, axis=-1)) > math.cos(math.radians(30))).all()
        assert (normal[~hit] == 0).all()


def test_visible_ground_truth_is_a_subset(synth_dir):
    v_all, f_all = load_synth_ground_truth(synth_dir)
    v_vis, f_vis = load_synth_ground_truth(synth_dir, visible_only=True)
    assert 0 < len(f_vis) < len(f_all)
    assert v_all.dtype == np.float64 and f_all.dtype == np.int64 and f_all.max() < len(v_all)
    mesh = trimesh.Trimesh(v_all, f_all, process=False)
    _, dist, _ = trimesh.proximity.closest_point(mesh, v_vis)
    assert dist.max() < 1e-6
    coloured = trimesh.load(synth_dir / "mesh_gt.ply", process=False)
    assert coloured.visual.vertex_colors.shape == (len(v_all), 4)


def test_deterministic_given_seed(tmp_path):
    cfg = SynthConfig(seed=7, n_train=2, n_test=1, n_val=0, width=16, height=16)
    a = synthesize(tmp_path / "a", cfg)
    b = synthesize(tmp_path / "b", cfg)
    c = synthesize(tmp_path / "c", SynthConfig(seed=8, n_train=2, n_test=1, n_val=0, width=16, height=16))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "synth.json")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "synth.json")
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "transforms_train.json").read_bytes() != (c / "transforms_train.json").read_bytes()
    # n_val = 0: the val file lists the test frames (many tools require transforms_val.json)
    assert _frames(a, "val")["frames"] == _frames(a, "test")["frames"]
    assert not (a / "val").exists()


def test_refuses_non_empty_output_and_overwrites_atomically(tmp_path):
    cfg = SynthConfig(n_train=1, n_test=1, width=8, height=8)
    out = tmp_path / "scene"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize(out, cfg)
    synthesize(out, cfg, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "transforms_train.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]  # no temporary folders left


@pytest.mark.parametrize(
    "kwargs, name",
    [({"n_train": 0}, "n_train"), ({"width": 0}, "width"), ({"radius": 1.0}, "radius"),
     ({"elevation_max_deg": 90.0}, "elevation"), ({"objects": ("teapot",)}, "objects"),
     ({"supersample": 0}, "supersample")],
)
def test_config_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SynthConfig(**kwargs)


def _check_loaded(scene, root, tol):
    """Sizes, and the loader's cameras project the ground-truth surface points back to pixel centres."""
    import torch

    assert scene.format == "blender"
    assert {k: len(scene.split(k)) for k in ("train", "val", "test")} == {"train": 10, "val": 1, "test": 2}
    assert scene.image_size("train") == (16, 16)
    assert scene.images.alpha(0) is not None
    meta, frame = _frames(root, "train"), _frames(root, "train")["frames"][0]
    depth = np.load(root / "train" / "r_0_depth.npy")
    origin, dirs = _centre_rays(meta, frame, 16, 16)
    v, u = np.nonzero(depth > 0)
    points = origin[v, u] + depth[v, u, None] * dirs[v, u]
    pixels, z = scene.cameras[[scene.split("train")[0]]].project(torch.tensor(points, dtype=torch.float32))
    expected = np.stack([u + 0.5, v + 0.5], -1)
    np.testing.assert_allclose(pixels[0].numpy(), expected, **tol["camera_pixels"])
    assert (z > 0).all()


def test_read_by_the_blender_parser(tmp_path, tol):
    blender = pytest.importorskip(
        "omnifield.datasets.blender", reason="omnifield.datasets.blender (load_blender) is not written yet"
    )
    cfg = SynthConfig(n_train=10, n_test=2, n_val=1, width=16, height=16)
    root = synthesize(tmp_path / "scene", cfg)
    _check_loaded(blender.load_blender(root), root, tol)


def test_read_by_load_scene(tmp_path, tol):
    load = pytest.importorskip(
        "omnifield.datasets.load", reason="omnifield.datasets.load (load_scene) is not written yet"
    )
    cfg = SynthConfig(n_train=10, n_test=2, n_val=1, width=16, height=16)
    root = synthesize(tmp_path / "scene", cfg)
    _check_loaded(load.load_scene(root), root, tol)
