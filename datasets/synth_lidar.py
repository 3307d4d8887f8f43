"""A synthetic lidar sequence with exact scene flow (`omnifield data synth --lidar OUT`).

:func:`synthesize_lidar` writes::

    OUT/
      frame_0000.npz ... frame_<F-1>.npz   one sweep per frame (keys below)
      objects.npz        world_from_object [F, K, 4, 4], world_from_ego [F, 4, 4], times [F], the meshes
      synth_lidar.json   config, objects and motions, frame files and times, conventions

which :func:`omnifield.datasets.pointclouds.load_point_clouds` reads as format ``synth_lidar``.

The scene (world z up, metres): a ground plane ``z = 0``, static box buildings along both sides of a
road and thin cylindrical poles, and ``cars`` rigid cars (a body box and a cabin box) in lanes: ahead of
the ego vehicle, oncoming, overtaking, and parked ones from the fifth on. Cars and the ego vehicle move
as unicycles: constant speed ``v`` along their heading and constant yaw rate ``w``
(``heading(t) = heading0 + w t``; position ``p0 + v/w [sin h(t) - sin h0, cos h0 - cos h(t)]``), so
every pose is analytic. The ego frame sits on the ground under the sensor (x forward, y left, z up); the
lidar is at ``(0, 0, sensor_height)`` in it and spins: ``beams`` elevations evenly spaced in
``[elevation_min_deg, elevation_max_deg]`` (a 32-beam HDL-32E by default) times ``azimuths`` evenly
spaced azimuths, all cast at the frame's time (no rolling-shutter distortion) with open3d's
``RaycastingScene`` against the scene posed at that time (independent of omnifield's renderers).
Returns beyond ``max_range`` are dropped.

Frame npz keys: ``points [N, 3]`` float32 (ego frame), ``time`` (s, ``k / rate_hz``), ``ego_pose [4, 4]``
float64 world_from_ego, ``flow [N, 3]`` float32 (absent in the last frame), ``object_id [N]`` int32
(0 = static world, ground included; car ``j`` has id ``j``, ``1..K``), ``is_ground [N]``, ``dynamic [N]``
(on a car that moves), ``ring [N]`` uint8 (beam index).

Ground-truth flow is analytic: a point ``P`` (world) on object ``j`` at frame ``k`` moves to
``W_j(t_{k+1}) W_j(t_k)^-1 P`` (static points stay), then is expressed in frame ``k+1``'s ego coordinates;
``points + flow`` = that position, the convention of every omnifield flow label (ego motion included).
:func:`true_positions` moves frame ``k``'s points rigidly to any frame's time (world coordinates), and
:func:`scene_mesh` gives the posed triangles of any frame.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from omnifield.errors import DataError

SYNTH_LIDAR_VERSION = 1
_INVALID_ID = 4294967295  # open3d RaycastingScene.INVALID_ID
_CAR_BODY = (4.4, 1.8, 0.9, 0.3)  # length, width, height, clearance
_CAR_CABIN = (2.2, 1.6, 0.6)
_LANES = (  # (y, heading, speed offset range, yaw-rate bound, x0 range) for car i % 5
    (0.0, 0.0, (-2.0, 2.0), 0.05, (14.0, 20.0)),  # ahead of the ego, same lane
    (3.5, math.pi, (-2.0, 2.0), 0.08, (25.0, 40.0)),  # oncoming
    (-3.5, 0.0, (1.0, 4.0), 0.15, (-14.0, -6.0)),  # overtaking, turning
    (6.0, 0.0, None, 0.0, (5.0, 30.0)),  # parked
    (-6.0, math.pi, None, 0.0, (10.0, 35.0)),  # parked
)


@dataclass(frozen=True)
class LidarSynthConfig:
    """Options of the synthetic lidar sequence."""

    frames: int = 10
    """Sweeps written (>= 2)."""
    rate_hz: float = 10.0
    """Sweeps per second: frame k is at time ``k / rate_hz``."""
    beams: int = 32
    """Lasers (elevations) of the spinning lidar."""
    azimuths: int = 1024
    """Firings per revolution (azimuths evenly spaced over 360 deg)."""
    elevation_min_deg: float = -30.67
    """Lowest beam elevation (HDL-32E)."""
    elevation_max_deg: float = 10.67
    """Highest beam elevation (HDL-32E)."""
    max_range: float = 60.0
    """Returns farther than this (m) are dropped."""
    sensor_height: float = 1.8
    """Height of the lidar above the ego frame's origin (on the ground), m."""
    range_noise: float = 0.0
    """Standard deviation of Gaussian range noise (m); 0 keeps points exactly on the surfaces."""
    seed: int = 0
    """Seed of the layout (buildings, poles, cars, their motions) and of the range noise."""
    ego_speed: float = 8.0
    """Ego vehicle speed, m/s (along its heading, starting at the origin heading +x)."""
    ego_yaw_rate: float = 0.05
    """Ego vehicle yaw rate, rad/s."""
    cars: int = 4
    """Cars: ahead, oncoming, overtaking while turning, then parked ones (cycle of 5 lanes)."""
    buildings: int = 8
    """Static box buildings along both sides of the road."""
    poles: int = 10
    """Static thin cylinders (poles) along both sides of the road."""

    def __post_init__(self):
        checks = {
            "frames": self.frames >= 2, "rate_hz": self.rate_hz > 0, "beams": self.beams >= 1,
            "azimuths": self.azimuths >= 1, "max_range": self.max_range > 0, "sensor_height": self.sensor_height > 0,
            "range_noise": self.range_noise >= 0, "ego_speed": self.ego_speed >= 0, "cars": self.cars >= 0,
            "buildings": self.buildings >= 0, "poles": self.poles >= 0,
            "elevation_min_deg": -90 < self.elevation_min_deg <= self.elevation_max_deg < 90,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"LidarSynthConfig: invalid {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


# ----------------------------------------------------------------------------- motion and layout


def unicycle_pose(x0: float, y0: float, heading0: float, speed: float, yaw_rate: float, t) -> np.ndarray:
    """``[T, 4, 4]`` float64 world_from_body at times ``t`` for constant speed and yaw rate (z up, on z = 0)."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    h = heading0 + yaw_rate * t
    if abs(yaw_rate) < 1e-12:
        x, y = x0 + speed * t * math.cos(heading0), y0 + speed * t * math.sin(heading0)
    else:
        r = speed / yaw_rate
        x = x0 + r * (np.sin(h) - math.sin(heading0))
        y = y0 + r * (math.cos(heading0) - np.cos(h))
    m = np.tile(np.eye(4), (len(t), 1, 1))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = np.cos(h), -np.sin(h), np.sin(h), np.cos(h)
    m[:, 0, 3], m[:, 1, 3] = x, y
    return m


def _layout(config: LidarSynthConfig) -> dict:
    """Buildings, poles and cars (with motions) drawn from ``config.seed``; plain JSON-able values."""
    rng = np.random.default_rng(config.seed)
    buildings = []
    for i in range(config.buildings):
        side = 1.0 if i % 2 == 0 else -1.0
        size = [float(rng.uniform(8, 15)), float(rng.uniform(6, 12)), float(rng.uniform(5, 15))]
        x = -30.0 + (i // 2) * 100.0 / max(1, (config.buildings + 1) // 2) + float(rng.uniform(-2, 2))
        y = side * (13.0 + size[1] / 2 + float(rng.uniform(0, 4)))
        buildings.append({"center": [x, y], "size": size, "yaw": float(rng.uniform(-0.2, 0.2))})
    poles = []
    for i in range(config.poles):
        side = 1.0 if i % 2 == 0 else -1.0
        poles.append({"center": [-20.0 + (i // 2) * 12.0 + float(rng.uniform(-2, 2)), side * 8.5],
                      "radius": 0.2, "height": 6.0})
    cars = []
    for i in range(config.cars):
        y, heading, dv, w_max, (xa, xb) = _LANES[i % len(_LANES)]
        x0 = float(rng.uniform(xa, xb)) + 28.0 * (i // len(_LANES))
        speed = 0.0 if dv is None else max(0.0, config.ego_speed + float(rng.uniform(*dv)))
        yaw_rate = float(rng.uniform(-w_max, w_max)) if w_max else 0.0
        cars.append({"id": i + 1, "x0": x0, "y0": y, "heading0": heading, "speed": speed, "yaw_rate": yaw_rate,
                     "parked": dv is None})
    return {"buildings": buildings, "poles": poles, "cars": cars}


def _box(size, center, yaw: float = 0.0):
    """Triangles of an axis box ``size (lx, ly, lz)`` standing on z = center[2], rotated by ``yaw``."""
    import trimesh

    m = trimesh.creation.box(extents=size)
    v = np.asarray(m.vertices) + [0.0, 0.0, size[2] / 2]
    c, s = math.cos(yaw), math.sin(yaw)
    v = v @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]) + np.asarray(center, dtype=np.float64)
    return v, np.asarray(m.faces)


def _merge(parts):
    verts, faces, n = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + n)
        n += len(v)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), np.int64)
    return np.concatenate(verts), np.concatenate(faces)


def _meshes(layout: dict) -> dict:
    """Ground, static (buildings + poles) meshes in world, and each car's mesh in its own frame."""
    import trimesh

    g = 150.0
    ground = (np.array([[-g, -g, 0], [g, -g, 0], [g, g, 0], [-g, g, 0]], float), np.array([[0, 1, 2], [0, 2, 3]]))
    parts = [_box(b["size"], [*b["center"], 0.0], b["yaw"]) for b in layout["buildings"]]
    for p in layout["poles"]:
        cyl = trimesh.creation.cylinder(radius=p["radius"], height=p["height"], sections=16)
        parts.append((np.asarray(cyl.vertices) + [*p["center"], p["height"] / 2], np.asarray(cyl.faces)))
    length, width, height, clearance = _CAR_BODY
    cl, cw, ch = _CAR_CABIN
    car = _merge([_box((length, width, height), (0.0, 0.0, clearance)),
                  _box((cl, cw, ch), (-0.3, 0.0, clearance + height))])
    return {"ground": ground, "static": _merge(parts), "car": car}


# ----------------------------------------------------------------------------- ray casting


def _beam_directions(config: LidarSynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions ``[B * A, 3]`` in the ego frame and their beam index ``[B * A]``."""
    el = np.radians(np.linspace(config.elevation_min_deg, config.elevation_max_deg, config.beams))
    az = np.arange(config.azimuths) * (2 * np.pi / config.azimuths)
    e, a = np.meshgrid(el, az, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    return d, np.repeat(np.arange(config.beams), config.azimuths)


def _posed_scene(meshes: dict, car_poses: np.ndarray):
    """An open3d RaycastingScene of the scene at one time and ``geometry id -> (object id, is ground)``."""
    try:
        import open3d as o3d
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("omnifield data synth --lidar ray-casts with open3d, which is not installed: "
                          "pip install open3d-cpu  (or pip install 'omnifield[synth]')") from err
    scene = o3d.t.geometry.RaycastingScene()
    table = {}

    def add(v, f, oid, ground):
        if len(f):
            gid = scene.add_triangles(o3d.core.Tensor(v.astype(np.float32)), o3d.core.Tensor(f.astype(np.uint32)))
            table[gid] = (oid, ground)

    add(*meshes["ground"], 0, True)
    add(*meshes["static"], 0, False)
    cv, cf = meshes["car"]
    for j, pose in enumerate(car_poses):
        add(cv @ pose[:3, :3].T + pose[:3, 3], cf, j + 1, False)
    return scene, table


def _sweep(config, meshes, car_poses, ego_pose, dirs, rings, rng):
    """Cast one sweep; returns world points ``[N, 3]`` float64, object ids, ground flags, rings."""
    import open3d as o3d

    scene, table = _posed_scene(meshes, car_poses)
    origin = ego_pose[:3, :3] @ [0.0, 0.0, config.sensor_height] + ego_pose[:3, 3]
    d = dirs @ ego_pose[:3, :3].T
    rays = np.concatenate([np.broadcast_to(origin, d.shape), d], axis=1).astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t = ans["t_hit"].numpy().astype(np.float64)
    gid = ans["geometry_ids"].numpy().astype(np.int64)
    hit = (gid != _INVALID_ID) & np.isfinite(t) & (t <= config.max_range)
    t, gid = t[hit], gid[hit]
    if config.range_noise > 0:
        t = t + rng.normal(0.0, config.range_noise, t.shape)
    pts = origin + t[:, None] * d[hit]
    oid = np.array([table[g][0] for g in gid.tolist()], dtype=np.int32).reshape(-1)
    ground = np.array([table[g][1] for g in gid.tolist()], dtype=bool).reshape(-1)
    return pts, oid, ground, rings[hit].astype(np.uint8)


def _to_frame(pose: np.ndarray, world: np.ndarray) -> np.ndarray:
    """World points ``[N, 3]`` into the frame whose world_from_frame is ``pose``."""
    return (world - pose[:3, 3]) @ pose[:3, :3]


# ----------------------------------------------------------------------------- writing


def synthesize_lidar(out_dir, config: LidarSynthConfig = LidarSynthConfig(), *, overwrite: bool = False) -> Path:
    """Simulate the sequence and write it to ``out_dir`` (see the module docstring); returns ``out_dir``.

    Written into a temporary sibling folder renamed at the end, so a failure never leaves a half-written
    folder. ``out_dir`` must be absent or empty unless ``overwrite``.
    """
    from omnifield.datasets.synth import _replace_dir

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"synthesize_lidar: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"synthesize_lidar: {out} is not empty (pass overwrite=True to replace it)")
    layout = _layout(config)
    meshes = _meshes(layout)
    times = np.arange(config.frames) / config.rate_hz
    ego = unicycle_pose(0.0, 0.0, 0.0, config.ego_speed, config.ego_yaw_rate, times)
    cars = np.stack([unicycle_pose(c["x0"], c["y0"], c["heading0"], c["speed"], c["yaw_rate"], times)
                     for c in layout["cars"]], axis=1) if layout["cars"] else np.zeros((config.frames, 0, 4, 4))
    moving = np.array([0] + [c["speed"] > 0 or c["yaw_rate"] != 0 for c in layout["cars"]], bool)
    dirs, rings = _beam_directions(config)
    rng = np.random.default_rng(config.seed + 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        sweeps = [_sweep(config, meshes, cars[k], ego[k], dirs, rings, rng) for k in range(config.frames)]
        files = []
        for k, (world, oid, ground, ring) in enumerate(sweeps):
            arrays = {"points": _to_frame(ego[k], world).astype(np.float32), "time": np.float64(times[k]),
                      "ego_pose": ego[k], "object_id": oid, "is_ground": ground, "dynamic": moving[oid], "ring": ring}
            if k + 1 < config.frames:
                arrays["flow"] = _flow(world, oid, cars[k], cars[k + 1], ego[k], ego[k + 1])
            files.append(f"frame_{k:04d}.npz")
            np.savez(tmp / files[-1], **arrays)
        _write_objects(tmp / "objects.npz", meshes, cars, ego, times)
        _write_json(tmp / "synth_lidar.json", _description(config, layout, files, times))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _flow(world, oid, cars_k, cars_next, ego_k, ego_next) -> np.ndarray:
    """Analytic flow ``[N, 3]`` float32 of world points ``world`` on objects ``oid`` from frame k to k+1."""
    moved = world.copy()
    for j in np.unique(oid[oid > 0]):
        m = cars_next[j - 1] @ np.linalg.inv(cars_k[j - 1])
        sel = oid == j
        moved[sel] = world[sel] @ m[:3, :3].T + m[:3, 3]
    return (_to_frame(ego_next, moved) - _to_frame(ego_k, world)).astype(np.float32)


def _write_objects(path: Path, meshes: dict, cars, ego, times) -> None:
    np.savez(path, world_from_object=cars, world_from_ego=ego, times=times,
             ground_vertices=meshes["ground"][0], ground_faces=meshes["ground"][1],
             static_vertices=meshes["static"][0], static_faces=meshes["static"][1],
             car_vertices=meshes["car"][0], car_faces=meshes["car"][1])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _description(config: LidarSynthConfig, layout: dict, files: list[str], times) -> dict:
    return {
        "format": "omnifield-synth-lidar",
        "version": SYNTH_LIDAR_VERSION,
        "config": asdict(config),
        "ego": {"x0": 0.0, "y0": 0.0, "heading0": 0.0, "speed": config.ego_speed, "yaw_rate": config.ego_yaw_rate},
        **layout,
        "car_shape": {"body_lwh_clearance": list(_CAR_BODY), "cabin_lwh": list(_CAR_CABIN)},
        "frames": [{"file": f, "time": float(t)} for f, t in zip(files, times)],
        "conventions": {
            "world": "z up, metres, ground plane z = 0",
            "ego_pose": "world_from_ego [4,4]; the ego frame is on the ground under the sensor, x forward, y left",
            "points": "float32 in the frame's ego coordinates",
            "flow": "points + flow = the point's position at the next frame's time in the next frame's ego "
                    "coordinates (ego motion included); absent in the last frame",
            "object_id": "0 = static world (ground included), j = car j (objects.npz world_from_object[:, j-1])",
            "motion": "unicycle: heading(t) = heading0 + yaw_rate t, constant speed along the heading",
            "sweep": "every ray of a sweep is cast at the frame's time (no rolling shutter)",
        },
    }


# ----------------------------------------------------------------------------- reading


def load_synth_lidar(path):
    """Read a folder written by :func:`synthesize_lidar` as a ``synth_lidar`` :class:`PointCloudSequence`
    (``labels``: ``object_id``, ``ring``; ``metadata``: ``world_from_object [F, K, 4, 4]``, ``rate_hz``, ``config``)."""
    from omnifield.datasets.pointclouds import _make_frame, _read_npz, _sequence

    root = Path(path)
    meta_path = root / "synth_lidar.json"
    try:
        meta = json.loads(meta_path.read_text())
        entries = [(e["file"], float(e["time"])) for e in meta["frames"]]
    except FileNotFoundError:
        raise DataError("file not found", meta_path) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"malformed synth_lidar.json ({type(e).__name__}: {e})", meta_path) from None
    objects = _read_npz(root / "objects.npz")
    if "world_from_object" not in objects:
        raise DataError(f"objects.npz lacks world_from_object (has {sorted(objects)})", root / "objects.npz")
    frames = []
    for k, (name, _) in enumerate(entries):
        data = _read_npz(root / name)
        missing = {"points", "time", "ego_pose", "object_id"} - set(data)
        if missing:
            raise DataError(f"frame npz lacks {sorted(missing)} (has {sorted(data)})", root / name)
        labels = {"object_id": data["object_id"].astype(np.int32)}
        if "ring" in data:
            labels["ring"] = data["ring"]
        frames.append(_make_frame(root / name, "points", data["points"], time=float(data["time"]),
                                  ego_pose=data["ego_pose"], flow=data.get("flow"), is_ground=data.get("is_ground"),
                                  dynamic=data.get("dynamic"), labels=labels))
    return _sequence(frames, root, "synth_lidar", world_from_object=objects["world_from_object"],
                     rate_hz=meta.get("config", {}).get("rate_hz"), config=meta.get("config"))


def true_positions(seq, k: int, ref: int) -> np.ndarray:
    """Frame ``k``'s points moved rigidly with their object to frame ``ref``'s time, in WORLD coordinates
    (``[N, 3]`` float64): the oracle of sweep accumulation. ``seq``: a ``synth_lidar`` sequence or its folder."""
    if not hasattr(seq, "frames"):
        seq = load_synth_lidar(seq)
    n = len(seq.frames)
    if not (0 <= k < n and 0 <= ref < n):
        raise IndexError(f"true_positions: frames k={k}, ref={ref} outside 0..{n - 1}")
    wfo = np.asarray(seq.metadata["world_from_object"], dtype=np.float64)
    frame = seq.frames[k]
    pose = frame.ego_pose
    world = frame.points.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
    oid = frame.labels["object_id"]
    for j in np.unique(oid[oid > 0]):
        m = wfo[ref, j - 1] @ np.linalg.inv(wfo[k, j - 1])
        sel = oid == j
        world[sel] = world[sel] @ m[:3, :3].T + m[:3, 3]
    return world


def scene_mesh(path, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scene at frame ``k``'s time in world coordinates: ``vertices [V, 3]`` float64, ``faces [F, 3]``
    int64, ``face_object [F]`` int32 (0 static, j car j), ``face_ground [F]`` bool."""
    data = np.load(Path(path) / "objects.npz", allow_pickle=False)
    cars = data["world_from_object"][k]
    parts, obj, ground = [], [], []
    for name, oid, is_ground in (("ground", 0, True), ("static", 0, False)):
        v, f = data[f"{name}_vertices"], data[f"{name}_faces"]
        parts.append((v, f))
        obj.append(np.full(len(f), oid, np.int32))
        ground.append(np.full(len(f), is_ground))
    cv, cf = data["car_vertices"], data["car_faces"]
    for j, pose in enumerate(cars):
        parts.append((cv @ pose[:3, :3].T + pose[:3, 3], cf))
        obj.append(np.full(len(cf), j + 1, np.int32))
        ground.append(np.zeros(len(cf), bool))
    v, f = _merge(parts)
    return v.astype(np.float64), f.astype(np.int64), np.concatenate(obj), np.concatenate(ground)
