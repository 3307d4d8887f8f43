"""DTU / IDR / NeuS / MonoSDF ``cameras.npz`` (or NeuS's ``cameras_sphere.npz``).

For each view ``i`` the file holds ``world_mat_i`` (a 3x4 or 4x4 projection ``K [R | t]`` in the
dataset's coordinates) and ``scale_mat_i`` (maps the unit sphere onto the object). The projection
of the normalised world is ``P = (world_mat @ scale_mat)[:3, :4]``; it is decomposed (RQ, numpy)
into ``K`` with a positive diagonal and an OpenCV camera-to-world. The world is the object's unit
sphere: ``world_from_dataset = inv(scale_mat)``, ``scene_box = [-1, 1]^3``; real captures keep
their background outside it (``unbounded=True``). ``near``/``far`` bracket the unit sphere from
the cameras.

Layouts: NeuS/IDR ``image/*.png`` (+ ``mask/*.png``), MonoSDF ``*_rgb.png`` (+ ``*_mask.png``).
MonoSDF crops and resizes the images (DTU 1600x1200 -> 384x384) but keeps the original
``world_mat``; such a file is recognised because ``(2 cx, 2 cy)`` of the decomposed ``K`` is far
from the image size: the original size is taken from a table of known captures (else
``(2 cx, 2 cy)``), the image is assumed centre-cropped to its aspect ratio and resized, and ``K``
is adjusted the same way (for DTU: ``cx -= 200; K[:2] *= 384 / 1200``).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from omnifield.datasets.cameras import Cameras, CameraModel
from omnifield.datasets.io import (
    LoadOptions,
    check_splits,
    default_splits,
    downscaled_sources,
    image_size,
    list_images,
    make_image_store,
    make_mask_loader,
    read_npz,
)
from omnifield.datasets.scene_data import SceneData
from omnifield.errors import DataError

CAMERA_FILES = ("cameras.npz", "cameras_sphere.npz")
KNOWN_CAPTURE_SIZES = ((1600, 1200),)  # DTU
CENTER_TOLERANCE = 0.1  # |2 cx - W| / W below this: K belongs to the image as it is


def rq(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RQ decomposition ``a = r @ q`` of a 3x3 matrix: ``r`` upper triangular, ``q`` orthogonal."""
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ a).T)
    return flip @ r.T @ flip, flip @ q.T


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x4 projection into ``K`` (3x3, positive diagonal, ``K[2,2] = 1``) and an OpenCV c2w (4x4)."""
    p = np.asarray(p, dtype=np.float64)[:3, :4]
    if np.linalg.det(p[:, :3]) < 0:  # P is defined up to scale: pick the sign giving det(R) = +1
        p = -p
    k, r = rq(p[:, :3])
    d = np.diag(np.sign(np.diag(k)))
    k, r = k @ d, d @ r
    t = np.linalg.solve(k, p[:, 3])
    k = k / k[2, 2]
    c2w = np.eye(4)
    c2w[:3, :3] = r.T
    c2w[:3, 3] = -r.T @ t
    return k, c2w


def adjust_for_crop(k: np.ndarray, width: int, height: int) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Adapt ``K`` when the images were centre-cropped and resized after calibration (MonoSDF).

    Returns the adjusted K and the original size assumed, or ``(K, None)`` when K fits the image.
    """
    cx, cy = k[0, 2], k[1, 2]
    if abs(2 * cx - width) <= CENTER_TOLERANCE * width and abs(2 * cy - height) <= CENTER_TOLERANCE * height:
        return k, None
    close = lambda a, b: abs(a - b) <= CENTER_TOLERANCE * b  # noqa: E731
    known = [s for s in KNOWN_CAPTURE_SIZES if close(2 * cx, s[0]) and close(2 * cy, s[1])]
    orig = known[0] if known else (int(round(2 * cx)), int(round(2 * cy)))
    w0, h0 = orig
    k = k.copy()
    if w0 / h0 > width / height:  # crop columns
        crop_w = h0 * width / height
        k[0, 2] -= (w0 - crop_w) / 2
        s = height / h0
    else:  # crop rows
        crop_h = w0 * height / width
        k[1, 2] -= (h0 - crop_h) / 2
        s = width / w0
    k[:2] *= s
    return k, orig


def find_camera_file(root: Path) -> Path | None:
    """``cameras.npz`` or ``cameras_sphere.npz`` in ``root``."""
    return next((root / n for n in CAMERA_FILES if (root / n).is_file()), None)


def _find_images(root: Path) -> tuple[list[Path], list[Path] | None]:
    for sub in ("image", "images", "rgb"):
        if (root / sub).is_dir():
            masks = list_images(root / "mask") if (root / "mask").is_dir() else None
            return list_images(root / sub), masks
    rgb = sorted(root.glob("*_rgb.png"))
    masks = sorted(root.glob("*_mask.png")) or None
    return rgb, masks


