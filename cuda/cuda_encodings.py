"""Hash-grid (Mueller et al. 2022, Instant-NGP) and SH encodings on the CUDA kernels of
``cuda/csrc/hash_grid`` and ``cuda/csrc/sh``: the GPU twins of
:mod:`omnifield.cuda.reference.hash_encoding` and :mod:`omnifield.cuda.reference.sh_encoding`.

Every public function has its reference's signature and semantics (layout, hashing, clamping,
corner order: see the reference module). The extension is built on first use by
:func:`omnifield.cuda.native.load_cuda_extension`, never at import time. Inputs: CUDA tensors,
float32, except the hash table, which may be float16 (read in half, accumulated in float32; its
gradient comes back in float16) (:func:`supports`).

Public: :func:`hash_encode` (differentiable w.r.t. table and x, twice w.r.t. x through
:func:`hash_encode_input_grad`: NeuS2's eikonal loss), :func:`hash_encode_input_grad` (the
position gradient as an op, differentiable w.r.t. grad_out and table), :func:`sh_encode`;
:func:`available` (builds on first call) and :func:`supports`.

Differences from the references: the output of :func:`hash_encode` is float32 for a float16 table
(the reference computes in the table's dtype); the table gradient of :func:`hash_encode` and the
gradients of :func:`sh_encode` are first order (``once_differentiable``); :func:`hash_encode_input_grad`
treats x as a constant (no second derivative w.r.t. positions, as its reference twin); table
gradients are summed with float atomics (order, hence the last bits, vary between runs).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native

_OP = "encodings"


def available() -> bool:
    """True when a CUDA device is present and the extension builds (or is cached) and loads."""
    return native.load_cuda_extension(_OP) is not None


def supports(*tensors: Tensor | None) -> bool:
    """Whether these inputs can run here: at least one tensor, every tensor (``None`` skipped) on a
    CUDA device, every floating one float32, except the last of two or more, the hash table in the
    ops' argument order (``(x, table)``, ``(grad_out, x, table)``), which may also be float16."""
    return native.cuda_float32_tensors(*tensors, half_last=True)


_loaded: list = []  # the extension once loaded (skips the loader's checks on every op call)


def _ext():
    if not _loaded:
        _loaded.append(native.require_cuda_extension(_OP, "encodings"))
    return _loaded[0]


def _require(fn: str, *tensors: Tensor | None) -> None:
    if not supports(*tensors):
        found = ", ".join(f"{t.dtype} on {t.device}" for t in tensors if isinstance(t, Tensor))
        raise TypeError(f"{fn} (cuda/cuda_encodings.py) needs CUDA float32 tensors (a float16 table is fine), "
                        f"got {found}")


# Host copies of grid layouts, so that a layout kept on the GPU (module buffers) costs one
# device-to-host copy per tensor and in-place change, not one synchronisation per call.
_layouts: dict[tuple[int, int], tuple] = {}


def _host_layout(resolutions: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """``(resolutions, offsets)`` as int64 CPU tensors (validated by the extension)."""
    if not isinstance(resolutions, Tensor) or not isinstance(offsets, Tensor):
        raise TypeError(f"resolutions and offsets must be tensors, got {type(resolutions)} and {type(offsets)}")
    def host(t: Tensor) -> Tensor:
        return t.detach().to(device="cpu", dtype=torch.int64).contiguous()

    try:
        versions = (resolutions._version, offsets._version)
    except RuntimeError:  # inference-mode tensors have no version counter: no caching
        return host(resolutions), host(offsets)
    key = (id(resolutions), id(offsets))
    hit = _layouts.get(key)
    if hit is not None and hit[0]() is resolutions and hit[1]() is offsets and hit[2] == versions:
        return hit[3], hit[4]
    res, off = host(resolutions), host(offsets)
    if len(_layouts) >= 64:
        _layouts.clear()
    _layouts[key] = (weakref.ref(resolutions), weakref.ref(offsets), versions, res, off)
    return res, off


# ----------------------------------------------------------------------------------------------
# Hash encoding


class _HashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, res: Tensor, off: Tensor) -> Tensor:
        ctx.save_for_backward(x, table)
        ctx.layout = (res, off)
        return _ext().hash_forward(x, table, res, off)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, table = ctx.saved_tensors
        res, off = ctx.layout
        need_x, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad_table = None
        if need_x and torch.is_grad_enabled():  # create_graph: the position gradient stays differentiable
            if need_table:
                grad_table = _ext().hash_backward(grad_out.detach(), x.detach(), table.detach(), res, off, True,
                                                  False)[0]
            grad_x = _HashEncodeInputGrad.apply(grad_out, x, table, res, off)
        elif need_x or need_table:  # one fused kernel for both gradients
            grad_table, grad_x = _ext().hash_backward(grad_out, x, table, res, off, need_table, need_x)
        return grad_x, grad_table, None, None


