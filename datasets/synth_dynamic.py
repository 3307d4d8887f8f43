"""The synthetic dynamic scene: moving, rotating textured objects seen by a fixed multi-view rig
(`omnifield data synth --dynamic`).

:func:`write_dynamic_scene` writes a D-NeRF folder (the Blender layout with a per-frame ``time``) that
:func:`omnifield.datasets.load.load_scene` reads as format ``dnerf``::

    OUT/
      transforms_train.json  transforms_val.json  transforms_test.json
      train/r_0.png  train/r_0_depth.npy  ...   (``r_<i>_normal.npy`` too with ``normals=True``)
      val/...  test/...
      points3d.ply   points on the objects at every training time (x y z nx ny nz red green blue time)
      synth.json     config, objects and their motions, cameras, split rule, object poses per time

The scene: a static checkered disc (``base``) and three objects moving along smooth trajectories while
they rotate (``sphere``: hops while orbiting and spinning; ``box``: orbits on the disc opposite the
sphere, turning about z; ``torus``: stands upright at the centre, spins about z and bobs). Every
object pose is ``world_from_local(t) = [R(t) | c(t)]`` given by :class:`Motion` (see
:func:`object_pose`); textures are solid functions of the object-local position, so they move with
the object. Shading, cameras, images, alpha and depth follow :mod:`omnifield.datasets.synth`
(Lambertian, world-fixed light, no shadows; OpenGL ``transform_matrix``; RGBA with straight alpha over
a white background; ``*_depth.npy`` = float32 ray distance through the pixel centre, 0 on a miss),
rendered by open3d's ray caster, independent of omnifield's renderers.

**Rig and splits** (``C = n_cameras``, ``T = n_times``, ``E = holdout_camera_every``):

- Cameras are fixed over time (a multi-view rig): camera ``j`` sits at azimuth ``2 pi j / C`` and
  elevation ``elevations_deg[j % len(elevations_deg)]``, at distance ``radius``, looking at the origin.
  Its supersampling jitter is the same at every time, so static pixels are identical across times.
- Held-out cameras ``H = [j for j in range(C) if j % E == 0]``; training cameras are the others.
- Training times ``t_k = k / (T - 1)``, ``k = 0 .. T-1`` (0 and 1 included).
- ``train``: every training camera at every training time, time-major (``C - len(H)`` frames per time).
- ``val`` (new view, seen time): frame ``k`` = held-out camera ``H[k % len(H)]`` at ``t_k``, ``T`` frames.
- ``test`` (new view *and* new time): frame ``k`` = held-out camera ``H[k % len(H)]`` at the midpoint
  ``(k + 0.5) / (T - 1)``, ``k = 0 .. T-2``, ``T - 1`` frames.

Hence no test frame shares its camera or its time with any training frame. Each frame also records
``camera_id`` (the rig index ``j``). The D-NeRF loader normalises times over all splits; as the
training times span exactly [0, 1], the loaded times equal the written ones.

``points3d.ply`` holds ``n_points`` points sampled area-uniformly on the objects' surfaces (object-local
samples drawn once), placed at every training time (``T * n_points`` rows, ``time`` = ``t_k``): the same
local point at successive times gives its ground-truth track. Colours are the radiance at the point
(albedo and shading by the face normal), like the vertex colours of the static scene's ``mesh_gt.ply``.
:func:`read_points_ply` reads it back.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnifield.datasets import synth
from omnifield.datasets.synth import Light, _ObjectSpec, _SceneGeometry

DYNAMIC_FORMAT_VERSION = 1
OBJECT_NAMES = ("base", "sphere", "box", "torus")
_BASE_TOP = -0.5


@dataclass(frozen=True)
class DynamicSynthConfig:
    """Options of the synthetic dynamic scene and its renders (see the module docstring for the splits)."""

    seed: int = 0
    """Seed of the per-camera supersampling jitter and of the point samples (the motions are fixed)."""
    n_cameras: int = 12
    """Cameras of the fixed rig, evenly spaced in azimuth."""
    holdout_camera_every: int = 3
    """Cameras ``j`` with ``j % holdout_camera_every == 0`` are held out (val and test only)."""
    n_times: int = 20
    """Training times ``k / (n_times - 1)``; test times are the ``n_times - 1`` midpoints."""
    width: int = 128
    """Image width in pixels."""
    height: int = 128
    """Image height in pixels."""
    camera_angle_x: float = 0.6911112070083618
    """Horizontal field of view in radians (the NeRF-synthetic value)."""
    radius: float = 4.0
    """Distance of the cameras from the origin, which they look at."""
    elevations_deg: tuple[float, ...] = (20.0, 45.0)
    """Camera ``j`` sits at elevation ``elevations_deg[j % len(elevations_deg)]`` degrees."""
    supersample: int = 2
    """Jittered rays per pixel along each axis (2 -> 4 rays): soft edges, fractional alpha."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB in [0, 1] written where alpha is 0."""
    n_points: int = 2000
    """Points sampled on the objects for ``points3d.ply`` (written at each training time)."""
    normals: bool = False
    """Also write ``*_normal.npy`` (world unit normals at the centre-ray hit, 0 on a miss)."""

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"DynamicSynthConfig.seed must be >= 0, got {self.seed}")
        if self.n_cameras < 2:
            raise ValueError(f"DynamicSynthConfig.n_cameras must be >= 2, got {self.n_cameras}")
        if not 2 <= self.holdout_camera_every <= self.n_cameras:
            raise ValueError(
                "DynamicSynthConfig.holdout_camera_every must be in [2, n_cameras], got "
                f"{self.holdout_camera_every} (n_cameras={self.n_cameras})"
            )
        if self.n_times < 2:
            raise ValueError(f"DynamicSynthConfig.n_times must be >= 2, got {self.n_times}")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"DynamicSynthConfig width/height must be >= 1, got {self.width}x{self.height}")
        if not 0.0 < self.camera_angle_x < math.pi:
            raise ValueError(f"DynamicSynthConfig.camera_angle_x must be in (0, pi), got {self.camera_angle_x}")
        if self.radius <= math.sqrt(3.0):
            raise ValueError(f"DynamicSynthConfig.radius must put cameras outside [-1,1]^3, got {self.radius}")
        if not self.elevations_deg or not all(-89.0 < e < 89.0 for e in self.elevations_deg):
            raise ValueError(f"DynamicSynthConfig.elevations_deg must be in (-89, 89), got {self.elevations_deg}")
        if self.supersample < 1:
            raise ValueError(f"DynamicSynthConfig.supersample must be >= 1, got {self.supersample}")
        if len(self.background) != 3 or not all(0.0 <= c <= 1.0 for c in self.background):
            raise ValueError(f"DynamicSynthConfig.background must be 3 values in [0, 1], got {self.background}")
        if self.n_points < 0:
            raise ValueError(f"DynamicSynthConfig.n_points must be >= 0, got {self.n_points}")


