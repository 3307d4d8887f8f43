"""Export a trained scene: meshes (marching cubes on the density), point clouds (rendered depth) and
Gaussian splats (the standard 3DGS ``.ply``).

Exports are written in the dataset's ORIGINAL coordinates (the run's ``world_from_dataset``
inverted), so they line up with the input cameras and with ground truth. Every file is written
atomically (temporary file in the same folder + rename). Only capabilities are used: a mesh needs
:class:`~omnifield.scenes.base.HasDensity`, a point cloud only ``scene.render``, a splat
:class:`~omnifield.scenes.base.HasGaussians`.

Mesh threshold. Density is a rate per unit length of the normalised world, so its scale depends on
the method and the world's size. The default level is 10, torch-ngp's choice for NeRF-like fields
in a world a few units across (instant-ngp itself uses 2.5 on its own, larger, unit cube). A scene
may declare its own default as a ``mesh_threshold`` attribute; ``threshold="auto"`` picks a level
from the density distribution on the grid instead (see :func:`auto_threshold`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import ConfigError
from omnifield.renderers.rays import image_rays
from omnifield.scenes.base import HasDensity, HasGaussians, RenderOptions
from omnifield.scenes.runs import atomic_write_bytes

DEFAULT_DENSITY_THRESHOLD = 10.0
MESH_FORMATS = {".ply": "ply", ".obj": "obj", ".glb": "glb"}


# -- mesh --------------------------------------------------------------------------------------
def _scene_device(scene) -> torch.device:
    for t in list(scene.parameters()) + list(scene.buffers()):
        return t.device
    return torch.device("cpu")


def grid_shape(box: Tensor, resolution: int, stride: int = 1) -> tuple[int, int, int]:
    """Samples per axis: ``resolution`` along the box's longest side, proportionally fewer along the
    others, rounded up so that ``stride`` divides the number of cells."""
    ext = (box[1] - box[0]).double()
    if bool((ext <= 0).any()):
        raise ConfigError(f"box must have min < max on every axis, got {box.tolist()}")
    n = torch.clamp(torch.round(resolution * ext / ext.max()), min=2).long()
    n = stride * torch.ceil((n - 1) / stride).long() + 1
    return tuple(int(v) for v in n)


def _densities(scene, points: Tensor, chunk: int) -> Tensor:
    """``[P]`` float32 CPU densities of ``points [P, 3]``, evaluated in chunks on the scene's device."""
    device = _scene_device(scene)
    if len(points) == 0:
        return torch.zeros(0)
    return torch.cat([scene.density(p.to(device)).reshape(-1).float().cpu() for p in points.split(chunk)])


