"""SceneData: cameras + lazily loaded uint8 images + everything a parser found, in one normalised world.

Every parser returns a :class:`SceneData` whose cameras live in omnifield's *normalised world*:
``world = world_from_dataset @ dataset_point``. ``world_from_dataset`` is a similarity transform
(uniform scale, rotation, translation) stored with every run, so cameras or exports expressed in
the dataset's original coordinates map to the same place (:meth:`SceneData.to_world`,
:meth:`SceneData.to_dataset`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import DataError

SPLITS = ("train", "val", "test")


class ImageStore:
    """Lazy image loading with a uint8 cache.

    ``loader(i) -> np.ndarray [H, W, 3 or 4] uint8`` reads image ``i`` (already resized to the
    requested downscale); alpha, when present, is kept separately and composited on ``background``.
    Thread-safe; the cache holds uint8 only (4x less memory than float).
    """

    def __init__(self, paths: list[Path], loader: Callable[[int], np.ndarray], background=(1.0, 1.0, 1.0)):
        self.paths = list(paths)
        self._loader = loader
        self._rgb: dict[int, Tensor] = {}
        self._alpha: dict[int, Tensor | None] = {}
        self._lock = threading.Lock()
        self.background = tuple(float(b) for b in background)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> None:
        img = self._loader(i)
        if img.dtype != np.uint8:
            raise DataError(f"image must decode to uint8, got {img.dtype}", self.paths[i])
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        alpha = None
        if img.shape[-1] == 4:
            a = img[..., 3:4].astype(np.float32) / 255.0
            rgb = img[..., :3].astype(np.float32) / 255.0
            bg = np.asarray(self.background, dtype=np.float32)
            rgb = rgb * a + bg * (1 - a)
            img = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
            alpha = torch.from_numpy(np.round(a * 255).astype(np.uint8))
        self._rgb[i] = torch.from_numpy(np.ascontiguousarray(img[..., :3]))
        self._alpha[i] = alpha

    def rgb(self, i: int) -> Tensor:
        """``[H, W, 3]`` uint8, alpha composited on the background."""
        with self._lock:
            if i not in self._rgb:
                self._load(i)
            return self._rgb[i]

    def alpha(self, i: int) -> Tensor | None:
        """``[H, W, 1]`` uint8 alpha, or None when the image had none."""
        with self._lock:
            if i not in self._rgb:
                self._load(i)
            return self._alpha[i]


@dataclass
class SceneData:
    """What a parser found, converted once into omnifield's types.

    Attributes:
        root: dataset folder.
        format: detected format name ("blender", "ngp", "nerfstudio", "colmap", "llff", "dtu", "dnerf", ...).
        cameras: all frames, normalised world, OpenCV axes.
        images: lazy uint8 images, one per camera.
        splits: split name -> camera indices.
        scene_box: ``[2, 3]`` axis-aligned box (min, max) holding the scene, normalised world.
        world_from_dataset: ``[4, 4]`` similarity mapping dataset coordinates to the normalised world.
        near, far: optional ray bounds in normalised world units.
        points, point_colors: optional ``[P, 3]`` float32 world points and ``[P, 3]`` uint8 colours.
        point_times: optional ``[P]`` float32 time of each point, normalised as the cameras' times (dynamic
            scenes whose point file has a ``time`` (or 4DGS's ``t``) property, as ``omnifield data synth --dynamic``
            writes).
        depths, masks: optional per-camera loaders (ground-truth depth in world units, foreground masks).
        time_range: optional (t0, t1) of the original time stamps (cameras carry normalised times).
        unbounded: True for scenes whose background lies far outside ``scene_box`` (real captures).
        metadata: anything else worth printing (aabb_scale, downscale, skipped frames, ...).
    """

    root: Path
    format: str
    cameras: Cameras
    images: ImageStore
    splits: dict[str, list[int]]
    scene_box: Tensor
    world_from_dataset: Tensor = field(default_factory=lambda: torch.eye(4))
    near: float | None = None
    far: float | None = None
    points: Tensor | None = None
    point_colors: Tensor | None = None
    point_times: Tensor | None = None
    depths: Callable[[int], Tensor] | None = None
    masks: Callable[[int], Tensor] | None = None
    time_range: tuple[float, float] | None = None
    unbounded: bool = False
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cameras)

    def split(self, name: str) -> list[int]:
        """Camera indices of a split ("train", "val", "test" or "all"); raises DataError when empty."""
        if name == "all":
            idx = list(range(len(self.cameras)))
        elif name in self.splits:
            idx = list(self.splits[name])
        else:
            raise DataError(f"no split named {name!r} (have: {', '.join(sorted(self.splits))})", self.root)
        if not idx:
            raise DataError(f"split {name!r} is empty", self.root)
        return idx

    @property
    def dataset_from_world(self) -> Tensor:
        return torch.linalg.inv(self.world_from_dataset)

    @property
    def world_scale(self) -> float:
        """Uniform scale of ``world_from_dataset`` (world units per dataset unit)."""
        return float(torch.linalg.det(self.world_from_dataset[:3, :3]).abs() ** (1.0 / 3.0))

    def to_world(self, points_dataset: Tensor) -> Tensor:
        """Map ``[..., 3]`` points from dataset coordinates to the normalised world."""
        m = self.world_from_dataset.to(points_dataset)
        return points_dataset @ m[:3, :3].T + m[:3, 3]

    def to_dataset(self, points_world: Tensor) -> Tensor:
        """Map ``[..., 3]`` points from the normalised world back to dataset coordinates."""
        m = self.dataset_from_world.to(points_world)
        return points_world @ m[:3, :3].T + m[:3, 3]

    def with_world(self, world_from_dataset: Tensor, scene_box: Tensor | None = None) -> "SceneData":
        """Re-express this data in another normalisation (e.g. the one stored with a run).

        ``world_from_dataset`` replaces this data's own normalisation; cameras, points and the
        scene box are mapped accordingly.
        """
        new = torch.as_tensor(world_from_dataset, dtype=torch.float32)
        delta = new @ self.dataset_from_world
        cams = self.cameras.transformed(delta)
        points = None if self.points is None else _apply(delta, self.points)
        s = float(torch.linalg.det(delta[:3, :3]).abs() ** (1.0 / 3.0))
        return replace(
            self,
            cameras=cams,
            points=points,
            world_from_dataset=new,
            scene_box=self.scene_box if scene_box is None else scene_box,
            near=None if self.near is None else self.near * s,
            far=None if self.far is None else self.far * s,
        )

    def image_size(self, split: str = "train") -> tuple[int, int]:
        """(height, width) of the first camera of a split."""
        i = self.split(split)[0]
        return int(self.cameras.height[i]), int(self.cameras.width[i])


def _apply(m: Tensor, points: Tensor) -> Tensor:
    return points @ m[:3, :3].T.to(points) + m[:3, 3].to(points)


def holdout_splits(n: int, every: int = 8) -> dict[str, list[int]]:
    """Every ``every``-th frame held out for test (and val), the rest for training (LLFF/mip-NeRF convention)."""
    test = [i for i in range(n) if i % every == 0]
    train = [i for i in range(n) if i % every != 0]
    return {"train": train, "val": list(test), "test": test}
