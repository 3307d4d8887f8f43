"""Lidar point-cloud sequences: one type, readers for the scene-flow datasets and raw sweeps, ground removal.

Every reader returns a :class:`PointCloudSequence` of :class:`PointCloudFrame` s; nothing downstream
knows the file format. Conventions (all formats):

- ``points`` are float32 metres in the frame's own sensor/ego frame, as the source stores them (the
  lidar datasets: x forward, y left, z up; FlowNet3D's KITTI and FlyingThings3D npz keep their camera
  axes, y being the height there). ``ego_pose`` is float64 ``[4, 4]`` world_from_ego.
- ``flow`` of frame i: ``points_i + flow_i`` = where each point is at frame i+1's time **in frame
  i+1's ego coordinates** (ego motion included, as the AV2 and KITTI labels are).
  ``PointCloudSequence.next_from_this(i)`` gives ``ego_{i+1} <- ego_i``.
- ``time`` is in seconds from the first frame. ``flow_valid`` None means every row is labelled.
- Rows whose point (or flow) is NaN/inf are dropped with all their per-point arrays; the count per
  frame is ``metadata["dropped_nonfinite"]``. An empty cloud, per-point arrays of another length than
  the points, unknown npz keys, truncated ``.bin``/``.pcd`` files raise ``DataError`` naming the file.

Formats (``load_point_clouds(path, format=None)`` detects them from the suffix, the npz keys or the
folder contents):

| format | input | keys / layout | source |
|---|---|---|---|
| ``kitti_sf`` | ``.npz`` | ``pos1 [N,3]``, ``pos2 [M,3]``, ``gt [N,3]`` (flow) | FlowNet3D ``kitti_rm_ground``, read by NSFP ``data.py`` (``KITTISceneFlowDataset``) |
| ``argoverse_sf`` / ``nuscenes_sf`` | ``.npz`` | ``pc1``, ``pc2``, ``flow``, optional ``mask1_tracks_flow``, ``mask2_tracks_flow`` | NSFP ``preprocess_sf_argoverse.py`` / ``preprocess_sf_nuscenes.py`` (``np.savez_compressed(pc1=, pc2=, flow=, mask1_tracks_flow=, mask2_tracks_flow=)``), FastNSF ``optimization.py`` (reads ``pc1, pc2, flow``) |
| ``flyingthings3d`` | ``.npz`` | ``points1``, ``points2``, ``flow``, ``valid_mask1``, optional ``color1``, ``color2`` | FlowNet3D ``data_processed_maxcut_35_20k_2k_8192``, read by NSFP ``data.py`` (``FlyingThings3D``) |
| ``av2_pair`` | ``.npz`` | ``pc0``, ``pc1``, ``flow``, optional ``classes``, ``dynamic``, ``is_ground0``, ``ego1_SE3_ego0``, ``timestamps_ns``, ``intensity0``, ``intensity1`` | ``../shared/data/av2_flow_pair/pair.npz`` |
| ``av2_log`` | folder | ``sensors/lidar/<ts_ns>.feather`` (x y z intensity ...), ``city_SE3_egovehicle.feather`` (timestamp_ns qw qx qy qz tx_m ty_m tz_m), optional ``flow_labels.feather`` (first sweep) or ``flow_labels/<ts_ns>.feather`` (flow_tx_m flow_ty_m flow_tz_m classes dynamic is_ground_0 [is_valid]) | Argoverse 2 sensor / scene-flow logs; needs pyarrow |
| ``sweeps`` | file or folder | ``.bin`` float32 x4 / x5, ``.ply``, ``.pcd`` (ascii / binary), ``.npy [N,3+]``, ``.feather`` | KITTI velodyne, nuScenes ``LIDAR_TOP``, PCL, AV2 |
| ``synth_lidar`` | folder | ``synth_lidar.json`` + ``frame_*.npz`` | :mod:`omnifield.datasets.synth_lidar` |

Argoverse vs nuScenes: the NSFP files share one key set, so the nearest part of the path (the file
name, then its folders upwards) containing ``nusc`` or ``argo`` decides, ``argoverse_sf`` by default
(pass ``format=`` to override). In those files
``mask1_tracks_flow`` holds the *indices* of the points inside tracked-object boxes; every row of
``flow`` is labelled (the others carry the ICP-refined ego motion), so ``flow_valid`` is None and the
indices become the boolean ``labels["tracked"]``. Pair files have no timestamps unless the file stem is
``<t0>_<t1>`` (NSFP names them so; ns or us recognised by magnitude); otherwise the frames are 0.1 s apart
(``metadata["time_source"] = "nominal"``).

``.bin`` columns (``columns=None``): a file whose float count divides by only one of 4 and 5 has that
many columns; when both divide, it is x5 if the 5th column of the x5 reading is an integer in [0, 255]
on every row (nuScenes' ring index), else x4 (KITTI's x y z reflectance). Pass ``columns=4`` or ``5``
to force it. Intensity is the 4th column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from omnifield.errors import DataError

from omnifield.datasets.ground import crop, fit_ground_plane, ground_mask, remove_ground
from omnifield.datasets.sweeps import SWEEP_SUFFIXES, _read_table, read_sweep

FORMATS = ("kitti_sf", "argoverse_sf", "nuscenes_sf", "flyingthings3d", "av2_pair", "av2_log", "sweeps", "synth_lidar")
NOMINAL_DT = 0.1  # s between frames when a file carries no time (10 Hz lidar)

# npz layouts: format -> (required keys, optional keys)
NPZ_LAYOUTS = {
    "av2_pair": ({"pc0", "pc1", "flow"}, {"classes", "dynamic", "is_ground0", "ego1_SE3_ego0", "timestamps_ns",
                                          "intensity0", "intensity1"}),
    "kitti_sf": ({"pos1", "pos2", "gt"}, set()),
    "argoverse_sf": ({"pc1", "pc2", "flow"}, {"mask1_tracks_flow", "mask2_tracks_flow"}),
    "flyingthings3d": ({"points1", "points2", "flow"}, {"valid_mask1", "color1", "color2"}),
}
_PER_POINT = ("flow", "flow_valid", "is_ground", "dynamic", "intensity")


@dataclass
class PointCloudFrame:
    """One lidar sweep.

    Attributes:
        points: ``[N, 3]`` float32 metres in this frame's ego/sensor frame, finite.
        time: seconds from the sequence's first frame.
        ego_pose: ``[4, 4]`` float64 world_from_ego, or None.
        flow: ``[N, 3]`` float32 ground-truth flow to the next frame (``points + flow`` = position at the
            next frame's time in the next frame's ego coordinates), or None.
        flow_valid: ``[N]`` bool, rows whose flow is labelled (None: all of them).
        is_ground: ``[N]`` bool, or None.
        dynamic: ``[N]`` bool, moving in the world, or None.
        intensity: ``[N]`` float32 (the sensor's scale), or None.
        labels: other per-point arrays by name (``classes``, ``object_id``, ``tracked``, ``color`` ...).
        path: the file the frame was read from.
    """

    points: np.ndarray
    time: float = 0.0
    ego_pose: np.ndarray | None = None
    flow: np.ndarray | None = None
    flow_valid: np.ndarray | None = None
    is_ground: np.ndarray | None = None
    dynamic: np.ndarray | None = None
    intensity: np.ndarray | None = None
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    path: str = ""

    def __post_init__(self):
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"PointCloudFrame.points must be [N, 3], got {self.points.shape}")
        n = len(self.points)
        casts = {"flow": np.float32, "flow_valid": bool, "is_ground": bool, "dynamic": bool, "intensity": np.float32}
        for name, dtype in casts.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = np.ascontiguousarray(value, dtype=dtype)
            want = (n, 3) if name == "flow" else (n,)
            if value.shape != want:
                raise ValueError(f"PointCloudFrame.{name} must have shape {want}, got {value.shape}")
            setattr(self, name, value)
        for name, value in self.labels.items():
            if len(value) != n:
                raise ValueError(f"PointCloudFrame.labels[{name!r}] has {len(value)} rows, points have {n}")
        if self.ego_pose is not None:
            self.ego_pose = np.asarray(self.ego_pose, dtype=np.float64).reshape(4, 4)
        self.time = float(self.time)

    def __len__(self) -> int:
        return len(self.points)

    def select(self, mask_or_indices) -> PointCloudFrame:
        """The frame with only the given rows (a ``[N]`` bool mask or integer indices); every per-point
        array is filtered alike."""
        idx = np.asarray(mask_or_indices)
        if idx.dtype == bool and idx.shape != (len(self),):
            raise ValueError(f"select: mask has shape {idx.shape}, the frame has {len(self)} points")
        if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"select: expected a bool mask or integer indices, got dtype {idx.dtype}")
        per_point = {name: None if getattr(self, name) is None else getattr(self, name)[idx] for name in _PER_POINT}
        labels = {k: v[idx] for k, v in self.labels.items()}
        return replace(self, points=self.points[idx], labels=labels, **per_point)


@dataclass
class PointCloudSequence:
    """Frames of one sequence in time order, the source path, its format name (:data:`FORMATS`) and
    metadata (``protocol``: ``"av2"`` or None; ``dropped_nonfinite``: rows dropped per frame;
    ``next_from_this``: ``[4, 4]`` per frame pair where the source gives the relative ego motion;
    format-specific keys)."""

    frames: list[PointCloudFrame]
    path: str
    format: str
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> PointCloudFrame:
        return self.frames[i]

    def pair(self, i: int = 0) -> tuple[PointCloudFrame, PointCloudFrame]:
        """Frames ``i`` and ``i + 1``."""
        if not 0 <= i < len(self.frames) - 1:
            raise IndexError(f"pair({i}): the sequence has {len(self.frames)} frames")
        return self.frames[i], self.frames[i + 1]

    def next_from_this(self, i: int) -> np.ndarray | None:
        """``[4, 4]`` float64 ``ego_{i+1} <- ego_i`` (the source's relative motion, else from the ego
        poses), or None when neither is known or ``i`` is the last frame."""
        if not 0 <= i < len(self.frames) - 1:
            return None
        given = self.metadata.get("next_from_this")
        if given is not None and i < len(given) and given[i] is not None:
            return np.asarray(given[i], dtype=np.float64)
        a, b = self.frames[i].ego_pose, self.frames[i + 1].ego_pose
        if a is None or b is None:
            return None
        return np.linalg.inv(b) @ a


# ----------------------------------------------------------------------------- frame building


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except Exception as e:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError ...
        raise DataError(f"malformed npz: {e}", path) from None


def _make_frame(path, name: str, points, *, time: float, **arrays) -> tuple[PointCloudFrame, int]:
    """Check shapes against ``points`` (DataError naming ``name`` and the file), drop non-finite rows,
    refuse an empty cloud. Returns the frame and the number of rows dropped."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise DataError(f"{name} must be [N, 3], got shape {pts.shape}", path)
    pts = pts[:, :3].astype(np.float32)
    n = len(pts)
    labels = dict(arrays.pop("labels", None) or {})
    ego_pose = arrays.pop("ego_pose", None)
    for key, value in list(arrays.items()) + list(labels.items()):
        if value is not None and len(value) != n:
            raise DataError(f"{key} has {len(value)} rows but {name} has {n} points", path)
    flow = arrays.get("flow")
    if flow is not None:
        flow = np.asarray(flow, dtype=np.float32)
        if flow.shape != (n, 3):
            raise DataError(f"flow must be [{n}, 3] like {name}, got shape {flow.shape}", path)
    finite = np.isfinite(pts).all(axis=1)
    if flow is not None:
        finite &= np.isfinite(flow).all(axis=1)
    if ego_pose is not None and not np.all(np.isfinite(ego_pose)):
        raise DataError("ego pose has non-finite values", path)
    frame = PointCloudFrame(pts, time=time, ego_pose=ego_pose, labels=labels, path=str(path),
                            **{k: v for k, v in arrays.items() if k in _PER_POINT})
    dropped = int(n - finite.sum())
    if dropped:
        frame = frame.select(finite)
    if len(frame) == 0:
        what = f" (all {n} rows are NaN/inf)" if n else ""
        raise DataError(f"empty point cloud in {name}{what}", path)
    return frame, dropped


def _sequence(frames_dropped, path, fmt: str, **metadata) -> PointCloudSequence:
    frames = [f for f, _ in frames_dropped]
    metadata.setdefault("protocol", None)
    metadata["dropped_nonfinite"] = [d for _, d in frames_dropped]
    return PointCloudSequence(frames, str(path), fmt, metadata)


def _pair_times(path: Path) -> tuple[tuple[float, float], str]:
    """Frame times of a pair file named ``<t0>_<t1>.npz`` (ns or us by magnitude), else nominal 10 Hz."""
    m = re.fullmatch(r"(\d{13,20})_(\d{13,20})", path.stem)
    if m:
        t0, t1 = int(m.group(1)), int(m.group(2))
        scale = 1e-9 if t0 >= 10**17 else 1e-6 if t0 >= 10**14 else 1e-3
        if t1 > t0:
            return (0.0, (t1 - t0) * scale), "file name"
    return (0.0, NOMINAL_DT), "nominal"


# ----------------------------------------------------------------------------- npz scene-flow pairs


def detect_npz_layout(keys, path) -> str:
    """The layout name of an npz from its keys; DataError listing the keys found and the layouts known."""
    keys = set(keys)
    for fmt, (required, _) in NPZ_LAYOUTS.items():
        if required <= keys:
            return _nsfp_dataset(path) if fmt == "argoverse_sf" else fmt
    known = "; ".join(f"{fmt}: {', '.join(sorted(req))}" for fmt, (req, _) in NPZ_LAYOUTS.items())
    raise DataError(f"unknown npz keys {sorted(keys)}; known layouts: {known}", path)


def _nsfp_dataset(path) -> str:
    """``nuscenes_sf`` or ``argoverse_sf``: the nearest path part (file name first) naming one decides."""
    for part in reversed(Path(path).parts):
        low = part.lower()
        if "nusc" in low:
            return "nuscenes_sf"
        if "argo" in low:
            return "argoverse_sf"
    return "argoverse_sf"


def _load_npz_pair(path: Path, fmt: str | None) -> PointCloudSequence:
    data = _read_npz(path)
    layout = detect_npz_layout(data, path)
    fmt = fmt or layout
    family = {"nuscenes_sf": "argoverse_sf"}.get(fmt, fmt)
    if family != {"nuscenes_sf": "argoverse_sf"}.get(layout, layout):
        raise DataError(f"format {fmt!r} requested but the npz keys are those of {layout!r} ({sorted(data)})", path)
    times, time_source = _pair_times(path)
    meta = {"time_source": time_source, "keys": sorted(data)}
    if family == "av2_pair":
        return _av2_pair(path, data, meta)
    if family == "kitti_sf":
        a = _make_frame(path, "pos1", data["pos1"], time=times[0], flow=data["gt"])
        b = _make_frame(path, "pos2", data["pos2"], time=times[1])
        return _sequence([a, b], path, fmt, **meta)
    if family == "argoverse_sf":
        labels1 = {"tracked": _index_mask(data, "mask1_tracks_flow", len(data["pc1"]), path)}
        labels2 = {"tracked": _index_mask(data, "mask2_tracks_flow", len(data["pc2"]), path)}
        a = _make_frame(path, "pc1", data["pc1"], time=times[0], flow=data["flow"],
                        labels={k: v for k, v in labels1.items() if v is not None})
        b = _make_frame(path, "pc2", data["pc2"], time=times[1], labels={k: v for k, v in labels2.items() if v is not None})
        return _sequence([a, b], path, fmt, **meta)
    # flyingthings3d
    valid = data.get("valid_mask1")
    c1, c2 = data.get("color1"), data.get("color2")
    a = _make_frame(path, "points1", data["points1"], time=times[0], flow=data["flow"],
                    flow_valid=None if valid is None else valid.astype(bool).reshape(-1),
                    labels={} if c1 is None else {"color": c1.astype(np.float32)})
    b = _make_frame(path, "points2", data["points2"], time=times[1],
                    labels={} if c2 is None else {"color": c2.astype(np.float32)})
    return _sequence([a, b], path, fmt, **meta)


def _index_mask(data: dict, key: str, n: int, path: Path) -> np.ndarray | None:
    """NSFP's ``mask*_tracks_flow`` (row indices; a bool mask of length n is accepted too) as ``[n]`` bool."""
    if key not in data:
        return None
    v = np.asarray(data[key]).reshape(-1)
    if v.dtype == bool:
        if len(v) != n:
            raise DataError(f"{key} is a bool mask of {len(v)} rows for {n} points", path)
        return v
    if v.size and (not np.issubdtype(v.dtype, np.integer) and not np.all(v == np.round(v))):
        raise DataError(f"{key} must hold point indices, got dtype {v.dtype}", path)
    v = v.astype(np.int64)
    if v.size and (v.min() < 0 or v.max() >= n):
        raise DataError(f"{key} holds indices outside [0, {n})", path)
    mask = np.zeros(n, bool)
    mask[v] = True
    return mask


def _av2_pair(path: Path, data: dict, meta: dict) -> PointCloudSequence:
    ego = data.get("ego1_SE3_ego0")
    if ego is not None:
        ego = np.asarray(ego, dtype=np.float64)
        if ego.shape != (4, 4) or not np.all(np.isfinite(ego)):
            raise DataError(f"ego1_SE3_ego0 must be a finite [4, 4], got {ego.shape}", path)
    times = (0.0, NOMINAL_DT)
    ts = data.get("timestamps_ns")
    if ts is not None and np.size(ts) == 2:
        ts = np.asarray(ts, dtype=np.int64).reshape(2)
        times = (0.0, float(ts[1] - ts[0]) * 1e-9)
        meta.update(timestamps_ns=[int(t) for t in ts], time_source="timestamps_ns")
    labels0 = {} if "classes" not in data else {"classes": data["classes"].reshape(-1)}
    opt = {k: (None if k not in data else data[k].reshape(-1)) for k in ("dynamic", "is_ground0", "intensity0", "intensity1")}
    a = _make_frame(path, "pc0", data["pc0"], time=times[0], flow=data["flow"], ego_pose=np.eye(4), labels=labels0,
                    dynamic=opt["dynamic"], is_ground=opt["is_ground0"], intensity=opt["intensity0"])
    b = _make_frame(path, "pc1", data["pc1"], time=times[1], intensity=opt["intensity1"],
                    ego_pose=None if ego is None else np.linalg.inv(ego))
    meta.update(protocol="av2", next_from_this=None if ego is None else [ego])
    return _sequence([a, b], path, "av2_pair", **meta)


# ----------------------------------------------------------------------------- raw sweeps (readers in sweeps.py)


def _stem_times(paths: list[Path]) -> tuple[list[float], str, list[int] | None]:
    """Times from timestamp file names (ns / us / ms by magnitude), else ``i * NOMINAL_DT``."""
    stamps = []
    for p in paths:
        digits = re.findall(r"\d{13,20}", p.name)
        stamps.append(int(digits[-1]) if digits else None)
    if len(paths) > 1 and all(s is not None for s in stamps) and len(set(stamps)) == len(stamps):
        scale = 1e-9 if stamps[0] >= 10**17 else 1e-6 if stamps[0] >= 10**14 else 1e-3
        return [(s - stamps[0]) * scale for s in stamps], "file name", stamps
    return [i * NOMINAL_DT for i in range(len(paths))], "nominal", None


def _load_sweeps(paths: list[Path], root, columns) -> PointCloudSequence:
    times, source, stamps = _stem_times(paths)
    frames = []
    for p, t in zip(paths, times):
        pts, inten = read_sweep(p, columns)
        frames.append(_make_frame(p, "points", pts, time=t, intensity=inten))
    return _sequence(frames, root, "sweeps", time_source=source, timestamps=stamps)


def load_pair(path1, path2, *, columns: int | None = None) -> PointCloudSequence:
    """Two single sweeps (any :func:`read_sweep` suffix) as a 2-frame ``sweeps`` sequence, in the given order."""
    return _load_sweeps([Path(path1), Path(path2)], f"{path1},{path2}", columns)


# ----------------------------------------------------------------------------- AV2 log folder


def _quat_to_matrix(qw, qx, qy, qz) -> np.ndarray:
    """``[K, 3, 3]`` rotations of unit quaternions (scalar first, as AV2 stores them)."""
    q = np.stack([qw, qx, qy, qz], axis=-1).astype(np.float64)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)


