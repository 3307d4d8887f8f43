"""Plain multilayer perceptrons (the "fused MLP" of tiny-cuda-nn, in PyTorch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "none": nn.Identity}


class MLP(nn.Module):
    """``n_hidden_layers`` hidden layers of ``hidden_dim`` with ``activation``, then an output layer.

    Args:
        in_dim: input channels.
        out_dim: output channels, or None to end after the last hidden layer (returns its activations).
        hidden_dim, n_hidden_layers: width and count of hidden layers.
        skip_connections: hidden-layer indices (0-based) whose input is concatenated with the MLP input
            (NeRF: ``(4,)``).
        activation, output_activation: "relu", "sigmoid", "softplus" or "none".
        bias: whether linear layers have biases (tiny-cuda-nn's fused MLPs have none).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None,
        hidden_dim: int = 64,
        n_hidden_layers: int = 1,
        skip_connections: tuple[int, ...] = (),
        activation: str = "relu",
        output_activation: str = "none",
        bias: bool = True,
    ):
        super().__init__()
        for name in (activation, output_activation):
            if name not in _ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r} (choose from {sorted(_ACTIVATIONS)})")
        self.in_dim, self.skips = in_dim, tuple(skip_connections)
        self.hidden = nn.ModuleList()
        for i in range(n_hidden_layers):
            d_in = in_dim if i == 0 else hidden_dim
            if i in self.skips and i > 0:
                d_in += in_dim
            self.hidden.append(nn.Linear(d_in, hidden_dim, bias=bias))
        last = hidden_dim if n_hidden_layers > 0 else in_dim
        self.out = None if out_dim is None else nn.Linear(last, out_dim, bias=bias)
        self.act = _ACTIVATIONS[activation]()
        self.out_act = _ACTIVATIONS[output_activation]()
        self.out_dim = last if out_dim is None else out_dim

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_dim] -> [N, out_dim]``; differentiable."""
        h = x
        for i, layer in enumerate(self.hidden):
            if i in self.skips and i > 0:
                h = torch.cat([h, x], dim=-1)
            h = self.act(layer(h))
        return h if self.out is None else self.out_act(self.out(h))