# ---------------------------------------------------------------------------------------------------
# Objects and motions


@dataclass(frozen=True)
class Motion:
    """A smooth rigid motion over ``t`` in [0, 1]: ``world_from_local(t) = [R(t) | c(t)]`` with

    - ``a(t) = orbit_phase + 2 pi orbit_turns t``,
    - ``c(t) = (orbit_radius cos a(t), orbit_radius sin a(t), height + hop sin^2(pi hops t))``,
    - ``R(t) = Rot(spin_axis, 2 pi spin_turns t) @ Rxyz(rest_rotation_deg)`` (static-axes xyz Euler).
    """

    orbit_radius: float = 0.0
    orbit_phase: float = 0.0
    orbit_turns: float = 0.0
    height: float = 0.0
    hop: float = 0.0
    hops: float = 0.0
    spin_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    spin_turns: float = 0.0
    rest_rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def world_from_local(self, t: float) -> np.ndarray:
        """``[4, 4]`` float64 pose at time ``t``."""
        import trimesh

        a = self.orbit_phase + 2 * math.pi * self.orbit_turns * t
        rest = trimesh.transformations.euler_matrix(*np.radians(self.rest_rotation_deg), "sxyz")
        spin = trimesh.transformations.rotation_matrix(2 * math.pi * self.spin_turns * t, self.spin_axis)
        m = spin @ rest
        m[:3, 3] = (
            self.orbit_radius * math.cos(a),
            self.orbit_radius * math.sin(a),
            self.height + self.hop * math.sin(math.pi * self.hops * t) ** 2,
        )
        return m


