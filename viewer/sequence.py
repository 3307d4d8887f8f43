"""Point-cloud sequences in the viewer: lidar sweeps (or scene-flow pairs) placed in the world by their ego
poses, one frame per time-slider position, coloured by height, intensity or the dynamic label, with scene
flow drawn as line segments (the ``flow`` channel).

Everything :func:`~omnifield.datasets.pointclouds.load_point_clouds` reads opens here. Frame ``i`` is
shown in world coordinates with ``world_from_ego_i`` (its ``ego_pose``; else chained from the previous
frame with ``seq.next_from_this``; else identity). Flow follows the data convention (``points_i + flow_i``
is where each point is at frame ``i+1``'s time, in frame ``i+1``'s ego coordinates), so a vector is drawn
from ``world_from_ego_i @ p`` to ``world_from_ego_{i+1} @ (p + flow)``: with poses, static points have
(near) zero-length vectors and only moving things show arrows.

Rendering is one z-buffer pass of :func:`~omnifield.renderers.points.render_points` per frame whose
"colours" are the point indices, so every colour mode is a gather of per-point colour tables; the flow
segments are densified into samples (about one per pixel of their projected length) and drawn over the
points in a second pass, so screenshots and videos of the ``flow`` channel contain them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import DataError
from omnifield.renderers.points import render_points
from omnifield.renderers.types import RenderOutput
from omnifield.scenes.base import RenderOptions

MAX_VECTORS = 2000
"""Flow vectors drawn per frame at most (a seeded random subset): more reads as a solid smear."""
MIN_VECTOR_LENGTH = 0.05
"""World-space flow vectors shorter than this (metres; the strict-accuracy threshold) are not drawn."""
VECTOR_SPACING = 0.75
"""Drawn vectors are at least about this many times their median length apart (one per voxel)."""
MAX_SEGMENT_SAMPLES = 1_500_000
"""Samples of all flow segments in one render at most (long segments get fewer per pixel past it)."""
CACHED_FRAMES = 8
"""Frames kept ready to render (world points and colour tables); others are rebuilt when shown."""
STATS_POINTS = 1_000_000
"""Points sampled (evenly over the sequence) for the height colour range and the scene box."""
FLOW_FILE_KEYS = ("flow", "points", "indices")
POINT_GREY = (0.72, 0.72, 0.72)
STATIC_COLOR = (0.45, 0.52, 0.62)
GROUND_COLOR = (0.78, 0.76, 0.68)
DYNAMIC_COLOR = (0.92, 0.12, 0.08)
LOW_INTENSITY = np.array([0.12, 0.14, 0.38])
HIGH_INTENSITY = np.array([1.0, 0.82, 0.08])


@dataclass(frozen=True)
class FlowVectors:
    """Flow vectors of one frame, ready to draw: ``segments [3K, 2, 3]`` float32 world (the ``K`` shafts
    (start, end), then the barbs of their heads, see :func:`arrow_segments`), ``colors [3K, 3]`` float32 in
    [0, 1] (by length), ``source`` (``"ground truth"`` or the file), ``total``: rows with a valid flow."""

    segments: np.ndarray
    colors: np.ndarray
    source: str
    total: int


def read_flow_file(path) -> dict[str, np.ndarray]:
    """A ``flow.npz`` written by ``omnifield flow estimate``: ``flow [N, 3]``, ``points [N, 3]`` (the rows
    used, in PC1's ego frame), ``indices [N]`` (their rows in PC1). DataError naming the file when a key
    is missing or the shapes disagree."""
    p = Path(path)
    if not p.is_file():
        raise DataError("no such flow file", p)
    try:
        with np.load(p) as z:
            found = sorted(z.files)
            missing = [k for k in FLOW_FILE_KEYS if k not in z.files]
            if missing:
                raise DataError(f"not a flow file: missing {', '.join(missing)} "
                                f"(found {', '.join(found) or 'nothing'}; expected flow [N,3], points [N,3], "
                                "indices [N] as `omnifield flow estimate` writes)", p)
            out = {k: np.asarray(z[k]) for k in FLOW_FILE_KEYS}
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read the flow file ({type(e).__name__}: {e})", p) from None
    n = len(out["points"])
    if out["points"].shape != (n, 3) or out["flow"].shape != (n, 3) or out["indices"].shape != (n,):
        raise DataError(f"flow {out['flow'].shape}, points {out['points'].shape} and indices {out['indices'].shape} "
                        "must be [N, 3], [N, 3] and [N] with one N", p)
    return {"flow": out["flow"].astype(np.float32), "points": out["points"].astype(np.float32),
            "indices": out["indices"].astype(np.int64)}


def frame_poses(seq) -> list[np.ndarray]:
    """``world_from_ego [4, 4]`` float64 of every frame: its ``ego_pose``; else the previous frame's pose
    times ``inv(seq.next_from_this(i - 1))`` when that is known (e.g. AV2's ``ego1_SE3_ego0``); else identity."""
    poses: list[np.ndarray] = []
    for i, f in enumerate(seq.frames):
        if f.ego_pose is not None:
            poses.append(np.asarray(f.ego_pose, np.float64).reshape(4, 4))
            continue
        rel = _next_from_this(seq, i - 1) if i > 0 else None
        poses.append(poses[-1] @ np.linalg.inv(rel) if rel is not None else np.eye(4))
    return poses


def _next_from_this(seq, i: int) -> np.ndarray | None:
    fn = getattr(seq, "next_from_this", None)
    rel = fn(i) if fn is not None and 0 <= i < len(seq.frames) - 1 else None
    return None if rel is None else np.asarray(rel, np.float64).reshape(4, 4)


def _apply(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (np.asarray(points, np.float64) @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)


def frame_times(seq) -> np.ndarray:
    """``[F]`` float64 times of the frames for the slider: their ``time`` when strictly increasing, else
    the frame indices (pairs and sweeps without timestamps)."""
    t = np.array([float(f.time) for f in seq.frames], np.float64)
    if len(t) > 1 and np.all(np.isfinite(t)) and np.all(np.diff(t) > 0):
        return t
    return np.arange(len(t), dtype=np.float64)


def select_vectors(start: np.ndarray, end: np.ndarray, *, max_vectors: int = MAX_VECTORS,
                   min_length: float = MIN_VECTOR_LENGTH, spacing: float = VECTOR_SPACING, seed: int = 0) -> np.ndarray:
    """Rows of the vectors to draw, in row order: finite, at least ``min_length`` long, and spread out so
    that arrows do not pile up: one per voxel (a seeded random row in each) of ``spacing`` times their
    median length, the voxel doubled until at most ``max_vectors`` remain."""
    length = np.linalg.norm(end - start, axis=-1)
    rows = np.flatnonzero(np.isfinite(length) & (length >= min_length) & np.isfinite(start).all(-1))
    if len(rows) == 0:
        return rows
    rows = np.random.default_rng(seed).permutation(rows)
    p = start[rows].astype(np.float64)
    lo, extent = p.min(0), max(float(np.ptp(p, axis=0).max()), 1e-9)
    voxel = spacing * float(np.median(length[rows]))
    if voxel <= 0:
        if len(rows) <= max_vectors:
            return np.sort(rows)
        voxel = extent / 4096
    while True:
        _, first = np.unique(np.floor((p - lo) / voxel).astype(np.int64), axis=0, return_index=True)
        if len(first) <= max_vectors:
            return np.sort(rows[first])
        voxel *= 2


def arrow_segments(start: np.ndarray, end: np.ndarray, head: float = 0.25) -> np.ndarray:
    """Arrows from ``start [K, 3]`` to ``end [K, 3]`` as ``[3K, 2, 3]`` float32 segments: the shafts, then
    the two barbs of each head (``head`` of the length long, in the plane of the arrow and world +z, or
    of +x for vertical arrows)."""
    a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
    v = b - a
    side = np.cross(v, [0.0, 0.0, 1.0])
    flat = np.linalg.norm(side, axis=-1) < 1e-9 * np.maximum(np.linalg.norm(v, axis=-1), 1e-30)
    side[flat] = np.cross(v[flat], [1.0, 0.0, 0.0])
    side *= (np.linalg.norm(v, axis=-1) / np.maximum(np.linalg.norm(side, axis=-1), 1e-30))[:, None]
    back = b - head * v
    barbs = [np.stack([b, back + s * 0.5 * head * side], 1) for s in (1.0, -1.0)]
    return np.concatenate([np.stack([a, b], 1)] + barbs).astype(np.float32)


def magnitude_colors(length: np.ndarray, vmax: float) -> np.ndarray:
    """``[K]`` values -> ``[K, 3]`` float32 colours: turbo from blue (0) to red (``vmax`` and beyond); the
    map's near-black ends are left out so points read on white and dark backgrounds alike."""
    from omnifield.scenes.video import turbo

    x = np.clip(np.asarray(length, np.float64) / max(vmax, 1e-9), 0, 1)
    return turbo(0.1 + 0.8 * x).astype(np.float32)


def segment_samples(segments: Tensor, colors: Tensor, cameras: Cameras, near: float = 1e-3,
                    max_samples: int = MAX_SEGMENT_SAMPLES) -> tuple[Tensor, Tensor]:
    """Densify world segments ``[K, 2, 3]`` into points along them for the point renderer.

    Each segment is clipped to the camera's near plane and sampled uniformly in 3D, about two samples per
    pixel of its projected length (more where perspective compresses one end; at most ``2 (W + H)`` per
    segment and ``max_samples`` in all). Returns ``points [M, 3]`` and their ``colors [M, 3]``.
    """
    cam = cameras[0]
    dev = segments.device
    c2w = cam.c2w[0].to(dev).float()
    seg = segments.float()
    z = ((seg - c2w[:3, 3]) @ c2w[:3, 2])  # [K, 2] camera-space depth (OpenCV: +z forward)
    keep = (z > near).any(-1)
    seg, z, colors = seg[keep], z[keep], colors[keep]
    if len(seg) == 0:
        return seg.reshape(0, 3), colors.reshape(0, 3)
    a, b = seg[:, 0], seg[:, 1]
    za, zb = z[:, 0], z[:, 1]
    # Clip the part behind the near plane: move the behind end to where the segment crosses it.
    t = ((near - za) / (zb - za).where((zb - za).abs() > 1e-12, torch.ones_like(za))).clamp(0, 1)[:, None]
    a2 = torch.where((za <= near)[:, None], a + t * (b - a), a)
    b2 = torch.where((zb <= near)[:, None], a + t * (b - a), b)
    za2, zb2 = torch.maximum(za, za.new_tensor(near)), torch.maximum(zb, zb.new_tensor(near))
    pix, _ = cam.project(torch.cat([a2, b2]))
    pix = pix[0].reshape(2, -1, 2)
    w, h = int(cam.width[0]), int(cam.height[0])
    length = (pix[1] - pix[0]).norm(dim=-1).nan_to_num(0.0, posinf=0.0).clamp(max=4.0 * (w + h))
    stretch = (torch.maximum(za2, zb2) / torch.minimum(za2, zb2)).clamp(1, 8)
    n = (2 * length * stretch).ceil().long().clamp(2, 2 * (w + h))
    if int(n.sum()) > max_samples:
        n = (n.double() * max_samples / float(n.sum())).floor().long().clamp_min(2)
    seg_id = torch.repeat_interleave(torch.arange(len(n), device=dev), n)
    first = torch.cumsum(n, 0) - n
    u = (torch.arange(len(seg_id), device=dev) - first[seg_id]).float() / (n[seg_id] - 1).float()
    points = a2[seg_id] + u[:, None] * (b2[seg_id] - a2[seg_id])
    return points, colors[seg_id]


@dataclass
class _Frame:
    """One frame ready to render: world points and per-mode colour tables (all on the source's device)."""

    points: Tensor  # [N, 3] float32 world
    tables: dict  # channel -> [N, 3] float32 colours
    flow: dict  # channel ("flow", "gt_flow") -> (segments [K, 2, 3], colors [K, 3]) tensors


class SequenceSource:
    """A :class:`~omnifield.datasets.pointclouds.PointCloudSequence` as a time-varying view source.

    ``seq``: the sequence (any object with ``frames``, ``path``, ``format``, ``metadata`` and optionally
    ``next_from_this(i)``). ``flow``: a ``flow.npz`` path (or its :func:`read_flow_file` dict) drawn as the
    ``flow`` channel on the frame whose rows it indexes (the ground truth then shows as ``gt_flow``).

    Channels: ``rgb`` (colour by world height, turbo over the sequence's 1st..99th percentile), ``alpha``,
    ``depth``; ``intensity`` and ``dynamic`` (red = moving, blue-grey = static, beige = ground) when any
    frame has them; ``flow`` (grey points, vectors coloured by length) when any frame has flow.
    The time slider spans the frame times (:func:`frame_times`); a time shows the nearest frame.
    """

    kind = "sequence"

    def __init__(self, seq, name: str | None = None, *, flow=None, device="cpu", point_size_px: float = 2.0,
                 flow_width_px: float = 2.0, max_vectors: int = MAX_VECTORS, min_length: float = MIN_VECTOR_LENGTH):
        if len(seq.frames) == 0:
            raise DataError("the sequence has no frames", getattr(seq, "path", None) or None)
        self.seq = seq
        self.name = name or Path(str(getattr(seq, "path", "") or "sequence")).name
        self.device = torch.device(device)
        self.point_size_px, self.flow_width_px = float(point_size_px), float(flow_width_px)
        self.times = frame_times(seq)
        self.time_range = (float(self.times[0]), float(self.times[-1])) if len(self.times) > 1 else None
        self.poses = frame_poses(seq)
        self.dataset_cameras = None
        self.dataset_images = None
        self.world_from_dataset = torch.eye(4)
        self.flow_note: str | None = None  # set when a flow file matches no frame
        self.vectors = self._vectors(flow, max_vectors, min_length)
        stride = max(1, sum(len(f.points) for f in seq.frames) // STATS_POINTS)
        sample = np.concatenate([self.world_points(i)[::stride] for i in range(len(seq.frames))])
        self._z_range = _percentiles(sample[:, 2], 1, 99)
        self.scene_box = _robust_box(sample)
        self._intensity_max = self._intensity_scale()
        self.channels = self._channels()
        self._cache: OrderedDict[int, _Frame] = OrderedDict()  # frames ready to render, most recent last
        self._cache_lock = threading.Lock()

    # -- set-up -----------------------------------------------------------------------------------
    def _channels(self) -> tuple[str, ...]:
        frames = self.seq.frames
        out = ["rgb", "alpha", "depth"]
        if any(f.intensity is not None for f in frames):
            out.append("intensity")
        if any(f.dynamic is not None for f in frames):
            out.append("dynamic")
        out += [c for c in ("flow", "gt_flow") if any(c in v for v in self.vectors)]
        return tuple(out)

    def world_points(self, i: int) -> np.ndarray:
        """``[N, 3]`` float32 points of frame ``i`` in world coordinates (``world_from_ego_i`` applied)."""
        return _apply(self.poses[i], self.seq.frames[i].points)

    def _vectors(self, flow, max_vectors: int, min_length: float) -> list[dict[str, FlowVectors]]:
        """Per frame, the vectors of each flow channel: ``flow`` (the file's, else ground truth) and
        ``gt_flow`` (ground truth, when a file is given too)."""
        frames = self.seq.frames
        out: list[dict[str, FlowVectors]] = [{} for _ in frames]
        gt_name = "flow" if flow is None else "gt_flow"
        raw: list[tuple[int, str, np.ndarray, np.ndarray, str]] = []
        for i, f in enumerate(frames):
            if f.flow is not None:
                ok = np.ones(len(f.points), bool) if f.flow_valid is None else np.asarray(f.flow_valid, bool)
                raw.append((i, gt_name, f.points[ok], np.asarray(f.flow)[ok], "ground truth"))
        if flow is not None:
            data = flow if isinstance(flow, dict) else read_flow_file(flow)
            i = self._flow_frame(data)
            label = str(flow) if not isinstance(flow, dict) else "flow estimate"
            if i is None:
                i, self.flow_note = 0, "its points match no frame: drawn from frame 1"
            raw.append((i, "flow", data["points"], data["flow"], label))
        starts = [(i, c, _apply(self.poses[i], p), _apply(self._end_pose(i), np.asarray(p) + fl), s)
                  for i, c, p, fl, s in raw]
        chosen = [(i, c, a, b, s, select_vectors(a, b, max_vectors=max_vectors, min_length=min_length))
                  for i, c, a, b, s in starts]
        lengths = [np.linalg.norm(b[r] - a[r], axis=-1) for _, _, a, b, _, r in chosen]
        every = np.concatenate(lengths) if lengths else np.zeros(0)
        vmax = float(np.percentile(every, 99)) if len(every) else 1.0  # colours span 0 .. 99th percentile
        for (i, c, a, b, s, r), ln in zip(chosen, lengths):
            seg = arrow_segments(a[r], b[r])
            out[i][c] = FlowVectors(seg, np.tile(magnitude_colors(ln, vmax), (3, 1)), s, len(a))
        return out

    def _end_pose(self, i: int) -> np.ndarray:
        """``world_from_ego`` of the frame a flow of frame ``i`` lands in (frame ``i + 1``)."""
        if i + 1 < len(self.poses):
            return self.poses[i + 1]
        rel = _next_from_this(self.seq, i)
        return self.poses[i] if rel is None else self.poses[i] @ np.linalg.inv(rel)

    def _flow_frame(self, data: dict) -> int | None:
        """The frame whose rows ``data["indices"]`` are ``data["points"]`` (None when no frame matches)."""
        idx, pts = data["indices"], data["points"]
        for i, f in enumerate(self.seq.frames):
            if len(idx) and idx.min() >= 0 and idx.max() < len(f.points) and \
                    np.allclose(np.asarray(f.points)[idx], pts, rtol=0.0, atol=1e-4):
                return i
        return None

    def _intensity_scale(self) -> float:
        vals = [np.asarray(f.intensity, np.float64) for f in self.seq.frames if f.intensity is not None]
        if not vals:
            return 1.0
        return max(_percentiles(np.concatenate(vals), 1, 99)[1], 1e-9)

    def _frame(self, i: int) -> _Frame:
        """Frame ``i`` ready to render (the :data:`CACHED_FRAMES` most recently shown are kept)."""
        with self._cache_lock:
            fr = self._cache.pop(i, None) or self._prepare(i)
            self._cache[i] = fr
            while len(self._cache) > CACHED_FRAMES:
                self._cache.popitem(last=False)
            return fr

    def _prepare(self, i: int) -> _Frame:
        world = self.world_points(i)
        f, n = self.seq.frames[i], len(world)
        lo, hi = self._z_range
        tables = {"rgb": magnitude_colors(world[:, 2] - lo, hi - lo)}
        if "intensity" in self.channels:
            if f.intensity is None:
                tables["intensity"] = np.tile(np.float32(POINT_GREY), (n, 1))
            else:
                x = np.clip(np.asarray(f.intensity, np.float64) / self._intensity_max, 0, 1)[:, None]
                tables["intensity"] = (LOW_INTENSITY + x * (HIGH_INTENSITY - LOW_INTENSITY)).astype(np.float32)
        if "dynamic" in self.channels:
            col = np.tile(np.float32(POINT_GREY if f.dynamic is None else STATIC_COLOR), (n, 1))
            if f.is_ground is not None:
                col[np.asarray(f.is_ground, bool)] = GROUND_COLOR
            if f.dynamic is not None:
                col[np.asarray(f.dynamic, bool)] = DYNAMIC_COLOR
            tables["dynamic"] = col
        for c in ("flow", "gt_flow"):
            if c in self.channels:
                tables[c] = np.tile(np.float32(POINT_GREY), (n, 1))
        dev = self.device
        flow = {c: (torch.from_numpy(v.segments).to(dev), torch.from_numpy(v.colors).to(dev))
                for c, v in self.vectors[i].items()}
        tables = {c: torch.from_numpy(np.ascontiguousarray(t, np.float32)).to(dev) for c, t in tables.items()}
        return _Frame(torch.from_numpy(np.ascontiguousarray(world)).to(dev), tables, flow)

    # -- what the viewer asks ---------------------------------------------------------------------
    def frame_at(self, time: float | None) -> int:
        """Index of the frame shown at ``time`` (the nearest frame time; frame 0 for None)."""
        if time is None:
            return 0
        return int(np.argmin(np.abs(self.times - float(time))))

    def time_label(self, time: float | None) -> str:
        """``frame i / F`` of ``time`` for the readouts (1-based)."""
        i = self.frame_at(time)
        return f"frame {i + 1} / {len(self.times)} (t {self.times[i]:g})"

    def stats(self) -> dict[str, str]:
        """Format, frames, points per frame, poses, flow vectors."""
        frames = self.seq.frames
        counts = [len(f.points) for f in frames]
        out = {"format": str(getattr(self.seq, "format", "")), "frames": str(len(frames)),
               "points": f"{min(counts):,} .. {max(counts):,}" if len(frames) > 1 else f"{counts[0]:,}",
               "poses": "ego poses" if any(f.ego_pose is not None for f in frames) else "identity"}
        for c in ("flow", "gt_flow"):
            shown = [(i, v[c]) for i, v in enumerate(self.vectors) if c in v]
            if shown:
                i, v = shown[0]
                where = f"frame {i + 1}" if len(shown) == 1 else f"{len(shown)} frames"
                out[c] = f"{v.source}, {where}, {sum(len(x.segments) // 3 for _, x in shown):,} vectors drawn"
        if self.flow_note:
            out["flow"] += f" ({self.flow_note})"
        return out

    def render(self, cameras: Cameras, time: float | None, options: RenderOptions,
               should_stop: Callable[[], bool], *, lock: ContextManager | None = None) -> RenderOutput | None:
        """Render the frame at ``time`` into camera 0: ``rgb`` (height), ``alpha``, ``depth`` and the colour
        modes and flow channels as extras (``[H, W, 3]``); None once ``should_stop()``. No grad."""
        if should_stop():
            return None
        fr = self._frame(self.frame_at(time))
        cam = cameras[0].to(self.device)
        bg = torch.tensor(options.background or (1.0, 1.0, 1.0), dtype=torch.float32, device=self.device)
        pts, rows = fr.points, torch.arange(len(fr.points), device=self.device)
        box = None if options.crop_box is None else torch.tensor(options.crop_box, dtype=pts.dtype, device=pts.device)
        if box is not None:
            keep = ((pts >= box[0]) & (pts <= box[1])).all(-1)
            pts, rows = pts[keep], rows[keep]
        with torch.no_grad():
            ids = rows.double()[:, None].expand(-1, 3)  # float64: indices exact far beyond 2^24 rows
            base = render_points(pts, ids, cam, (-1.0, -1.0, -1.0), self.point_size_px, near=options.near or 1e-6)
            hit = base.alpha[..., 0] > 0
            if options.far is not None:
                hit = hit & (base.depth[..., 0] <= options.far)
            winner = base.rgb[..., 0].round().long().clamp_min(0)
            images = {c: torch.where(hit[..., None], t[winner], bg) for c, t in fr.tables.items()}
            for c, (seg, col) in fr.flow.items():
                if should_stop():
                    return None
                images[c] = self._draw_segments(images[c], seg, col, box, cam, options)
        alpha = hit.float()[..., None]
        depth = torch.where(hit, base.depth[..., 0].float(), 0.0)[..., None]
        rgb = images.pop("rgb")
        return None if should_stop() else RenderOutput(rgb, alpha, depth, extras=images)

    def _draw_segments(self, image: Tensor, seg: Tensor, col: Tensor, box, cam: Cameras, options) -> Tensor:
        """``image [H, W, 3]`` with the segments drawn over it (nearest segment wins where they cross)."""
        if box is not None:  # arrows whose start is inside: shafts [K], then the barbs [2K] of the same K
            k = len(seg) // 3
            inside = ((seg[:k, 0] >= box[0]) & (seg[:k, 0] <= box[1])).all(-1).repeat(3)
            seg, col = seg[inside], col[inside]
        samples, scol = segment_samples(seg, col, cam, near=max(options.near or 1e-3, 1e-3))
        if len(samples) == 0:
            return image
        lines = render_points(samples, scol, cam, (0.0, 0.0, 0.0), self.flow_width_px, near=options.near or 1e-6)
        drawn = lines.alpha > 0
        if options.far is not None:
            drawn = drawn & (lines.depth <= options.far)
        return torch.where(drawn, lines.rgb, image)


def _percentiles(x: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 0.0, 1.0
    a, b = (float(v) for v in np.percentile(x, [lo, hi]))
    return (a, b) if b > a else (a, a + 1.0)


def _robust_box(points: np.ndarray) -> Tensor:
    """``[2, 3]`` box of the 0.5th..99.5th percentile of ``points`` per axis, padded by 5% (lidar returns
    from far away would otherwise put the default view kilometres out)."""
    lo, hi = np.percentile(points, [0.5, 99.5], axis=0) if len(points) > 200 else (points.min(0), points.max(0))
    pad = max(float((hi - lo).max()) * 0.05, 1e-2)
    return torch.tensor(np.stack([lo - pad, hi + pad]), dtype=torch.float32)


def open_sequence(path, *, flow=None, device="cpu") -> SequenceSource:
    """:func:`~omnifield.datasets.pointclouds.load_point_clouds` ``(path)`` as a :class:`SequenceSource`
    (``flow``: a ``flow.npz`` of ``omnifield flow estimate``). DataError naming the path when it is not a
    point-cloud sequence."""
    from omnifield.datasets.pointclouds import load_point_clouds

    seq = load_point_clouds(path)
    return SequenceSource(seq, Path(path).name, flow=flow, device=device)
