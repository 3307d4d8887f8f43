"""N3V multi-view video (Li et al. 2022, Neural 3D Video): ``cam00.mp4 .. camNN.mp4`` + ``poses_bounds.npy``.

Layout: one video per camera of a fixed, synchronised rig, and an LLFF ``poses_bounds.npy`` whose rows
follow the camera files sorted by their number (``cam00, cam01, ...``). Poses, intrinsics, the
normalisation (bd_factor 0.75, recentred on the average pose), near/far and the frusta scene box are
exactly LLFF's (:mod:`omnifield.datasets.llff`); ``hwf`` is at full resolution and is scaled to the
decoded video size, then ``downscale=N`` block-averages ``N x N`` pixels (intrinsics divided by N).

Frames: frame ``k`` of every video is one instant. ``frame_stride`` keeps every n-th frame and
``max_frames`` keeps at most that many of those (the first ones). Cameras are repeated per kept frame,
camera-major (image ``i = camera * F + f``), with ``times`` = the kept frame indices normalised to
[0, 1] (first kept frame 0, last 1); ``time_range`` holds them in seconds (frame index / fps).
Splits follow the N3V protocol: camera 0 (``cam00.mp4``, the first file) is the ``test`` (and ``val``)
view at every frame; the other cameras train.

Memory: videos are decoded lazily, one whole video at a time (sequential decoding is the only fast way
through ffmpeg), when one of its frames is first asked for. The kept, downscaled frames go into a
disk cache, ``<cache_dir>/n3v/<key>/camNN.npy`` (uint8 ``[F, H, W, 3]``, written atomically while
decoding, so a video never sits in memory whole), and are memory-mapped: resident memory is
file-backed page cache the OS can reclaim, whatever the number of frames. ``key`` hashes the folder,
the videos' sizes and modification times and the options, so a changed video is decoded again.
``cache_dir`` defaults to ``$OMNIFIELD_CACHE_DIR``, else ``$XDG_CACHE_HOME/omnifield``, else
``~/.cache/omnifield``. The cache for a full N3V scene is as large as its decoded frames (about 25 GB
for 20 cameras x 300 frames at 1352x1014); delete the folder to reclaim it.

Bad input raises :class:`~omnifield.errors.DataError` naming the file: no videos, a number of videos
different from the number of poses, an unreadable video, videos of different sizes or (when it
matters: always without ``max_frames``, else when a video is too short for the kept frames) of
different frame counts.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import CameraModel, Cameras
from omnifield.datasets.io import (
    LoadOptions,
    area_downscale,
    check_poses,
    check_splits,
    downscale_cameras,
    orthonormalize,
    read_npy,
    similarity,
)
from omnifield.datasets.llff import frustum_box, llff_world, parse_poses_bounds
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.errors import DataError

CACHE_ENV = "OMNIFIELD_CACHE_DIR"
_CACHE_VERSION = 1
_VIDEO = re.compile(r"cam(\d+)\.mp4", re.IGNORECASE)


def find_videos(root: Path) -> list[Path]:
    """``cam<number>.mp4`` files of ``root``, sorted by their number (the row order of poses_bounds.npy)."""
    found = [(int(m.group(1)), p) for p in Path(root).iterdir() if (m := _VIDEO.fullmatch(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, key=lambda x: (x[0], x[1].name))]


def is_n3v(root: Path) -> bool:
    """True for a folder with ``poses_bounds.npy`` and at least one ``cam*.mp4``."""
    root = Path(root)
    return root.is_dir() and (root / "poses_bounds.npy").is_file() and bool(find_videos(root))


def default_cache_dir() -> Path:
    """``$OMNIFIELD_CACHE_DIR``, else ``$XDG_CACHE_HOME/omnifield``, else ``~/.cache/omnifield``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omnifield"


@dataclass(frozen=True)
class VideoInfo:
    """What probing a video found: frame size in pixels, exact frame count, frames per second."""

    path: Path
    width: int
    height: int
    frames: int
    fps: float