def _spec(name: str, kind: str, params: dict, texture) -> _ObjectSpec:
    return _ObjectSpec(name, kind, params, (0, 0, 0), (0, 0, 0), texture, texture.__doc__)


_ORBIT = 0.6
OBJECTS: dict[str, tuple[_ObjectSpec, Motion]] = {
    "base": (
        _spec("base", "cylinder", {"radius": 0.9, "height": 0.1}, synth._checker_xy),
        Motion(height=_BASE_TOP - 0.05),
    ),
    "sphere": (
        _spec("sphere", "sphere", {"radius": 0.25}, synth._tilted_stripes),
        Motion(orbit_radius=_ORBIT, orbit_turns=0.5, height=_BASE_TOP + 0.25, hop=0.3, hops=2.0,
               spin_axis=(0.6, 0.0, 0.8), spin_turns=1.0),
    ),
    "box": (
        _spec("box", "box", {"extents": [0.36, 0.36, 0.36]}, synth._checker_3d),
        Motion(orbit_radius=_ORBIT, orbit_phase=math.pi, orbit_turns=0.5, height=_BASE_TOP + 0.18 - 0.005,
               spin_turns=0.5),
    ),
    "torus": (
        _spec("torus", "torus", {"major_radius": 0.25, "minor_radius": 0.08}, synth._hue_ring),
        Motion(height=_BASE_TOP + 0.36, hop=0.1, hops=1.0, spin_turns=1.0, rest_rotation_deg=(90.0, 0.0, 0.0)),
    ),
}
"""name -> (shape and texture, motion). Object-local frames are centred on the object."""


def object_pose(name: str, t: float) -> np.ndarray:
    """``[4, 4]`` world-from-local pose of object ``name`` (one of :data:`OBJECT_NAMES`) at time ``t``.

    For the sphere, the translation column is its centre (radius ``OBJECTS["sphere"][0].params["radius"]``).
    """
    if name not in OBJECTS:
        raise ValueError(f"object_pose: unknown object {name!r} (have: {', '.join(OBJECT_NAMES)})")
    return OBJECTS[name][1].world_from_local(float(t))


@dataclass(frozen=True)
class _LocalObject:
    """An object's mesh in its own frame, with what shading needs per face (computed once)."""

    spec: _ObjectSpec
    motion: Motion
    vertices: np.ndarray  # [V, 3] float64 local
    faces: np.ndarray  # [F, 3] int64
    corner_normals: np.ndarray  # [F, 3, 3] local
    face_normals: np.ndarray  # [F, 3] local
    areas: np.ndarray  # [F]


def _local_objects() -> list[_LocalObject]:
    out = []
    for name in OBJECT_NAMES:
        spec, motion = OBJECTS[name]
        mesh = synth._local_mesh(spec)
        out.append(_LocalObject(
            spec, motion, np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64),
            synth._corner_normals(mesh), np.asarray(mesh.face_normals, np.float64), np.asarray(mesh.area_faces),
        ))
    return out


def _geometry_at(objects: list[_LocalObject], t: float) -> _SceneGeometry:
    """Every object posed at time ``t``, merged like :func:`synth._build_geometry` does for the static scene."""
    verts, faces, cnormals, fnormals, fobj, l2w, offsets = [], [], [], [], [], [], [0]
    n_verts = 0
    for i, obj in enumerate(objects):
        m = obj.motion.world_from_local(t)
        r = m[:3, :3]
        verts.append(obj.vertices @ r.T + m[:3, 3])
        faces.append(obj.faces + n_verts)
        cnormals.append(obj.corner_normals @ r.T)
        fnormals.append(obj.face_normals @ r.T)
        fobj.append(np.full(len(obj.faces), i))
        l2w.append(np.linalg.inv(m))
        n_verts += len(obj.vertices)
        offsets.append(offsets[-1] + len(obj.faces))
    return _SceneGeometry(
        specs=[o.spec for o in objects],
        vertices=np.concatenate(verts).astype(np.float32),
        faces=np.concatenate(faces).astype(np.uint32),
        corner_normals=np.concatenate(cnormals).astype(np.float32),
        face_normals=np.concatenate(fnormals).astype(np.float32),
        face_object=np.concatenate(fobj),
        local_from_world=np.stack(l2w),
        merged=[],
        face_offsets=np.asarray(offsets),
    )


