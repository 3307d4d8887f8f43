"""Adaptive density control of 3D Gaussian splatting (Kerbl et al. 2023, section 5.2) as an explicit object.

:class:`Densifier` owns its statistics (:class:`DensifyState`: accumulated view-space gradient norms,
visibility counts and the largest screen radius of every Gaussian) and edits a dict of
``nn.Parameter`` rows together with the Adam state of those parameters:

- **clone** Gaussians whose mean view-space gradient exceeds the threshold and whose largest scale is
  at most ``percent_dense x extent`` (exact copies);
- **split** the larger ones into ``split_count`` children sampled from the parent Gaussian, with
  scales divided by ``split_scale_divisor`` (the parents are removed);
- **prune** Gaussians with opacity below ``prune_opacity`` and, after the first opacity reset, those
  larger than ``prune_world_size x extent`` in the world or ``prune_screen_size`` pixels on screen;
- **reset opacity**: clamp every opacity to ``opacity_reset_value``.

Every edit keeps the same ``nn.Parameter`` objects (only ``.data`` changes) and rebuilds the rows of
Adam's ``exp_avg`` / ``exp_avg_sq`` accordingly (new rows zero, removed rows dropped, reset opacity
rows zero), so the Trainer's optimizer stays valid across densification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

ADAM_ROW_STATES = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class DensifyParams:
    """The thresholds of adaptive density control (see the scene config for each field's meaning)."""

    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    split_count: int = 2
    split_scale_divisor: float = 1.6
    prune_opacity: float = 0.005
    prune_world_size: float = 0.1
    prune_screen_size: float = 20.0
    opacity_reset_value: float = 0.01
    max_gaussians: int = 0


@dataclass
class DensifyState:
    """Statistics since the last densification, one row per Gaussian.

    Attributes:
        grad_accum: ``[N]`` sum of view-space gradient norms (NDC units) over the views that saw the Gaussian.
        count: ``[N]`` how many views saw it (radius > 0).
        max_radii: ``[N]`` largest screen radius in pixels.
    """

    grad_accum: Tensor
    count: Tensor
    max_radii: Tensor

    @staticmethod
    def zeros(n: int, device: torch.device | str = "cpu") -> "DensifyState":
        z = lambda: torch.zeros(n, dtype=torch.float32, device=device)  # noqa: E731
        return DensifyState(z(), z(), z())

    def __len__(self) -> int:
        return self.grad_accum.shape[0]

    def as_dict(self) -> dict[str, Tensor]:
        return {"grad_accum": self.grad_accum, "count": self.count, "max_radii": self.max_radii}


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """``[N, 4]`` quaternions (w, x, y, z), normalised here -> ``[N, 3, 3]`` rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


# -- editing parameters and their Adam state together ---------------------------------------------
def edit_rows(params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
              param_fn: Callable[[str, Tensor], Tensor], state_fn: Callable[[str, Tensor], Tensor]) -> None:
    """Replace every parameter's ``.data`` by ``param_fn(name, data)`` and each of its Adam row states
    (``exp_avg``, ``exp_avg_sq``) by ``state_fn(name, state)``, keeping the Parameter objects.

    Adam's scalar ``step`` is left as it is. Gradients are dropped (their shape no longer fits).
    """
    states = optimizer.state if optimizer is not None else {}
    for name, p in params.items():
        p.data = param_fn(name, p.data)
        p.grad = None
        st = states.get(p)
        if st:
            for key in ADAM_ROW_STATES:
                if key in st:
                    st[key] = state_fn(name, st[key])


def append_rows(params: dict[str, nn.Parameter], optimizer, rows: dict[str, Tensor]) -> None:
    """Append ``rows[name]`` (``[M, ...]``) to every parameter; Adam state gets ``M`` zero rows."""
    m = len(next(iter(rows.values())))
    edit_rows(params, optimizer,
              lambda name, t: torch.cat([t, rows[name].to(t)]),
              lambda name, s: torch.cat([s, s.new_zeros((m, *s.shape[1:]))]))


def keep_rows(params: dict[str, nn.Parameter], optimizer, keep: Tensor) -> None:
    """Keep the rows where ``keep [N]`` (bool) is True, in parameters and Adam state."""
    edit_rows(params, optimizer, lambda name, t: t[keep].contiguous(), lambda name, s: s[keep].contiguous())


# -- the strategy ------------------------------------------------------------------------------------
class Densifier:
    """Adaptive density control with explicit :class:`DensifyState` (see the module docstring).

    ``params`` given to the methods is the scene's dict of parameters with keys ``means [N, 3]``,
    ``log_scales [N, 3]``, ``quats [N, 4]``, ``opacity_logits [N]`` and any further per-Gaussian
    rows (SH), all edited together.
    """

    def __init__(self, params: DensifyParams, num_gaussians: int = 0, device: torch.device | str = "cpu"):
        self.params = params
        self.state = DensifyState.zeros(num_gaussians, device)

    # -- statistics --------------------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, means2d_grad: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Add one rendered view: ``means2d_grad [N, 2]`` (loss gradient w.r.t. the pixel-space means)
        and ``radii [N]`` (0 = not visible). The norm is taken in NDC units (x W/2, x H/2), as 3DGS."""
        st = self.state
        if means2d_grad is None or len(st) != means2d_grad.shape[0]:
            return
        g = means2d_grad.detach()
        norm = torch.hypot(g[:, 0] * (0.5 * width), g[:, 1] * (0.5 * height))
        radii = radii.detach().to(torch.float32)
        visible = (radii > 0).to(torch.float32)
        st.grad_accum.add_(norm * visible)
        st.count.add_(visible)
        torch.maximum(st.max_radii, radii, out=st.max_radii)

    def reset_statistics(self, n: int | None = None) -> None:
        device = self.state.grad_accum.device
        self.state = DensifyState.zeros(len(self.state) if n is None else n, device)

    # -- densification -------------------------------------------------------------------------------
    @torch.no_grad()
    def densify_and_prune(self, params: dict[str, nn.Parameter], optimizer, extent: float,
                          prune_large: bool) -> dict[str, int]:
        """Clone, split, then prune (see the module docstring); resets the statistics.

        ``prune_large``: also prune by world and screen size (3DGS does after the first opacity reset).
        Returns counts ``{"cloned", "split", "pruned", "total"}``.
        """
        cfg = self.params
        n = params["means"].shape[0]
        grads = self.state.grad_accum / self.state.count.clamp_min(1.0)
        max_scale = params["log_scales"].exp().amax(dim=-1)
        big = max_scale > cfg.percent_dense * extent
        candidates = grads >= cfg.grad_threshold
        clone, split = self._within_budget(candidates & ~big, candidates & big, grads, n)
        new_rows = self._clone_rows(params, clone)
        split_rows = self._split_rows(params, split)
        rows = {k: torch.cat([new_rows[k], split_rows[k]]) for k in params}
        m = len(rows["means"])
        if m:
            append_rows(params, optimizer, rows)
        prune = torch.sigmoid(params["opacity_logits"]) < cfg.prune_opacity
        prune[:n] |= split  # split parents are replaced by their children
        if prune_large:
            large = params["log_scales"].exp().amax(dim=-1) > cfg.prune_world_size * extent
            large[:n] |= self.state.max_radii > cfg.prune_screen_size
            prune |= large
        if bool(prune.any()):
            keep_rows(params, optimizer, ~prune)
        total = params["means"].shape[0]
        self.reset_statistics(total)
        pruned = int(prune.sum()) - int(split.sum())
        return {"cloned": int(clone.sum()), "split": int(split.sum()), "pruned": pruned, "total": total}

    def _within_budget(self, clone: Tensor, split: Tensor, grads: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """With ``max_gaussians``, keep the candidates with the largest gradients that fit (a clone adds one
        Gaussian, a split ``split_count - 1``)."""
        cap = self.params.max_gaussians
        cost = clone.to(torch.long) + split.to(torch.long) * (self.params.split_count - 1)
        if cap <= 0 or n + int(cost.sum()) <= cap:
            return clone, split
        budget = max(0, cap - n)
        order = torch.argsort(torch.where(cost > 0, grads, torch.full_like(grads, -1.0)), descending=True)
        fits = torch.cumsum(cost[order], 0) <= budget
        chosen = torch.zeros_like(clone)
        chosen[order[fits]] = True
        return clone & chosen, split & chosen

    @staticmethod
    def _clone_rows(params: dict[str, nn.Parameter], mask: Tensor) -> dict[str, Tensor]:
        return {k: p.data[mask] for k, p in params.items()}

    def _split_rows(self, params: dict[str, nn.Parameter], mask: Tensor) -> dict[str, Tensor]:
        k = self.params.split_count
        rows = {name: p.data[mask].repeat_interleave(k, dim=0) for name, p in params.items()}
        if not bool(mask.any()):
            return rows
        scales = rows["log_scales"].exp()
        offsets = torch.randn_like(scales) * scales
        rot = quat_to_rotmat(rows["quats"])
        rows["means"] = rows["means"] + (rot @ offsets[..., None])[..., 0]
        rows["log_scales"] = rows["log_scales"] - math.log(self.params.split_scale_divisor)
        return rows

    @torch.no_grad()
    def reset_opacity(self, params: dict[str, nn.Parameter], optimizer) -> None:
        """Clamp every opacity to at most ``opacity_reset_value``; that parameter's Adam rows become zero."""
        cap = math.log(self.params.opacity_reset_value / (1.0 - self.params.opacity_reset_value))
        p = params["opacity_logits"]
        p.data = torch.clamp_max(p.data, cap)
        st = optimizer.state.get(p) if optimizer is not None else None
        if st:
            for key in ADAM_ROW_STATES:
                if key in st:
                    st[key] = torch.zeros_like(st[key])

    # -- checkpoints -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.state.as_dict())

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        device = self.state.grad_accum.device
        self.state = DensifyState(*(state[k].to(device, torch.float32).clone()
                                    for k in ("grad_accum", "count", "max_radii")))
