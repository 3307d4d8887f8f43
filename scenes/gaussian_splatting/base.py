"""What the Gaussian scenes (``3dgs``, ``4dgs``) share: per-Gaussian parameter rows edited by a
densifier, 3DGS's schedule (SH ramp, densify / prune / opacity reset), checkpoint resizing.

A subclass sets ``param_names`` (its per-Gaussian parameters, rows = Gaussians), creates
``self.densifier`` and calls :meth:`GaussianScene._init_training_state`; its ``training_step``
appends ``(indices or None, means2d, radii, width, height)`` per rendered view to ``self._views``
(``indices``: the Gaussians that view rendered, None for all) so :meth:`on_step_end` can accumulate
the view-space gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from omnifield.cuda.reference.gaussians import SH_C0
from omnifield.errors import ConfigError
from omnifield.scenes._common import ExponentialDecay, chosen_profile, pick
from omnifield.scenes.base import Scene
from omnifield.scenes.gaussian_splatting.strategy import DensifyParams

EXTRA_PREFIX = "densify."


def train_indices(data) -> list[int]:
    """Indices of the training views of a SceneData / SceneInfo (all views without a train split)."""
    split = (getattr(data, "splits", None) or {}).get("train")
    return list(split) if split else list(range(len(data.cameras)))


def profile_values(config, profiles: dict[str, dict], method: str) -> tuple[str, dict]:
    """``(profile, values)``: the profile ``config.profile`` names (``"auto"``: the machine's) and its
    fields with the config's own value wherever that is not ``None``; checks the fields both Gaussian
    scenes share (``schedule_units``, ``sh_degree``), ``ConfigError`` naming ``method`` otherwise."""
    profile = chosen_profile(config.profile, profiles, method)
    values = {k: pick(getattr(config, k), v) for k, v in profiles[profile].items()}
    if values["schedule_units"] not in ("steps", "fraction"):
        raise ConfigError(f"{method}: schedule_units must be 'steps' or 'fraction', got {values['schedule_units']!r}")
    if not 0 <= config.sh_degree <= 3:
        raise ConfigError(f"{method}: sh_degree must be 0..3, got {config.sh_degree}")
    return profile, values


def constant_lr(step: int) -> float:
    """LR factor 1 (a module-level function so ``LambdaLR.state_dict`` can save it)."""
    return 1.0


def densify_params(c) -> DensifyParams:
    """The densifier's thresholds from a Gaussian scene config."""
    return DensifyParams(
        grad_threshold=c.densify_grad_threshold, percent_dense=c.percent_dense, split_count=c.split_count,
        split_scale_divisor=c.split_scale_divisor, prune_opacity=c.prune_opacity,
        prune_world_size=c.prune_world_size, prune_screen_size=c.prune_screen_size,
        opacity_reset_value=c.opacity_reset_value, max_gaussians=int(c.max_gaussians or 0))


def initial_sh_dc(colors: Tensor | None, n: int, seed: int) -> Tensor:
    """``[N, 1, 3]`` DC coefficients: from ``colors [N, 3]`` in [0, 1], else random near zero (grey), as 3DGS."""
    if colors is None:
        return torch.rand(n, 1, 3, generator=torch.Generator().manual_seed(int(seed) + 1)) / 255.0
    return ((colors.float() - 0.5) / SH_C0)[:, None, :].contiguous()


def ray_length_per_z(cameras, c: int, device) -> Tensor:
    """``[H, W, 1]`` length of the pixel ray per unit camera depth: ``|((u - cx) / fx, (v - cy) / fy, 1)|``."""
    h, w = int(cameras.height[c]), int(cameras.width[c])
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5 - cameras.cx[c]) / cameras.fx[c]
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5 - cameras.cy[c]) / cameras.fy[c]
    return torch.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)[..., None]