# ---------------------------------------------------------------------------------------------------
# Rig and splits


@dataclass(frozen=True)
class Frame:
    """One image to render: split, index within the split, rig camera and time."""

    split: str
    index: int
    camera: int
    time: float


def camera_poses(config: DynamicSynthConfig) -> np.ndarray:
    """OpenGL camera-to-world ``[n_cameras, 4, 4]`` of the rig (see the module docstring)."""
    el = config.elevations_deg
    return np.stack([
        synth._look_at_origin(2 * math.pi * j / config.n_cameras, math.radians(el[j % len(el)]), config.radius)
        for j in range(config.n_cameras)
    ])


def heldout_cameras(config: DynamicSynthConfig) -> list[int]:
    """Rig indices of the held-out cameras (never used for training)."""
    return [j for j in range(config.n_cameras) if j % config.holdout_camera_every == 0]


def split_frames(config: DynamicSynthConfig) -> dict[str, list[Frame]]:
    """The frames of each split, in file order (the rule of the module docstring)."""
    held = heldout_cameras(config)
    train_cams = [j for j in range(config.n_cameras) if j not in held]
    steps = config.n_times - 1
    train = [(j, k / steps) for k in range(config.n_times) for j in train_cams]
    val = [(held[k % len(held)], k / steps) for k in range(config.n_times)]
    test = [(held[k % len(held)], (k + 0.5) / steps) for k in range(steps)]
    return {
        split: [Frame(split, i, j, t) for i, (j, t) in enumerate(frames)]
        for split, frames in (("train", train), ("val", val), ("test", test))
    }


# ---------------------------------------------------------------------------------------------------
# Points


POINT_DTYPE = np.dtype([
    ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
    ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("time", "<f4"),
])
"""Vertex layout of ``points3d.ply`` (binary little endian): the 3DGS ``points3D.ply`` fields plus ``time``."""

_PLY_TYPES = {"f4": "float", "u1": "uchar"}


def _sample_points(objects: list[_LocalObject], n: int, rng: np.random.Generator):
    """``n`` area-uniform samples: object index ``[n]``, face index within the object ``[n]``, local xyz ``[n, 3]``."""
    areas = np.concatenate([o.areas for o in objects])
    owner = np.concatenate([np.full(len(o.faces), i) for i, o in enumerate(objects)])
    first = np.cumsum([0] + [len(o.faces) for o in objects])
    face = rng.choice(len(areas), size=n, p=areas / areas.sum())
    obj = owner[face]
    local_face = face - first[obj]
    uv = rng.uniform(0.0, 1.0, (n, 2))
    flip = uv.sum(axis=1) > 1
    uv[flip] = 1 - uv[flip]
    xyz = np.zeros((n, 3))
    for i, o in enumerate(objects):
        sel = obj == i
        tri = o.vertices[o.faces[local_face[sel]]]  # [n_i, 3, 3]
        xyz[sel] = tri[:, 0] + uv[sel, :1] * (tri[:, 1] - tri[:, 0]) + uv[sel, 1:] * (tri[:, 2] - tri[:, 0])
    return obj, local_face, xyz


