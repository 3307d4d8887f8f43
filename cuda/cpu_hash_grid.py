"""Multiresolution hash encoding (Mueller et al. 2022, Instant-NGP) on the C++ CPU kernel.

:func:`hash_encode_cpu` has the signature and semantics of the oracle
:func:`omnifield.cuda.reference.hash_encoding.hash_encode` (layout, hashing, clamping, corner order:
see that module) and runs ``cuda/csrc/hash_grid/hash_grid_cpu.cpp`` (OpenMP over points, with
``torch.get_num_threads()`` threads), built on first use by :mod:`omnifield.cuda.native`.
Supported: CPU tensors, ``x`` and ``table`` of one dtype, float32 or float64 (see :func:`supports`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native

_OP = "hash_grid"

#: Table-gradient strategy of the backward: 0 automatic (partition by level when the threads do
#: not outnumber the levels, else atomic adds), 1 partition by level, 2 atomic adds.
SCATTER_AUTO, SCATTER_BY_LEVEL, SCATTER_ATOMIC = 0, 1, 2


def available() -> bool:
    """True when the C++ kernel is built (or can be built now) and loads; builds on first call."""
    return native.load_cpu_extension(_OP) is not None


def supports(x: Tensor, table: Tensor) -> bool:
    """Whether :func:`hash_encode_cpu` handles these inputs (CPU, one float32/float64 dtype)."""
    return (
        x.device.type == "cpu"
        and table.device.type == "cpu"
        and x.dtype == table.dtype
        and table.dtype in (torch.float32, torch.float64)
    )


def _extension():
    return native.require_cpu_extension(_OP, "hash-grid")


def _validate(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> None:
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {tuple(x.shape)}")
    if table.ndim != 2:
        raise ValueError(f"table must be [rows, F], got {tuple(table.shape)}")
    if resolutions.ndim != 1 or offsets.shape != (resolutions.shape[0] + 1,):
        raise ValueError(f"offsets must be [L + 1] = [{resolutions.shape[0] + 1}], got {tuple(offsets.shape)}")
    if int(offsets[-1]) != table.shape[0]:
        raise ValueError(f"table has {table.shape[0]} rows but offsets[-1] = {int(offsets[-1])}")
    if not supports(x, table):
        raise TypeError(
            "hash_encode_cpu needs CPU tensors x and table of one dtype (float32 or float64), got "
            f"x {x.dtype} on {x.device}, table {table.dtype} on {table.device}"
        )


class _HashEncodeCPU(torch.autograd.Function):
    """Forward and first-order backward (table and positions) on the C++ kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor, scatter: int) -> Tensor:
        ext = _extension()
        out = ext.forward(x, table, resolutions, offsets)
        ctx.save_for_backward(x, table, resolutions, offsets)
        ctx.scatter = scatter
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, table, resolutions, offsets = ctx.saved_tensors
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_x or need_table):
            return None, None, None, None, None
        grad_x, grad_table = _extension().backward(
            grad, x, table, resolutions, offsets, need_x, need_table, ctx.scatter
        )
        return grad_x, grad_table, None, None, None


def hash_encode_cpu(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """Hash-grid encoding ``[N, 3] -> [N, L * F]`` on the C++ CPU kernel.

    Args:
        x: ``[N, 3]`` positions, clamped to ``[0, 1]^3``.
        table: ``[rows, F]`` features of every level, same dtype as ``x`` (float32 or float64).
        resolutions: ``[L]`` int64 cells per side; offsets: ``[L + 1]`` int64 level row offsets.

    Returns:
        ``[N, L * F]`` level-major features, differentiable w.r.t. ``table`` (dense gradient) and
        ``x`` (through the trilinear weights, computed only when ``x`` requires grad); first order.

    Raises:
        RuntimeError: the extension is unavailable (build failed or ``$OMNIFIELD_NO_NATIVE``).
        ValueError / TypeError: bad shapes, or inputs outside :func:`supports`.
    """
    _validate(x, table, resolutions, offsets)
    res = resolutions.to(device="cpu", dtype=torch.long).contiguous()
    off = offsets.to(device="cpu", dtype=torch.long).contiguous()
    return _HashEncodeCPU.apply(x.contiguous(), table.contiguous(), res, off, SCATTER_AUTO)
