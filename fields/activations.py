"""Density activations."""

from __future__ import annotations

import torch
from torch import Tensor


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` whose gradient uses ``exp(min(x, 15))`` (torch-ngp / nerfacc), against exploding densities."""
    return _TruncExp.apply(x)
