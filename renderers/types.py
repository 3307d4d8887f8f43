"""Core renderer types: rays, packed samples and the RenderOutput every renderer returns."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class RayBundle:
    """``R`` rays in the normalised world.

    Attributes:
        origins: ``[R, 3]``.
        directions: ``[R, 3]`` unit length.
        camera_indices: ``[R]`` int64 index of the camera each ray came from (or zeros).
        times: ``[R]`` normalised time, or None for static scenes.
        pixel_radius: ``[R]`` or None: the pixel footprint per unit distance (for anti-aliasing / cone tracing).
    """

    origins: Tensor
    directions: Tensor
    camera_indices: Tensor | None = None
    times: Tensor | None = None
    pixel_radius: Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index) -> "RayBundle":
        return RayBundle(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index]) for f in fields(self)}
        )

    def to(self, device) -> "RayBundle":
        return RayBundle(
            **{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device)) for f in fields(self)}
        )


@dataclass(frozen=True)
class PackedSamples:
    """Ragged samples along rays, packed nerfacc-style.

    Attributes:
        ray_indices: ``[S]`` int64 ray of each sample (sorted, samples of one ray contiguous).
        t_starts, t_ends: ``[S]`` interval along the ray.
        packed_info: ``[R, 2]`` int64 (first sample index, sample count) per ray.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    packed_info: Tensor

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mid(self) -> Tensor:
        return 0.5 * (self.t_starts + self.t_ends)

    def positions(self, rays: RayBundle) -> Tensor:
        """``[S, 3]`` sample midpoints."""
        return rays.origins[self.ray_indices] + rays.directions[self.ray_indices] * self.t_mid[:, None]


@dataclass(frozen=True)
class RenderOutput:
    """What every renderer returns. Image-shaped (``[H, W, k]``) for cameras, ``[R, k]`` for rays.

    Attributes:
        rgb: ``[..., 3]`` colour, composited on the background.
        alpha: ``[..., 1]`` accumulated opacity.
        depth: ``[..., 1]`` expected depth along the ray (distance units of the world, ray parameter t).
        normals: ``[..., 3]`` world-space normals, or None.
        extras: further named channels (e.g. "num_samples", "flow"), each ``[..., k]``.
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normals: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def channels(self) -> dict[str, Tensor]:
        """Every channel by name (rgb, alpha, depth, normals if present, then extras)."""
        out = {"rgb": self.rgb, "alpha": self.alpha, "depth": self.depth}
        if self.normals is not None:
            out["normals"] = self.normals
        out.update(self.extras)
        return out

    def map(self, fn) -> "RenderOutput":
        """Apply ``fn`` to every tensor (e.g. reshape rays into an image)."""
        return replace(
            self,
            rgb=fn(self.rgb),
            alpha=fn(self.alpha),
            depth=fn(self.depth),
            normals=None if self.normals is None else fn(self.normals),
            extras={k: fn(v) for k, v in self.extras.items()},
        )

    @staticmethod
    def cat(outputs: list["RenderOutput"]) -> "RenderOutput":
        """Concatenate ray-shaped outputs along the first dimension."""
        first = outputs[0]
        return RenderOutput(
            rgb=torch.cat([o.rgb for o in outputs]),
            alpha=torch.cat([o.alpha for o in outputs]),
            depth=torch.cat([o.depth for o in outputs]),
            normals=None if first.normals is None else torch.cat([o.normals for o in outputs]),
            extras={k: torch.cat([o.extras[k] for o in outputs]) for k in first.extras},
        )