def _view_matrices(cams: dict[str, np.ndarray], path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    ids = sorted(int(m.group(1)) for k in cams if (m := re.fullmatch(r"world_mat_(\d+)", k)))
    if not ids:
        raise DataError("no world_mat_<i> arrays", path)
    if ids != list(range(len(ids))):
        raise DataError(f"world_mat indices are not 0..{len(ids) - 1}", path)
    has_scale = [f"scale_mat_{i}" in cams for i in ids]
    if any(has_scale) and not all(has_scale):
        raise DataError(f"scale_mat_{has_scale.index(False)} is missing", path)
    scale = cams["scale_mat_0"].astype(np.float64) if all(has_scale) else np.eye(4)
    projections = []
    for i in ids:
        wm = np.asarray(cams[f"world_mat_{i}"], dtype=np.float64)
        sm = np.asarray(cams[f"scale_mat_{i}"], dtype=np.float64) if all(has_scale) else np.eye(4)
        if wm.shape not in ((3, 4), (4, 4)) or sm.shape != (4, 4):
            raise DataError(f"world_mat_{i} / scale_mat_{i} have shapes {wm.shape}, {sm.shape}", path)
        if not (np.all(np.isfinite(wm)) and np.all(np.isfinite(sm))):
            raise DataError(f"world_mat_{i} or scale_mat_{i} is not finite", path)
        if not np.allclose(sm, scale, rtol=1e-5, atol=1e-6):
            raise DataError(f"scale_mat_{i} differs from scale_mat_0 (one normalisation per scene)", path)
        wm4 = np.vstack([wm[:3], [0, 0, 0, 1]])
        p = (wm4 @ sm)[:3, :4]
        if abs(np.linalg.det(p[:, :3])) < 1e-12:
            raise DataError(f"world_mat_{i} is singular", path)
        projections.append(p)
    if abs(np.linalg.det(scale[:3, :3])) < 1e-12:
        raise DataError("scale_mat_0 is singular", path)
    return projections, scale


def load_dtu(path, *, downscale: int = 1, background=(1.0, 1.0, 1.0), holdout_every: int = 8) -> SceneData:
    """Load a DTU / NeuS / MonoSDF folder with ``cameras.npz`` into a :class:`SceneData`."""
    opts = LoadOptions(downscale, tuple(background), holdout_every)
    root = Path(path)
    if root.is_file():
        root = root.parent
    npz = find_camera_file(root)
    if npz is None:
        raise DataError(f"no {' or '.join(CAMERA_FILES)}", root)
    projections, scale_mat = _view_matrices(read_npz(npz), npz)
    images, masks = _find_images(root)
    if len(images) != len(projections):
        raise DataError(f"{len(images)} images for {len(projections)} cameras in {npz.name}", root)
    width, height = image_size(images[0])
    ks, c2ws, original = [], [], None
    for p in projections:
        k, c2w = decompose_projection(p)
        k, original = adjust_for_crop(k, width, height)
        ks.append(k)
        c2ws.append(c2w)
    if original is not None and original not in KNOWN_CAPTURE_SIZES:
        msg = f"intrinsics are for {original[0]}x{original[1]} images, assumed centre-cropped to {width}x{height}"
        warnings.warn(f"{npz}: {msg}", stacklevel=2)
    ks, c2ws = np.stack(ks), np.stack(c2ws)
    full = Cameras.create(
        torch.tensor(c2ws, dtype=torch.float32), ks[:, 0, 0], ks[:, 1, 1], ks[:, 0, 2], ks[:, 1, 2], width, height,
        model=CameraModel.PINHOLE,
    )
    sources, cams = downscaled_sources(images, full, opts.downscale)
    mask_loader = None
    if masks is not None and len(masks) == len(images):
        mask_sources, _ = downscaled_sources(masks, full, opts.downscale)
        mask_loader = make_mask_loader([s.path for s in mask_sources], [s.factor for s in mask_sources], cams)
    dist = np.linalg.norm(c2ws[:, :3, 3], axis=-1)
    splits = default_splits(len(images), opts.holdout_every)
    check_splits(splits, cams, npz)
    return SceneData(
        root=root,
        format="dtu",
        cameras=cams,
        images=make_image_store(sources, cams, opts.background),
        splits=splits,
        scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]),
        world_from_dataset=torch.tensor(np.linalg.inv(scale_mat), dtype=torch.float32),
        near=max(float(dist.min()) - 1.0, 0.05),
        far=float(dist.max()) + 1.0,
        masks=mask_loader,
        unbounded=True,
        background=opts.background,
        metadata={
            "downscale": opts.downscale,
            "skipped_frames": [],
            "camera_file": npz.name,
            "calibrated_size": list(original) if original is not None else [width, height],
        },
    )