def _points_at_times(objects, times: list[float], config: DynamicSynthConfig, light: Light) -> np.ndarray:
    """Structured array of the points (see :data:`POINT_DTYPE`) at every time of ``times``."""
    rng = np.random.default_rng([config.seed, 1])
    obj, face, local = _sample_points(objects, config.n_points, rng)
    rows = []
    for t in times:
        geo = _geometry_at(objects, t)
        xyz = np.zeros((len(obj), 3))
        nrm = np.zeros((len(obj), 3))
        for i, o in enumerate(objects):
            sel = obj == i
            m = o.motion.world_from_local(t)
            xyz[sel] = local[sel] @ m[:3, :3].T + m[:3, 3]
            nrm[sel] = o.face_normals[face[sel]] @ m[:3, :3].T
        albedo = synth._albedo(geo, xyz.astype(np.float32), obj)
        rgb = synth._radiance(albedo, nrm.astype(np.float32), light)
        row = np.zeros(len(obj), POINT_DTYPE)
        for c, name in enumerate("xyz"):
            row[name], row["n" + name] = xyz[:, c], nrm[:, c]
        for c, name in enumerate(("red", "green", "blue")):
            row[name] = np.clip(np.round(rgb[:, c] * 255.0), 0, 255)
        row["time"] = t
        rows.append(row)
    return np.concatenate(rows) if rows else np.zeros(0, POINT_DTYPE)




def write_points_ply(path, points: np.ndarray) -> None:
    """Write a structured array of :data:`POINT_DTYPE` as a binary little-endian PLY vertex list."""
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}"]
    header += [f"property {_PLY_TYPES[POINT_DTYPE[n].str[1:]]} {n}" for n in POINT_DTYPE.names]
    header.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(points.astype(POINT_DTYPE)).tobytes())


