"""Mesh and point-cloud export on an analytic density sphere, Chamfer distances."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.errors import ConfigError
from omnifield.renderers.types import RenderOutput
from omnifield.scenes.base import HasDensity, Scene, SceneConfig
from omnifield.scenes.camera_paths import look_at
from omnifield.renderers.rays import image_rays
from omnifield.scenes.export import export_mesh, export_pointcloud, extract_mesh
from omnifield.scenes.geometry import chamfer_distance, sample_surface

CENTER = torch.tensor([0.1, -0.2, 0.05])
RADIUS = 0.5
RAMP = 0.04  # density rises linearly from 0 to 100 over this width, reaching 50 at the radius
BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def expected_colour(x: torch.Tensor) -> torch.Tensor:
    """A smooth colour gradient over the sphere: rgb = 0.5 + (x - centre) / (2 r), per axis."""
    return (0.5 + (x - CENTER) / (2 * RADIUS)).clamp(0, 1)


class SphereScene(Scene):
    """Analytic HasDensity scene: a ball of density with a colour gradient; renders exactly by ray casting.

    Rendered ``alpha`` is 0.8 on hits and ``depth`` the hit distance (the compositor's normalised
    ``sum w t / sum w``), as a volume renderer gives for a thin surface of opacity 0.8.
    """

    def __init__(self):
        super().__init__(SceneConfig(method="sphere"), BOX)

    def density(self, x, t=None):
        dist = (x - CENTER).norm(dim=-1)
        return 100.0 * (0.5 + (RADIUS - dist) / RAMP).clamp(0, 1)

    def color(self, x, d, t=None):
        return expected_colour(x)

    @torch.no_grad()
    def render(self, cameras, time=None, options=None):
        outs = []
        for c in range(len(cameras)):
            h, w = int(cameras.height[c]), int(cameras.width[c])
            rays = image_rays(cameras, c)
            o, d = rays.origins, rays.directions
            oc = o - CENTER
            b = (oc * d).sum(-1)
            disc = b * b - (oc * oc).sum(-1) + RADIUS**2
            hit = disc > 0
            t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
            alpha = hit.float() * 0.8
            rgb = torch.where(hit[:, None], 0.8 * expected_colour(o + d * t[:, None]) + 0.2, torch.ones_like(o))
            out = RenderOutput(rgb=rgb, alpha=alpha[:, None], depth=t[:, None])
            outs.append(out.map(lambda v: v.reshape(h, w, -1)))
        return outs


class NoDensity(Scene):
    def __init__(self):
        super().__init__(SceneConfig(method="nodensity"), BOX)


def similarity(scale=0.5, angle=0.7, axis=(1.0, 2.0, 3.0), t=(0.3, -1.0, 2.0)) -> torch.Tensor:
    """A non-identity world_from_dataset: uniform scale, rotation about ``axis``, translation."""
    a = torch.tensor(axis) / torch.tensor(axis).norm()
    k = torch.tensor([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    r = torch.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k
    m = torch.eye(4)
    m[:3, :3], m[:3, 3] = scale * r, torch.tensor(t)
    return m


@dataclass
class FakeRun:
    """The parts of omnifield.scenes.runs.Run the exporters use."""

    scene: Scene
    world_from_dataset: torch.Tensor = field(default_factory=similarity)
    scene_box: torch.Tensor = field(default_factory=lambda: BOX.clone())
    method: str = "sphere"
    path: Path | None = None

    def load_data(self, path=None, downscale=None, split=None) -> SceneData:
        ring = [look_at((2.5 * math.cos(a), 2.5 * math.sin(a), 0.8), (0, 0, 0)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
        size = 48 if downscale is None else int(48 / downscale)
        cams = Cameras.create(torch.stack(ring), size * 1.2, size * 1.2, size / 2, size / 2, size, size)
        return SceneData(root=Path("."), format="fake", cameras=cams, images=ImageStore([], lambda i: None),
                         splits={"train": list(range(6)), "test": [0]}, scene_box=self.scene_box,
                         world_from_dataset=self.world_from_dataset)


def to_world(m: torch.Tensor, p: np.ndarray) -> np.ndarray:
    m = m.double().numpy()
    return p @ m[:3, :3].T + m[:3, 3]


def test_extract_mesh_of_density_sphere_lies_on_the_sphere_with_the_right_colours():
    resolution = 64
    voxel = 2.0 / (resolution - 1)
    verts, faces, colours = extract_mesh(SphereScene(), BOX, resolution=resolution, threshold=50.0)
    dist = np.linalg.norm(verts - CENTER.numpy(), axis=1)
    assert len(faces) > 1000
    assert np.abs(dist - RADIUS).max() < voxel
    expected = expected_colour(torch.from_numpy(verts)).numpy()
    assert np.abs(colours - expected).max() < 0.05  # colours are queried half a voxel inside
    # Faces wind counter-clockwise seen from outside: face normals point away from the centre.
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    outward = (np.cross(b - a, c - a) * (a - CENTER.numpy())).sum(1)
    assert (outward > 0).mean() > 0.99
    # The default threshold (10) sits further out on the linear ramp: r + 0.4 * RAMP.
    verts10, _, _ = extract_mesh(SphereScene(), BOX, resolution=resolution)
    assert abs(np.linalg.norm(verts10 - CENTER.numpy(), axis=1).mean() - (RADIUS + 0.4 * RAMP)) < voxel / 2


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_export_mesh_writes_dataset_coordinates_with_colours_readable_by_trimesh_and_open3d(tmp_path, suffix):
    import open3d as o3d
    import trimesh

    run = FakeRun(SphereScene())
    out = export_mesh(run, tmp_path / f"mesh{suffix}", resolution=48, threshold=50.0)
    assert out.is_file() and not list(tmp_path.glob(".*"))  # no temporary file left behind
    voxel = 2.0 / 47
    mesh = trimesh.load(out, force="mesh", process=False)
    world = to_world(run.world_from_dataset, np.asarray(mesh.vertices))
    assert np.abs(np.linalg.norm(world - CENTER.numpy(), axis=1) - RADIUS).max() < voxel
    # The dataset-space sphere is twice as large (world_from_dataset scales by 0.5).
    assert np.linalg.norm(np.asarray(mesh.vertices) - np.asarray(mesh.vertices).mean(0), axis=1).mean() == pytest.approx(2 * RADIUS, rel=0.05)
    tri_colours = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    expected = expected_colour(torch.from_numpy(world).float()).numpy()
    assert np.abs(tri_colours - expected).max() < 0.06

    o3 = o3d.io.read_triangle_mesh(str(out))
    assert len(o3.triangles) == len(mesh.faces)
    assert o3.has_vertex_colors()
    v3, c3 = np.asarray(o3.vertices), np.asarray(o3.vertex_colors)
    world3 = to_world(run.world_from_dataset, v3)
    assert np.abs(np.linalg.norm(world3 - CENTER.numpy(), axis=1) - RADIUS).max() < voxel
    assert np.abs(c3 - expected_colour(torch.from_numpy(world3).float()).numpy()).max() < 0.06


def test_export_mesh_refuses_unknown_formats_and_scenes_without_density(tmp_path):
    with pytest.raises(ConfigError, match="mesh.stl"):
        export_mesh(FakeRun(SphereScene()), tmp_path / "mesh.stl")
    assert not isinstance(NoDensity(), HasDensity)
    with pytest.raises(ConfigError, match="HasDensity"):
        export_mesh(FakeRun(NoDensity()), tmp_path / "mesh.ply")


def test_extract_mesh_removes_small_floating_components():
    class WithFloater(SphereScene):
        def density(self, x, t=None):
            floater = 100.0 * (0.5 + (0.08 - (x - torch.tensor([0.75, 0.75, 0.75])).norm(dim=-1)) / RAMP).clamp(0, 1)
            return torch.maximum(super().density(x), floater)

    # The floater is smaller than a coarse block: sample every grid point (coarse_stride=1).
    verts, _, _ = extract_mesh(WithFloater(), BOX, resolution=48, threshold=50.0, coarse_stride=1)
    assert (np.linalg.norm(verts - 0.75, axis=1) < 0.2).any()
    verts, _, _ = extract_mesh(WithFloater(), BOX, resolution=48, threshold=50.0, coarse_stride=1, min_component_fraction=0.1)
    assert not (np.linalg.norm(verts - 0.75, axis=1) < 0.2).any()
    assert len(verts) > 500


def test_coarse_to_fine_grid_gives_the_full_grid_mesh_from_fewer_density_queries():
    class Counting(SphereScene):
        queries = 0

        def density(self, x, t=None):
            Counting.queries += len(x)
            return super().density(x)

    scene = Counting()
    full_v, full_f, _ = extract_mesh(scene, BOX, resolution=65, threshold=50.0, coarse_stride=1)
    full_queries, Counting.queries = Counting.queries, 0
    sparse_v, sparse_f, _ = extract_mesh(scene, BOX, resolution=65, threshold=50.0, coarse_stride=4)
    assert Counting.queries < 0.5 * full_queries
    np.testing.assert_array_equal(sparse_f, full_f)
    np.testing.assert_allclose(sparse_v, full_v, atol=1e-6)


def test_export_pointcloud_lands_on_the_surface_in_dataset_coordinates(tmp_path):
    import open3d as o3d

    run = FakeRun(SphereScene())
    out = export_pointcloud(run, tmp_path / "points.ply", max_points=2000)
    pcd = o3d.io.read_point_cloud(str(out))
    pts, cols = np.asarray(pcd.points), np.asarray(pcd.colors)
    assert 1000 <= len(pts) <= 2000 and pcd.has_colors()
    world = to_world(run.world_from_dataset, pts)
    assert np.abs(np.linalg.norm(world - CENTER.numpy(), axis=1) - RADIUS).max() < 1e-3
    expected = expected_colour(torch.from_numpy(world).float()).numpy()  # the white background removed
    assert np.abs(cols - expected).max() < 3 / 255
    with pytest.raises(ConfigError, match="points.xyz"):
        export_pointcloud(run, tmp_path / "points.xyz")


def test_export_pointcloud_keeps_only_points_inside_the_crop_box(tmp_path):
    import open3d as o3d

    class Recording(SphereScene):
        crops: list = []

        def render(self, cameras, time=None, options=None):
            self.crops.append(None if options is None else options.crop_box)
            return super().render(cameras, time, options)

    run = FakeRun(Recording())
    crop = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 0.1, 0.2]])  # cuts the sphere on two sides
    out = export_pointcloud(run, tmp_path / "crop.ply", max_points=2000, crop_box=crop)
    world = to_world(run.world_from_dataset, np.asarray(o3d.io.read_point_cloud(str(out)).points))
    assert len(world) > 200
    assert (world >= crop[0].numpy() - 1e-4).all() and (world <= crop[1].numpy() + 1e-4).all()
    assert world[:, 1].max() > 0.0 and world[:, 2].max() > 0.1  # the points reach the crop's faces
    assert set(Recording.crops) == {tuple(tuple(r) for r in crop.tolist())}  # the renders were cropped too
    with pytest.raises(ConfigError, match="crop box"):
        export_pointcloud(run, tmp_path / "bad.ply", crop_box=crop.flip(0))


def test_chamfer_of_identical_meshes_is_zero_and_of_a_shifted_mesh_is_the_shift():
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    v, f = np.asarray(box.vertices), np.asarray(box.faces)
    same = chamfer_distance(v, f, v, f, num_points=20_000)
    assert same.chamfer < 0.02  # only the sampling density: ~ spacing of 20k points on 7 m^2
    shift = 0.3
    moved = chamfer_distance(v + np.array([0.0, 0.0, shift]), f, v, f, num_points=20_000)
    # Moving a slab of thickness 0.5 by 0.3 along z: top/bottom faces move by 0.3, side faces
    # overlap partly, so the mean nearest distance is a fraction of the shift, well above sampling noise.
    assert 0.1 < moved.chamfer < shift
    assert moved.ratio == pytest.approx(moved.chamfer / np.linalg.norm([2.0, 1.0, 0.5]))
    # A small sphere moved far away: every nearest distance is ~ the shift.
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    far = chamfer_distance(np.asarray(ball.vertices) + [5.0, 0, 0], ball.faces, ball.vertices, ball.faces, num_points=5000)
    assert far.chamfer == pytest.approx(5.0, abs=0.2)


def test_sample_surface_is_area_uniform():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 3, 1]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])
    p = sample_surface(v, f, 20_000)
    assert abs((p[:, 2] > 0.5).mean() - 0.9) < 0.02  # the second triangle has 9x the area


def test_seen_faces_keeps_only_what_a_camera_sees():
    import trimesh

    from omnifield.scenes.export import keep_faces, seen_faces

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    verts, faces = np.asarray(box.vertices, np.float64), np.asarray(box.faces, np.int64)
    # One camera on the +x axis looking at the cube: only the two triangles of the x = +0.5 face are hit.
    c2w = look_at(torch.tensor([3.0, 0.0, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    cam = Cameras.create(c2w, 40.0, 40.0, 16.0, 16.0, 32, 32)
    seen = seen_faces(verts, faces, cam)
    centres = verts[faces].mean(axis=1)
    assert seen.sum() == 2
    assert np.allclose(centres[seen][:, 0], 0.5)
    v, f, _ = keep_faces(verts, faces, seen)
    assert len(f) == 2 and len(v) == 4 and np.allclose(v[:, 0], 0.5)
