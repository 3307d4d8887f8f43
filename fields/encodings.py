"""Input encodings: NeRF frequency (positional) encoding, real spherical harmonics, multiresolution hash grid.

Each encoding is an ``nn.Module`` mapping ``[N, in_dim] -> [N, out_dim]`` with an ``out_dim``
attribute; the maths lives in :mod:`omnifield.cuda.ops` (backend-dispatched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omnifield.cuda import ops
from omnifield.cuda.backend import resolve_backend

TABLE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class FrequencyEncoding(nn.Module):
    """NeRF positional encoding (Mildenhall et al. 2020, eq. 4).

    ``gamma(p) = [p, sin(2^0 pi p), cos(2^0 pi p), ..., sin(2^{K-1} pi p), cos(2^{K-1} pi p)]``
    applied per coordinate (``p`` is included when ``include_input``). Inputs should be roughly in
    ``[-1, 1]``. Output order: input, then for each frequency all sines then all cosines.
    """

    def __init__(self, in_dim: int, n_frequencies: int, include_input: bool = True):
        super().__init__()
        self.in_dim, self.n_frequencies, self.include_input = in_dim, n_frequencies, include_input
        self.register_buffer("freqs", (2.0 ** torch.arange(n_frequencies, dtype=torch.float32)) * math.pi, persistent=False)
        self.out_dim = in_dim * (2 * n_frequencies + int(include_input))

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, in_dim] -> [N, out_dim]``; differentiable."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"FrequencyEncoding expects [..., {self.in_dim}], got {tuple(x.shape)}")
        xb = x[..., None, :] * self.freqs[:, None].to(x)  # [..., K, D]
        enc = torch.cat([torch.sin(xb), torch.cos(xb)], dim=-1).flatten(-2)
        return torch.cat([x, enc], dim=-1) if self.include_input else enc


class SHEncoding(nn.Module):
    """Real spherical harmonics of unit directions, ``degree`` bands (1..4) -> ``degree**2`` values."""

    def __init__(self, degree: int = 4):
        super().__init__()
        if not 1 <= degree <= 4:
            raise ValueError(f"SH degree must be in 1..4, got {degree}")
        self.degree = degree
        self.out_dim = degree * degree

    def forward(self, d: Tensor) -> Tensor:
        """``d [N, 3]`` unit directions -> ``[N, degree**2]``; differentiable."""
        return ops.sh_encode(d, self.degree)


@dataclass(frozen=True)
class HashGridConfig:
    """Multiresolution hash grid (Instant-NGP, Mueller et al. 2022). Paper defaults.

    Resolution convention: level ``l`` has ``floor(N_min * b^l + 1e-6)`` cells per side over the unit
    cube (``+1`` vertices), ``b = exp((ln N_max - ln N_min) / (L - 1))``; a level is stored densely
    when its ``(res + 1)^3`` vertices fit in ``T`` rows, otherwise hashed into exactly ``T`` rows.
    """

    n_levels: int = 16
    """L: number of resolution levels."""
    n_features: int = 2
    """F: features per level (output has L * F channels)."""
    log2_table_size: int = 19
    """log2 of T, the maximum rows per level (paper: 19 = 524288)."""
    base_resolution: int = 16
    """N_min: cells per side of the coarsest level."""
    max_resolution: int = 2048
    """N_max: cells per side of the finest level (paper: 2048 x scene extent)."""
    init_scale: float = 1e-4
    """Table entries start uniform in [-init_scale, init_scale]."""
    table_dtype: str = "float32"
    """Precision the table is read in: "float32", or "float16" (the float32 master table is passed
    to the encoding as ``.half()`` each forward: half the memory traffic; the CUDA kernel accumulates
    in float32; the table gradient comes back in half precision and is added to the float32 master;
    on CPU the rounding is emulated; with the tcnn backend its grid runs in half precision)."""

    def __post_init__(self):
        if self.n_levels < 1 or self.n_features < 1:
            raise ValueError(f"HashGridConfig needs n_levels >= 1 and n_features >= 1, got {self.n_levels}, {self.n_features}")
        if not 1 <= self.log2_table_size <= 30:
            raise ValueError(f"log2_table_size must be in 1..30, got {self.log2_table_size}")
        if self.max_resolution < self.base_resolution or self.base_resolution < 1:
            raise ValueError(f"need 1 <= base_resolution <= max_resolution, got {self.base_resolution}, {self.max_resolution}")
        if self.table_dtype not in TABLE_DTYPES:
            raise ValueError(f"table_dtype must be one of {sorted(TABLE_DTYPES)}, got {self.table_dtype!r}")


def level_resolutions(config: HashGridConfig) -> Tensor:
    """``[L]`` int64 cells per side, ``floor(N_min * b^l)`` (a 1e-6 guard against float round-down)."""
    n_min, n_max, levels = config.base_resolution, config.max_resolution, config.n_levels
    b = math.exp((math.log(n_max) - math.log(n_min)) / (levels - 1)) if levels > 1 else 1.0
    return torch.tensor([math.floor(n_min * b**l + 1e-6) for l in range(levels)], dtype=torch.long)


def hash_grid_layout(config: HashGridConfig) -> tuple[Tensor, Tensor]:
    """``(resolutions [L], offsets [L + 1])`` of the concatenated table (see the reference docs)."""
    res = level_resolutions(config)
    t = 2**config.log2_table_size
    sizes = [min(t, (int(r) + 1) ** 3) for r in res]
    offsets = torch.tensor([0] + sizes, dtype=torch.long).cumsum(0)
    return res, offsets


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding: ``x [N, 3]`` in ``[0, 1]^3`` -> ``[N, L * F]``.

    One parameter ``table [rows, F]`` holds every level. Gradients reach the table and ``x``.

    With the ``tcnn`` backend selected at construction (``backend`` argument, else
    ``$OMNIFIELD_BACKEND``; tinycudann importable and a GPU) tiny-cuda-nn's grid runs instead
    (:mod:`omnifield.cuda.tcnn_backend`: the mapped configuration, its differences from ours);
    ``table`` is then tcnn's flat float32 parameter vector and ``backend == "tcnn"``.
    """

    def __init__(self, config: HashGridConfig = HashGridConfig(), backend: str | None = None):
        super().__init__()
        self.config = config
        res, off = hash_grid_layout(config)
        self.register_buffer("resolutions", res, persistent=False)
        self.register_buffer("offsets", off, persistent=False)
        self.out_dim = config.n_levels * config.n_features
        self.backend = "omnifield"
        if resolve_backend(backend) == "tcnn":
            from omnifield.cuda import tcnn_backend

            why = tcnn_backend.grid_unsupported_reason(config)
            if why is None:
                impl = tcnn_backend.TcnnHashGrid(config)
                self.table = impl.params  # the state dict holds only "table" (tcnn's flat layout)
                self.__dict__["_tcnn"] = impl  # not a submodule: its one parameter is registered above
                self.backend = "tcnn"
                return
            tcnn_backend.warn_once("HashGridEncoding", why)
        s = config.init_scale
        self.table = nn.Parameter(torch.empty(int(off[-1]), config.n_features).uniform_(-s, s))

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, 3]`` (clamped to the unit cube) -> ``[N, L * F]``."""
        if self.backend == "tcnn":
            return self.__dict__["_tcnn"](x)
        table = self.table.half() if self.config.table_dtype == "float16" else self.table
        return ops.hash_encode(x, table, self.resolutions, self.offsets)
