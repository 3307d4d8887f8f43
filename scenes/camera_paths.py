"""Camera paths for videos and the viewer: orbits, spirals, dataset cameras, keyframe interpolation, JSON files.

Every path is a :class:`~omnifield.datasets.cameras.Cameras` batch in the run's normalised world
(OpenCV axes). Files store cameras in the dataset's ORIGINAL coordinates so that a path stays valid
for every run trained on that dataset; :func:`load_camera_path` maps them into a run's world with
its ``world_from_dataset`` (rotations kept orthonormal, as :meth:`Cameras.transformed` does).

Our JSON format::

    {"format": "omnifield-camera-path", "coordinates": "dataset", "convention": "opencv", "fps": 30,
     "cameras": [{"c2w": [[4 x 4]], "fx": .., "fy": .., "cx": .., "cy": .., "width": .., "height": ..,
                  "time": ..(optional)}]}

nerfstudio's ``camera_path.json`` is read too: ``camera_path[i].camera_to_world`` (16 numbers, row
major, OpenGL axes), ``fov`` (vertical, degrees), ``render_width`` / ``render_height``, optional
``render_time``. nerfstudio writes those poses in its own normalised world, which omnifield does not
know: they are read as dataset coordinates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras, opengl_to_opencv
from omnifield.errors import ConfigError, DataError
from omnifield.scenes.runs import atomic_write_bytes

FORMAT_NAME = "omnifield-camera-path"
PATH_NAMES = ("orbit", "spiral", "dataset", "train", "val", "test")


# -- pure geometry ------------------------------------------------------------------------------
def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> Tensor:
    """Camera-to-world ``[4, 4]`` (OpenCV axes: x right, y down, z forward) at ``eye`` looking at ``target``.

    ``eye``, ``target``, ``up``: ``[3]`` world vectors; ``up`` is the world's up direction (the image's
    y axis points along ``-up`` projected onto the image plane). Not differentiable through the
    degenerate case where the view direction is parallel to ``up`` (another up axis is picked).
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    forward = target - eye
    if float(forward.norm()) < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = forward / forward.norm()
    x = torch.linalg.cross(z, up)
    if float(x.norm()) < 1e-6:  # looking straight along up: any right vector will do
        alt = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        if abs(float(z @ alt)) > 0.9:
            alt = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
        x = torch.linalg.cross(z, alt)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w.float()


