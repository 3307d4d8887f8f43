"""Conversion between representations (distill/convert.py, render_distill.py, mesh_convert.py): the route
table of every teacher x target pair, render distillation both ways between Gaussians and a radiance
field (student vs teacher >= 30 dB on held-out cameras), the exact 4dgs -> 3dgs slice, converted runs
through load_run / evaluate / export, and the mesh and point-cloud routes.

The oracle of the tiny scene is an analytic 3dgs teacher (six coloured Gaussians whose parameters are set
by hand); its renders are also the dataset's "ground truth" images."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omnifield.cuda.reference.gaussians import SH_C0
from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.distill import render_distill
from omnifield.distill.convert import ConversionPlan, ConvertOptions, convert, plan_conversion
from omnifield.distill.render_distill import comparison_cameras, student_teacher_psnr, teacher_views
from omnifield.errors import ConfigError, ConversionRefused
from omnifield.scenes import runs
from omnifield.scenes.base import RenderOptions
from omnifield.scenes.registry import get_method

pytest.importorskip("omnifield.distill.poses", reason="distill/poses.py (sample_poses) is not written yet")

BOX = torch.tensor([[-1.0] * 3, [1.0] * 3])
# Students small enough for a CPU test; the schedules are in steps so that a 200-step run densifies.
NGP_TINY = ("profile=cpu", "n_levels=8", "log2_hashmap_size=14", "max_resolution=128", "grid_resolution=32",
            "hidden_dim=32", "target_samples_per_batch=8192", "lr=0.02", "lr_warmup_steps=20", "grid_warmup_steps=16",
            "grid_update_every=8", "render_step_size=0.02")
GS_TINY = ("profile=cpu", "schedule_units=steps", "sh_degree_every=50", "densify_start=30", "densify_every=30",
           "densify_stop=150", "opacity_reset_every=10000", "max_gaussians=3000", "max_init_points=1500")
TARGET_PSNR = 30.0  # the student-vs-teacher bar
SLICE_PSNR = 40.0  # the slice is exact up to float rounding of the covariance decomposition


# -- the tiny scene --------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def look_at(pos, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    pos, target, up = (torch.tensor(v, dtype=torch.float32) for v in (pos, target, up))
    z = torch.nn.functional.normalize(target - pos, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, up), dim=0)
    m = torch.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, torch.linalg.cross(z, x), z, pos
    return m


def ring_cameras(n: int, size: int, radius: float = 3.0, times=None) -> Cameras:
    c2w = [look_at((radius * math.cos(2 * math.pi * k / n), radius * math.sin(2 * math.pi * k / n),
                    0.8 * math.sin(6 * math.pi * k / n))) for k in range(n)]
    f = 0.5 * size / math.tan(0.4)
    return Cameras.create(torch.stack(c2w), fx=f, fy=f, cx=size / 2, cy=size / 2, width=size, height=size, times=times)


def blobs(seed: int = 3, n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"means": (torch.rand(n, 3, generator=g) - 0.5) * 1.2,
            "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1),
            "scales": 0.08 + 0.15 * torch.rand(n, 3, generator=g), "colors": torch.rand(n, 3, generator=g)}


def analytic_3dgs(data) -> torch.nn.Module:
    """A 3dgs scene holding exactly :func:`blobs` (opacity 0.95, view-independent colour)."""
    b = blobs()
    spec = get_method("3dgs")
    scene = spec.build(spec.config_cls(profile="cpu", sh_degree=0), replace(data, points=b["means"], point_colors=None))
    with torch.no_grad():
        scene.means.copy_(b["means"])
        scene.quats.copy_(b["quats"])
        scene.log_scales.copy_(b["scales"].log())
        scene.opacity_logits.fill_(math.log(0.95 / 0.05))
        scene.sh_dc.copy_(((b["colors"] - 0.5) / SH_C0)[:, None])
    return scene.eval()


def mahalanobis_to_blobs(points: torch.Tensor) -> torch.Tensor:
    """``[P]`` distance of each point to the nearest blob, in that blob's standard deviations."""
    from omnifield.cuda.reference.gaussians import quat_scale_to_covar

    b = blobs()
    inv = torch.linalg.inv(quat_scale_to_covar(b["quats"], b["scales"]).double())  # [G, 3, 3]
    d = points.double()[:, None, :] - b["means"].double()[None]  # [P, G, 3]
    return torch.einsum("pgi,gij,pgj->pg", d, inv, d).clamp_min(0).sqrt().min(1).values


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(data, teacher)``: 16 ring cameras at 32x32 (every 4th held out) whose images are the analytic teacher's renders."""
    root = tmp_path_factory.mktemp("tiny")
    cams = ring_cameras(16, 32)
    test = [i for i in range(16) if i % 4 == 0]
    data = SceneData(root=root, format="test", cameras=cams, images=None,
                     splits={"train": [i for i in range(16) if i % 4], "val": test, "test": test},
                     scene_box=BOX, near=0.5, far=6.0, metadata={"downscale": 1})
    teacher = analytic_3dgs(data)
    with torch.no_grad():
        images = [(teacher.render(cams[c])[0].rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy() for c in range(16)]
    return replace(data, images=ImageStore([root / f"r_{i}.png" for i in range(16)], lambda i: images[i])), teacher


@pytest.fixture(scope="module")
def ngp(tiny, tmp_path_factory):
    """3dgs (analytic) -> instant-ngp by render distillation, written as a run: ``(student, run_dir)``."""
    data, teacher = tiny
    out = tmp_path_factory.mktemp("conv") / "ngp"
    options = ConvertOptions(max_steps=450, n_views=60, progress=False, scene_overrides=NGP_TINY)
    return convert(teacher, "instant-ngp", data, out=out, options=options), out


@pytest.fixture(scope="module")
def gs(tiny, ngp, tmp_path_factory):
    """The instant-ngp student of :func:`ngp` -> 3dgs by render distillation: ``(student, run_dir)``."""
    data, _ = tiny
    out = tmp_path_factory.mktemp("conv") / "gs"
    options = ConvertOptions(max_steps=250, n_views=60, progress=False, scene_overrides=GS_TINY)
    return convert(ngp[0], "3dgs", data, out=out, options=options), out


# -- the route table ---------------------------------------------------------------------------------
FIELDS = ("nerf", "instant-ngp", "tensorf", "plenoxels")
TEACHERS = FIELDS + ("3dgs", "4dgs")
TARGETS = TEACHERS + ("mesh", "pointcloud")


def _dynamic_gaussians(n: int = 1, **overrides):
    """A resolved tiny 4dgs scene (times 0..1) of ``n`` Gaussians at the origin."""
    from omnifield.scenes.gaussians_4d import Gaussians4D, Gaussians4DConfig, resolve_config
    from omnifield.scenes.gaussians_4d.model import InitialGaussians4D

    cams = ring_cameras(4, 32, times=[0.0, 1 / 3, 2 / 3, 1.0])
    data = SimpleNamespace(cameras=cams, splits={"train": [1, 2, 3], "test": [0]}, scene_box=BOX,
                           background=(1.0, 1.0, 1.0))
    config = resolve_config(Gaussians4DConfig(**{"profile": "cpu", "sh_degree": 0, "n_time": 1, **overrides}), data)
    init = InitialGaussians4D(torch.zeros(n, 3), torch.full((n,), 0.5), torch.full((n, 3), 0.9))
    return Gaussians4D(config, BOX, init).eval(), data


def _teacher(method: str):
    """A small scene of ``method`` (skip when the method is not there yet)."""
    if method == "4dgs":
        return _dynamic_gaussians()[0]
    try:
        spec = get_method(method)
    except ConfigError as e:
        pytest.skip(f"{method}: {e}")
    data = SimpleNamespace(scene_box=BOX, unbounded=False, near=0.5, far=5.0, background=(1.0, 1.0, 1.0),
                           cameras=ring_cameras(4, 8), splits={"train": [0, 1, 2, 3]}, points=None, point_colors=None,
                           metadata={}, time_range=None)
    small = {"nerf": dict(hidden_dim=16, n_layers=2, skip_layer=1, color_hidden_dim=8, n_coarse=4, n_fine=4),
             "instant-ngp": dict(profile="cpu", n_levels=2, log2_hashmap_size=10, max_resolution=32, grid_resolution=8,
                                 hidden_dim=8),
             "tensorf": dict(profile="cpu", density_components=2, app_components=2, n_voxels_init=16**3,
                             n_voxels_final=16**3, upsample_at=(), grid_resolution=8, hidden_dim=8),
             "plenoxels": dict(profile="cpu", resolution=8, upsample_resolutions=(), upsample_at=(), grid_resolution=8),
             "3dgs": dict(profile="cpu", num_random_points=10)}.get(method, {})
    known = {f for f in spec.config_cls.__dataclass_fields__}
    return spec.build(spec.config_cls(**{k: v for k, v in small.items() if k in known}), data)


def expected_route(teacher: str, target: str, time: float | None) -> str:
    """The table of the issue: ``kind`` or ``refused: <reason substring>``."""
    if target in ("mesh", "pointcloud"):
        return target
    if target == "4dgs":
        return "refused: nothing to gain" if teacher == "4dgs" else "refused: a static teacher has no time"
    if teacher == "3dgs":
        return "refused: nothing to gain" if target == "3dgs" else "render"
    if teacher == "4dgs":
        if target == "3dgs":
            return "slice"
        return "render" if time is not None else "refused: --time"
    return "render" if target == "3dgs" else "pvd"


@pytest.fixture(scope="module")
def teachers():
    cache: dict = {}

    def get(method):
        if method not in cache:
            cache[method] = _teacher(method)
        return cache[method]

    return get


@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_route_table(teacher_name, teachers):
    teacher = teachers(teacher_name)
    for target in TARGETS:
        if target in FIELDS:
            try:
                get_method(target)
            except ConfigError:
                continue  # not built yet (tensorf / plenoxels)
        for time in ((None, 0.5) if teacher_name == "4dgs" else (None,)):
            want = expected_route(teacher_name, target, time)
            if want == "pvd" and not callable(getattr(teachers(target), "field_outputs", None)):
                want = "render"  # the target has no PVD split yet: the render route still converts it
            if want.startswith("refused"):
                with pytest.raises(ConversionRefused, match=want.split(": ", 1)[1]):
                    plan_conversion(teacher, target, time=time)
                continue
            plan = plan_conversion(teacher, target, time=time)
            assert isinstance(plan, ConversionPlan) and plan.kind == want, (teacher_name, target, time, plan)
            assert plan.teacher == teacher_name and plan.target == target and "\n" not in plan.reason
            if target == "mesh":
                density = teacher_name in FIELDS
                assert ("marching cubes" if density else "TSDF") in plan.reason
            if teacher_name == "4dgs" and plan.kind in ("slice", "mesh", "pointcloud") and time is None:
                assert "time 0.5" in plan.reason  # the middle of the time range by default


def test_plan_errors(teachers):
    gs = teachers("3dgs")
    with pytest.raises(ConfigError, match="targets: .*mesh, pointcloud"):
        plan_conversion(gs, "no-such-method")
    with pytest.raises(ConfigError, match="static"):
        plan_conversion(gs, "instant-ngp", time=0.5)
    with pytest.raises(ConfigError, match="outside"):
        plan_conversion(teachers("4dgs"), "3dgs", time=2.0)
    line = plan_conversion(gs, "pointcloud").line()
    assert line.startswith("plan: pointcloud (3dgs -> pointcloud): ")
    import omnifield.distill
    import omnifield.distill.convert  # the submodule shadows the function on the package: it forwards calls

    with pytest.raises(TypeError, match="teacher must be a Scene"):
        omnifield.distill.convert(object(), "3dgs")


# -- render distillation -----------------------------------------------------------------------------
def test_teacher_views_hold_the_teacher_renders_and_its_surface(tiny, tmp_path, monkeypatch):
    data, teacher = tiny
    views = teacher_views(teacher, data, 6, seed=1, cache_dir=tmp_path / "cache")
    assert views.split("train") == list(range(6)) and len(views.split("test")) == len(data.split("test"))
    for i in range(6):  # train: the teacher's render, alpha included, on the data background
        cam = views.cameras[[i]]
        with torch.no_grad():
            r = teacher.render(cam, None, RenderOptions(background=data.background))[0]
        assert torch.allclose(views.images.rgb(i).float() / 255, r.rgb.clamp(0, 1), atol=1.5 / 255)
        assert torch.allclose(views.images.alpha(i).float() / 255, r.alpha, atol=0.6 / 255)
    for k, j in zip(views.split("test"), data.split("test")):  # held out: the real cameras and images
        assert torch.equal(views.images.rgb(k), data.images.rgb(j))
        assert torch.allclose(views.cameras.c2w[k], data.cameras.c2w[j])
    # Seed points: lifted teacher depth, on the blobs (a few standard deviations; a ray through two
    # overlapping blobs has its expected depth between them), coloured.
    assert views.points is not None and len(views.points) > 100 and views.point_colors.dtype == torch.uint8
    m = mahalanobis_to_blobs(views.points)
    assert float(m.max()) < 4.0 and float(m.median()) < 1.5 and float((m < 2.5).float().mean()) > 0.9
    # The cache is reused (no render) for the same teacher, seed and views; another seed re-renders.
    again_images = [views.images.rgb(i) for i in range(6)]
    monkeypatch.setattr(render_distill, "render_rgba", lambda *a, **k: pytest.fail("re-rendered a cached view"))
    cached = teacher_views(teacher, data, 6, seed=1, cache_dir=tmp_path / "cache")
    assert all(torch.equal(cached.images.rgb(i), again_images[i]) for i in range(6))
    with pytest.raises(pytest.fail.Exception):
        teacher_views(teacher, data, 6, seed=2, cache_dir=tmp_path / "cache")


def test_gaussians_to_instant_ngp_matches_the_teacher(tiny, ngp):
    data, teacher = tiny
    student, out = ngp
    assert student.method == "instant-ngp"
    value = student_teacher_psnr(student, teacher, comparison_cameras(data))
    assert value >= TARGET_PSNR, value
    rec = runs.read_json(out / "distill.json")
    assert rec["plan"]["kind"] == "render" and rec["teacher_method"] == "3dgs" and rec["target"] == "instant-ngp"
    assert rec["status"] == "finished" and rec["steps"] == 450 and rec["seconds"] > 0
    assert abs(rec["student_teacher_psnr"] - value) < 1e-6 and rec["options"]["n_views"] == 60


def test_a_render_distilled_nerf_student_marches_a_grid_with_shared_heads():
    from omnifield.distill.convert import render_student_overrides

    nerf = render_student_overrides("nerf")
    assert nerf["use_occupancy_grid"] is True and nerf["heads"] == "shared" and "density_clamp" not in nerf
    assert render_student_overrides("instant-ngp") == {} and render_student_overrides("3dgs") == {}


def test_gaussians_to_nerf_trains_the_marched_student(tiny, tmp_path):
    data, teacher = tiny
    options = ConvertOptions(max_steps=2, n_views=8, progress=False,
                             scene_overrides=("hidden_dim=16", "n_layers=2", "skip_layer=1", "grid_resolution=16"))
    student = convert(teacher, "nerf", data, out=tmp_path / "nerf", options=options)
    assert student.config.use_occupancy_grid and student.config.heads == "shared"
    assert runs.read_json(tmp_path / "nerf" / "distill.json")["plan"]["kind"] == "render"
    # The student's grid holds only cells around the teacher's surface (its lifted depth), never the full box.
    views = teacher_views(teacher, data, 8, seed=0, max_points=render_distill.SURFACE_POINTS)
    around = student.grid.cells_of(views.points, dilation=render_distill.SURFACE_DILATION)
    assert torch.equal(student.grid.limit, around) and 0 < student.grid.occupied_fraction() < 0.5
    assert not bool((student.grid.binaries & ~around).any())


def test_instant_ngp_to_gaussians_matches_the_teacher(tiny, ngp, gs):
    data, _ = tiny
    student, out = gs
    value = student_teacher_psnr(student, ngp[0], comparison_cameras(data))
    assert value >= TARGET_PSNR, value
    assert runs.read_json(out / "distill.json")["plan"]["kind"] == "render"


def test_converted_runs_load_evaluate_and_export(tiny, ngp, gs, tmp_path):
    from omnifield.scenes.evaluate import evaluate
    from omnifield.scenes.export import export_mesh, export_splat
    from omnifield.scenes.splat_ply import read_splat_ply

    data, _ = tiny
    cams = comparison_cameras(data)[:2]
    for student, out in (ngp, gs):
        run = runs.load_run(out)
        assert run.info.splits == data.splits and len(run.info.cameras) == len(data.cameras)  # the real data
        with torch.no_grad():
            a, b = student.render(cams)[0].rgb, run.scene.render(cams)[0].rgb
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        result = evaluate(run, data, split="test")
        assert result["num_images"] == len(data.split("test")) and result["psnr"] > 25
    mesh = export_mesh(runs.load_run(ngp[1]), tmp_path / "ngp.ply", resolution=48, threshold="auto")
    assert mesh.stat().st_size > 0
    splat = export_splat(runs.load_run(gs[1]).scene, tmp_path / "gs.ply")
    assert len(read_splat_ply(splat).means) == len(gs[0])


def test_field_to_field_goes_through_pvd(ngp, tmp_path):
    pytest.importorskip("omnifield.distill.pvd", reason="distill/pvd.py (distill_fields) is not written yet")
    teacher, run_dir = ngp
    info = runs.load_run(run_dir).info  # no images: PVD needs none (poses around the cameras, teacher-rendered)
    student = convert(teacher, "instant-ngp", info, out=tmp_path / "pvd",
                      options=ConvertOptions(max_steps=4, progress=False, scene_overrides=NGP_TINY))
    rec = runs.read_json(tmp_path / "pvd" / "distill.json")
    assert rec["plan"]["kind"] == "pvd" and rec["steps"] == 4 and rec["student_teacher_psnr"] is not None
    assert tuple(student.config.density_clamp) == (-2.0, 7.0)  # PVD's student overrides
    run = runs.load_run(tmp_path / "pvd")
    assert run.method == "instant-ngp" and run.step == 4 and run.info.splits == info.splits


# -- slice --------------------------------------------------------------------------------------------
def _moving_gaussians(n: int = 40):
    """A 4dgs scene of ``n`` random Gaussians moving and fading in time, SH degree 1 with 2 temporal terms."""
    scene, info = _dynamic_gaussians(n, sh_degree=1, n_time=2, marginal_threshold=0.05)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        scene.means.copy_((torch.rand(n, 3, generator=g) - 0.5) * 1.2)
        scene.times.copy_(torch.rand(n, 1, generator=g))
        scene.log_scales.copy_((0.05 + 0.12 * torch.rand(n, 3, generator=g)).log())
        scene.log_scale_t.copy_((0.2 + 0.5 * torch.rand(n, 1, generator=g)).log())
        scene.q_left.copy_(torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1))
        scene.q_right.copy_(torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1))
        scene.opacity_logits.copy_(torch.randn(n, generator=g) + 1.5)
        scene.sh_dc.copy_(torch.randn(n, 1, 3, generator=g))
        scene.sh_rest.copy_(0.3 * torch.randn(scene.sh_rest.shape, generator=g))
        scene.active_sh_degree.fill_(1)
    info = runs.SceneInfo(root=Path("."), format="test", cameras=info.cameras, splits=info.splits, scene_box=BOX,
                          time_range=(0.0, 1.0))
    return scene, info


