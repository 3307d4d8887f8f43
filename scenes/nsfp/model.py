"""The flow MLP of Neural Scene Flow Prior (Li, Kaesemodel Pontes, Lucey, NeurIPS 2021)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ACTIVATIONS, NSFPConfig


class FlowMLP(nn.Module):
    """Coordinate MLP ``[N, 3] -> [N, 3]`` (points to flow vectors), differentiable.

    Layout of the released ``model.py`` (``Neural_Prior``): ``Linear(3, hidden)`` + activation, then
    ``layers - 1`` times ``Linear(hidden, hidden)`` + activation, then ``Linear(hidden, 3)`` without
    activation; default ``layers=8, hidden=128`` (paper: 8 layers of 128, ReLU). Weights use
    PyTorch's default ``nn.Linear`` initialisation, as the released NSFP code (FastNSF's optional
    ``--init_weight`` uses Xavier instead). ``seed`` makes the initialisation reproducible without
    touching the global RNG.
    """

    def __init__(self, layers: int = 8, hidden: int = 128, activation: str = "relu", seed: int | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FlowMLP: activation must be one of {ACTIVATIONS}, got {activation!r}")
        if layers < 1 or hidden < 1:
            raise ValueError(f"FlowMLP: layers and hidden must be >= 1, got {layers}, {hidden}")
        act = nn.ReLU if activation == "relu" else nn.Sigmoid
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            mods: list[nn.Module] = [nn.Linear(3, hidden), act()]
            for _ in range(layers - 1):
                mods += [nn.Linear(hidden, hidden), act()]
            mods.append(nn.Linear(hidden, 3))
            self.net = nn.Sequential(*mods)

    @classmethod
    def from_config(cls, config: NSFPConfig) -> "FlowMLP":
        """The MLP of ``config`` (layers, hidden, activation, seed)."""
        return cls(config.layers, config.hidden, config.activation, seed=config.seed)

    def forward(self, points: Tensor) -> Tensor:
        """``points [N, 3]`` -> ``flow [N, 3]``."""
        return self.net(points)
