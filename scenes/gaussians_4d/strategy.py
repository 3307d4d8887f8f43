"""Adaptive density control for 4D Gaussians: the 3DGS :class:`Densifier` with a 4D split.

4DGS (Yang et al. 2024) densifies as 3DGS does, on the view-space gradients of the sliced Gaussians.
Everything but the split is the parent class's: which Gaussians are "big" (split rather than cloned)
and "large" (pruned) is judged on the spatial scales, because the scene keeps the spatial log-scales
``log_scales [N, 3]`` apart from the temporal one ``log_scale_t [N, 1]`` (and the temporal mean
``times [N, 1]`` apart from ``means [N, 3]``).

The split samples each child's offset in 4D from the parent's 4D Gaussian,
``offset = R4 (s * z)`` with ``z ~ N(0, I4)`` and ``R4 = L(q_l) R(q_r)``, so a Gaussian moving
through space-time is split along its own trajectory; the children's spatial scales are the parent's
divided by ``split_scale_divisor`` and their temporal scale is kept (a static Gaussian stays static).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omnifield.cuda.reference.gaussians4d import quats_to_rotation_4d
from omnifield.scenes.gaussian_splatting.strategy import Densifier

#: The per-Gaussian parameters the 4D densifier expects (besides any further rows such as SH).
REQUIRED_4D = ("means", "times", "log_scales", "log_scale_t", "q_left", "q_right", "opacity_logits")


class Densifier4D(Densifier):
    """:class:`~omnifield.scenes.gaussian_splatting.strategy.Densifier` for 4D Gaussians.

    ``params`` given to the methods holds ``means [N, 3]``, ``times [N, 1]``, ``log_scales [N, 3]``
    (spatial), ``log_scale_t [N, 1]``, ``q_left [N, 4]``, ``q_right [N, 4]``, ``opacity_logits [N]``
    and any further per-Gaussian rows (SH), all edited together with their Adam state.
    """

    def _split_rows(self, params: dict[str, nn.Parameter], mask: Tensor) -> dict[str, Tensor]:
        """``split_count`` children per masked Gaussian, offsets sampled from its 4D Gaussian."""
        missing = [k for k in REQUIRED_4D if k not in params]
        if missing:
            raise KeyError(f"Densifier4D needs the parameters {', '.join(missing)}")
        k = self.params.split_count
        rows = {name: p.data[mask].repeat_interleave(k, dim=0) for name, p in params.items()}
        if not bool(mask.any()):
            return rows
        scales4 = torch.cat([rows["log_scales"], rows["log_scale_t"]], dim=-1).exp()
        offsets = torch.randn_like(scales4) * scales4
        rot = quats_to_rotation_4d(rows["q_left"], rows["q_right"])
        offsets = (rot @ offsets[..., None])[..., 0]  # [M, 4] (x, y, z, t)
        rows["means"] = rows["means"] + offsets[:, :3]
        rows["times"] = rows["times"] + offsets[:, 3:]
        rows["log_scales"] = rows["log_scales"] - math.log(self.params.split_scale_divisor)
        return rows