def test_4dgs_slice_renders_what_the_teacher_renders_at_that_time(tmp_path):
    teacher, info = _moving_gaussians()
    cams = ring_cameras(6, 32)
    for t in (0.3, None):
        options = ConvertOptions(time=t, progress=False)
        student = convert(teacher, "3dgs", info, out=tmp_path / f"slice{t}", options=options)
        at = 0.5 if t is None else t  # default: the middle of the time range
        assert len(student) == len(teacher.visible_at(at))
        value = student_teacher_psnr(student, teacher, cams, time=at)
        assert value >= SLICE_PSNR, (t, value)
        rec = runs.read_json(tmp_path / f"slice{t}" / "distill.json")
        assert rec["plan"]["kind"] == "slice" and rec["time"] == at
    run = runs.load_run(tmp_path / "slice0.3")  # an ordinary 3dgs run
    with torch.no_grad():
        torch.testing.assert_close(run.scene.render(cams[:1])[0].rgb, teacher.render(cams[:1], 0.3)[0].rgb,
                                   rtol=0, atol=2e-3)


def test_a_dynamic_teacher_is_rendered_at_the_time(tmp_path):
    teacher, info = _moving_gaussians()
    views = teacher_views(teacher, info, 3, seed=0, time=0.7)
    with torch.no_grad():
        at = [teacher.render(views.cameras[[i]], 0.7, RenderOptions(background=info.background))[0].rgb for i in range(3)]
        other = teacher.render(views.cameras[[0]], 0.1, RenderOptions(background=info.background))[0].rgb
    for i in range(3):
        assert torch.allclose(views.images.rgb(i).float() / 255, at[i].clamp(0, 1), atol=1.5 / 255)
    assert float((at[0] - other).abs().max()) > 0.1  # the scene does move
    assert views.cameras.times is None and views.time_range is None  # the student is static
    student = convert(teacher, "instant-ngp", info, options=ConvertOptions(
        time=0.7, max_steps=3, n_views=3, progress=False, scene_overrides=NGP_TINY))
    assert student.method == "instant-ngp"


