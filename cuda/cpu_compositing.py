"""Emission-absorption weights of packed samples (Max 1995; NeRF eq. 3) on the C++ CPU kernel.

:func:`render_weights_cpu` has the signature and semantics of the oracle
:func:`omnifield.cuda.reference.compositing.render_weights` (packed format: see that module) and
runs ``cuda/csrc/compositing/compositing_cpu.cpp`` (parallel over rays,
``torch.get_num_threads()`` threads), built on first use by :mod:`omnifield.cuda.native`.

Forward: the same float operations as the reference, except that ``exp`` is libm's (torch's SIMD
``exp`` differs in the last bit for ~1 % of inputs) and the optical depth is summed per ray in
float64 (the reference subtracts two global float64 prefix sums): outputs agree to about one ulp.
Backward: first order, O(S) with a
per-ray suffix sum (nerfacc), w.r.t. ``sigmas`` and the interval ends, for upstream gradients on any
of the three outputs. Supported: CPU tensors of one float32/float64 dtype (see :func:`supports`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from omnifield.cuda import native

_OP = "compositing"


def available() -> bool:
    """True when the C++ kernel is built (or can be built now) and loads; builds on first call."""
    return native.load_cpu_extension(_OP) is not None


def supports(sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, packed_info: Tensor) -> bool:
    """Whether :func:`render_weights_cpu` handles these inputs: CPU ``[S]`` ``sigmas``, ``t_starts``,
    ``t_ends`` of one float32/float64 dtype and a CPU integer ``packed_info``."""
    return (
        sigmas.dtype in (torch.float32, torch.float64)
        and all(t.device.type == "cpu" and t.dtype == sigmas.dtype for t in (sigmas, t_starts, t_ends))
        and packed_info.device.type == "cpu"
        and not packed_info.dtype.is_floating_point
    )


def _extension():
    return native.require_cpu_extension(_OP, "compositing")


class _RenderWeightsCPU(torch.autograd.Function):
    """Forward and first-order backward (sigmas, t_starts, t_ends) on the C++ kernel."""

    @staticmethod
    def forward(ctx, sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, packed_info: Tensor):
        ctx.set_materialize_grads(False)  # unused outputs get None upstream grads: skipped in C++
        weights, trans, alphas = _extension().forward(sigmas, t_starts, t_ends, packed_info)
        ctx.save_for_backward(sigmas, t_starts, t_ends, packed_info, trans)
        return weights, trans, alphas

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_weights, grad_trans, grad_alphas):
        sigmas, t_starts, t_ends, packed_info, trans = ctx.saved_tensors
        need_sigmas = ctx.needs_input_grad[0]
        need_times = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if not (need_sigmas or need_times) or (grad_weights is None and grad_trans is None and grad_alphas is None):
            return None, None, None, None
        g_sig, g_start, g_end = _extension().backward(
            grad_weights, grad_trans, grad_alphas, sigmas, t_starts, t_ends, packed_info, trans, need_sigmas, need_times
        )
        return (
            g_sig if need_sigmas else None,
            g_start if ctx.needs_input_grad[1] else None,
            g_end if ctx.needs_input_grad[2] else None,
            None,
        )


def render_weights_cpu(
    sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, packed_info: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Max (1995) emission-absorption weights of packed samples, on the C++ kernel.

    ``alpha_i = 1 - exp(-sigma_i delta_i)``, ``T_i = exp(-sum_{j<i} sigma_j delta_j)`` over the
    ray's earlier samples, ``w_i = T_i alpha_i``.

    Args:
        sigmas, t_starts, t_ends: ``[S]`` packed samples, one float dtype (float32 or float64).
        ray_indices: ``[S]`` ray of each sample (shape-checked only: the kernel reads ``packed_info``).
        packed_info: ``[R, 2]`` (first sample, count) per ray; rays own disjoint ranges, as
            :func:`~omnifield.cuda.reference.compositing.packed_info_from_ray_indices` builds them.

    Returns:
        ``(weights, transmittance, alphas)``, each ``[S]``, differentiable (first order) w.r.t.
        ``sigmas``, ``t_starts`` and ``t_ends``. Samples outside every ray's range get zeros.

    Raises:
        RuntimeError: the extension is unavailable (build failed or ``$OMNIFIELD_NO_NATIVE``), or
            ``packed_info`` points outside the samples.
        ValueError / TypeError: bad shapes, or inputs outside :func:`supports`.
    """
    n = sigmas.shape[0] if sigmas.ndim == 1 else -1
    for name, t in (("sigmas", sigmas), ("t_starts", t_starts), ("t_ends", t_ends), ("ray_indices", ray_indices)):
        if t.ndim != 1 or t.shape[0] != n:
            raise ValueError(f"{name} must be [S] like sigmas {tuple(sigmas.shape)}, got {tuple(t.shape)}")
    if packed_info.ndim != 2 or packed_info.shape[1] != 2:
        raise ValueError(f"packed_info must be [R, 2], got {tuple(packed_info.shape)}")
    if not supports(sigmas, t_starts, t_ends, packed_info):
        raise TypeError(
            "render_weights_cpu needs CPU sigmas, t_starts, t_ends of one dtype (float32 or float64) and integer "
            f"packed_info, got {sigmas.dtype}, {t_starts.dtype}, {t_ends.dtype}, {packed_info.dtype} on {sigmas.device}"
        )
    info = packed_info.to(dtype=torch.long).contiguous()
    return _RenderWeightsCPU.apply(sigmas.contiguous(), t_starts.contiguous(), t_ends.contiguous(), info)