def _load_av2_log(root: Path) -> PointCloudSequence:
    sweeps = sorted((root / "sensors" / "lidar").glob("*.feather"), key=lambda p: (len(p.stem), p.stem))
    if not sweeps:
        raise DataError("AV2 log has no sensors/lidar/*.feather sweeps", root)
    try:
        stamps = [int(p.stem) for p in sweeps]
    except ValueError:
        raise DataError("AV2 sweep names must be <timestamp_ns>.feather", root / "sensors" / "lidar") from None
    pose_path = root / "city_SE3_egovehicle.feather"
    poses = {}
    if pose_path.is_file():
        t = _read_table(pose_path, ("timestamp_ns", "qw", "qx", "qy", "qz", "tx_m", "ty_m", "tz_m"))
        rot = _quat_to_matrix(t["qw"], t["qx"], t["qy"], t["qz"])
        mats = np.tile(np.eye(4), (len(rot), 1, 1))
        mats[:, :3, :3] = rot
        mats[:, :3, 3] = np.stack([t["tx_m"], t["ty_m"], t["tz_m"]], axis=1)
        poses = dict(zip(t["timestamp_ns"].astype(np.int64).tolist(), mats))
        missing = [s for s in stamps if s not in poses]
        if missing:
            raise DataError(f"no ego pose at the sweep timestamps {missing[:5]}", pose_path)
    frames = []
    for k, (p, s) in enumerate(zip(sweeps, stamps)):
        t = _read_table(p, ("x", "y", "z"))
        pts = np.stack([t["x"], t["y"], t["z"]], axis=1).astype(np.float32)
        labels = {"laser_number": t["laser_number"]} if "laser_number" in t else {}
        extra = _av2_flow_labels(root, s, k, len(pts))
        labels.update(extra.pop("labels"))
        frames.append(_make_frame(p, "points", pts, time=(s - stamps[0]) * 1e-9, intensity=t.get("intensity"),
                                  ego_pose=poses.get(s), labels=labels, **extra))
    return _sequence(frames, root, "av2_log", protocol="av2", timestamps_ns=stamps)


