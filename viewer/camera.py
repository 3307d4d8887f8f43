"""The viewer's camera: a frozen :class:`ViewCamera` and pure functions that move it.

Every function returns a new camera; nothing here renders or touches a display. Conventions are the
toolkit's: ``c2w`` is camera-to-world in OpenCV axes (x right, y down, z forward) in the run's
normalised world, float64. ``target`` is the orbit centre and always lies on the optical axis for
cameras made here, so it projects to the image centre. ``up`` is the world's up direction that
orbits and fly-throughs keep level (by default estimated from the dataset cameras, as nerfstudio
does).

Nothing here is differentiable (numpy float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras

MIN_DISTANCE = 1e-4
MAX_DISTANCE = 1e5
MAX_ELEVATION = math.radians(89.0)  # orbits and look-arounds stop this short of the poles
MIN_FOV, MAX_FOV = 1.0, 170.0
DEFAULT_FOV = 50.0


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n < 1e-12:
        raise ValueError(f"cannot normalise a zero vector {v}")
    return v / n


@dataclass(frozen=True, eq=False)
class ViewCamera:
    """An interactive camera.

    Attributes:
        c2w: ``[4, 4]`` float64 camera-to-world, OpenCV axes, run world.
        target: ``[3]`` float64 orbit centre (on the optical axis).
        fov_y_deg: vertical field of view in degrees.
        up: ``[3]`` float64 unit world up.
    """

    c2w: np.ndarray
    target: np.ndarray
    fov_y_deg: float = DEFAULT_FOV
    up: np.ndarray = (0.0, 0.0, 1.0)

    def __post_init__(self):
        c2w = np.array(self.c2w, dtype=np.float64).reshape(4, 4)
        target = np.array(self.target, dtype=np.float64).reshape(3)
        up = _unit(np.array(self.up, dtype=np.float64).reshape(3))
        if not (np.isfinite(c2w).all() and np.isfinite(target).all()):
            raise ValueError("ViewCamera: c2w and target must be finite")
        for a in (c2w, target, up):
            a.setflags(write=False)
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "up", up)
        object.__setattr__(self, "fov_y_deg", float(self.fov_y_deg))

    def __eq__(self, other) -> bool:
        if not isinstance(other, ViewCamera):
            return NotImplemented
        return (np.array_equal(self.c2w, other.c2w) and np.array_equal(self.target, other.target)
                and self.fov_y_deg == other.fov_y_deg and np.array_equal(self.up, other.up))

    __hash__ = None

    @property
    def eye(self) -> np.ndarray:
        """``[3]`` camera centre."""
        return self.c2w[:3, 3]

    @property
    def forward(self) -> np.ndarray:
        """``[3]`` unit viewing direction (camera +z)."""
        return self.c2w[:3, 2]

    @property
    def distance(self) -> float:
        """Distance from the eye to the target."""
        return float(np.linalg.norm(self.target - self.eye))


def look_at_np(eye, target, up) -> np.ndarray:
    """``[4, 4]`` float64 camera-to-world at ``eye`` looking at ``target`` (same frame as ``scenes.camera_paths.look_at``)."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = _unit(target - eye)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:  # looking along up: any right vector will do
        alt = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x = np.cross(z, alt)
    x = _unit(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def rotation(axis, angle: float) -> np.ndarray:
    """``[3, 3]`` rotation by ``angle`` radians about ``axis`` (right-hand rule, Rodrigues)."""
    k = _unit(np.asarray(axis, np.float64))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _rigid(cam: ViewCamera, r: np.ndarray, pivot: np.ndarray) -> ViewCamera:
    """Rotate eye, orientation and target rigidly by ``r`` about ``pivot``."""
    c2w = np.eye(4)
    c2w[:3, :3] = r @ cam.c2w[:3, :3]
    c2w[:3, 3] = pivot + r @ (cam.eye - pivot)
    return ViewCamera(c2w, pivot + r @ (cam.target - pivot), cam.fov_y_deg, cam.up)


def _elevation(v: np.ndarray, up: np.ndarray) -> float:
    return math.asin(float(np.clip(_unit(v) @ up, -1.0, 1.0)))


def _clamp_elevation(el: float, delta: float) -> float:
    """``el + delta`` clamped to +-MAX_ELEVATION (a camera already beyond it may only move back)."""
    limit = max(MAX_ELEVATION, abs(el))
    return float(np.clip(el + delta, -limit, limit))


def orbit(cam: ViewCamera, d_azimuth: float, d_elevation: float) -> ViewCamera:
    """Orbit the eye around ``cam.target``: ``d_azimuth`` radians about world up (right-hand rule),
    then ``d_elevation`` radians towards up (positive raises the eye).

    The distance to the target is kept; the camera turns with the eye, so a target at the image
    centre stays there and a level camera stays level. The elevation is clamped to
    ``+-MAX_ELEVATION`` (short of the poles). ``orbit(cam, 2 * pi, 0)`` returns to ``cam``.
    """
    offset = cam.eye - cam.target
    if np.linalg.norm(offset) < 1e-12:
        return cam
    el = _elevation(offset, cam.up)
    new_el = _clamp_elevation(el, d_elevation)
    axis = np.cross(offset, cam.up)
    if np.linalg.norm(axis) < 1e-9 * np.linalg.norm(offset):
        axis = cam.c2w[:3, 0]  # at a pole: tilt about the camera's right axis
    r = rotation(cam.up, d_azimuth) @ rotation(axis, new_el - el)
    return _rigid(cam, r, cam.target)


def pan(cam: ViewCamera, dx: float, dy: float) -> ViewCamera:
    """Translate eye and target by the same vector in the image plane.

    ``dx`` along the camera's x (right) and ``dy`` along its y (down) axis, in units of the distance
    to the target (so a drag feels the same at every zoom). To make the scene follow a mouse drag of
    ``(px, py)`` pixels in an image ``height`` pixels tall, pass
    ``-px * s, -py * s`` with ``s = 2 * tan(fov_y / 2) / height``.
    """
    delta = (dx * cam.c2w[:3, 0] + dy * cam.c2w[:3, 1]) * max(cam.distance, MIN_DISTANCE)
    return _translate(cam, delta)


def _translate(cam: ViewCamera, delta: np.ndarray) -> ViewCamera:
    c2w = cam.c2w.copy()
    c2w[:3, 3] += delta
    return ViewCamera(c2w, cam.target + delta, cam.fov_y_deg, cam.up)


def zoom(cam: ViewCamera, factor: float, *, min_distance: float = MIN_DISTANCE,
         max_distance: float = MAX_DISTANCE) -> ViewCamera:
    """Move the eye along the line to the target so that the distance becomes ``distance * factor``,
    clamped to ``[min_distance, max_distance]``; orientation and target are kept."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"zoom: factor must be positive and finite, got {factor}")
    d = cam.distance
    new_d = float(np.clip(d * factor, min_distance, max_distance))
    direction = (cam.eye - cam.target) / d if d > 1e-12 else -cam.forward
    c2w = cam.c2w.copy()
    c2w[:3, 3] = cam.target + direction * new_d
    return ViewCamera(c2w, cam.target, cam.fov_y_deg, cam.up)


def fly(cam: ViewCamera, forward: float, right: float, up: float) -> ViewCamera:
    """WASD/QE translation of eye and target: ``forward`` along the view direction, ``right`` along
    the camera's x axis, ``up`` along world up (world units)."""
    delta = forward * cam.forward + right * cam.c2w[:3, 0] + up * cam.up
    return _translate(cam, delta)


def look(cam: ViewCamera, d_yaw: float, d_pitch: float) -> ViewCamera:
    """Turn the camera in place (the eye stays, the target moves with the view).

    Positive ``d_yaw`` (radians, about world up) turns the view to the right; positive ``d_pitch``
    tilts it up, clamped so the view direction stays ``MAX_ELEVATION`` short of the poles.
    """
    pitch = _elevation(cam.forward, cam.up)
    new_pitch = _clamp_elevation(pitch, d_pitch)
    # About +up a positive angle turns left (right = forward x up); about the camera's x axis a
    # positive angle tilts the view towards -y, the image's up.
    r = rotation(cam.up, -d_yaw) @ rotation(cam.c2w[:3, 0], new_pitch - pitch)
    return _rigid(cam, r, cam.eye.copy())


def with_fov(cam: ViewCamera, deg: float) -> ViewCamera:
    """The same camera with vertical field of view ``deg``, clamped to ``[MIN_FOV, MAX_FOV]``."""
    if not math.isfinite(deg):
        raise ValueError(f"with_fov: field of view must be finite, got {deg}")
    return ViewCamera(cam.c2w, cam.target, float(np.clip(deg, MIN_FOV, MAX_FOV)), cam.up)


def focal_from_fov(fov_y_deg: float, height: int) -> float:
    """Focal length in pixels for a vertical field of view over ``height`` pixels."""
    return 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)


