"""Multiresolution hash encoding (Mueller et al. 2022, Instant-NGP), pure PyTorch.

Layout convention (shared by every backend):

- ``resolutions [L]`` int64: level ``l`` has ``res_l`` cells per side over the unit cube, i.e.
  ``res_l + 1`` grid vertices per side; a point ``x`` in ``[0, 1]^3`` lies at ``x * res_l`` in vertex
  units. :func:`omnifield.fields.encodings.level_resolutions` computes ``res_l = floor(N_min * b^l)``.
- ``offsets [L + 1]`` int64: level ``l`` owns rows ``offsets[l] : offsets[l + 1]`` of the one
  concatenated table ``[offsets[-1], F]``. A level whose ``(res_l + 1)^3`` vertices fit in its rows is
  indexed densely (``ix + iy * (res+1) + iz * (res+1)^2``); otherwise its size must be a power of two
  ``T`` and the vertex ``(ix, iy, iz)`` maps to ``(ix * 1) ^ (iy * 2654435761) ^ (iz * 805459861)``
  masked to ``T - 1`` (int64 arithmetic; equal to Instant-NGP's uint32 arithmetic modulo ``T``).
- Corners are ordered ``k = 4 * bx + 2 * by + bz`` with ``b*`` in {0, 1}; trilinear weights.
- Points outside ``[0, 1]^3`` are clamped to it.

The output is ``[N, L * F]`` with level-major order (level 0 features first). Gradients flow to the
table and to the positions (through the trilinear weights; first order only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

PRIMES = (1, 2654435761, 805459861)


def spatial_hash(coords: Tensor, table_size: int) -> Tensor:
    """Instant-NGP spatial hash of int64 vertex coordinates ``[..., 3]`` -> ``[...]`` in ``[0, T)``.

    ``table_size`` must be a power of two.
    """
    if table_size & (table_size - 1):
        raise ValueError(f"table_size must be a power of two, got {table_size}")
    c = coords.long()
    h = (c[..., 0] * PRIMES[0]) ^ (c[..., 1] * PRIMES[1]) ^ (c[..., 2] * PRIMES[2])
    return h & (table_size - 1)


def level_is_dense(resolutions: Tensor, offsets: Tensor) -> list[bool]:
    """Per level: True when all ``(res + 1)^3`` vertices have their own row."""
    sizes = (offsets[1:] - offsets[:-1]).tolist()
    return [(int(r) + 1) ** 3 <= s for r, s in zip(resolutions.tolist(), sizes)]


def _check(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> None:
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions must be [N, 3], got {tuple(x.shape)}")
    if table.ndim != 2:
        raise ValueError(f"table must be [rows, F], got {tuple(table.shape)}")
    if offsets.shape != (resolutions.shape[0] + 1,):
        raise ValueError(f"offsets must be [L + 1] = [{resolutions.shape[0] + 1}], got {tuple(offsets.shape)}")
    if int(offsets[-1]) != table.shape[0]:
        raise ValueError(f"table has {table.shape[0]} rows but offsets[-1] = {int(offsets[-1])}")


def _group_indices(base: Tensor, res: Tensor, off: Tensor, size: Tensor, dense: bool) -> Tensor:
    """int32 table rows ``[N, l, 2, 2, 2]`` of the corners of a group of levels indexed the same way.

    ``base [N, l, 3]`` int64 lower vertex; ``res, off, size [l]``. Per-axis terms are formed in int64 on
    ``[N, l, 2]`` (masking commutes with xor), so the full-size work is two int32 adds or xors.
    """
    c = base[..., None] + torch.arange(2, device=base.device)  # [N, l, 3, 2]
    cx, cy, cz = c[:, :, 0], c[:, :, 1], c[:, :, 2]
    o = off[None, :, None]
    if dense:
        stride = (res + 1)[None, :, None]
        tx, ty, tz = cx + o, cy * stride, cz * stride * stride
        tx, ty, tz = tx.int(), ty.int(), tz.int()
        return tx[..., :, None, None] + ty[..., None, :, None] + tz[..., None, None, :]
    mask = (size - 1)[None, :, None]
    tx, ty, tz = ((cx * PRIMES[0]) & mask).int(), ((cy * PRIMES[1]) & mask).int(), ((cz * PRIMES[2]) & mask).int()
    return (tx[..., :, None, None] ^ ty[..., None, :, None] ^ tz[..., None, None, :]) + o[..., None, None].int()


def hash_grid_corners(x: Tensor, resolutions: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Table rows and trilinear weights of the 8 corners of every level.

    Args:
        x: ``[N, 3]`` positions in ``[0, 1]^3`` (clamped).
        resolutions: ``[L]`` int64 cells per side; offsets: ``[L + 1]`` int64 level row offsets.

    Returns:
        ``indices [N, L, 8]`` int32 rows of the concatenated table and ``weights [N, L, 8]``
        (differentiable w.r.t. ``x``).
    """
    res = resolutions.to(x.device)
    off = offsets.to(x.device)
    if int(off[-1]) >= 2**31:
        raise ValueError(f"hash table with {int(off[-1])} rows exceeds int32 indexing")
    sizes = off[1:] - off[:-1]
    n, n_levels = x.shape[0], res.shape[0]
    pos = x.clamp(0.0, 1.0)[:, None, :] * res[None, :, None].to(x.dtype)  # [N, L, 3]
    base = torch.minimum(pos.detach().floor().long(), (res - 1)[None, :, None]).clamp_min(0)
    frac = pos - base.to(pos.dtype)
    one = torch.stack([1 - frac, frac], dim=-1)  # [N, L, 3, 2]
    w = (one[:, :, 0, :, None, None] * one[:, :, 1, None, :, None] * one[:, :, 2, None, None, :]).reshape(n, n_levels, 8)
    dense = level_is_dense(resolutions, offsets)
    idx = torch.empty(n, n_levels, 2, 2, 2, dtype=torch.int32, device=x.device)
    start = 0
    while start < n_levels:  # consecutive levels of the same kind (dense levels come first)
        stop = start
        while stop < n_levels and dense[stop] == dense[start]:
            stop += 1
        sl = slice(start, stop)
        part = _group_indices(base[:, sl], res[sl], off[sl], sizes[sl], dense[start])
        if stop - start == n_levels:
            idx = part
        else:
            idx[:, sl] = part
        start = stop
    return idx.reshape(n, n_levels, 8), w