class _HashEncodeInputGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_out: Tensor, x: Tensor, table: Tensor, res: Tensor, off: Tensor) -> Tensor:
        ctx.save_for_backward(grad_out, x, table)
        ctx.layout = (res, off)
        return _ext().hash_backward(grad_out, x, table, res, off, False, True)[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_grad_x: Tensor):
        grad_out, x, table = ctx.saved_tensors
        need_grad_out, need_table = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if not (need_grad_out or need_table):
            return None, None, None, None, None
        grad_grad_out, grad_table = _ext().hash_double_backward(
            grad_grad_x, grad_out, x, table, *ctx.layout, need_grad_out, need_table
        )
        return grad_grad_out, None, grad_table, None, None


def hash_encode(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """Multiresolution hash encoding (Instant-NGP) on the GPU: see
    :func:`omnifield.cuda.reference.hash_encoding.hash_encode` for the layout.

    Args:
        x: ``[N, 3]`` float32 positions, clamped to ``[0, 1]^3``.
        table: ``[rows, F]`` float32 or float16 features of every level.
        resolutions: ``[L]`` int64 cells per side (L <= 32); offsets: ``[L + 1]`` int64 level row
            offsets (any device; copied to the host once per tensor).

    Returns:
        ``[N, L * F]`` float32, level-major. Differentiable w.r.t. ``table`` (dense gradient in the
        table's dtype) and ``x`` (zero where the clamp is active); the ``x`` gradient is the op
        :func:`hash_encode_input_grad`, so ``create_graph=True`` double backward works.
    """
    _require("hash_encode", x, table)
    res, off = _host_layout(resolutions, offsets)
    return _HashEncode.apply(x, table, res, off)


def hash_encode_input_grad(grad_out: Tensor, x: Tensor, table: Tensor, resolutions: Tensor,
                           offsets: Tensor) -> Tensor:
    """``d(sum(grad_out * hash_encode(x, table, ...))) / dx`` ``[N, 3]`` (the twin of
    :func:`omnifield.cuda.reference.hash_encoding.hash_encode_input_grad`).

    Args:
        grad_out: ``[N, L * F]`` float32; x ``[N, 3]`` float32; table ``[rows, F]`` float32 or float16;
            resolutions ``[L]``, offsets ``[L + 1]`` int64.

    Returns:
        ``[N, 3]`` float32, differentiable w.r.t. ``grad_out`` and ``table`` (the double-backward
        kernel; NeuS2's eikonal loss); ``x`` is a constant of this op.
    """
    _require("hash_encode_input_grad", grad_out, x, table)
    res, off = _host_layout(resolutions, offsets)
    return _HashEncodeInputGrad.apply(grad_out, x, table, res, off)


# ----------------------------------------------------------------------------------------------
# Spherical harmonics


class _SHEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, directions: Tensor, degree: int) -> Tensor:
        ctx.save_for_backward(directions)
        ctx.degree = degree
        return _ext().sh_forward(directions, degree)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        (directions,) = ctx.saved_tensors
        return _ext().sh_backward(grad_out, directions, ctx.degree), None


def sh_encode(directions: Tensor, degree: int) -> Tensor:
    """Real SH basis (tiny-cuda-nn / Instant-NGP convention) of ``directions [N, 3]`` (unit length,
    not normalised here) -> ``[N, degree**2]`` float32, ``degree`` in 1..4 bands: see
    :func:`omnifield.cuda.reference.sh_encoding.sh_encode`. Differentiable w.r.t. the directions
    (first order)."""
    if not 1 <= int(degree) <= 4:
        raise ValueError(f"SH degree must be in 1..4, got {degree}")
    _require("sh_encode", directions)
    return _SHEncode.apply(directions, int(degree))
