"""The embedded default scene: procedural textured objects rendered with ground truth (`omnifield data synth`).

:func:`synthesize` writes a standard Blender/NeRF-synthetic folder that any NeRF tool reads::

    OUT/
      transforms_train.json  transforms_val.json  transforms_test.json
      train/r_0.png  train/r_0_depth.npy  train/r_0_normal.npy  ...
      test/...  val/...
      mesh_gt.ply          whole scene, vertex colours = radiance (albedo * shading)
      mesh_gt_visible.ply  only the faces seen by at least one training ray (for Chamfer metrics)
      synth.json           config, objects, light, conventions

Conventions (also written to ``synth.json``):

- ``transform_matrix`` is camera-to-world in OpenGL/Blender axes (x right, y up, z backward); OpenCV
  is obtained by negating its y and z columns. Pinhole, square pixels, principal point at the image
  centre, ``focal = 0.5 * W / tan(0.5 * camera_angle_x)``, pixel centres at ``(u + 0.5, v + 0.5)``.
- Images are RGBA uint8 with straight (not premultiplied) alpha; alpha is the fraction of the
  ``supersample**2`` jittered rays of a pixel that hit the scene, and fully transparent pixels hold the
  background colour.
- ``*_depth.npy``: float32 ``[H, W]`` ray distance ``t`` along the *unit* ray direction through the pixel
  centre (not z-depth); **0 where the centre ray misses**.
- ``*_normal.npy``: float32 ``[H, W, 3]`` world-space unit normals at the centre-ray hit (smooth shading
  normals, always facing the camera); **0 where the centre ray misses**.
- World z is up; the scene lies inside ``[-1, 1]^3``; cameras orbit at ``radius`` on the upper
  hemisphere looking at the origin (the Blender loader's scene box ``[-1.5, 1.5]^3``, near 2, far 6).

Shading is Lambertian with a world-fixed directional light and no shadows, hence view-independent.
Textures are solid (functions of the object-local 3D position), so no UV mapping is involved.
Rendering uses open3d's ray caster (``pip install open3d-cpu``), independent of omnifield's renderers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SYNTH_FORMAT_VERSION = 1
OBJECT_NAMES = ("base", "sphere", "box", "torus", "cylinder")
_INVALID_ID = 4294967295  # open3d RaycastingScene.INVALID_ID


@dataclass(frozen=True)
class SynthConfig:
    """Options of the procedural scene and its renders."""

    seed: int = 0
    """Seed of the camera sampling and of the supersampling jitter (the object layout is fixed)."""
    n_train: int = 100
    """Training views: random azimuth, elevation area-uniform in [elevation_min, elevation_max]."""
    n_test: int = 20
    """Test views: a ring of evenly spaced azimuths at the mid elevation (Blender-style)."""
    n_val: int = 0
    """Validation views (random like train); with 0, ``transforms_val.json`` lists the test frames."""
    width: int = 200
    """Image width in pixels."""
    height: int = 200
    """Image height in pixels."""
    camera_angle_x: float = 0.6911112070083618
    """Horizontal field of view in radians (the NeRF-synthetic value)."""
    radius: float = 4.0
    """Distance of the cameras from the origin, which they look at."""
    elevation_min_deg: float = 10.0
    """Lowest camera elevation above the xy plane, degrees."""
    elevation_max_deg: float = 80.0
    """Highest camera elevation, degrees (below 89 to keep the up vector well defined)."""
    supersample: int = 2
    """Jittered rays per pixel along each axis (2 -> 4 rays): soft edges, fractional alpha."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] written where alpha is 0 (loaders composite over white too)."""
    objects: tuple[str, ...] = ("base", "sphere", "box", "torus")
    """Which objects of :data:`OBJECT_NAMES` to place."""

    def __post_init__(self):
        for name in ("n_train", "n_test", "n_val"):
            if getattr(self, name) < 0:
                raise ValueError(f"SynthConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.n_train < 1:
            raise ValueError(f"SynthConfig.n_train must be >= 1, got {self.n_train}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"SynthConfig width/height must be >= 1, got {self.width}x{self.height}")
        if not 0.0 < self.camera_angle_x < math.pi:
            raise ValueError(f"SynthConfig.camera_angle_x must be in (0, pi), got {self.camera_angle_x}")
        if self.radius <= math.sqrt(3.0):
            raise ValueError(f"SynthConfig.radius must put cameras outside [-1,1]^3, got {self.radius}")
        if not -89.0 < self.elevation_min_deg <= self.elevation_max_deg < 89.0:
            raise ValueError(
                "SynthConfig needs -89 < elevation_min_deg <= elevation_max_deg < 89, got "
                f"{self.elevation_min_deg}, {self.elevation_max_deg}"
            )
        if self.supersample < 1:
            raise ValueError(f"SynthConfig.supersample must be >= 1, got {self.supersample}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"SynthConfig.background must be 3 values in [0, 1], got {self.background}")
        unknown = [o for o in self.objects if o not in OBJECT_NAMES]
        if unknown or not self.objects or len(set(self.objects)) != len(self.objects):
            raise ValueError(
                f"SynthConfig.objects must be distinct names from {OBJECT_NAMES}, got {self.objects}"
            )


@dataclass(frozen=True)
class Light:
    """Directional light: radiance = albedo * (ambient + diffuse * max(0, n . direction))."""

    direction: tuple[float, float, float] = (0.3310, -0.4965, 0.8024)  # unit, towards the light
    ambient: float = 0.35
    diffuse: float = 0.65


# ---------------------------------------------------------------------------------------------------
# Procedural solid textures: local position [N, 3] -> albedo [N, 3] in [0, 1].


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[:, None].astype(np.float32)


def _checker_xy(q: np.ndarray) -> np.ndarray:
    """Planar checkerboard, 0.17 cells, with a smooth radial tint."""
    parity = (np.floor(q[:, 0] / 0.17) + np.floor(q[:, 1] / 0.17)) % 2
    col = _mix((0.86, 0.80, 0.66), (0.30, 0.36, 0.48), parity)
    r = np.linalg.norm(q[:, :2], axis=1)
    return col * (1.0 - 0.25 * np.clip(r / 0.85, 0, 1))[:, None]


def _tilted_stripes(q: np.ndarray) -> np.ndarray:
    """Smooth stripes of period 0.15 across a tilted axis, red to yellow."""
    axis = np.array([0.3, 0.5, 0.81], np.float32)
    s = 0.5 + 0.5 * np.sin(2 * np.pi * (q @ (axis / np.linalg.norm(axis))) / 0.15)
    return _mix((0.85, 0.18, 0.12), (0.98, 0.83, 0.25), s)


def _checker_3d(q: np.ndarray) -> np.ndarray:
    """Solid 3D checkerboard, 0.15 cells, blue and white."""
    parity = np.floor(q / 0.15).sum(axis=1) % 2
    return _mix((0.15, 0.30, 0.80), (0.93, 0.93, 0.90), parity)


def _hue_ring(q: np.ndarray) -> np.ndarray:
    """Smooth rainbow around the local z axis (two cycles) plus a tube-wise darkening band."""
    theta = np.arctan2(q[:, 1], q[:, 0])[:, None]
    phase = np.array([0.0, 2.0944, 4.1888], np.float32)
    col = 0.5 + 0.45 * np.cos(2.0 * theta + phase)
    shade = 0.85 + 0.15 * np.sign(np.sin(2 * np.pi * q[:, 2] / 0.08))
    return col * shade[:, None]


def _rings_z(q: np.ndarray) -> np.ndarray:
    """Hard rings of period 0.1 along the local z axis, green and dark green."""
    parity = np.floor(q[:, 2] / 0.05) % 2
    return _mix((0.25, 0.70, 0.30), (0.08, 0.25, 0.12), parity)


# ---------------------------------------------------------------------------------------------------
# Objects


@dataclass(frozen=True)
class _ObjectSpec:
    name: str
    kind: str
    params: dict
    rotation_deg: tuple[float, float, float]  # xyz Euler, applied before translation
    translation: tuple[float, float, float]
    texture: Callable[[np.ndarray], np.ndarray]
    texture_doc: str


_SINK = 0.01  # objects sink this much into the base so that they rest on it without a gap
_BASE_TOP = -0.5

_CATALOGUE = {
    "base": _ObjectSpec(
        "base", "cylinder", {"radius": 0.85, "height": 0.1}, (0, 0, 0),
        (0.0, 0.0, _BASE_TOP - 0.05), _checker_xy, _checker_xy.__doc__,
    ),
    "sphere": _ObjectSpec(
        "sphere", "sphere", {"radius": 0.3}, (0, 0, 0),
        (-0.35, -0.3, _BASE_TOP + 0.3 - _SINK), _tilted_stripes, _tilted_stripes.__doc__,
    ),
    "box": _ObjectSpec(
        "box", "box", {"extents": [0.45, 0.45, 0.45]}, (0, 0, 30),
        (0.38, -0.22, _BASE_TOP + 0.225 - _SINK), _checker_3d, _checker_3d.__doc__,
    ),
    "torus": _ObjectSpec(
        "torus", "torus", {"major_radius": 0.28, "minor_radius": 0.08}, (90, 0, 15),
        (0.08, 0.42, _BASE_TOP + 0.36 - _SINK), _hue_ring, _hue_ring.__doc__,
    ),
    "cylinder": _ObjectSpec(
        "cylinder", "cylinder", {"radius": 0.12, "height": 0.5}, (0, 0, 0),
        (-0.48, 0.38, _BASE_TOP + 0.25 - _SINK), _rings_z, _rings_z.__doc__,
    ),
}


def _object_transform(spec: _ObjectSpec) -> np.ndarray:
    """4x4 world-from-local of an object."""
    import trimesh

    rx, ry, rz = np.radians(spec.rotation_deg)
    m = trimesh.transformations.euler_matrix(rx, ry, rz, "sxyz")
    m[:3, 3] = spec.translation
    return m


def _local_mesh(spec: _ObjectSpec):
    import trimesh

    p = spec.params
    if spec.kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=4, radius=p["radius"])
    if spec.kind == "box":
        return trimesh.creation.box(extents=p["extents"])
    if spec.kind == "torus":
        return trimesh.creation.torus(p["major_radius"], p["minor_radius"], 96, 32)
    if spec.kind == "cylinder":
        return trimesh.creation.cylinder(radius=p["radius"], height=p["height"], sections=96)
    raise ValueError(f"unknown object kind {spec.kind!r}")


@dataclass
class _SceneGeometry:
    """Every object merged into one triangle list, with what shading needs per face."""

    specs: list[_ObjectSpec]
    vertices: np.ndarray  # [V, 3] float32 world
    faces: np.ndarray  # [F, 3] uint32
    corner_normals: np.ndarray  # [F, 3, 3] float32 smooth shading normal at each face corner
    face_normals: np.ndarray  # [F, 3] float32 world unit
    face_object: np.ndarray  # [F] int index into specs
    local_from_world: np.ndarray  # [O, 4, 4]
    merged: list  # per object: trimesh.Trimesh in world space (the GT mesh), same face order
    face_offsets: np.ndarray  # [O + 1] face index ranges of each object in faces


def _corner_normals(mesh, max_angle_deg: float = 40.0) -> np.ndarray:
    """Smooth normals ``[F, 3, 3]`` per face corner: area-weighted mean of the face normals around the
    corner's vertex that lie within ``max_angle_deg`` of the face's own normal (sharp edges stay sharp)."""
    fn = np.asarray(mesh.face_normals)
    area = np.asarray(mesh.area_faces)
    adj = np.asarray(mesh.vertex_faces)[mesh.faces]  # [F, 3, D], -1 padded
    valid = adj >= 0
    safe = np.where(valid, adj, 0)
    gn = fn[safe]  # [F, 3, D, 3]
    close = valid & (np.einsum("fkdc,fc->fkd", gn, fn) > math.cos(math.radians(max_angle_deg)))
    n = np.einsum("fkdc,fkd->fkc", gn, area[safe] * close)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _build_geometry(names: tuple[str, ...]) -> _SceneGeometry:
    specs = [_CATALOGUE[n] for n in names]
    verts, faces, cnormals, fobj, l2w, merged, offsets = [], [], [], [], [], [], [0]
    n_verts = 0
    for i, spec in enumerate(specs):
        world_from_local = _object_transform(spec)
        mesh = _local_mesh(spec)
        mesh.apply_transform(world_from_local)
        merged.append(mesh)
        verts.append(mesh.vertices)
        faces.append(mesh.faces + n_verts)
        cnormals.append(_corner_normals(mesh))
        fobj.append(np.full(len(mesh.faces), i))
        l2w.append(np.linalg.inv(world_from_local))
        n_verts += len(mesh.vertices)
        offsets.append(offsets[-1] + len(mesh.faces))
    return _SceneGeometry(
        specs=specs,
        vertices=np.concatenate(verts).astype(np.float32),
        faces=np.concatenate(faces).astype(np.uint32),
        corner_normals=np.concatenate(cnormals).astype(np.float32),
        face_normals=np.concatenate([m.face_normals for m in merged]).astype(np.float32),
        face_object=np.concatenate(fobj),
        local_from_world=np.stack(l2w),
        merged=merged,
        face_offsets=np.asarray(offsets),
    )


def _albedo(geo: _SceneGeometry, points: np.ndarray, obj: np.ndarray) -> np.ndarray:
    """Albedo ``[N, 3]`` of world ``points [N, 3]`` lying on objects ``obj [N]``."""
    out = np.zeros((len(points), 3), np.float32)
    for i, spec in enumerate(geo.specs):
        sel = obj == i
        if sel.any():
            m = geo.local_from_world[i]
            q = (points[sel] @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
            out[sel] = spec.texture(q)
    return out


def _radiance(albedo: np.ndarray, normals: np.ndarray, light: Light) -> np.ndarray:
    cos = np.clip(normals @ np.asarray(light.direction, np.float32), 0.0, None)
    return np.clip(albedo * (light.ambient + light.diffuse * cos)[:, None], 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# Cameras and rays


def _look_at_origin(azimuth: float, elevation: float, radius: float) -> np.ndarray:
    """Camera-to-world 4x4 in OpenGL axes for a camera on the sphere looking at the origin, z up."""
    pos = radius * np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
    )
    back = pos / np.linalg.norm(pos)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, pos
    return c2w


def _camera_poses(config: SynthConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """OpenGL camera-to-world ``[N, 4, 4]`` per split."""
    lo, hi = np.radians(config.elevation_min_deg), np.radians(config.elevation_max_deg)

    def random_views(n: int) -> np.ndarray:
        az = rng.uniform(0.0, 2 * np.pi, n)
        el = np.arcsin(rng.uniform(np.sin(lo), np.sin(hi), n))  # area-uniform on the spherical cap
        return np.array([_look_at_origin(a, e, config.radius) for a, e in zip(az, el)]).reshape(n, 4, 4)

    poses = {"train": random_views(config.n_train)}
    poses["val"] = random_views(config.n_val)
    az = (np.arange(config.n_test) + 0.5) * 2 * np.pi / max(config.n_test, 1)
    ring = [_look_at_origin(a, 0.5 * (lo + hi), config.radius) for a in az]
    poses["test"] = np.array(ring).reshape(config.n_test, 4, 4)
    return poses


def focal_length(config: SynthConfig) -> float:
    """Focal length in pixels: ``0.5 * width / tan(0.5 * camera_angle_x)``."""
    return 0.5 * config.width / math.tan(0.5 * config.camera_angle_x)


def _pixel_rays(c2w_gl: np.ndarray, config: SynthConfig, offsets: np.ndarray) -> np.ndarray:
    """Rays ``[H, W, K, 6]`` (origin, unit direction) through pixel positions ``(u, v) + offsets[H, W, K, 2]``."""
    f = focal_length(config)
    h, w = config.height, config.width
    v, u = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = (u[..., None] + offsets[..., 0] - 0.5 * w) / f
    y = (v[..., None] + offsets[..., 1] - 0.5 * h) / f
    cam = np.stack([x, y, np.ones_like(x)], axis=-1)  # OpenCV camera axes
    rot_cv = c2w_gl[:3, :3] * np.array([1.0, -1.0, -1.0])  # OpenGL -> OpenCV: negate y, z columns
    d = cam @ rot_cv.T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(c2w_gl[:3, 3], d.shape)
    return np.concatenate([o, d], axis=-1).astype(np.float32)


def _jitter_offsets(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Stratified jittered sub-pixel offsets ``[H, W, S*S, 2]`` in [0, 1)."""
    s = config.supersample
    grid = np.stack(np.meshgrid(np.arange(s), np.arange(s), indexing="xy"), axis=-1).reshape(-1, 2)
    jitter = rng.uniform(0.0, 1.0, (config.height, config.width, s * s, 2))
    return (grid + jitter) / s


# ---------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _ViewRender:
    rgba: np.ndarray  # [H, W, 4] uint8, straight alpha
    depth: np.ndarray  # [H, W] float32 ray distance, 0 on miss
    normal: np.ndarray  # [H, W, 3] float32 world unit normals, 0 on miss
    faces_seen: np.ndarray  # [F] bool, faces hit by any ray of this view


def _surface_normals(geo: _SceneGeometry, prim: np.ndarray, uv: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Interpolated vertex normals at hits, replaced by the face normal where they face away from the ray."""
    w = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1).astype(np.float32)
    n = np.einsum("nk,nkc->nc", w, geo.corner_normals[prim])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    fn = geo.face_normals[prim]
    fn = np.where((np.sum(fn * dirs, axis=1) > 0)[:, None], -fn, fn)
    away = np.sum(n * dirs, axis=1) >= -1e-4
    return np.where(away[:, None], fn, n).astype(np.float32)


def _render_view(raycaster, geo: _SceneGeometry, c2w: np.ndarray, config: SynthConfig,
                 rng: np.random.Generator, light: Light) -> _ViewRender:
    import open3d as o3d

    h, w, k = config.height, config.width, config.supersample**2
    offsets = np.concatenate([_jitter_offsets(config, rng), np.full((h, w, 1, 2), 0.5)], axis=2)
    rays = _pixel_rays(c2w, config, offsets).reshape(-1, 6)
    ans = raycaster.cast_rays(o3d.core.Tensor(rays))
    t = ans["t_hit"].numpy()
    prim = ans["primitive_ids"].numpy().astype(np.int64)
    hit = prim != _INVALID_ID
    idx = np.flatnonzero(hit)
    points = rays[idx, :3] + t[idx, None] * rays[idx, 3:]
    normals = _surface_normals(geo, prim[idx], ans["primitive_uvs"].numpy()[idx], rays[idx, 3:])
    obj = geo.face_object[prim[idx]]
    rgb = np.zeros((len(rays), 3), np.float32)
    rgb[idx] = _radiance(_albedo(geo, points, obj), normals, light)

    rgb, hit4 = rgb.reshape(h, w, k + 1, 3), hit.reshape(h, w, k + 1)
    count = hit4[..., :k].sum(axis=2)
    alpha = count / k
    colour = rgb[..., :k, :].sum(axis=2) / np.maximum(count, 1)[..., None]
    colour = np.where((count > 0)[..., None], colour, np.asarray(config.background, np.float32))
    rgba = np.concatenate([colour, alpha[..., None]], axis=-1)
    rgba = np.clip(np.round(rgba * 255.0), 0, 255).astype(np.uint8)

    nrm = np.zeros((len(rays), 3), np.float32)
    nrm[idx] = normals
    depth = np.where(hit, t, 0.0).astype(np.float32).reshape(h, w, k + 1)[..., k]
    seen = np.zeros(len(geo.faces), bool)
    seen[prim[idx]] = True
    return _ViewRender(rgba, np.ascontiguousarray(depth), np.ascontiguousarray(nrm.reshape(h, w, k + 1, 3)[:, :, k]), seen)


def _make_raycaster(geo: _SceneGeometry):
    try:
        import open3d as o3d
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "omnifield data synth renders with open3d's ray caster, which is not installed: "
            "pip install open3d-cpu  (or pip install 'omnifield[synth]')"
        ) from err
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(geo.vertices), o3d.core.Tensor(geo.faces))
    return scene


# ---------------------------------------------------------------------------------------------------
# Writing


def _gt_mesh(geo: _SceneGeometry, light: Light, faces_seen: np.ndarray | None = None):
    """The whole scene as one trimesh with radiance vertex colours, optionally only the seen faces."""
    import trimesh

    parts = []
    for i, mesh in enumerate(geo.merged):
        albedo = _albedo(geo, np.asarray(mesh.vertices, np.float32), np.full(len(mesh.vertices), i))
        radiance = _radiance(albedo, np.asarray(mesh.vertex_normals, np.float32), light)
        colours = np.concatenate([np.round(radiance * 255), np.full((len(radiance), 1), 255)], axis=1)
        part = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=colours.astype(np.uint8), process=False)
        if faces_seen is not None:
            keep = faces_seen[geo.face_offsets[i]: geo.face_offsets[i + 1]]
            if not keep.any():
                continue
            part = part.submesh([np.flatnonzero(keep)], append=True)
        parts.append(part)
    return trimesh.util.concatenate(parts)


def _frames_json(split: str, poses: np.ndarray, config: SynthConfig) -> dict:
    frames = [
        {"file_path": f"./{split}/r_{i}", "transform_matrix": np.round(c2w, 9).tolist()}
        for i, c2w in enumerate(poses)
    ]
    return {"camera_angle_x": config.camera_angle_x, "frames": frames}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _synth_description(geo: _SceneGeometry, config: SynthConfig, light: Light) -> dict:
    objects = [
        {"name": s.name, "shape": s.kind, **s.params, "rotation_xyz_deg": list(s.rotation_deg),
         "translation": list(s.translation), "texture": s.texture_doc, "faces": int(len(m.faces))}
        for s, m in zip(geo.specs, geo.merged)
    ]
    return {
        "format": "omnifield-synth",
        "version": SYNTH_FORMAT_VERSION,
        "config": asdict(config),
        "focal_px": focal_length(config),
        "objects": objects,
        "light": {**asdict(light), "model": "lambertian, no shadows: albedo*(ambient+diffuse*max(0,n.l))"},
        "scene_box": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]],
        "near": 2.0,
        "far": 6.0,
        "val_is_test": config.n_val == 0,
        "conventions": {
            "transform_matrix": "camera-to-world, OpenGL/Blender axes (x right, y up, z backward); "
            "negate the y and z columns for OpenCV",
            "intrinsics": "pinhole, fx = fy = 0.5*W/tan(0.5*camera_angle_x), cx = W/2, cy = H/2, "
            "pixel centres at (u+0.5, v+0.5)",
            "world": "z up, scene inside [-1,1]^3, cameras look at the origin",
            "image": "RGBA uint8, straight alpha = fraction of supersample^2 jittered rays that hit; "
            "background colour where alpha is 0",
            "depth": "{file_path}_depth.npy: float32 [H,W] ray distance t along the unit ray direction "
            "through the pixel centre (not z-depth); 0 where the centre ray misses",
            "normal": "{file_path}_normal.npy: float32 [H,W,3] world-space unit normals (smooth shading "
            "normals, facing the camera); 0 where the centre ray misses",
            "mesh_gt": "mesh_gt.ply: whole scene, world coordinates, vertex colours = radiance",
            "mesh_gt_visible": "mesh_gt_visible.ply: faces hit by at least one training ray",
        },
    }


