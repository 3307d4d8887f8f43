"""Ray / axis-aligned box intersection (slab test), pure PyTorch."""

from __future__ import annotations

import torch
from torch import Tensor


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test of ``R`` rays against one box.

    Args:
        origins, directions: ``[R, 3]`` (directions need not be unit; zero components are handled).
        aabb: ``[2, 3]`` (min, max) or ``[6]``.

    Returns:
        ``t_min [R]``, ``t_max [R]`` (entry/exit ray parameters; ``t_min`` may be negative when the
        origin is inside) and ``hit [R]`` bool (``t_max > max(t_min, 0)``). Not differentiable.
    """
    box = aabb.reshape(2, 3).to(origins)
    d = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / d
    t0 = (box[0] - origins) * inv
    t1 = (box[1] - origins) * inv
    t_min = torch.minimum(t0, t1).amax(dim=-1)
    t_max = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_max > t_min.clamp_min(0.0)
    return t_min, t_max, hit