def read_points_ply(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``points3d.ply``: xyz ``[P, 3]`` float32, rgb ``[P, 3]`` uint8, time ``[P]`` float32.

    Only the exact layout written by :func:`write_points_ply`; raises DataError naming the file otherwise.
    """
    from omnifield.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise DataError("not a PLY file (no 'ply' / 'end_header')", path)
    lines = raw[:end].decode("ascii", "replace").splitlines()
    count = next((int(ln.split()[2]) for ln in lines if ln.startswith("element vertex ")), None)
    names = [ln.split()[-1] for ln in lines if ln.startswith("property ")]
    if "format binary_little_endian 1.0" not in lines or count is None or tuple(names) != POINT_DTYPE.names:
        raise DataError(f"expected a binary little-endian vertex list with properties {POINT_DTYPE.names}", path)
    body = raw[end + len(b"end_header\n"):]
    if len(body) < count * POINT_DTYPE.itemsize:
        raise DataError(f"truncated: {len(body)} bytes for {count} vertices", path)
    pts = np.frombuffer(body, POINT_DTYPE, count)
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], axis=1)
    rgb = np.stack([pts["red"], pts["green"], pts["blue"]], axis=1)
    return xyz, rgb, pts["time"].copy()


# ---------------------------------------------------------------------------------------------------
# Writing


def _frame_entry(frame: Frame, c2w: np.ndarray) -> dict:
    return {
        "file_path": f"./{frame.split}/r_{frame.index}",
        "transform_matrix": np.round(c2w, 9).tolist(),
        "time": frame.time,
        "camera_id": frame.camera,
    }


def _render_all(root: Path, frames: dict[str, list[Frame]], poses, objects, config, light, progress) -> None:
    """Render every frame, grouped by time so each posed geometry is ray-cast once per time."""
    import imageio.v3 as iio
    from rich.progress import Progress

    by_time: dict[float, list[Frame]] = {}
    for split_frames_ in frames.values():
        for fr in split_frames_:
            by_time.setdefault(fr.time, []).append(fr)
    for split in frames:
        (root / split).mkdir()
    total = sum(len(v) for v in frames.values())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("synth --dynamic: rendering views", total=total)
        for t in sorted(by_time):
            geo = _geometry_at(objects, t)
            raycaster = synth._make_raycaster(geo)
            for fr in by_time[t]:
                jitter = np.random.default_rng([config.seed, 0, fr.camera])  # same per camera at every time
                view = synth._render_view(raycaster, geo, poses[fr.camera], config, jitter, light)
                base = root / fr.split / f"r_{fr.index}"
                iio.imwrite(base.with_name(base.name + ".png"), view.rgba)
                np.save(base.with_name(base.name + "_depth.npy"), view.depth)
                if config.normals:
                    np.save(base.with_name(base.name + "_normal.npy"), view.normal)
                bar.advance(task)


def _description(config, poses, frames, light) -> dict:
    held = heldout_cameras(config)
    times = sorted({fr.time for v in frames.values() for fr in v})
    objects = [
        {"name": name, "shape": spec.kind, **spec.params, "motion": asdict(motion), "texture": spec.texture_doc}
        for name, (spec, motion) in OBJECTS.items()
    ]
    return {
        "format": "omnifield-synth-dynamic",
        "version": DYNAMIC_FORMAT_VERSION,
        "config": asdict(config),
        "focal_px": synth.focal_length(config),
        "objects": objects,
        "motion_model": " ".join(Motion.__doc__.split()),
        "light": {**asdict(light), "model": "lambertian, no shadows: albedo*(ambient+diffuse*max(0,n.l))"},
        "cameras": [{"id": j, "held_out": j in held, "transform_matrix": np.round(p, 9).tolist()}
                    for j, p in enumerate(poses)],
        "split_rule": {
            "held_out_cameras": held,
            "train": "every camera not held out at every training time k/(n_times-1), time-major",
            "val": "held-out camera H[k % len(H)] at training time k/(n_times-1), k = 0..n_times-1",
            "test": "held-out camera H[k % len(H)] at time (k+0.5)/(n_times-1), k = 0..n_times-2",
        },
        "object_poses": [
            {"time": t, "world_from_local": {n: np.round(object_pose(n, t), 9).tolist() for n in OBJECT_NAMES}}
            for t in times
        ],
        "scene_box": [[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]],
        "near": 2.0,
        "far": 6.0,
        "conventions": {
            "transform_matrix": "camera-to-world, OpenGL/Blender axes; negate the y and z columns for OpenCV",
            "time": "per frame, in [0, 1]; cameras are fixed over time (camera_id = rig index)",
            "image": "RGBA uint8, straight alpha = fraction of supersample^2 jittered rays that hit",
            "depth": "{file_path}_depth.npy: float32 [H,W] ray distance along the unit ray through the pixel "
                     "centre (not z-depth); 0 where the centre ray misses",
            "points3d": "points3d.ply: x y z nx ny nz (float) red green blue (uchar) time (float); the same "
                        "object-local samples at every training time; colour = radiance",
        },
    }


def write_dynamic_scene(out, config: DynamicSynthConfig = DynamicSynthConfig(), *, overwrite: bool = False,
                        progress: bool = False) -> Path:
    """Render the synthetic dynamic scene into a D-NeRF folder with depth and points (module docstring).

    Written into a temporary sibling folder renamed to ``out`` at the end (no half-written folder).
    ``out`` must be absent or empty unless ``overwrite``. Deterministic for a given config. Returns ``out``.
    """
    import json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"write_dynamic_scene: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"write_dynamic_scene: {out} is not empty (pass overwrite=True to replace it)")
    light = Light()
    objects = _local_objects()
    poses = camera_poses(config)
    frames = split_frames(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _render_all(tmp, frames, poses, objects, config, light, progress)
        for split, fr in frames.items():
            meta = {"camera_angle_x": config.camera_angle_x, "frames": [_frame_entry(f, poses[f.camera]) for f in fr]}
            synth._write_json(tmp / f"transforms_{split}.json", meta)
        train_times = sorted({f.time for f in frames["train"]})
        write_points_ply(tmp / "points3d.ply", _points_at_times(objects, train_times, config, light))
        (tmp / "synth.json").write_text(json.dumps(_description(config, poses, frames, light), indent=2))
        synth._replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = [
    "DynamicSynthConfig", "Frame", "Motion", "OBJECTS", "OBJECT_NAMES", "POINT_DTYPE", "camera_poses",
    "heldout_cameras", "object_pose", "read_points_ply", "split_frames", "write_dynamic_scene", "write_points_ply",
]