@torch.no_grad()
def density_grid(scene: HasDensity, box, resolution: int = 256, chunk: int = 65536, *,
                 threshold: float | None = None, coarse_stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Density sampled on a regular grid over ``box [2, 3]`` (world): returns ``(grid [X, Y, Z] float32, spacing [3])``.

    Grid point ``(i, j, k)`` sits at ``box[0] + (i, j, k) * spacing``. Evaluated in chunks of ``chunk`` points.

    With a ``threshold`` and ``coarse_stride`` s > 1 the grid is refined coarse to fine: every s-th
    point is sampled first; blocks of s^3 cells whose corners straddle the threshold, and their
    neighbours, are then sampled at full resolution, while elsewhere the coarse samples are
    interpolated trilinearly. There all coarse corners lie on one side of the threshold, so no level
    set is invented; only features smaller than a block that no coarse sample sees can be lost.
    """
    box = torch.as_tensor(box, dtype=torch.float32).reshape(2, 3)
    s = max(1, int(coarse_stride)) if threshold is not None else 1
    shape = grid_shape(box, resolution, s)
    axes = [torch.linspace(float(box[0, a]), float(box[1, a]), shape[a]) for a in range(3)]
    spacing = np.array([(float(box[1, a]) - float(box[0, a])) / (shape[a] - 1) for a in range(3)])
    if s == 1:
        out = np.empty(shape, dtype=np.float32)
        yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
        per_slab = max(1, chunk // len(yz))
        for i0 in range(0, shape[0], per_slab):
            xs = axes[0][i0 : i0 + per_slab]
            pts = torch.cat([xs.repeat_interleave(len(yz))[:, None], yz.repeat(len(xs), 1)], dim=1)
            out[i0 : i0 + len(xs)] = _densities(scene, pts, chunk).reshape(len(xs), shape[1], shape[2]).numpy()
        return out, spacing
    coarse_axes = [ax[::s] for ax in axes]
    coarse_pts = torch.stack(torch.meshgrid(*coarse_axes, indexing="ij"), -1).reshape(-1, 3)
    coarse = _densities(scene, coarse_pts, chunk).reshape(*(len(ax) for ax in coarse_axes))
    c = coarse[None, None]
    block_max = F.max_pool3d(c, 2, stride=1)
    block_min = -F.max_pool3d(-c, 2, stride=1)
    active = ((block_max > threshold) & (block_min <= threshold)).float()
    active = F.max_pool3d(active, 3, stride=1, padding=1)[0, 0] > 0  # [blocks], dilated by one block
    cells = active.repeat_interleave(s, 0).repeat_interleave(s, 1).repeat_interleave(s, 2)  # [X-1, Y-1, Z-1]
    refine = F.max_pool3d(F.pad(cells.float()[None, None], (1, 1, 1, 1, 1, 1)), 2, stride=1)[0, 0] > 0  # [X, Y, Z]
    grid = F.interpolate(c, size=shape, mode="trilinear", align_corners=True)[0, 0]
    idx = refine.nonzero()
    pts = torch.stack([axes[a][idx[:, a]] for a in range(3)], -1)
    grid[idx[:, 0], idx[:, 1], idx[:, 2]] = _densities(scene, pts, chunk)
    return grid.numpy(), spacing


def auto_threshold(grid: np.ndarray) -> float:
    """A level from the density distribution: the geometric mean of the median density of the occupied
    voxels (density above 1) and 1, floored at 1 -- halfway, on a log scale, up the surface's density ramp.
    """
    occupied = grid[grid > 1.0]
    if occupied.size == 0:
        return DEFAULT_DENSITY_THRESHOLD
    return float(max(1.0, np.sqrt(np.median(occupied))))


def remove_small_components(vertices: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop connected components with fewer than ``min_fraction`` of all faces (floaters).

    Returns ``(vertices, faces, kept_vertex_indices)`` with unreferenced vertices removed.
    """
    if min_fraction <= 0 or len(faces) == 0:
        return vertices, faces, np.arange(len(vertices))
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    counts = np.bincount(labels)
    keep_faces = faces[counts[labels] >= min_fraction * len(faces)]
    used = np.unique(keep_faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[keep_faces], used


@torch.no_grad()
def extract_mesh(scene, box, resolution: int = 256, threshold: float | str | None = None, chunk: int = 65536,
                 *, min_component_fraction: float = 0.0, coarse_stride: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes (Lorensen & Cline 1987, scikit-image) on the density level set, with vertex colours.

    ``scene``: anything with the :class:`HasDensity` capability; ``box``: ``[2, 3]`` world box (min, max).
    ``threshold``: the density level (None: the scene's ``mesh_threshold`` or 10; ``"auto"``:
    :func:`auto_threshold`). The volume is padded with empty space, so surfaces cut by the box are
    closed. Colours: ``color(x, -n)`` half a voxel inside each vertex along its outward normal ``n``.

    Returns world ``vertices [V, 3]`` float32, ``faces [F, 3]`` int64 (counter-clockwise seen from
    outside) and ``colours [V, 3]`` float32 in [0, 1]. Not differentiable. ``coarse_stride``: see
    :func:`density_grid` (1: evaluate every grid point).
    """
    from skimage.measure import marching_cubes

    if not isinstance(scene, HasDensity):
        raise ConfigError(f"mesh export needs a scene with density (HasDensity); {type(scene).__name__} has none")
    box = torch.as_tensor(box, dtype=torch.float32).reshape(2, 3)
    if threshold is None:
        threshold = float(getattr(scene, "mesh_threshold", DEFAULT_DENSITY_THRESHOLD))
    elif threshold == "auto":
        threshold = auto_threshold(density_grid(scene, box, max(16, resolution // 4), chunk)[0])
    threshold = float(threshold)
    grid, spacing = density_grid(scene, box, resolution, chunk, threshold=threshold, coarse_stride=coarse_stride)
    if not np.isfinite(grid).all():
        raise ValueError("extract_mesh: the density grid holds non-finite values")
    if grid.max() <= threshold:
        raise ConfigError(f"density never exceeds the threshold {threshold:g} in the box (max {grid.max():.3g}); "
                          "lower the threshold or check the crop box")
    padded = np.pad(grid, 1, mode="constant", constant_values=0.0)
    verts, faces, _, _ = marching_cubes(padded, level=threshold, spacing=tuple(spacing), gradient_direction="ascent")  # outward winding for inside > level
    verts = verts - spacing + box[0].numpy()  # undo the padding, move to the box
    faces = faces.astype(np.int64)
    verts, faces, _ = remove_small_components(verts, faces, min_component_fraction)
    if len(faces) == 0:
        raise ConfigError("no surface left after removing small components; lower min_component_fraction")
    normals = _vertex_normals(verts, faces)
    colours = _vertex_colours(scene, verts, normals, 0.5 * float(spacing.min()), chunk)
    return verts.astype(np.float32), faces, colours


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted outward vertex normals ``[V, 3]`` of a counter-clockwise mesh."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = np.cross(b - a, c - a)
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def _vertex_colours(scene, verts: np.ndarray, normals: np.ndarray, inset: float, chunk: int) -> np.ndarray:
    device = _scene_device(scene)
    x = torch.from_numpy(verts - inset * normals).float()
    d = torch.from_numpy(-normals).float()
    cols = [scene.color(xc.to(device), dc.to(device)).float().cpu() for xc, dc in zip(x.split(chunk), d.split(chunk))]
    return torch.cat(cols).clamp(0, 1).numpy()


def transform_points(m, points: np.ndarray) -> np.ndarray:
    """Apply a ``[4, 4]`` transform to ``[N, 3]`` points (float64 arithmetic)."""
    m = np.asarray(torch.as_tensor(m).double().cpu().numpy(), dtype=np.float64)
    return np.asarray(points, np.float64) @ m[:3, :3].T + m[:3, 3]


def seen_faces(vertices: np.ndarray, faces: np.ndarray, cameras: Cameras, max_side: int = 200) -> np.ndarray:
    """``[F]`` bool: faces hit first by at least one pixel ray of ``cameras`` (world coordinates).

    Rays are cast at most ``max_side`` pixels per image side with open3d's ``RaycastingScene`` when
    installed, else trimesh's ray queries. The visibility test of DTU-style mesh evaluation: surfaces
    no training view saw (the inside of objects, the underside of a table) were never constrained.
    """
    from omnifield.renderers.rays import image_rays

    seen = np.zeros(len(faces), dtype=bool)
    caster = _ray_caster(vertices, faces)
    for c in range(len(cameras)):
        side = int(max(cameras.width[c], cameras.height[c]))
        cam = cameras[c].rescaled(min(1.0, max_side / side)) if side > max_side else cameras[c]
        rays = image_rays(cam, 0)
        ids = caster(rays.origins.double().numpy(), rays.directions.double().numpy())
        seen[ids[ids >= 0]] = True
    return seen


def _ray_caster(vertices: np.ndarray, faces: np.ndarray):
    """``cast(origins [R, 3], directions [R, 3]) -> [R]`` first-hit face ids (-1 on a miss)."""
    try:
        import open3d as o3d
    except ImportError:
        import trimesh

        mesh = trimesh.Trimesh(vertices, faces, process=False)
        return lambda o, d: mesh.ray.intersects_first(o, d)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)), o3d.core.Tensor(np.asarray(faces, np.uint32)))

    def cast(o, d):
        rays = o3d.core.Tensor(np.concatenate([o, d], axis=1).astype(np.float32))
        ids = scene.cast_rays(rays)["primitive_ids"].numpy().astype(np.int64)
        ids[ids == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
        return ids

    return cast


def keep_faces(vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray, colours: np.ndarray | None = None):
    """Drop faces where ``keep`` is False and the vertices no face uses; returns (vertices, faces, colours)."""
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces], None if colours is None else colours[used]


def export_mesh(run, out, *, resolution: int = 256, threshold: float | str | None = None, crop_box=None,
                min_component_fraction: float = 0.0, coarse_stride: int = 4, chunk: int = 65536,
                cull_unseen: bool = False) -> Path:
    """Extract the run's density surface and write it with vertex colours (``.ply``, ``.obj`` or ``.glb``).

    ``run``: a :class:`~omnifield.scenes.runs.Run` (uses ``scene``, ``scene_box``, ``world_from_dataset``).
    ``crop_box``: optional ``[2, 3]`` box in the normalised world (default: the scene box). Vertices
    are written in the dataset's original coordinates. ``cull_unseen``: drop faces that no training
    camera sees (:func:`seen_faces`). See :func:`extract_mesh` for the rest.
    """
    out = Path(out)
    fmt = MESH_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ConfigError(f"unknown mesh format {out.suffix!r} (use {', '.join(MESH_FORMATS)})", out)
    scene = run.scene
    if not isinstance(scene, HasDensity):
        raise ConfigError(f"method {getattr(run, 'method', '?')!r} has no density field to mesh "
                          f"({type(scene).__name__} lacks HasDensity)", out)
    box = run.scene_box if crop_box is None else crop_box
    verts, faces, colours = extract_mesh(scene, box, resolution, threshold, chunk,
                                         min_component_fraction=min_component_fraction, coarse_stride=coarse_stride)
    if cull_unseen:
        verts, faces, colours = keep_faces(verts, faces, seen_faces(verts, faces, run_cameras(run, "train")), colours)
        if len(faces) == 0:
            raise ConfigError("no mesh face is seen by a training camera", out)
    m = torch.linalg.inv(torch.as_tensor(run.world_from_dataset, dtype=torch.float64))
    verts = transform_points(m, verts)
    if float(torch.linalg.det(m[:3, :3])) < 0:  # a reflection flips the winding
        faces = faces[:, ::-1].copy()
    write_mesh(out, verts, faces, colours)
    return out


def write_mesh(path, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray | None = None) -> Path:
    """Write a triangle mesh with optional vertex colours ``[V, 3]`` (float in [0, 1] or uint8), atomically."""
    import trimesh

    path = Path(path)
    fmt = MESH_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError(f"unknown mesh format {path.suffix!r} (use {', '.join(MESH_FORMATS)})", path)
    vc = None
    if colours is not None:
        c = np.asarray(colours)
        c = c if c.dtype == np.uint8 else np.clip(np.round(c * 255), 0, 255).astype(np.uint8)
        vc = np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float64), np.asarray(faces, np.int64), vertex_colors=vc, process=False)
    data = mesh.export(file_type=fmt, **({"include_color": True} if fmt == "obj" else {}))
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)
    return path


# -- point cloud -------------------------------------------------------------------------------
def run_cameras(run, split: str = "train", downscale: float | None = None) -> Cameras:
    """The cameras of a run's ``split`` in its world: the stored ones (``run.info``, no dataset needed)
    or, without them, the parsed dataset's. ``downscale`` is relative to the original images (default:
    the run's training downscale)."""
    info = getattr(run, "info", None)
    if info is None:
        data = run.load_data(downscale=downscale)
        return data.cameras[data.split(split)]
    cams = info.cameras[info.split(split)]
    trained = float(getattr(run, "downscale", 1) or 1)
    if downscale is not None and float(downscale) != trained:
        cams = cams.rescaled(trained / float(downscale))
    return cams


def export_pointcloud(run, out, *, max_points: int = 1_000_000, downscale: float | None = None,
                      max_views: int | None = None, split: str = "train", seed: int = 0, crop_box=None) -> Path:
    """Render the run's ``split`` views and write their surface points with colours as a ``.ply``.

    Pixels with alpha > 0.5 are lifted along their ray (:func:`~omnifield.renderers.rays.image_rays`,
    unit directions) to the rendered depth, which is the ray parameter t averaged with the
    compositing weights (``sum w t / sum w``), kept when inside the box, mapped to dataset
    coordinates and subsampled to ``max_points``. Colours are the renders with the background
    removed (``(rgb - (1 - alpha) * background) / alpha``). ``downscale``: image downscale (default: the run's);
    ``max_views``: render only that many evenly spaced views. Cameras: :func:`run_cameras`.
    ``crop_box``: optional ``[2, 3]`` box in the normalised world (default: the scene box), as in
    :func:`export_mesh`; it is also passed to the renders (``RenderOptions.crop_box``), so surfaces
    hidden behind cropped-away content are exported too where the scene honours it.
    """
    out = Path(out)
    if out.suffix.lower() != ".ply":
        raise ConfigError(f"point clouds are written as .ply, got {out.suffix!r}", out)
    cams = run_cameras(run, split, downscale)
    if max_views is not None and len(cams) > max_views:
        cams = cams[[int(i) for i in np.linspace(0, len(cams) - 1, max_views).round()]]
    cams = cams.to(_scene_device(run.scene))
    box = torch.as_tensor(run.scene_box if crop_box is None else crop_box, dtype=torch.float32).cpu().reshape(2, 3)
    if bool((box[1] <= box[0]).any()):
        raise ConfigError(f"crop box must have min < max on every axis, got {box.tolist()}", out)
    options = RenderOptions(crop_box=None if crop_box is None else tuple(tuple(float(v) for v in row) for row in box))
    bg = run.scene.background_tensor(options).float().cpu() if hasattr(run.scene, "background_tensor") else torch.ones(3)
    rng = np.random.default_rng(seed)
    per_view = max(1, int(np.ceil(2 * max_points / len(cams))))
    pts, cols = [], []
    for c in range(len(cams)):
        r = run.scene.render(cams[c], options=options)[0]
        rays = image_rays(cams, c)
        alpha = r.alpha.reshape(-1, 1).float().cpu()
        keep = alpha[:, 0] > 0.5
        t = r.depth.reshape(-1).float().cpu()[keep]
        p = rays.origins.cpu()[keep] + rays.directions.cpu()[keep] * t[:, None]
        # Un-composite the background: the surface's own colour, rgb = a * c + (1 - a) * bg.
        rgb = ((r.rgb.reshape(-1, 3).float().cpu()[keep] - (1 - alpha[keep]) * bg) / alpha[keep]).clamp(0, 1)
        inside = ((p >= box[0]) & (p <= box[1])).all(-1) & torch.isfinite(p).all(-1)
        p, rgb = p[inside].numpy(), rgb[inside].numpy()
        if len(p) > per_view:
            sel = rng.choice(len(p), per_view, replace=False)
            p, rgb = p[sel], rgb[sel]
        pts.append(p)
        cols.append(rgb)
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    colours = np.concatenate(cols) if cols else np.zeros((0, 3))
    if len(points) > max_points:
        sel = rng.choice(len(points), max_points, replace=False)
        points, colours = points[sel], colours[sel]
    points = transform_points(torch.linalg.inv(torch.as_tensor(run.world_from_dataset, dtype=torch.float64)), points)
    write_pointcloud(out, points, colours)
    return out


def write_pointcloud(path, points: np.ndarray, colours: np.ndarray) -> Path:
    """Write a binary little-endian ``.ply`` with ``x y z`` float32 and ``red green blue`` uint8, atomically.

    ``points``: ``[N, 3]``; ``colours``: ``[N, 3]`` float in [0, 1] or uint8.
    """
    points = np.asarray(points)
    colours = np.asarray(colours)
    if points.ndim != 2 or points.shape[1] != 3 or colours.shape != points.shape:
        raise ValueError(f"write_pointcloud: need points [N, 3] and colours [N, 3], got {points.shape}, {colours.shape}")
    if colours.dtype != np.uint8:
        colours = np.clip(np.round(colours * 255), 0, 255).astype(np.uint8)
    rec = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rec["x"], rec["y"], rec["z"] = points[:, 0], points[:, 1], points[:, 2]
    rec["red"], rec["green"], rec["blue"] = colours[:, 0], colours[:, 1], colours[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment written by omnifield\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    atomic_write_bytes(Path(path), header.encode("ascii") + rec.tobytes())
    return Path(path)


# -- Gaussian splats -------------------------------------------------------------------------------
SPLAT_SH_DEGREE = 3  # files carry the 45 f_rest coefficients of degree 3, as the 3DGS code writes them
SH_C0 = 0.28209479177387814


def _rotmat_to_quat(rot: Tensor) -> Tensor:
    """``[N, 3, 3]`` rotation matrices -> ``[N, 4]`` unit quaternions (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = rot
    diag = torch.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                        1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    big = diag.argmax(-1)
    r = 0.5 * diag.clamp_min(1e-30).sqrt().gather(1, big[:, None])[:, 0]  # the largest component
    f = 0.25 / r
    a, b, c = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    d, e, g = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    cand = torch.stack([
        torch.stack([r, a * f, b * f, c * f], -1),
        torch.stack([a * f, r, d * f, e * f], -1),
        torch.stack([b * f, d * f, r, g * f], -1),
        torch.stack([c * f, e * f, g * f, r], -1),
    ], 1)
    q = cand[torch.arange(len(m)), big]
    q = torch.where(q[:, :1] < 0, -q, q)
    return q / q.norm(dim=-1, keepdim=True)


def _covar_to_scales_quats(covars: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decompose ``[N, 3, 3]`` covariances into scales ``[N, 3]`` and rotations ``[N, 4]`` (float64)."""
    evals, evecs = torch.linalg.eigh(0.5 * (covars + covars.transpose(1, 2)))
    flip = torch.linalg.det(evecs) < 0
    evecs[flip, :, 0] = -evecs[flip, :, 0]  # a proper rotation; the covariance does not change
    return evals.clamp_min(1e-30).sqrt(), _rotmat_to_quat(evecs)


def _sh_basis_matrix(dirs: Tensor, degree: int) -> Tensor:
    """``[P, K]`` values of the 3DGS real SH basis at unit ``dirs [P, 3]``."""
    from omnifield.cuda import ops

    k = (degree + 1) ** 2
    cols = []
    for j in range(k):
        coeffs = torch.zeros(len(dirs), k, 3, dtype=dirs.dtype)
        coeffs[:, j, 0] = 1.0
        cols.append(ops.spherical_harmonics(degree, dirs, coeffs)[:, 0])
    return torch.stack(cols, -1)


def _rotate_sh(sh: Tensor, linear: Tensor) -> Tensor:
    """SH coefficients ``[N, K, 3]`` of colours c(d) -> those of c'(d') = c(d) with ``d' = linear d``
    (``linear`` orthogonal ``[3, 3]``); solved per basis by least squares on many directions (exact:
    the bases of one degree span a rotation-invariant space)."""
    degree = math.isqrt(sh.shape[1]) - 1
    if degree == 0:
        return sh
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(512, 3, generator=gen, dtype=torch.float64), dim=-1)
    y_old = _sh_basis_matrix(d, degree)
    y_new = _sh_basis_matrix(d @ linear.T, degree)
    t = torch.linalg.lstsq(y_new, y_old).solution  # y_new @ t = y_old, so y_new (t c) = y_old c
    return torch.einsum("kj,njc->nkc", t, sh)


def splat_fields(prims, dataset_from_world: Tensor | None = None) -> dict[str, Tensor]:
    """The 3DGS ``.ply`` fields of ``GaussianPrimitives``: ``means [N, 3]``, ``log_scales [N, 3]``,
    ``quats [N, 4]``, ``opacity_logits [N]`` and ``sh [N, 16, 3]`` (float32, CPU).

    Covariances (4DGS slices) are eigen-decomposed into scales and a rotation; precomputed colours
    become SH DC coefficients (``(rgb - 0.5) / C0``); SH below degree 3 are zero-padded.
    ``dataset_from_world`` (a ``[4, 4]`` similarity) maps the Gaussians to the dataset's coordinates:
    means transformed, scales multiplied by its scale, rotations and SH rotated with it.
    """
    means = prims.means.detach().double().cpu()
    n = len(means)
    covars = None if prims.covars is None else prims.covars.detach().double().cpu()
    if covars is None:
        quats = torch.nn.functional.normalize(prims.quats.detach().double().cpu(), dim=-1)
        scales = prims.scales.detach().double().cpu()
    if prims.sh is not None:
        sh = prims.sh.detach().double().cpu()
    else:
        sh = ((prims.colors.detach().double().cpu() - 0.5) / SH_C0)[:, None, :]
    k = (SPLAT_SH_DEGREE + 1) ** 2
    if sh.shape[1] > k:
        raise ValueError(f"splat export: sh must have at most {k} coefficients, got {tuple(sh.shape)}")
    sh = torch.cat([sh, sh.new_zeros(n, k - sh.shape[1], 3)], dim=1)
    m = None if dataset_from_world is None else torch.as_tensor(dataset_from_world, dtype=torch.float64).cpu()
    if m is not None and torch.allclose(m, torch.eye(4, dtype=torch.float64), rtol=0.0, atol=1e-12):
        m = None
    if m is not None:
        s = float(torch.linalg.det(m[:3, :3]).abs() ** (1.0 / 3.0))
        linear = m[:3, :3] / s
        if covars is None:
            from omnifield.cuda import ops

            covars = ops.quat_scale_to_covar(quats, scales)
        covars = (s * s) * linear @ covars @ linear.T
        means = means @ m[:3, :3].T + m[:3, 3]
        sh = _rotate_sh(sh, linear)
    if covars is not None:
        scales, quats = _covar_to_scales_quats(covars)
    p = prims.opacities.detach().double().cpu().clamp(1e-12, 1.0 - 1e-7)
    out = {"means": means, "log_scales": scales.clamp_min(1e-30).log(), "quats": quats,
           "opacity_logits": torch.log(p) - torch.log1p(-p), "sh": sh}
    return {name: t.float().contiguous() for name, t in out.items()}


def export_splat(scene, path, time: float | None = None, *, world_from_dataset=None) -> Path:
    """Write the scene's Gaussians (at normalised ``time`` for dynamic scenes) as a standard 3DGS ``.ply``.

    ``scene``: anything with :class:`~omnifield.scenes.base.HasGaussians`. ``world_from_dataset``
    (a run's, ``[4, 4]``) writes them in the dataset's original coordinates; None keeps the scene's
    world. Fields: :func:`splat_fields`; file: :func:`omnifield.scenes.splat_ply.write_splat_ply`
    (atomic).
    """
    from omnifield.scenes.splat_ply import write_splat_ply

    path = Path(path)
    if path.suffix.lower() != ".ply":
        raise ConfigError(f"splats are written as .ply, got {path.suffix!r}", path)
    if not isinstance(scene, HasGaussians):
        raise ConfigError(f"splat export needs Gaussians (HasGaussians); {type(scene).__name__} has none", path)
    with torch.no_grad():
        prims = scene.gaussians(time)
    inverse = None if world_from_dataset is None else torch.linalg.inv(torch.as_tensor(world_from_dataset, dtype=torch.float64))
    return write_splat_ply(path, **splat_fields(prims, inverse))
