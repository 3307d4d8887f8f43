"""Render distillation: a student learns a teacher by training on the teacher's renders.

The route between representation families that share no inner structure (Gaussians <-> radiance
fields, dynamic -> static): :func:`teacher_views` renders the teacher from ``n_views`` cameras drawn
around the dataset's training cameras (:func:`omnifield.distill.poses.sample_poses`) and packs the
renders into a :class:`~omnifield.datasets.scene_data.SceneData` that the ordinary Trainer trains any
student on (with its own ``training_step``). Colour is stored with the teacher's alpha, so students
trained with random backgrounds learn transparency; the teacher's depth, lifted where alpha > 0.5,
gives ``points`` / ``point_colors`` (what ``3dgs`` seeds its Gaussians from). The held-out splits
keep the real cameras and images, so the Trainer's evaluation still reports PSNR against ground truth.

Only capabilities are used: a teacher is anything with ``render(cameras, time, options)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields as dc_fields
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import CameraModel, Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.errors import ConfigError
from omnifield.renderers.rays import image_rays
from omnifield.scenes import runs
from omnifield.scenes.base import RenderOptions

DEFAULT_MAX_POINTS = 30_000
"""Seed points kept from the teacher's depth (3dgs's cpu profile starts from 20k random points)."""
SURFACE_POINTS = 2_000_000
"""Points kept from the teacher's depth for a student with an occupancy grid (every lifted pixel of
100 lego views at 200x200): they mark the cells the student may use (:func:`seed_occupancy`)."""
SURFACE_DILATION = 1
"""Cells added around each cell holding a teacher surface point (the depth is an alpha-weighted mean)."""
MANIFEST = "manifest.json"
CACHE_VERSION = 1


# -- cameras -------------------------------------------------------------------------------------
def cat_cameras(parts: list[Cameras]) -> Cameras:
    """Concatenate camera batches (times kept only when every part has them)."""
    keep_times = all(p.times is not None for p in parts)
    out = {}
    for f in dc_fields(Cameras):
        if f.name == "times":
            out[f.name] = torch.cat([p.times for p in parts]) if keep_times else None
        else:
            out[f.name] = torch.cat([getattr(p, f.name) for p in parts])
    return Cameras(**out)


def pinhole(cameras: Cameras) -> Cameras:
    """The same cameras without lens distortion (what the renders are made for), static (no times)."""
    return replace(cameras, distortion=torch.zeros_like(cameras.distortion),
                   model=torch.full_like(cameras.model, int(CameraModel.PINHOLE)), times=None)


def _device_of(scene) -> torch.device:
    for t in list(scene.parameters()) + list(scene.buffers()):
        return t.device
    return torch.device("cpu")


# -- one teacher render --------------------------------------------------------------------------
@torch.no_grad()
def render_rgba(teacher, cameras: Cameras, c: int, time: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render camera ``c``: ``(rgba [H, W, 4] uint8 with straight (not premultiplied) colour, depth [H, W]
    float32)``. Depth is the ray parameter along the unit pixel ray (0 where nothing was hit)."""
    cam = cameras[c].to(_device_of(teacher))
    r = teacher.render(cam, time, RenderOptions(background=(0.0, 0.0, 0.0)))[0]
    alpha = r.alpha.float().cpu().clamp(0.0, 1.0)
    premultiplied = r.rgb.float().cpu().clamp(0.0, 1.0)
    straight = torch.where(alpha > 1e-6, premultiplied / alpha.clamp_min(1e-6), torch.zeros_like(premultiplied))
    rgba = torch.cat([straight.clamp(0.0, 1.0), alpha], dim=-1)
    depth = torch.where(alpha[..., 0] > 1e-6, r.depth.float().cpu()[..., 0], torch.zeros_like(alpha[..., 0]))
    return (rgba * 255.0 + 0.5).to(torch.uint8).numpy(), depth.numpy()