def synthesize(out_dir, config: SynthConfig = SynthConfig(), *, overwrite: bool = False,
               progress: bool = False) -> Path:
    """Render the procedural default scene into a Blender/NeRF-synthetic folder with ground truth.

    Everything is written into a temporary sibling folder renamed to ``out_dir`` at the end, so a
    successful call never leaves a half-written folder. ``out_dir`` must be absent or empty unless
    ``overwrite``. See the module docstring for the layout and conventions. Returns ``out_dir``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"synthesize: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"synthesize: {out} is not empty (pass overwrite=True to replace it)")
    light = Light()
    geo = _build_geometry(config.objects)
    raycaster = _make_raycaster(geo)
    rng = np.random.default_rng(config.seed)
    poses = _camera_poses(config, rng)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        seen = _render_splits(tmp, raycaster, geo, poses, config, rng, light, progress)
        for split in ("train", "val", "test"):
            frames = _frames_json(split, poses[split], config)
            if split == "val" and config.n_val == 0:
                frames = _frames_json("test", poses["test"], config)
            _write_json(tmp / f"transforms_{split}.json", frames)
        _gt_mesh(geo, light).export(tmp / "mesh_gt.ply")
        _gt_mesh(geo, light, seen).export(tmp / "mesh_gt_visible.ply")
        _write_json(tmp / "synth.json", _synth_description(geo, config, light))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _render_splits(root: Path, raycaster, geo, poses, config, rng, light, progress: bool) -> np.ndarray:
    """Render and write every view; returns the faces seen by the training views ``[F]`` bool."""
    import imageio.v3 as iio
    from rich.progress import Progress

    seen = np.zeros(len(geo.faces), bool)
    total = sum(len(p) for p in poses.values())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synth: rendering views", total=total)
        for split in ("train", "val", "test"):
            if len(poses[split]) == 0:
                continue
            (root / split).mkdir()
            for i, c2w in enumerate(poses[split]):
                view = _render_view(raycaster, geo, c2w, config, rng, light)
                iio.imwrite(root / split / f"r_{i}.png", view.rgba)
                np.save(root / split / f"r_{i}_depth.npy", view.depth)
                np.save(root / split / f"r_{i}_normal.npy", view.normal)
                if split == "train":
                    seen |= view.faces_seen
                bar.advance(task)
    return seen


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing what is there with two renames."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_synth_ground_truth(path, visible_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth mesh of a synthesized scene: vertices ``[V, 3]`` float64 and faces ``[F, 3]`` int64.

    ``path`` is the folder written by :func:`synthesize` or a ``.ply`` file. With ``visible_only`` the
    mesh keeps only the faces seen by the training views (the fair target for Chamfer distances).
    """
    import trimesh

    p = Path(path)
    if p.is_dir():
        p = p / ("mesh_gt_visible.ply" if visible_only else "mesh_gt.ply")
    if not p.is_file():
        raise FileNotFoundError(f"load_synth_ground_truth: no mesh at {p}")
    mesh = trimesh.load(p, process=False, force="mesh")
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"load_synth_ground_truth: {p} holds no triangle mesh")
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