def rotation_to_quaternion(r: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> unit quaternions ``[..., 4]`` (w, x, y, z), w >= 0."""
    r = r.double()
    m = r.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack(
        [
            torch.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
            torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]], -1),
            torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], m[:, 1, 2] + m[:, 2, 1]], -1),
            torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
        ],
        dim=1,
    )  # [N, 4 candidates, 4]; the candidate with the largest norm is the numerically stable one
    best = cand.norm(dim=-1).argmax(dim=1)
    q = cand[torch.arange(len(m)), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*r.shape[:-2], 4)


def quaternion_to_rotation(q: Tensor) -> Tensor:
    """Quaternions ``[..., 4]`` (w, x, y, z; normalised here) -> rotation matrices ``[..., 3, 3]``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Spherical linear interpolation of unit quaternions ``[..., 4]`` at ``t [...]`` (shortest arc)."""
    dot = (q0 * q1).sum(-1)
    q1 = torch.where(dot[..., None] < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin = torch.sin(theta)
    small = sin < 1e-6
    a = torch.where(small, 1 - t, torch.sin((1 - t) * theta) / torch.where(small, torch.ones_like(sin), sin))
    b = torch.where(small, t, torch.sin(t * theta) / torch.where(small, torch.ones_like(sin), sin))
    q = a[..., None] * q0 + b[..., None] * q1
    return q / q.norm(dim=-1, keepdim=True)


def interpolate_path(keyframes: Cameras, n: int, *, method: str = "catmull-rom", loop: bool = False) -> Cameras:
    """``n`` cameras along keyframes: positions by uniform Catmull-Rom (or linear), rotations by slerp.

    ``keyframes``: ``K >= 1`` cameras. Frames are spaced uniformly in the keyframe parameter, the first
    and (unless ``loop``) the last frame sitting exactly on the first and last keyframes. With
    ``loop`` the path closes back on the first keyframe. Intrinsics and times are interpolated
    linearly; width and height come from the first keyframe.
    """
    if method not in ("catmull-rom", "linear"):
        raise ConfigError(f"interpolate_path: method must be 'catmull-rom' or 'linear', got {method!r}")
    k = len(keyframes)
    if k == 0 or n < 1:
        raise ValueError(f"interpolate_path: need >= 1 keyframe and n >= 1, got {k} keyframes, n={n}")
    c2w = keyframes.c2w.double()
    pos, quat = c2w[:, :3, 3], rotation_to_quaternion(c2w[:, :3, :3])
    segments = k if loop else k - 1
    u = torch.linspace(0, segments, n + 1 if loop else n, dtype=torch.float64)[:n] if segments > 0 else torch.zeros(n, dtype=torch.float64)
    i0 = u.floor().long().clamp(max=max(segments - 1, 0))
    t = u - i0
    idx = (lambda i: i % k) if loop else (lambda i: i.clamp(0, k - 1))
    p0, p1, p2, p3 = pos[idx(i0 - 1)], pos[idx(i0)], pos[idx(i0 + 1)], pos[idx(i0 + 2)]
    tt = t[:, None]
    if method == "linear":
        p = p1 + (p2 - p1) * tt
    else:  # uniform Catmull-Rom; at open ends the missing neighbour is the end point itself
        p = 0.5 * ((2 * p1) + (-p0 + p2) * tt + (2 * p0 - 5 * p1 + 4 * p2 - p3) * tt**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * tt**3)
    r = quaternion_to_rotation(slerp(quat[idx(i0)], quat[idx(i0 + 1)], t))
    out = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    out[:, :3, :3], out[:, :3, 3] = r, p

    def lerp(v: Tensor) -> Tensor:
        v = v.double()
        return (v[idx(i0)] * (1 - t) + v[idx(i0 + 1)] * t).float()

    return Cameras.create(
        out.float(), lerp(keyframes.fx), lerp(keyframes.fy), lerp(keyframes.cx), lerp(keyframes.cy),
        int(keyframes.width[0]), int(keyframes.height[0]),
        distortion=keyframes.distortion[:1].expand(n, -1), model=keyframes.model[:1].expand(n).clone(),
        times=None if keyframes.times is None else lerp(keyframes.times),
    )


# -- generated paths ----------------------------------------------------------------------------
def estimate_up(cameras: Cameras) -> Tensor:
    """``[3]`` world up estimated as the mean of the cameras' up axes (``-y`` in OpenCV), as nerfstudio does."""
    up = -cameras.c2w[:, :3, 1].double().mean(0)
    if float(up.norm()) < 1e-6:
        return torch.tensor([0.0, 0.0, 1.0])
    return (up / up.norm()).float()


def _reference(cameras: Cameras, reference: int, n: int, times) -> dict:
    c = cameras[reference]
    return dict(fx=c.fx[0], fy=c.fy[0], cx=c.cx[0], cy=c.cy[0], width=int(c.width[0]), height=int(c.height[0]),
                times=None if times is None else torch.as_tensor(times, dtype=torch.float32).expand(n).clone())


def orbit(cameras: Cameras, n: int = 120, *, center=None, up=None, radius: float | None = None,
          elevation_deg: float | None = None, reference: int = 0, times=None) -> Cameras:
    """``n`` cameras on a circle around ``center`` looking at it, one full turn.

    ``cameras``: the dataset cameras (normalised world) that set the defaults: ``up`` from their mean
    up axis, ``center`` the origin unless given (parsers centre the world on the scene), ``radius``
    their mean distance from the centre, ``elevation_deg`` their mean elevation above the plane
    orthogonal to ``up``; the orbit starts at the azimuth of camera ``reference``, whose intrinsics
    every frame shares. ``times``: optional scalar or ``[n]`` normalised times.
    """
    center = torch.zeros(3) if center is None else torch.as_tensor(center, dtype=torch.float32)
    up = estimate_up(cameras) if up is None else torch.as_tensor(up, dtype=torch.float32)
    up = up / up.norm()
    rel = cameras.c2w[:, :3, 3] - center
    dist = rel.norm(dim=-1).clamp_min(1e-9)
    radius = float(dist.mean()) if radius is None else float(radius)
    if elevation_deg is None:
        elevation_deg = float(torch.rad2deg(torch.asin((rel @ up / dist).clamp(-1, 1))).mean())
    # An orthonormal frame (e1, e2, up) with e1 towards the reference camera's azimuth.
    e1 = rel[reference] - (rel[reference] @ up) * up
    if float(e1.norm()) < 1e-6:
        e1 = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]))
        if float(e1.norm()) < 1e-6:
            e1 = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0]))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    elev = math.radians(elevation_deg)
    c2ws = []
    for i in range(n):
        az = 2 * math.pi * i / n
        direction = math.cos(elev) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(elev) * up
        c2ws.append(look_at(center + radius * direction, center, up))
    ref = _reference(cameras, reference, n, times)
    return Cameras.create(torch.stack(c2ws), ref["fx"], ref["fy"], ref["cx"], ref["cy"], ref["width"], ref["height"],
                          times=ref["times"])