def lift_depth(cameras: Cameras, c: int, rgba: np.ndarray, depth: np.ndarray, box: Tensor | None = None,
               min_alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Surface points of one render: pixels with alpha > ``min_alpha`` moved along their unit ray by
    ``depth``; returns ``(points [P, 3] float32 world, colours [P, 3] uint8)``, inside ``box [2, 3]``."""
    rays = image_rays(cameras[c].to("cpu"), 0)
    a = torch.from_numpy(rgba[..., 3].reshape(-1)).float() / 255.0
    t = torch.from_numpy(depth.reshape(-1))
    keep = (a > min_alpha) & (t > 0)
    p = rays.origins[keep] + rays.directions[keep] * t[keep, None]
    col = torch.from_numpy(rgba[..., :3].reshape(-1, 3))[keep]
    inside = torch.isfinite(p).all(-1)
    if box is not None:
        inside &= ((p >= box[0]) & (p <= box[1])).all(-1)
    return p[inside].numpy().astype(np.float32), col[inside].numpy()


# -- the cache ---------------------------------------------------------------------------------------
def teacher_fingerprint(teacher) -> str:
    """A short hash of the teacher's weights (names, shapes, sums): renders cached for another teacher
    are not reused."""
    h = hashlib.sha256(str(getattr(teacher, "method", type(teacher).__name__)).encode())
    for name, t in teacher.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{float(t.detach().double().sum()):.9e}".encode())
    return h.hexdigest()[:16]


def _manifest(teacher, cameras: Cameras, n_views: int, seed: int, time: float | None) -> dict:
    return {"version": CACHE_VERSION, "n_views": int(n_views), "seed": int(seed),
            "time": None if time is None else float(time), "teacher": teacher_fingerprint(teacher),
            "cameras": hashlib.sha256(cameras.c2w.numpy().tobytes()).hexdigest()[:16]}


def _cached(cache_dir: Path | None, manifest: dict) -> bool:
    if cache_dir is None or not (cache_dir / MANIFEST).is_file():
        return False
    try:
        return json.loads((cache_dir / MANIFEST).read_text()) == manifest
    except (OSError, json.JSONDecodeError):
        return False


def _view_path(cache_dir: Path, i: int) -> Path:
    return cache_dir / f"view_{i:05d}.npz"


def _save_view(path: Path, rgba: np.ndarray, depth: np.ndarray) -> None:
    with runs.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, rgba=rgba, depth=depth)


def _load_view(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["rgba"], z["depth"]
    except (OSError, KeyError, ValueError):
        return None


def _render_views(teacher, cams: Cameras, time, cache_dir: Path | None, manifest: dict, progress: bool):
    """Every view's ``(rgba, depth)``, from the cache when it holds this teacher's renders."""
    reuse = _cached(cache_dir, manifest)
    if cache_dir is not None and not reuse:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for old in cache_dir.glob("view_*.npz"):
            old.unlink()
        runs.atomic_write_json(cache_dir / MANIFEST, manifest)
    views = []
    bar = _Progress(len(cams), "teacher views") if progress else None
    try:
        for i in range(len(cams)):
            got = _load_view(_view_path(cache_dir, i)) if cache_dir is not None else None
            if got is None or got[0].shape[:2] != (int(cams.height[i]), int(cams.width[i])):
                got = render_rgba(teacher, cams, i, time)
                if cache_dir is not None:
                    _save_view(_view_path(cache_dir, i), *got)
            views.append(got)
            if bar is not None:
                bar.advance()
    finally:
        if bar is not None:
            bar.close()
    return views


class _Progress:
    """A rich progress bar on stderr (rate and ETA)."""

    def __init__(self, total: int, label: str):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn, TextColumn

        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True))
        self.task = self.progress.add_task(label, total=total)
        self.progress.start()

    def advance(self) -> None:
        self.progress.advance(self.task)

    def close(self) -> None:
        self.progress.stop()


# -- the distillation data ---------------------------------------------------------------------------
def held_out_indices(data) -> list[int]:
    """The data's test and val cameras (each once, test first)."""
    out: list[int] = []
    for name in ("test", "val"):
        for i in (data.splits.get(name) or []):
            if int(i) not in out:
                out.append(int(i))
    return out


def _seed_points(cams: Cameras, views, box: Tensor, max_points: int, seed: int) -> tuple[Tensor | None, Tensor | None]:
    rng = np.random.default_rng(seed)
    per_view = max(1, int(math.ceil(2 * max_points / max(1, len(views)))))
    pts, cols = [], []
    for i, (rgba, depth) in enumerate(views):
        p, c = lift_depth(cams, i, rgba, depth, box)
        if len(p) > per_view:
            sel = rng.choice(len(p), per_view, replace=False)
            p, c = p[sel], c[sel]
        pts.append(p)
        cols.append(c)
    points = np.concatenate(pts) if pts else np.zeros((0, 3), np.float32)
    colours = np.concatenate(cols) if cols else np.zeros((0, 3), np.uint8)
    if len(points) > max_points:
        sel = np.sort(rng.choice(len(points), max_points, replace=False))
        points, colours = points[sel], colours[sel]
    if len(points) == 0:
        return None, None
    return torch.from_numpy(points), torch.from_numpy(colours)


def teacher_views(teacher, data, n_views: int, seed: int, *, time: float | None = None,
                  cache_dir: str | Path | None = None, max_points: int = DEFAULT_MAX_POINTS,
                  progress: bool = False) -> SceneData:
    """The teacher's renders as training data for a student.

    Args:
        teacher: any scene with ``render`` (a dynamic one is rendered at ``time``).
        data: the real :class:`SceneData` (or a run's ``SceneInfo``): its world, box, near/far,
            background, training cameras (poses are drawn around them) and held-out cameras.
        n_views: teacher views in the returned train split, drawn by
            :func:`omnifield.distill.poses.sample_poses` around the training cameras (their
            intrinsics and size, no distortion), deterministic for ``seed``.
        cache_dir: renders are saved there (``view_#####.npz``: rgba uint8, depth float32, atomic)
            with a manifest (teacher fingerprint, seed, views, time, poses), and reused when it matches.
        max_points: seed points kept (uniformly subsampled) from the lifted teacher depth.

    Returns:
        A SceneData like ``data`` (same root, format, world, box, near/far, background, metadata)
        whose train split holds the ``n_views`` teacher renders (RGBA: colour with the teacher's
        alpha), whose test / val splits are the real held-out cameras with their real images (when
        ``data`` has images), and whose ``points`` / ``point_colors`` are the teacher's surface
        points (pixels with alpha > 0.5 lifted to their depth, inside the scene box). Cameras are static.
    """
    from omnifield.distill.poses import sample_poses

    if int(n_views) < 1:
        raise ConfigError(f"teacher views: n_views must be >= 1, got {n_views}")
    train = data.split("train")
    gen = torch.Generator().manual_seed(int(seed))
    cams = pinhole(sample_poses(data.cameras.to("cpu"), train, int(n_views), gen,
                                scene_box=torch.as_tensor(data.scene_box, dtype=torch.float32).cpu()))
    cache = None if cache_dir is None else Path(cache_dir)
    views = _render_views(teacher, cams, time, cache, _manifest(teacher, cams, n_views, seed, time), progress)
    box = torch.as_tensor(data.scene_box, dtype=torch.float32).cpu()
    points, colours = _seed_points(cams, views, box, int(max_points), int(seed))

    rgbas = [rgba for rgba, _ in views]  # the depth was only needed for the points
    del views
    real_images = getattr(data, "images", None)
    held = held_out_indices(data) if real_images is not None else []
    all_cams = cat_cameras([cams, pinhole(data.cameras.to("cpu")[held])]) if held else cams
    n = len(cams)
    root = Path(data.root)
    paths = [(cache or root / "teacher_views") / f"view_{i:05d}.png" for i in range(n)]
    paths += [Path(real_images.paths[j]) if j < len(real_images.paths) else root / f"{j:05d}" for j in held]

    def load(i: int) -> np.ndarray:
        if i < n:
            return rgbas[i]
        return real_images.rgb(held[i - n]).numpy()

    splits = {"train": list(range(n))}
    for name in ("test", "val"):
        idx = [n + held.index(int(j)) for j in (data.splits.get(name) or []) if int(j) in held]
        if idx:
            splits[name] = idx
    return SceneData(
        root=root, format=str(getattr(data, "format", "")), cameras=all_cams,
        images=ImageStore(paths, load, background=data.background), splits=splits,
        scene_box=box, world_from_dataset=torch.as_tensor(data.world_from_dataset, dtype=torch.float32).cpu(),
        near=data.near, far=data.far, points=points, point_colors=colours, unbounded=bool(data.unbounded),
        background=tuple(float(b) for b in data.background),
        metadata={**dict(getattr(data, "metadata", {}) or {}), "teacher_views": int(n_views)})


# -- the student's occupancy grid -------------------------------------------------------------------
@torch.no_grad()
def seed_occupancy(student, points: Tensor | None, *, dilation: int = SURFACE_DILATION) -> bool:
    """Limit a grid student's occupancy grid (``student.grid``, an
    :class:`~omnifield.renderers.occupancy.OccupancyGrid`) to the cells around the teacher's surface
    ``points`` (:func:`teacher_views`'s lifted depth) for the whole distillation: the cells holding a
    point, grown by ``dilation`` cells (:meth:`OccupancyGrid.restrict`).

    Without it the grid starts full and the student marches, and evaluates, every sample in the box
    until its own density has pruned the grid: cheap for a hash grid, minutes per step for an MLP. The
    teacher's depth says where the matter is; away from it the teacher shows background only. Within
    the limit the student's own updates prune as usual (its cells are not forced on: on lego, forcing
    them on for the whole run cost instant-ngp 0.5 dB, as more samples per ray left fewer rays per step).
    Returns False (and does nothing) for a student without a grid or without points."""
    from omnifield.renderers.occupancy import OccupancyGrid

    grid = getattr(student, "grid", None)
    if not isinstance(grid, OccupancyGrid) or points is None or len(points) == 0:
        return False
    grid.restrict(grid.cells_of(points.to(grid.aabb.device), dilation=int(dilation)))
    return True


# -- how close the student got -----------------------------------------------------------------------
@torch.no_grad()
def student_teacher_psnr(student, teacher, cameras: Cameras, *, time: float | None = None,
                         background=(1.0, 1.0, 1.0)) -> float:
    """Mean PSNR (dB) of the student's renders against the teacher's on ``cameras`` (on ``background``;
    a dynamic teacher at ``time``). The number the converter reports and the tests check."""
    from omnifield.scenes.metrics import psnr

    options = RenderOptions(background=tuple(float(b) for b in background))
    values = []
    for c in range(len(cameras)):
        cam = cameras[c]
        t = teacher.render(cam.to(_device_of(teacher)), time, options)[0].rgb.float().cpu().clamp(0, 1)
        s = student.render(cam.to(_device_of(student)), None, options)[0].rgb.float().cpu().clamp(0, 1)
        values.append(psnr(s, t))
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def comparison_cameras(data, n_views: int = 8, seed: int = 1) -> Cameras:
    """Cameras to compare student and teacher on: the data's held-out cameras, else ``n_views`` poses
    drawn around the training cameras (another seed than the training views)."""
    held = held_out_indices(data)
    if held:
        return pinhole(data.cameras.to("cpu")[held])
    from omnifield.distill.poses import sample_poses

    gen = torch.Generator().manual_seed(int(seed) + 7919)
    return pinhole(sample_poses(data.cameras.to("cpu"), data.split("train"), int(n_views), gen,
                                scene_box=torch.as_tensor(data.scene_box, dtype=torch.float32).cpu()))


__all__ = ["teacher_views", "render_rgba", "lift_depth", "student_teacher_psnr", "comparison_cameras",
           "held_out_indices", "cat_cameras", "pinhole", "teacher_fingerprint", "seed_occupancy", "DEFAULT_MAX_POINTS",
           "SURFACE_POINTS"]