def _ffmpeg_reason(exc: Exception) -> str:
    """The last informative line of an ffmpeg error (its full stderr is dozens of lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("===")]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def probe_video(path: Path) -> VideoInfo:
    """Size, exact frame count and fps of a video (no decoding); DataError naming it when unreadable."""
    import imageio_ffmpeg

    path = Path(path)
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        try:
            meta = next(reader)
        finally:
            reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except Exception as e:  # RuntimeError / OSError / StopIteration from ffmpeg
        raise DataError(f"cannot read video: {_ffmpeg_reason(e)}", path) from None
    width, height = (int(x) for x in meta["size"])
    if frames < 1 or width < 1 or height < 1:
        raise DataError(f"video has no frames ({frames} frames of {width}x{height})", path)
    return VideoInfo(path, width, height, int(frames), float(meta.get("fps") or 0.0))


def _check_videos(infos: list[VideoInfo], needed: int | None) -> None:
    """All videos as large as the first; each with the first's frame count, or at least ``needed`` frames when given."""
    ref = infos[0]
    for info in infos[1:]:
        if (info.width, info.height) != (ref.width, ref.height):
            raise DataError(f"video is {info.width}x{info.height} but {ref.path.name} is {ref.width}x{ref.height}",
                            info.path)
        if info.frames != ref.frames and (needed is None or info.frames < needed):
            raise DataError(f"video has {info.frames} frames but {ref.path.name} has {ref.frames}", info.path)


class VideoFrames:
    """Lazily decoded, disk-cached, memory-mapped frames of a set of videos (module docstring).

    ``frame(c, f) -> [H, W, 3]`` uint8: kept frame ``f`` (index into ``kept``) of video ``c``,
    block-averaged by ``downscale``. Thread-safe.
    """

    def __init__(self, videos: list[VideoInfo], kept: list[int], downscale: int, cache_dir: Path):
        self.videos, self.kept, self.downscale = videos, list(kept), int(downscale)
        key = hashlib.sha1(repr((
            _CACHE_VERSION, str(videos[0].path.parent.resolve()), self.kept, self.downscale,
            [(v.path.name, v.path.stat().st_size, v.path.stat().st_mtime_ns) for v in videos],
        )).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / "n3v" / key
        self.shape = (len(self.kept), videos[0].height // self.downscale, videos[0].width // self.downscale, 3)
        self._arrays: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def frame(self, camera: int, index: int) -> np.ndarray:
        with self._lock:
            if camera not in self._arrays:
                self._arrays[camera] = self._open(camera)
            return self._arrays[camera][index]

    def _open(self, camera: int) -> np.ndarray:
        path = self.folder / (self.videos[camera].path.stem + ".npy")
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="c", allow_pickle=False)
                if arr.shape == self.shape and arr.dtype == np.uint8:
                    return arr
            except (ValueError, OSError):
                pass  # a foreign or damaged cache file: decode again
        self._decode(camera, path)
        return np.load(path, mmap_mode="c", allow_pickle=False)

    def _decode(self, camera: int, path: Path) -> None:
        import imageio_ffmpeg

        info = self.videos[camera]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the frame cache ({e.strerror}); set ${CACHE_ENV}", self.folder) from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        wanted = {k: j for j, k in enumerate(self.kept)}
        done = 0
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)
            reader = imageio_ffmpeg.read_frames(str(info.path), pix_fmt="rgb24")
            try:
                next(reader)
                for k, buf in enumerate(reader):
                    if k in wanted:
                        img = np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
                        out[wanted[k]] = area_downscale(img, self.downscale)
                        done += 1
                    if done == len(self.kept):
                        break
            finally:
                reader.close()
            if done < len(self.kept):
                raise DataError(f"decoded {done} of the {len(self.kept)} frames expected", info.path)
            out.flush()
            del out
            os.replace(tmp, path)
        except DataError:
            tmp.unlink(missing_ok=True)
            raise
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"cannot decode video: {_ffmpeg_reason(e)}", info.path) from None


def _kept_frames(n_frames: int, max_frames: int | None, frame_stride: int) -> list[int]:
    if int(frame_stride) != frame_stride or frame_stride < 1:
        raise ValueError(f"frame_stride must be an integer >= 1, got {frame_stride!r}")
    if max_frames is not None and (int(max_frames) != max_frames or max_frames < 1):
        raise ValueError(f"max_frames must be None or an integer >= 1, got {max_frames!r}")
    kept = list(range(0, n_frames, int(frame_stride)))
    return kept if max_frames is None else kept[: int(max_frames)]


