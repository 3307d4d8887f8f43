"""Training-data samplers of the Trainer: random pixels (ray scenes) and whole images (splatting scenes).

Both keep the training images as uint8 and are driven by the trainer's seeded ``torch.Generator``, so
a run is deterministic for a seed and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import torch

from omnifield.errors import CheckpointError, DataError


def _load_images(data, indices: list[int]) -> tuple[list, list]:
    """uint8 ``rgb [H, W, 3]`` and ``alpha [H, W, 1] | None`` of the training images ``indices``, each
    checked against its camera's size (``DataError`` naming the file otherwise)."""
    if not indices:
        raise DataError("no training images", data.root)
    rgbs, alphas = [], []
    for i in indices:
        rgb = data.images.rgb(i)
        h, w = int(data.cameras.height[i]), int(data.cameras.width[i])
        if tuple(rgb.shape) != (h, w, 3):
            raise DataError(f"image {i} is {tuple(rgb.shape[:2])} but its camera says {(h, w)}",
                            data.images.paths[i] if i < len(data.images.paths) else data.root)
        rgbs.append(rgb)
        alphas.append(data.images.alpha(i))
    return rgbs, alphas


class PixelSampler:
    """Every training pixel of a SceneData in one flat uint8 buffer, sampled uniformly.

    Image ``k`` occupies ``offsets[k]:offsets[k+1]`` of ``rgb [P, 3]`` (row-major), so cameras of
    different sizes mix freely. ``alpha [P, 1]`` is kept when any image has alpha (255 elsewhere).
    """

    def __init__(self, data, indices: list[int]):
        images, alphas = _load_images(data, indices)
        sizes = [int(rgb.shape[0] * rgb.shape[1]) for rgb in images]
        alphas = [None if a is None else a.reshape(-1, 1) for a in alphas]
        self.rgb = torch.cat([rgb.reshape(-1, 3) for rgb in images])
        self.alpha = None
        if any(a is not None for a in alphas):
            self.alpha = torch.cat([a if a is not None else torch.full((n, 1), 255, dtype=torch.uint8)
                                    for a, n in zip(alphas, sizes)])
        self.offsets = torch.tensor([0] + sizes).cumsum(0)
        self.widths = data.cameras.width[torch.as_tensor(indices)].clone()
        self.camera_ids = torch.as_tensor(indices, dtype=torch.long)
        self.background = torch.tensor(data.background, dtype=torch.float32)

    @property
    def num_pixels(self) -> int:
        return int(self.offsets[-1])

    def sample(self, n: int, generator: torch.Generator, *, jitter: bool = True, random_background: bool = True):
        """``n`` pixels uniformly over all images.

        Returns ``(camera_indices [n] (indices into data.cameras), pixels [n, 2] float (u, v) pixel
        coordinates, rgb [n, 3] float target, background [n, 3], alpha [n, 1] or None)``.
        """
        idx = torch.randint(0, self.num_pixels, (n,), generator=generator)
        k = torch.searchsorted(self.offsets, idx, right=True) - 1
        local = idx - self.offsets[k]
        w = self.widths[k]
        uv = torch.stack([local % w, torch.div(local, w, rounding_mode="floor")], dim=-1).float()
        offset = torch.rand(n, 2, generator=generator) if jitter else torch.full((n, 2), 0.5)
        rgb = self.rgb[idx].float() / 255.0
        alpha = None if self.alpha is None else self.alpha[idx].float() / 255.0
        if alpha is not None and random_background:
            background = torch.rand(n, 3, generator=generator)
            rgb = (rgb + (background - self.background) * (1.0 - alpha)).clamp(0.0, 1.0)
        else:
            background = self.background.expand(n, 3).clone()
        return self.camera_ids[k], uv + offset, rgb, background, alpha


class ImageSampler:
    """Whole training images, drawn in a seeded random order: a new permutation of the training images
    (from the trainer's generator) every epoch, walked one image at a time.

    Deterministic for a generator seed and resumable: :meth:`state_dict` (the current permutation and
    position) goes into the checkpoint next to the generator's state. Images stay uint8 until drawn.
    """

    def __init__(self, data, indices: list[int]):
        self.rgb, self.alpha = _load_images(data, indices)
        self.has_alpha = any(a is not None for a in self.alpha)
        self.camera_ids = torch.as_tensor(indices, dtype=torch.long)
        self.background = torch.tensor(data.background, dtype=torch.float32)
        self.order = torch.arange(len(indices))
        self.position = len(indices)  # exhausted: the first draw starts a permutation

    def __len__(self) -> int:
        return len(self.rgb)

    def _next(self, generator: torch.Generator) -> int:
        if self.position >= len(self.order):
            self.order = torch.randperm(len(self.rgb), generator=generator)
            self.position = 0
        k = int(self.order[self.position])
        self.position += 1
        return k

    def sample(self, n: int, generator: torch.Generator, *, random_background: bool = True):
        """The next ``n`` images of the walk.

        Returns ``(camera_indices [n] (indices into data.cameras), rgb [n, H, W, 3] float target,
        background [n, 3], alpha [n, H, W, 1] or None)``. With alpha and ``random_background`` each
        image is re-composited on its own random colour.
        """
        picks = [self._next(generator) for _ in range(n)]
        if len({tuple(self.rgb[k].shape) for k in picks}) > 1:
            raise DataError("views of different sizes cannot share an image batch (use one view per batch)")
        rgbs, alphas, bgs = [], [], []
        for k in picks:
            rgb = self.rgb[k].float() / 255.0
            a = self.alpha[k]
            alpha = None if not self.has_alpha else (a.float() / 255.0 if a is not None else torch.ones_like(rgb[..., :1]))
            if alpha is not None and random_background:
                bg = torch.rand(3, generator=generator)
                rgb = (rgb + (bg - self.background) * (1.0 - alpha)).clamp(0.0, 1.0)
            else:
                bg = self.background.clone()
            rgbs.append(rgb)
            alphas.append(alpha)
            bgs.append(bg)
        alpha = torch.stack(alphas) if self.has_alpha else None
        return self.camera_ids[picks], torch.stack(rgbs), torch.stack(bgs), alpha

    def state_dict(self) -> dict:
        """JSON-ready walk state: ``{"order": [...], "position": int}``."""
        return {"order": [int(k) for k in self.order], "position": int(self.position)}

    def load_state_dict(self, state: dict) -> None:
        order = [int(k) for k in state["order"]]
        if sorted(order) != list(range(len(self.rgb))) and order:
            raise CheckpointError(f"the image-sampler state holds {len(order)} images, the data {len(self.rgb)}")
        self.order = torch.as_tensor(order, dtype=torch.long) if order else torch.arange(len(self.rgb))
        self.position = int(state["position"])
