"""Helpers shared by the ray-marched scenes (nerf, instant-ngp): optimisers, schedules, profiles."""

from __future__ import annotations

import math

import torch

from omnifield.errors import ConfigError


def default_profile() -> str:
    """``"paper"`` when a CUDA device is present, else ``"cpu"`` (settings tuned for CPU wall-clock)."""
    return "paper" if torch.cuda.is_available() else "cpu"


def chosen_profile(requested: str, profiles: dict, method: str) -> str:
    """The profile ``requested`` names (``"auto"``: :func:`default_profile`); ``ConfigError`` naming ``method``
    when ``profiles`` has no such one."""
    profile = default_profile() if requested == "auto" else requested
    if profile not in profiles:
        raise ConfigError(f"{method}: unknown profile {requested!r} (choose auto, paper or cpu)")
    return profile


def pick(value, default):
    """``value``, or ``default`` where it is None (a config field left for the profile to fill)."""
    return default if value is None else value


def adam(groups: list[dict], lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.Adam:
    """Adam with the fused kernel when this torch has it (8x faster on CPU than ``foreach``)."""
    try:
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)


class WarmupMultiStep:
    """LR factor: linear warmup from 1% over ``warmup`` steps, then x``gamma`` at 50/75/90 % of ``max_steps``
    (nerfacc's Instant-NGP schedule). A callable object so ``LambdaLR.state_dict`` can save it."""

    def __init__(self, max_steps: int, warmup: int = 100, gamma: float = 0.33):
        self.max_steps, self.warmup, self.gamma = int(max_steps), int(warmup), float(gamma)

    def __call__(self, step: int) -> float:
        f = min(1.0, 0.01 + 0.99 * step / self.warmup) if self.warmup > 0 else 1.0
        for m in (0.5, 0.75, 0.9):
            if step >= int(self.max_steps * m):
                f *= self.gamma
        return f


class ExponentialDecay:
    """LR factor decaying exponentially from 1 to ``final_ratio`` over ``max_steps`` (NeRF)."""

    def __init__(self, max_steps: int, final_ratio: float):
        self.max_steps, self.final_ratio = max(1, int(max_steps)), float(final_ratio)

    def __call__(self, step: int) -> float:
        return math.exp(math.log(self.final_ratio) * min(step, self.max_steps) / self.max_steps)


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of a mean squared error on [0, 1] colours."""
    return -10.0 * torch.log10(mse.detach().clamp_min(1e-10))


def scene_extent(scene_box: torch.Tensor) -> float:
    """Largest side of a ``[2, 3]`` box."""
    return float((scene_box[1] - scene_box[0]).max())