def _rig_cameras(c2w: np.ndarray, hwf: np.ndarray, world, size: tuple[int, int], npy: Path, first: Path) -> Cameras:
    """The rig's cameras (one per video) at the decoded video size, normalised world (LLFF's conversion)."""
    w, h = size
    full_h, full_w, f = hwf[:, 0], hwf[:, 1], hwf[:, 2]
    if abs((w / h) / (full_w[0] / full_h[0]) - 1) > 0.02:
        raise DataError(f"video is {w}x{h} but {npy.name} says {full_w[0]:.0f}x{full_h[0]:.0f}", first)
    sx, sy = w / full_w, h / full_h
    return Cameras.create(
        torch.tensor(c2w, dtype=torch.float32), f * sx, f * sy, w / 2, h / 2, w, h, model=CameraModel.PINHOLE
    ).transformed(world)


def load_n3v(path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8,
             max_frames: int | None = None, frame_stride: int = 1, cache_dir=None) -> SceneData:
    """Load an N3V multi-view video folder (or its poses_bounds.npy) into a :class:`SceneData`.

    ``holdout_every`` is accepted for a uniform parser signature and unused (camera 0 is the test view).
    ``cache_dir``: where decoded frames are cached (default :func:`default_cache_dir`). See the module
    docstring for frames, times, splits and memory.
    """
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    root = Path(path)
    root = root.parent if root.is_file() else root
    npy = root / "poses_bounds.npy"
    videos = find_videos(root) if root.is_dir() else []
    if not videos:
        raise DataError("no cam*.mp4 videos", root)
    c2w, hwf, bounds = parse_poses_bounds(read_npy(npy), npy)
    if len(videos) != len(c2w):
        raise DataError(f"{len(videos)} videos (cam*.mp4) for {len(c2w)} poses", npy)
    check_poses(c2w, npy, [v.name for v in videos])
    c2w = orthonormalize(c2w)
    infos = [probe_video(v) for v in videos]
    kept = _kept_frames(infos[0].frames, max_frames, frame_stride)
    _check_videos(infos, None if max_frames is None else kept[-1] + 1)  # all frames wanted: counts must agree
    if infos[0].width < opts.downscale or infos[0].height < opts.downscale:
        raise DataError(f"video is {infos[0].width}x{infos[0].height}, smaller than downscale {opts.downscale}",
                        videos[0])
    scale, rot, t = llff_world(c2w, bounds)
    rig = _rig_cameras(c2w, hwf, similarity(scale, t, rot), (infos[0].width, infos[0].height), npy, videos[0])
    rig = downscale_cameras(rig, opts.downscale)
    n_cams, n_frames = len(videos), len(kept)
    k = np.asarray(kept, dtype=np.float64)
    t_norm = (k - k[0]) / (k[-1] - k[0]) if n_frames > 1 else np.zeros(1)
    cams = replace(rig[torch.arange(n_cams).repeat_interleave(n_frames)],
                   times=torch.tensor(np.tile(t_norm, n_cams), dtype=torch.float32))
    near, far = 0.9 * float(bounds.min()) * scale, float(bounds.max()) * scale
    frames = VideoFrames(infos, kept, opts.downscale, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    images = ImageStore([videos[i // n_frames] for i in range(len(cams))],
                        lambda i: frames.frame(i // n_frames, i % n_frames), background=opts.background)
    test = list(range(n_frames))
    splits = {"train": list(range(n_frames, len(cams))), "val": list(test), "test": test}
    check_splits(splits, cams, npy)
    fps = infos[0].fps
    return SceneData(
        root=root,
        format="n3v",
        cameras=cams,
        images=images,
        splits=splits,
        scene_box=frustum_box(rig, near, far),
        world_from_dataset=similarity(scale, t, rot),
        near=near,
        far=far,
        time_range=(kept[0] / fps, kept[-1] / fps) if fps > 0 else (float(kept[0]), float(kept[-1])),
        unbounded=True,
        background=opts.background,
        metadata={
            "downscale": opts.downscale,
            "skipped_frames": [],
            "videos": n_cams,
            "frames_per_video": n_frames,
            "video_frames": infos[0].frames,
            "frame_stride": int(frame_stride),
            "max_frames": None if max_frames is None else int(max_frames),
            "fps": fps,
            "test_camera": videos[0].name,
            "frame_cache": str(frames.folder),
            "bounds": [float(bounds.min()), float(bounds.max())],
        },
    )