def spiral(cameras: Cameras, n: int = 120, *, center=None, rotations: float = 2.0, zrate: float = 0.5,
           radius_scale: float = 1.0, reference: int = 0, times=None) -> Cameras:
    """LLFF-style spiral (Mildenhall et al. 2019) around the mean camera pose, looking at ``center``.

    The mean pose has the mean position and mean axes of ``cameras``; the spiral's radii along its x,
    y and z axes are the 90th percentiles of the cameras' absolute offsets from it (times
    ``radius_scale``). The cameras look at ``center`` (default: the origin). Suits forward-facing
    captures, where an orbit would leave the captured region.
    """
    center = torch.zeros(3) if center is None else torch.as_tensor(center, dtype=torch.float32)
    pos = cameras.c2w[:, :3, 3]
    mean_pos = pos.mean(0)
    axes = cameras.c2w[:, :3, :3].mean(0)
    u, _, vh = torch.linalg.svd(axes.double())
    rot = (u @ vh).float()  # nearest rotation to the mean axes
    offsets = (pos - mean_pos) @ rot  # in the mean camera's frame
    radii = torch.quantile(offsets.abs().double(), 0.9, dim=0).float().clamp_min(1e-3) * radius_scale
    up = estimate_up(cameras)
    c2ws = []
    for i in range(n):
        th = 2 * math.pi * rotations * i / n
        local = torch.tensor([math.cos(th), -math.sin(th), -math.sin(th * zrate)]) * radii
        c2ws.append(look_at(mean_pos + rot @ local, center, up))
    ref = _reference(cameras, reference, n, times)
    return Cameras.create(torch.stack(c2ws), ref["fx"], ref["fy"], ref["cx"], ref["cy"], ref["width"], ref["height"],
                          times=ref["times"])


# -- files ---------------------------------------------------------------------------------------
def save_camera_path(cameras: Cameras, path, world_from_dataset=None, *, fps: float = 30.0) -> Path:
    """Write ``cameras`` (normalised world) as an omnifield camera-path JSON in dataset coordinates, atomically.

    ``world_from_dataset``: the run's ``[4, 4]`` similarity (identity when None).
    """
    path = Path(path)
    m = torch.eye(4) if world_from_dataset is None else torch.as_tensor(world_from_dataset, dtype=torch.float64)
    ds = cameras.transformed(torch.linalg.inv(m.double()).float())
    frames = []
    for i in range(len(ds)):
        frame = {
            "c2w": ds.c2w[i].double().tolist(),
            "fx": float(ds.fx[i]), "fy": float(ds.fy[i]), "cx": float(ds.cx[i]), "cy": float(ds.cy[i]),
            "width": int(ds.width[i]), "height": int(ds.height[i]),
        }
        if ds.times is not None:
            frame["time"] = float(ds.times[i])
        frames.append(frame)
    doc = {"format": FORMAT_NAME, "coordinates": "dataset", "convention": "opencv", "fps": float(fps), "cameras": frames}
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    return path


