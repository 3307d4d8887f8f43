"""Plain multilayer perceptrons (the "fused MLP" of tiny-cuda-nn, in PyTorch)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omnifield.cuda.backend import resolve_backend

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
        backend: backend name for the choice below (default: ``$OMNIFIELD_BACKEND`` / automatic).

    With the ``tcnn`` backend selected at construction (tinycudann importable and a GPU) and no
    skip connections, a tiny-cuda-nn network runs instead (``FullyFusedMLP`` for widths 16/32/64/128,
    else ``CutlassMLP``; no biases, half-precision maths, float32 master parameter ``params``; see
    :mod:`omnifield.cuda.tcnn_backend`) and ``backend == "tcnn"``.
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
        backend: str | None = None,
    ):
        super().__init__()
        for name in (activation, output_activation):
            if name not in _ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r} (choose from {sorted(_ACTIVATIONS)})")
        self.in_dim, self.skips = in_dim, tuple(skip_connections)
        self.backend = "omnifield"
        if resolve_backend(backend) == "tcnn" and self._build_tcnn(
                in_dim, out_dim, hidden_dim, n_hidden_layers, activation, output_activation):
            return
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

    def _build_tcnn(self, in_dim, out_dim, hidden_dim, n_hidden_layers, activation, output_activation) -> bool:
        """Build the tiny-cuda-nn network (``params`` registered, the tcnn module kept outside the
        submodules); False (one warning per reason) when this shape does not map."""
        from omnifield.cuda import tcnn_backend

        why = tcnn_backend.mlp_unsupported_reason(out_dim, n_hidden_layers, self.skips)
        if why is not None:
            tcnn_backend.warn_once("MLP", why)
            return False
        impl = tcnn_backend.TcnnMLP(in_dim, out_dim, hidden_dim, n_hidden_layers, activation, output_activation)
        self.params = impl.params
        self.__dict__["_tcnn"] = impl
        self.out_dim, self.backend = impl.out_dim, "tcnn"
        return True

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_dim] -> [N, out_dim]``; differentiable."""
        if self.backend == "tcnn":
            return self.__dict__["_tcnn"](x)
        h = x
        for i, layer in enumerate(self.hidden):
            if i in self.skips and i > 0:
                h = torch.cat([h, x], dim=-1)
            h = self.act(layer(h))
        return h if self.out is None else self.out_act(self.out(h))