class GaussianScene(Scene):
    """Base of the Gaussian scenes (see the module docstring). Trained on whole images."""

    batch_kind = "images"
    param_names: tuple[str, ...] = ()

    def _init_training_state(self) -> None:
        self.register_buffer("active_sh_degree", torch.zeros((), dtype=torch.long))
        self._optimizer: torch.optim.Optimizer | None = None
        self._horizon: ExponentialDecay | None = None
        self._views: list[tuple[Tensor | None, Tensor, Tensor, int, int]] = []
        self.last_densify: dict[str, int] = {}

    def __len__(self) -> int:
        return self.means.shape[0]

    def param_dict(self) -> dict[str, nn.Parameter]:
        """The per-Gaussian parameters by name (rows are Gaussians), as the densifier edits them."""
        return {name: getattr(self, name) for name in self.param_names}

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        st = self.densifier.state
        st.grad_accum, st.count, st.max_radii = fn(st.grad_accum), fn(st.count), fn(st.max_radii)
        return out

    # -- schedule ------------------------------------------------------------------------------------
    def _steps(self, value: float) -> float:
        """A schedule value in steps (``schedule_units``: steps, or a fraction of the run's horizon)."""
        if self.config.schedule_units == "steps":
            return float(value)
        horizon = self._horizon.max_steps if self._horizon is not None else 30000
        return float(value) * horizon

    def _every(self, step: int, period: float) -> bool:
        """True when the 1-based iteration ``step + 1`` completes a period (``step + 1 % period == 0`` for integers)."""
        p = max(1.0, self._steps(period))
        return math.floor((step + 1) / p) > math.floor(step / p)

    def on_step_begin(self, step: int) -> None:
        """SH degree ramp: one (spatial) degree more every ``sh_degree_every`` (never decreasing)."""
        c = self.config
        degree = min(c.sh_degree, int((step + 1) // max(1.0, self._steps(c.sh_degree_every))))
        if degree > int(self.active_sh_degree):
            self.active_sh_degree.fill_(degree)

    def on_step_end(self, step: int) -> None:
        """Densification statistics of every view (scattered back to all Gaussians when the view rendered
        a subset), then clone/split/prune every ``densify_every`` after ``densify_start`` and the opacity
        reset every ``opacity_reset_every``, until ``densify_stop`` (3DGS's schedule)."""
        c = self.config
        views, self._views = self._views, []
        if not self.training or step + 1 >= self._steps(c.densify_stop):
            return
        n = len(self)
        for idx, means2d, radii, w, h in views:
            grad = means2d.grad
            if idx is not None:
                if grad is None:
                    continue
                grad = grad.new_zeros(n, 2).index_copy_(0, idx, grad)
                radii = radii.new_zeros(n).index_copy_(0, idx, radii)
            self.densifier.accumulate(grad, radii, w, h)
        if step + 1 > self._steps(c.densify_start) and self._every(step, c.densify_every):
            prune_large = step + 1 > self._steps(c.opacity_reset_every)
            self.last_densify = self.densifier.densify_and_prune(self.param_dict(), self._optimizer, c.extent, prune_large)
        if self._every(step, c.opacity_reset_every):
            self.densifier.reset_opacity(self.param_dict(), self._optimizer)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def prepare_load(self, weights: dict[str, Tensor]) -> None:
        """Resize the parameters to the checkpoint's Gaussian count (same Parameter objects, new ``.data``)."""
        for name in self.param_names:
            w = weights.get(name)
            p = getattr(self, name)
            if w is not None and tuple(w.shape[1:]) == tuple(p.shape[1:]) and w.shape[0] != p.shape[0]:
                p.data = torch.zeros(w.shape, dtype=p.dtype, device=p.device)
                p.grad = None
        if len(self.densifier.state) != len(self):
            self.densifier.reset_statistics(len(self))

    def extra_state(self) -> dict[str, Tensor]:
        return {EXTRA_PREFIX + k: v for k, v in self.densifier.state_dict().items()}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        own = {k[len(EXTRA_PREFIX):]: v for k, v in state.items() if k.startswith(EXTRA_PREFIX)}
        if own:
            self.densifier.load_state_dict(own)
        if len(self.densifier.state) != len(self):
            self.densifier.reset_statistics(len(self))