def read_camera_path_file(path) -> tuple[Cameras, float]:
    """Read an omnifield or nerfstudio camera-path JSON -> (cameras in DATASET coordinates, fps).

    Raises :class:`DataError` naming the file when it is missing, not JSON, or malformed.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError("camera path file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON: {e}", path) from None
    if not isinstance(doc, dict):
        raise DataError("a camera path must be a JSON object", path)
    try:
        if doc.get("format") == FORMAT_NAME or "cameras" in doc:
            cams = _parse_omnifield(doc, path)
        elif "camera_path" in doc:
            cams = _parse_nerfstudio(doc, path)
        else:
            raise DataError(f"unknown camera path format (expected 'format': '{FORMAT_NAME}' or nerfstudio's "
                            "'camera_path')", path)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"malformed camera path: {type(e).__name__}: {e}", path) from None
    fps = float(doc.get("fps", 30.0))
    return cams, fps


def _parse_omnifield(doc: dict, path: Path) -> Cameras:
    if doc.get("coordinates", "dataset") != "dataset":
        raise DataError(f"coordinates must be 'dataset', got {doc.get('coordinates')!r}", path)
    if doc.get("convention", "opencv") not in ("opencv", "opengl"):
        raise DataError(f"convention must be 'opencv' or 'opengl', got {doc.get('convention')!r}", path)
    frames = doc["cameras"]
    if not isinstance(frames, list) or not frames:
        raise DataError("'cameras' must be a non-empty list", path)
    c2w = torch.tensor([f["c2w"] for f in frames], dtype=torch.float64)
    if c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise DataError(f"each 'c2w' must be 4x4 or 3x4, got {tuple(c2w.shape[1:])}", path)
    if doc.get("convention", "opencv") == "opengl":
        c2w = opengl_to_opencv(c2w)
    has_time = all("time" in f for f in frames)
    return Cameras.create(
        c2w.float(), [float(f["fx"]) for f in frames], [float(f["fy"]) for f in frames],
        [float(f["cx"]) for f in frames], [float(f["cy"]) for f in frames],
        [int(f["width"]) for f in frames], [int(f["height"]) for f in frames],
        times=[float(f["time"]) for f in frames] if has_time else None,
    )


def _parse_nerfstudio(doc: dict, path: Path) -> Cameras:
    kind = doc.get("camera_type", "perspective")
    if kind != "perspective":
        raise DataError(f"only perspective nerfstudio camera paths are supported, got camera_type {kind!r}", path)
    frames = doc["camera_path"]
    if not isinstance(frames, list) or not frames:
        raise DataError("'camera_path' must be a non-empty list", path)
    w, h = int(doc["render_width"]), int(doc["render_height"])
    c2w = torch.tensor([f["camera_to_world"] for f in frames], dtype=torch.float64)
    if c2w.shape[1:] != (16,):
        raise DataError(f"each 'camera_to_world' must hold 16 numbers, got {tuple(c2w.shape[1:])}", path)
    c2w = opengl_to_opencv(c2w.reshape(-1, 4, 4))
    fov = torch.tensor([float(f["fov"]) for f in frames], dtype=torch.float64)
    fy = 0.5 * h / torch.tan(torch.deg2rad(fov) / 2)
    has_time = all(f.get("render_time") is not None for f in frames)
    return Cameras.create(c2w.float(), fy.float(), fy.float(), w / 2.0, h / 2.0, w, h,
                          times=[float(f["render_time"]) for f in frames] if has_time else None)


def load_camera_path(path_or_name, run, data=None, num_frames: int = 120) -> Cameras:
    """Cameras of a named path or a JSON file, in the run's normalised world.

    ``path_or_name``: ``"orbit"``, ``"spiral"`` (generated from the dataset cameras), ``"dataset"``
    (the training cameras), ``"train"``/``"val"``/``"test"`` (that split), or a camera-path JSON file
    (omnifield or nerfstudio format, dataset coordinates). ``run``: an object with
    ``world_from_dataset`` and ``info`` (stored cameras) or ``load_data()`` (a
    :class:`~omnifield.scenes.runs.Run`); ``data``: the run's SceneData when already loaded. ``num_frames``: frames of generated paths.
    """
    spec = str(path_or_name)
    if spec.lower().endswith(".json") or (spec not in PATH_NAMES and Path(spec).exists()):
        cams, _ = read_camera_path_file(spec)
        return cams.transformed(torch.as_tensor(run.world_from_dataset, dtype=torch.float32))
    if spec not in PATH_NAMES:
        raise ConfigError(f"unknown camera path {spec!r}: give a .json file or one of {', '.join(PATH_NAMES)}")
    if data is None:  # the cameras stored with the run, else the parsed dataset
        info = getattr(run, "info", None)
        data = info if info is not None else run.load_data()
    train = data.cameras[data.split("train")]
    times = None
    if data.cameras.times is not None:
        times = torch.linspace(0, 1, num_frames)
    box = getattr(run, "scene_box", None)
    box = data.scene_box if box is None else box
    center = torch.as_tensor(box, dtype=torch.float32).mean(0)
    if spec == "orbit":
        return orbit(train, num_frames, center=center, times=times)
    if spec == "spiral":
        return spiral(train, num_frames, center=center, times=times)
    split = "train" if spec == "dataset" else spec
    return data.cameras[data.split(split)]
