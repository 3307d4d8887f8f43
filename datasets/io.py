"""Shared helpers of the parsers: checked file reading, images, downscaling, pose checks, splits.

Every function here raises :class:`~omnifield.errors.DataError` naming the offending file, so a
parser never has to wrap ``json``/``numpy``/``imageio`` errors itself.

Downscaling convention (all formats): ``downscale=N`` averages ``N x N`` pixel blocks (the last
``W % N`` columns / ``H % N`` rows are cropped), so the image is ``W // N x H // N`` and the
intrinsics are divided by exactly ``N`` (pixel edges stay on the same rays). Pre-downscaled folders
(``images_N/``, as written by LLFF and ``ns-process-data``) are used when present; their size sets
the camera size.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, holdout_splits
from omnifield.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LoadOptions:
    """Options every parser takes.

    Attributes:
        downscale: integer image downscale factor N >= 1 (``images_N/`` folders used when present).
        background: RGB in [0, 1] that RGBA images are composited on (alpha is kept).
        holdout_every: when the dataset defines no splits, every n-th frame is test (and val).
    """

    downscale: int = 1
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    holdout_every: int = 8

    def __post_init__(self):
        if int(self.downscale) != self.downscale or self.downscale < 1:
            raise ValueError(f"downscale must be an integer >= 1, got {self.downscale!r}")
        object.__setattr__(self, "downscale", int(self.downscale))
        object.__setattr__(self, "background", tuple(float(b) for b in self.background))
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every must be >= 2, got {self.holdout_every!r}")
        if len(self.background) != 3:
            raise ValueError(f"background must be 3 floats, got {self.background!r}")


# ----------------------------------------------------------------------------- files


def read_json(path: Path) -> dict:
    """Read a JSON object; DataError naming ``path`` when missing or malformed."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"malformed JSON: {e}", path) from None
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object at top level, got {type(data).__name__}", path)
    return data


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` (no pickles); DataError when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError ...
        raise DataError(f"malformed npz: {e}", path) from None


def read_npy(path: Path) -> np.ndarray:
    """Read an ``.npy`` array (no pickles); DataError when missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(f"malformed npy: {e}", path) from None


def number(value, name: str, path: Path) -> float:
    """A finite float from a JSON value, or DataError naming the key and file."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number, got {value!r}", path) from None
    if not math.isfinite(out):
        raise DataError(f"{name} is not finite ({value!r})", path)
    return out


# ----------------------------------------------------------------------------- images


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header (no decoding); DataError when unreadable."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError("image not found", path)
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:
        raise DataError(f"cannot read image: {e}", path) from None


def read_image(path: Path) -> np.ndarray:
    """Decode an image to ``[H, W, 3 or 4]`` uint8 (grey expanded, 16 bit reduced); DataError on failure."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise DataError("image not found", path)
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:
        raise DataError(f"cannot decode image: {e}", path) from None
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"unsupported image shape {img.shape}", path)
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) // 257).astype(np.uint8)
    elif img.dtype.kind == "f":
        img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise DataError(f"unsupported image dtype {img.dtype}", path)
    if img.shape[-1] in (1, 2):  # grey (+ alpha)
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=-1), img[..., 1:]], axis=-1)
    return img


def area_downscale(img: np.ndarray, n: int) -> np.ndarray:
    """Average ``n x n`` blocks of a ``[H, W, C]`` uint8 image (crops ``H % n`` rows, ``W % n`` columns).

    With 4 channels, colours are averaged premultiplied by alpha so edges do not bleed the
    (invisible) colour of transparent pixels.
    """
    if n == 1:
        return img
    h, w = img.shape[0] // n, img.shape[1] // n
    if h == 0 or w == 0:
        raise ValueError(f"image {img.shape[:2]} is smaller than the downscale factor {n}")
    x = img[: h * n, : w * n].astype(np.float32).reshape(h, n, w, n, img.shape[-1])
    if img.shape[-1] == 4:
        a = x[..., 3:4]
        rgb = (x[..., :3] * a).mean(axis=(1, 3))
        a = a.mean(axis=(1, 3))
        rgb = np.where(a > 0, rgb / np.maximum(a, 1e-6), x[..., :3].mean(axis=(1, 3)))
        out = np.concatenate([rgb, a], axis=-1)
    else:
        out = x.mean(axis=(1, 3))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ImageSource:
    """Where an image comes from: a file and the block-average factor still to apply to it."""

    path: Path
    factor: int = 1


def make_image_store(sources: list[ImageSource], cameras: Cameras, background) -> ImageStore:
    """An :class:`ImageStore` that decodes, downscales and checks each image against its camera size."""
    widths = cameras.width.tolist()
    heights = cameras.height.tolist()

    def loader(i: int) -> np.ndarray:
        src = sources[i]
        img = read_image(src.path)
        if src.factor > 1:
            if img.shape[0] < src.factor or img.shape[1] < src.factor:
                raise DataError(f"image {img.shape[1]}x{img.shape[0]} is smaller than downscale {src.factor}", src.path)
            img = area_downscale(img, src.factor)
        if (img.shape[1], img.shape[0]) != (widths[i], heights[i]):
            full = f" (before downscale {src.factor})" if src.factor > 1 else ""
            raise DataError(
                f"image is {img.shape[1]}x{img.shape[0]}{full} but its camera expects {widths[i]}x{heights[i]}",
                src.path,
            )
        return img

    return ImageStore([s.path for s in sources], loader, background=background)


def make_mask_loader(paths: list[Path], factors: list[int], cameras: Cameras):
    """``masks(i) -> [H, W, 1] uint8`` (0 background .. 255 foreground), downscaled like the images."""
    widths, heights = cameras.width.tolist(), cameras.height.tolist()

    def masks(i: int) -> Tensor:
        img = read_image(paths[i])
        m = img[..., 3:4] if img.shape[-1] == 4 else img[..., :1]
        m = area_downscale(m, factors[i])
        if (m.shape[1], m.shape[0]) != (widths[i], heights[i]):
            msg = f"mask is {m.shape[1]}x{m.shape[0]} but its camera expects {widths[i]}x{heights[i]}"
            raise DataError(msg, paths[i])
        return torch.from_numpy(np.ascontiguousarray(m))

    return masks


def list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def downscaled_folder(folder: Path, n: int) -> Path | None:
    """``<folder>_<n>`` when it exists (LLFF / nerfstudio pre-downscaled images), else None."""
    if n <= 1:
        return None
    cand = Path(folder).parent / f"{Path(folder).name}_{n}"
    return cand if cand.is_dir() else None


_ROUNDINGS = (lambda x, n: x // n, lambda x, n: -(-x // n), lambda x, n: int(math.floor(x / n + 0.5)))


def predownscaled_size(full_w: int, full_h: int, n: int, found: tuple[int, int], path: Path):
    """Which rounding (floor, ceil, nearest) a pre-downscaled image used; returns ``f(x) -> x / n`` rounded."""
    for rnd in _ROUNDINGS:
        if (rnd(full_w, n), rnd(full_h, n)) == found:
            return lambda x, rnd=rnd: rnd(int(x), n)
    raise DataError(
        f"pre-downscaled image is {found[0]}x{found[1]}, expected about {full_w / n:.0f}x{full_h / n:.0f} "
        f"({full_w}x{full_h} / {n})",
        path,
    )


# ----------------------------------------------------------------------------- cameras


def scale_cameras(cams: Cameras, sx, sy, width, height) -> Cameras:
    """Cameras with intrinsics scaled by ``sx, sy`` and the given image size (scalars or ``[C]``)."""
    n = len(cams)
    sx = torch.as_tensor(sx, dtype=torch.float64).expand(n)
    sy = torch.as_tensor(sy, dtype=torch.float64).expand(n)
    return replace(
        cams,
        fx=(cams.fx.double() * sx).float(),
        fy=(cams.fy.double() * sy).float(),
        cx=(cams.cx.double() * sx).float(),
        cy=(cams.cy.double() * sy).float(),
        width=torch.as_tensor(width, dtype=torch.int64).expand(n).clone(),
        height=torch.as_tensor(height, dtype=torch.int64).expand(n).clone(),
    )


def downscale_cameras(cams: Cameras, n: int) -> Cameras:
    """Cameras for images block-averaged by ``n`` (size ``W // n``, intrinsics divided by exactly ``n``)."""
    if n == 1:
        return cams
    return scale_cameras(cams, 1.0 / n, 1.0 / n, cams.width // n, cams.height // n)


def check_poses(c2w: np.ndarray, path: Path, names: list[str] | None = None, tol: float = 1e-2) -> None:
    """Raise DataError unless every ``[C, 4, 4]`` (or 3x4) pose is finite and rigid (orthonormal, det > 0)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    for i in range(c2w.shape[0]):
        label = names[i] if names is not None else f"pose {i}"
        if not np.all(np.isfinite(c2w[i])):
            raise DataError(f"{label}: pose has non-finite values", path)
        r = c2w[i, :3, :3]
        err = np.abs(r.T @ r - np.eye(3)).max()
        if err > tol:
            raise DataError(f"{label}: rotation is not orthonormal (|R^T R - I| = {err:.3g})", path)
        if np.linalg.det(r) < 0:
            raise DataError(f"{label}: rotation has det < 0 (a reflection)", path)


def orthonormalize(c2w: np.ndarray) -> np.ndarray:
    """Project the rotations of ``[C, 4, 4]`` poses onto SO(3) (removes float-text noise after checking)."""
    out = np.array(c2w, dtype=np.float64)
    u, _, vt = np.linalg.svd(out[:, :3, :3])
    out[:, :3, :3] = u @ vt
    return out


def similarity(scale: float, translation, rotation=None) -> Tensor:
    """``[4, 4]`` float32 matrix ``x -> scale * R x + t``."""
    m = np.eye(4)
    m[:3, :3] = scale * (np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64))
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return torch.tensor(m, dtype=torch.float32)


def center_and_scale(centers: np.ndarray, mode: str = "radius") -> tuple[float, np.ndarray]:
    """(scale, translation) moving the mean camera centre to 0 and the farthest camera to distance 1.

    ``mode="radius"`` uses the Euclidean distance (cameras inside the unit sphere); ``mode="box"``
    uses the largest coordinate (cameras inside ``[-1, 1]^3``, nerfstudio's dataparser).
    """
    mean = centers.mean(axis=0)
    d = centers - mean
    extent = np.linalg.norm(d, axis=-1).max() if mode == "radius" else np.abs(d).max()
    scale = 1.0 / extent if extent > 1e-12 else 1.0
    return scale, -scale * mean


def points_box(points: np.ndarray, pad: float = 0.05, percentile: float = 1.0) -> Tensor:
    """``[2, 3]`` box of the ``percentile .. 100 - percentile`` range of points, padded by ``pad`` of its size."""
    lo = np.percentile(points, percentile, axis=0)
    hi = np.percentile(points, 100 - percentile, axis=0)
    size = np.maximum(hi - lo, 1e-6)
    return torch.tensor(np.stack([lo - pad * size, hi + pad * size]), dtype=torch.float32)


# ----------------------------------------------------------------------------- splits


def default_splits(n: int, every: int) -> dict[str, list[int]]:
    """The hold-out splits used when a dataset defines none (every ``every``-th frame is test and val)."""
    return holdout_splits(n, every)


def check_splits(splits: dict[str, list[int]], cams: Cameras, path: Path) -> None:
    """Raise DataError for an empty split or one whose cameras have different image sizes."""
    for name, idx in splits.items():
        if len(idx) == 0:
            raise DataError(f"split {name!r} is empty ({len(cams)} frames in all)", path)
        sizes = {(int(cams.width[i]), int(cams.height[i])) for i in idx}
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
            raise DataError(f"images of split {name!r} have different sizes ({shown})", path)


def warn_skipped(path: Path, skipped: list[str], total: int) -> None:
    """One warning naming the frames skipped because their image is missing."""
    if not skipped:
        return
    shown = ", ".join(skipped[:20]) + (f", ... ({len(skipped) - 20} more)" if len(skipped) > 20 else "")
    warnings.warn(f"{path}: skipped {len(skipped)} of {total} frames whose image is missing: {shown}", stacklevel=3)


def downscaled_sources(paths: list[Path], cams: Cameras, n: int) -> tuple[list[ImageSource], Cameras]:
    """Image sources and cameras for ``downscale=n``.

    For each image ``<dir>/<name>``, ``<dir>_<n>/<name>`` is used when that folder holds it (its
    size, read once per folder, tells how the tool rounded); otherwise the original is
    block-averaged by ``n``.
    """
    if n == 1:
        return [ImageSource(Path(p)) for p in paths], cams
    w, h = cams.width.tolist(), cams.height.tolist()
    new_w, new_h = [x // n for x in w], [y // n for y in h]
    sx = [1.0 / n] * len(paths)
    sy = [1.0 / n] * len(paths)
    roundings: dict[Path, object] = {}
    sources = []
    for i, p in enumerate(map(Path, paths)):
        folder = downscaled_folder(p.parent, n)
        if folder is None or not (folder / p.name).is_file():
            sources.append(ImageSource(p, n))
            continue
        q = folder / p.name
        if p.parent not in roundings:
            roundings[p.parent] = predownscaled_size(w[i], h[i], n, image_size(q), q)
        rnd = roundings[p.parent]
        new_w[i], new_h[i] = rnd(w[i]), rnd(h[i])
        sx[i], sy[i] = new_w[i] / w[i], new_h[i] / h[i]
        sources.append(ImageSource(q, 1))
    return sources, scale_cameras(cams, torch.tensor(sx), torch.tensor(sy), torch.tensor(new_w), torch.tensor(new_h))


# ----------------------------------------------------------------------------- sparse points

#: point files looked for next to a transforms JSON (3DGS / nerfstudio / our synthetic scenes write these).
POINT_FILE_NAMES = ("points3d.ply", "points3D.ply", "sparse_pc.ply")


#: vertex properties read as a point's time: ours (``data synth --dynamic``), then 4DGS's ``t``.
POINT_TIME_PROPERTIES = ("time", "t")


def read_points_ply(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A point-cloud ``.ply`` (ascii or binary) -> ``xyz [P, 3]`` float32, ``rgb [P, 3]`` uint8 or None and
    ``time [P]`` float64 or None (a ``time`` or ``t`` vertex property, as dynamic scenes write: the dataset's
    time stamps, not normalised).

    Read with trimesh (faces, if any, are ignored). Raises DataError naming the file when it cannot
    be parsed or holds no vertices, or when its times are not finite.
    """
    import trimesh

    try:
        geom = trimesh.load(str(path), process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for a bad file
        raise DataError(f"cannot read point cloud ({type(e).__name__}: {e})", path) from None
    xyz = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float32).reshape(-1, 3)
    if len(xyz) == 0 or not np.all(np.isfinite(xyz)):
        raise DataError("point cloud has no (finite) vertices", path)
    colors = getattr(geom, "colors", None)
    if colors is None and hasattr(geom, "visual"):
        colors = getattr(geom.visual, "vertex_colors", None)
    rgb = None
    if colors is not None and len(colors) == len(xyz):
        rgb = np.asarray(colors)[:, :3].astype(np.uint8)
    vertex = getattr(geom, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")  # every property as read
    names = [n for n in POINT_TIME_PROPERTIES if vertex is not None and n in (vertex.dtype.names or ())]
    time = None
    if names and len(vertex) == len(xyz):
        time = np.asarray(vertex[names[0]], dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(time)):
            raise DataError(f"point cloud has non-finite {names[0]!r} values", path)
    return xyz, rgb, time


def find_points(root: Path, names: tuple[str, ...] = POINT_FILE_NAMES,
                world_from_dataset: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, np.ndarray | None]:
    """The first of ``names`` in ``root`` as ``(points [P, 3] float32 in the normalised world,
    colours [P, 3] uint8, times [P] float64 or None)``; ``(None, None, None)`` when there is none.
    Colours default to mid grey; times are the file's (see :func:`read_points_ply`)."""
    for name in names:
        path = Path(root) / name
        if path.is_file():
            xyz, rgb, time = read_points_ply(path)
            pts = torch.from_numpy(xyz)
            if world_from_dataset is not None:
                m = world_from_dataset.to(torch.float32)
                pts = pts @ m[:3, :3].T + m[:3, 3]
            cols = torch.from_numpy(rgb) if rgb is not None else torch.full((len(xyz), 3), 128, dtype=torch.uint8)
            return pts.contiguous(), cols, time
    return None, None, None