def to_cameras(cam: ViewCamera, width: int, height: int) -> Cameras:
    """One pinhole :class:`Cameras` of ``width x height`` pixels: ``fy`` from ``fov_y_deg``, ``fx = fy``,
    principal point at the image centre, pose ``cam.c2w`` (float32)."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ValueError(f"to_cameras: image size must be positive, got {width}x{height}")
    f = focal_from_fov(cam.fov_y_deg, height)
    return Cameras.create(torch.from_numpy(cam.c2w.copy()).float(), f, f, width / 2, height / 2, width, height)


def from_cameras(cameras: Cameras, i: int, target=None, up=None) -> ViewCamera:
    """Snap to dataset camera ``i``: its pose, ``fov_y`` from its ``fy`` and height.

    ``target``: a ``[3]`` point; the orbit centre becomes the point of the optical axis at the
    target's depth (so it stays at the image centre). Default: the point of the optical axis nearest
    the world origin (where parsers centre the scene), at least 1e-2 in front. ``up``: default
    :func:`~omnifield.scenes.camera_paths.estimate_up` of all ``cameras``.
    """
    from omnifield.scenes.camera_paths import estimate_up

    if not 0 <= i < len(cameras):
        raise IndexError(f"from_cameras: camera {i} out of range for {len(cameras)} cameras")
    c2w = cameras.c2w[i].detach().double().cpu().numpy()
    eye, fwd = c2w[:3, 3], c2w[:3, 2] / np.linalg.norm(c2w[:3, 2])
    point = np.zeros(3) if target is None else np.asarray(target, np.float64).reshape(3)
    depth = float((point - eye) @ fwd)
    if target is None:
        depth = max(depth, 1e-2)
    elif depth <= 1e-6:
        raise ValueError(f"from_cameras: target {point.tolist()} is behind camera {i}")
    fov = math.degrees(2 * math.atan(0.5 * float(cameras.height[i]) / float(cameras.fy[i])))
    up = estimate_up(cameras).double().numpy() if up is None else up
    return ViewCamera(c2w, eye + depth * fwd, fov, up)


def default_view(scene_box, cameras: Cameras | None = None, fov_y_deg: float = DEFAULT_FOV) -> ViewCamera:
    """A camera looking at the centre of ``scene_box`` (``[2, 3]`` min, max).

    With dataset ``cameras``: world up from them, distance their median distance to the centre,
    direction their mean direction when they face the scene from one side (forward-facing captures),
    else camera 0's (captures all around). Without: up is +z and the eye sits on a diagonal, far
    enough for the box's bounding sphere to fit the field of view.
    """
    from omnifield.scenes.camera_paths import estimate_up

    box = np.asarray(torch.as_tensor(scene_box).detach().double().cpu().numpy(), np.float64).reshape(2, 3)
    centre = box.mean(0)
    radius = max(0.5 * float(np.linalg.norm(box[1] - box[0])), 1e-3)
    if cameras is not None and len(cameras) > 0:
        up = estimate_up(cameras).double().numpy()
        rel = cameras.c2w[:, :3, 3].detach().double().cpu().numpy() - centre
        dist = np.linalg.norm(rel, axis=-1)
        ok = dist > 1e-9
        if ok.any():
            units = rel[ok] / dist[ok, None]
            mean = units.mean(0)
            direction = mean / np.linalg.norm(mean) if np.linalg.norm(mean) > 0.5 else units[0]
            distance = float(np.median(dist[ok]))
            if abs(direction @ up) > math.sin(MAX_ELEVATION):  # straight above: tilt off the pole
                direction = _unit(direction + 0.1 * _any_perpendicular(up))
            return ViewCamera(look_at_np(centre + direction * distance, centre, up), centre, fov_y_deg, up)
    up = np.array([0.0, 0.0, 1.0])
    direction = _unit(np.array([1.0, -1.0, 0.7]))
    distance = 1.1 * radius / math.sin(math.radians(fov_y_deg) / 2)
    return ViewCamera(look_at_np(centre + direction * distance, centre, up), centre, fov_y_deg, up)


def _any_perpendicular(v: np.ndarray) -> np.ndarray:
    alt = np.array([1.0, 0.0, 0.0]) if abs(v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    return _unit(np.cross(v, alt))


def frustum_corners(cameras: Cameras, scale: float) -> np.ndarray:
    """Each camera as a pyramid ``scale`` deep: ``[C, 5, 3]`` float64 points (centre, then the image
    corners top-left, top-right, bottom-right, bottom-left at depth ``scale``; pinhole, distortion ignored)."""
    c2w = cameras.c2w.detach().double().cpu().numpy()
    fx, fy, cx, cy = (t.detach().double().cpu().numpy() for t in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
    w, h = cameras.width.cpu().numpy().astype(np.float64), cameras.height.cpu().numpy().astype(np.float64)
    us = np.stack([np.zeros_like(w), w, w, np.zeros_like(w)], -1)  # [C, 4] corners: tl, tr, br, bl
    vs = np.stack([np.zeros_like(h), np.zeros_like(h), h, h], -1)
    local = np.stack([(us - cx[:, None]) / fx[:, None], (vs - cy[:, None]) / fy[:, None], np.ones_like(us)], -1) * scale
    corners = np.einsum("cij,ckj->cki", c2w[:, :3, :3], local) + c2w[:, None, :3, 3]  # [C, 4, 3]
    return np.concatenate([c2w[:, None, :3, 3], corners], 1)


def frustum_segments(points: np.ndarray) -> np.ndarray:
    """:func:`frustum_corners` ``[C, 5, 3]`` -> line segments ``[8 * C, 2, 3]``: per camera the 4 edges
    from the centre to the corners, then the 4 edges of the image rectangle (top edge first)."""
    apex, corners = np.broadcast_to(points[:, :1], points[:, 1:].shape), points[:, 1:]
    spokes = np.stack([apex, corners], 2)  # [C, 4, 2, 3]
    rim = np.stack([corners, np.roll(corners, -1, axis=1)], 2)  # tl-tr, tr-br, br-bl, bl-tl
    return np.concatenate([spokes, rim], 1).reshape(-1, 2, 3)


def frustum_lines(cameras: Cameras, scale: float) -> np.ndarray:
    """Line segments ``[8 * C, 2, 3]`` float32 drawing each camera as a pyramid ``scale`` deep.

    Per camera: 4 edges from the centre to the image corners (pinhole, distortion ignored) at depth
    ``scale``, then the 4 edges of the image rectangle (top edge first, so it can be highlighted).
    """
    return frustum_segments(frustum_corners(cameras, scale)).astype(np.float32)


def project_points(cam: ViewCamera, width: int, height: int, points) -> tuple[np.ndarray, np.ndarray]:
    """Project world points ``[N, 3]`` into the view: ``(pixels [N, 2], depth [N])`` float64.

    Pixels follow :meth:`Cameras.project` (pinhole); ``depth`` is the camera-space z, and the pixels
    of points with ``depth <= 0`` (behind the view) are meaningless.
    """
    p = np.asarray(points, np.float64).reshape(-1, 3)
    w2c = np.linalg.inv(cam.c2w)
    pc = p @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    f = focal_from_fov(cam.fov_y_deg, height)
    zz = np.where(np.abs(z) < 1e-12, 1e-12, z)
    return np.stack([f * pc[:, 0] / zz + width / 2, f * pc[:, 1] / zz + height / 2], -1), z


def project_segments(cam: ViewCamera, width: int, height: int, segments, near: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Project world segments ``[K, 2, 3]`` into the view: ``(pixels [K, 2, 2], keep [K] bool)``.

    Segments are clipped at the plane ``z = near`` in front of the camera; ``keep`` is False for
    segments wholly behind it. Pixel coordinates follow :meth:`Cameras.project` (pinhole). Lines
    outside the image are kept (the drawing layer clips them).
    """
    seg = np.asarray(segments, np.float64).reshape(-1, 2, 3)
    w2c = np.linalg.inv(cam.c2w)
    pc = seg @ w2c[:3, :3].T + w2c[:3, 3]  # [K, 2, 3]
    z = pc[..., 2]
    keep = (z > near).any(-1)
    a, b = pc[:, 0], pc[:, 1]
    za, zb = z[:, 0:1], z[:, 1:2]
    denom = np.where(np.abs(zb - za) < 1e-12, 1.0, zb - za)
    t = np.clip((near - za) / denom, 0.0, 1.0)
    clipped = a + t * (b - a)
    a = np.where(za < near, clipped, a)
    t2 = np.clip((near - zb) / np.where(np.abs(za - zb) < 1e-12, 1.0, za - zb), 0.0, 1.0)
    b = np.where(zb < near, b + t2 * (pc[:, 0] - b), b)
    pts = np.stack([a, b], 1)
    f = focal_from_fov(cam.fov_y_deg, height)
    zz = np.maximum(pts[..., 2], near)
    pix = np.stack([f * pts[..., 0] / zz + width / 2, f * pts[..., 1] / zz + height / 2], -1)
    return pix, keep