class _TrilinearGather(torch.autograd.Function):
    """``out[n, l] = sum_k w[n, l, k] * table[idx[n, l, k]]`` with a scatter-add backward.

    Faster on CPU than ``embedding_bag`` (whose backward sorts the indices) and than autograd
    through advanced indexing (``index_put`` with accumulation). First-order gradients only.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        n, n_levels, _ = idx.shape
        f = table.shape[1]
        feats = table.index_select(0, idx.reshape(-1)).view(n, n_levels, 8, f)
        out = torch.einsum("nlkf,nlk->nlf", feats, w) if f > 4 else (feats * w[..., None]).sum(dim=2)
        ctx.save_for_backward(idx, w, feats if ctx.needs_input_grad[2] else None)
        ctx.n_rows = table.shape[0]
        return out.reshape(n, n_levels * f)

    @staticmethod
    def backward(ctx, grad: Tensor):
        idx, w, feats = ctx.saved_tensors
        n, n_levels, _ = idx.shape
        g = grad.reshape(n, n_levels, 1, grad.shape[1] // n_levels)
        f = g.shape[-1]
        grad_table = grad_w = None
        if ctx.needs_input_grad[0]:
            src = (w[..., None] * g).reshape(-1)
            flat = (idx.reshape(-1, 1).long() * f + torch.arange(f, device=idx.device)).reshape(-1)
            grad_table = torch.zeros(ctx.n_rows * f, dtype=grad.dtype, device=grad.device)
            grad_table = grad_table.scatter_add_(0, flat, src).view(ctx.n_rows, f)
        if ctx.needs_input_grad[2]:
            grad_w = (feats * g).sum(dim=-1)
        return grad_table, None, grad_w


def hash_encode(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """Hash-grid encoding ``[N, 3] -> [N, L * F]`` (the default reference path).

    Vectorised over levels and corners; one gather of all corner rows and a scatter-add backward
    (:class:`_TrilinearGather`). Differentiable w.r.t. ``table`` (dense gradient) and ``x`` (through
    the trilinear weights); not twice differentiable.
    """
    _check(x, table, resolutions, offsets)
    idx, w = hash_grid_corners(x, resolutions, offsets)
    return _TrilinearGather.apply(table, idx, w.to(table.dtype))


def hash_encode_embedding_bag(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """Same via ``embedding_bag(mode="sum", per_sample_weights=...)`` (benchmark alternative; its CPU
    backward sorts all indices, which makes it slower than :func:`hash_encode`)."""
    _check(x, table, resolutions, offsets)
    n, n_levels = x.shape[0], resolutions.shape[0]
    idx, w = hash_grid_corners(x, resolutions, offsets)
    out = F.embedding_bag(idx.reshape(n * n_levels, 8).long(), table, mode="sum", per_sample_weights=w.reshape(n * n_levels, 8).to(table.dtype))
    return out.reshape(n, n_levels * table.shape[1])


def hash_encode_gather(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """Same as :func:`hash_encode` with an explicit gather ``[N, L, 8, F]`` and a weighted sum (for benchmarks)."""
    _check(x, table, resolutions, offsets)
    idx, w = hash_grid_corners(x, resolutions, offsets)
    feats = table[idx.long()]  # [N, L, 8, F]
    return (feats * w[..., None].to(table.dtype)).sum(dim=2).reshape(x.shape[0], -1)


def hash_encode_input_grad(grad_out: Tensor, x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """The position gradient of the encoding as an op: ``d(sum(grad_out * hash_encode(x))) / dx``.

    Equals ``torch.autograd.grad(hash_encode_gather(x, ...), x, grad_out)`` but is written out
    (``res_l * sum_k dw_k/dfrac * (table[row_k] . grad_out[:, l])`` summed over levels, zero where the
    clamp to ``[0, 1]`` is active, as ``torch.clamp``'s gradient) so that it is differentiable by
    autograd w.r.t. ``grad_out`` and ``table`` (bilinear in the two), which is the double backward
    of the encoding (NeuS2's eikonal loss). ``x`` is a constant: no second derivative w.r.t. positions.

    Args:
        grad_out: ``[N, L * F]`` upstream gradient of the encoding's output.
        x: ``[N, 3]`` positions; table ``[rows, F]``; resolutions ``[L]``, offsets ``[L + 1]`` int64.

    Returns:
        ``[N, 3]`` in the promoted dtype of ``grad_out``, ``x`` and ``table``.
    """
    _check(x, table, resolutions, offsets)
    n, n_levels, f = x.shape[0], resolutions.shape[0], table.shape[1]
    if grad_out.shape != (n, n_levels * f):
        raise ValueError(f"grad_out must be [N, L * F] = [{n}, {n_levels * f}], got {tuple(grad_out.shape)}")
    xd = x.detach()
    idx, _ = hash_grid_corners(xd, resolutions, offsets)
    res = resolutions.to(x.device)
    pos = xd.clamp(0.0, 1.0)[:, None, :] * res[None, :, None].to(x.dtype)  # [N, L, 3], as hash_grid_corners
    base = torch.minimum(pos.floor().long(), (res - 1)[None, :, None]).clamp_min(0)
    frac = pos - base.to(pos.dtype)
    one = torch.stack([1 - frac, frac], dim=-1)  # [N, L, 3, 2] per-axis 1D weights
    sign = torch.tensor([-1.0, 1.0], dtype=x.dtype, device=x.device)
    ox, oy, oz = one[:, :, 0], one[:, :, 1], one[:, :, 2]
    dwx = sign[:, None, None] * oy[:, :, None, :, None] * oz[:, :, None, None, :]  # d w_k / d frac_x
    dwy = ox[:, :, :, None, None] * sign[None, :, None] * oz[:, :, None, None, :]
    dwz = ox[:, :, :, None, None] * oy[:, :, None, :, None] * sign[None, None, :]
    dw = torch.stack([dwx, dwy, dwz], dim=-1).reshape(n, n_levels, 8, 3)
    feats = table[idx.long()]  # [N, L, 8, F], differentiable w.r.t. the table
    dot = (feats * grad_out.reshape(n, n_levels, 1, f)).sum(dim=-1)  # d loss / d w_k
    gpos = (dot[..., None] * dw).sum(dim=2) * res[None, :, None].to(x.dtype)  # [N, L, 3]
    inside = (xd >= 0) & (xd <= 1)
    return gpos.sum(dim=1) * inside.to(gpos.dtype)


def hash_encode_naive(x: Tensor, table: Tensor, resolutions: Tensor, offsets: Tensor) -> Tensor:
    """The straightforward baseline: a Python loop over levels and the 8 corners (oracle and benchmark)."""
    _check(x, table, resolutions, offsets)
    dense = level_is_dense(resolutions, offsets)
    x = x.clamp(0.0, 1.0)
    outs = []
    for level, (r, is_dense) in enumerate(zip(resolutions.tolist(), dense)):
        off, size = int(offsets[level]), int(offsets[level + 1] - offsets[level])
        pos = x * r
        base = pos.detach().floor().long().clamp(0, r - 1)
        frac = pos - base.to(x.dtype)
        acc = 0
        for k in range(8):
            bits = ((k >> 2) & 1, (k >> 1) & 1, k & 1)
            corner = base + torch.tensor(bits, device=x.device)
            weight = 1
            for d in range(3):
                weight = weight * (frac[:, d] if bits[d] else 1 - frac[:, d])
            if is_dense:
                row = corner[:, 0] + corner[:, 1] * (r + 1) + corner[:, 2] * (r + 1) ** 2
            else:
                row = spatial_hash(corner, size)
            acc = acc + table[row + off] * weight[:, None].to(table.dtype)
        outs.append(acc)
    return torch.cat(outs, dim=-1)