def _av2_flow_labels(root: Path, stamp: int, k: int, n: int) -> dict:
    """Flow labels of sweep ``k``: ``flow_labels/<ts>.feather``, or ``flow_labels.feather`` for the first sweep."""
    path = root / "flow_labels" / f"{stamp}.feather"
    if not path.is_file():
        path = root / "flow_labels.feather" if k == 0 else None
    if path is None or not path.is_file():
        return {"labels": {}}
    t = _read_table(path, ("flow_tx_m", "flow_ty_m", "flow_tz_m"))
    if len(t["flow_tx_m"]) != n:
        raise DataError(f"flow labels have {len(t['flow_tx_m'])} rows but sweep {stamp} has {n} points", path)
    return {
        "flow": np.stack([t["flow_tx_m"], t["flow_ty_m"], t["flow_tz_m"]], axis=1),
        "flow_valid": t.get("is_valid"),
        "dynamic": t.get("dynamic"),
        "is_ground": t.get("is_ground_0"),
        "labels": {"classes": t["classes"]} if "classes" in t else {},
    }


# ----------------------------------------------------------------------------- dispatch


def detect_point_format(path) -> str:
    """The :data:`FORMATS` name of a file or folder; DataError when none matches."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", p)
    if p.is_dir():
        if (p / "synth_lidar.json").is_file():
            return "synth_lidar"
        if (p / "sensors" / "lidar").is_dir() or (p / "city_SE3_egovehicle.feather").is_file():
            return "av2_log"
        if any(q.suffix.lower() in SWEEP_SUFFIXES for q in p.iterdir() if q.is_file()):
            return "sweeps"
        raise DataError("no point-cloud format recognised (synth_lidar.json, sensors/lidar/*.feather, or "
                        f"sweep files {', '.join(SWEEP_SUFFIXES)})", p)
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as f:
                keys = list(f.files)
        except Exception as e:
            raise DataError(f"malformed npz: {e}", p) from None
        return detect_npz_layout(keys, p)
    if p.suffix.lower() in SWEEP_SUFFIXES:
        return "sweeps"
    raise DataError(f"unknown point-cloud file suffix {p.suffix!r} (.npz or {', '.join(SWEEP_SUFFIXES)})", p)


def load_point_clouds(path, format: str | None = None, *, columns: int | None = None) -> PointCloudSequence:
    """Read any supported point-cloud file or folder (see the module table) into a sequence.

    ``format`` overrides detection (one of :data:`FORMATS`); ``columns`` applies to ``.bin`` sweeps.
    """
    p = Path(path)
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown point-cloud format {format!r}; known: {', '.join(FORMATS)}")
    detected = detect_point_format(p)
    fmt = format or detected
    if fmt == "synth_lidar":
        from omnifield.datasets.synth_lidar import load_synth_lidar

        return load_synth_lidar(p)
    if fmt == "av2_log":
        return _load_av2_log(p)
    if fmt == "sweeps":
        files = [p] if p.is_file() else [q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SWEEP_SUFFIXES]
        return _load_sweeps(sorted(files), p, columns)
    if p.suffix.lower() != ".npz":
        raise DataError(f"format {fmt!r} is an .npz pair file", p)
    return _load_npz_pair(p, fmt)


__all__ = [
    "FORMATS", "PointCloudFrame", "PointCloudSequence", "load_point_clouds", "load_pair", "read_sweep",
    "remove_ground", "ground_mask", "crop", "fit_ground_plane", "detect_point_format", "detect_npz_layout",
]