# -- mesh and point cloud ---------------------------------------------------------------------------
def test_gaussians_to_mesh_by_tsdf_fusion_and_to_points(tiny, tmp_path):
    import trimesh

    data, teacher = tiny
    path = convert(teacher, "mesh", data, out=tmp_path / "blobs.ply")
    mesh = trimesh.load(path, process=False)
    verts = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    assert len(mesh.faces) > 100
    assert float((mahalanobis_to_blobs(verts) < 3.0).float().mean()) > 0.95  # the fused surface lies on the blobs
    points = convert(teacher, "pointcloud", data, out=tmp_path / "blobs_points.ply")
    cloud = trimesh.load(points, process=False)
    assert float((mahalanobis_to_blobs(torch.as_tensor(np.asarray(cloud.vertices), dtype=torch.float32)) < 2.5)
                 .float().mean()) > 0.95


def test_dynamic_points_are_taken_at_the_time(tmp_path):
    teacher, info = _moving_gaussians(12)
    with torch.no_grad():
        teacher.log_scale_t.fill_(math.log(0.05))  # short-lived: each Gaussian is visible near its own time
        teacher.opacity_logits.fill_(4.0)
    path = convert(teacher, "pointcloud", info, out=tmp_path / "t.ply", options=ConvertOptions(time=0.5))
    import trimesh

    pts = torch.as_tensor(np.asarray(trimesh.load(path, process=False).vertices), dtype=torch.float32)
    alive = teacher.gaussians(0.5).means
    assert len(pts) > 0 and len(alive) < 12
    nearest = torch.cdist(pts, alive).min(1).values
    assert float(nearest.median()) < 0.3  # the points are on the Gaussians alive at t = 0.5
