"""Optional tiny-cuda-nn (``tinycudann``) backend for the hash grid and the MLPs (``--backend tcnn``).

:class:`omnifield.fields.HashGridEncoding` and :class:`omnifield.fields.MLP` build tiny-cuda-nn
modules instead of ours when :func:`omnifield.cuda.backend.resolve_backend` says ``"tcnn"`` at
construction (``tinycudann`` importable and a CUDA device: :func:`available`), and the
configuration maps (:func:`grid_unsupported_reason`, :func:`mlp_unsupported_reason`); otherwise ours
run. Everything else (marching, compositing, SH) runs our CUDA kernels under ``tcnn``.

Configuration mapping (``HashGridConfig`` -> tcnn ``"HashGrid"``, :func:`encoding_config`):
``n_levels``, ``n_features_per_level = n_features``, ``log2_hashmap_size = log2_table_size``,
``base_resolution = N_min``, ``per_level_scale = b = exp((ln N_max - ln N_min) / (L - 1))`` (ours),
``"hash": "CoherentPrime"``, ``"interpolation": "Linear"``. Facts of tiny-cuda-nn this rests on
(NVlabs/tiny-cuda-nn, ``include/tiny-cuda-nn/encodings/grid.h`` and ``common_device.h``):

- level scale ``exp2f(l * log2(per_level_scale)) * base_resolution - 1.0f`` (``grid_scale``: "the -1
  means that base_resolution refers to the number of grid vertices rather than the number of
  cells"), ``resolution = ceil(scale) + 1`` vertices per side (``grid_resolution``). Ours: level
  ``l`` has ``floor(N_min * b^l)`` cells, i.e. ``floor(N_min * b^l) + 1`` vertices per side. So
  tcnn's vertex count equals ours at every level where ``N_min * b^l`` is not an integer, and is one
  fewer where it is (the coarsest level, often the finest); tcnn's scale (cells per unit length)
  is ``N_min * b^l - 1``, within one cell below ours (:func:`tcnn_level_layout`, tested).
- positions ``pos = fmaf(scale, x, 0.5f)`` (``pos_fract``): a +0.5 vertex offset ("staggers"
  the levels; Instant-NGP paper appendix A). Ours has no offset: the same ``x`` falls at other
  fractional positions, so the two encodings are different functions of ``x`` with the same
  capacity, not the same numbers. tcnn does not clamp ``x``; we clamp to the unit cube first.
- layout: level sizes ``min(next_multiple(resolution^3, 8), 2^log2_hashmap_size)`` rows of
  ``F`` features (dense when the padded ``resolution^3`` fits; the +0.5 offset can then wrap
  indices "which didn't negatively impact the approximation quality"), dense index
  ``x + y * res + z * res^2`` (stride loop over dims), hash ``x * 1 ^ y * 2654435761 ^ z * 805459861``
  (``coherent_prime_hash``, the default ``"hash"`` of recent versions; older ones hard-code it as
  ``fast_hash``) modulo the level size. Ours: ``(res + 1)^3`` rows unpadded, the same hash and
  dense order, the same dense/hashed split up to the padding. Parameter counts still differ (the
  coarsest level, the padding) and the layouts are flat vs ``[rows, F]``: a run trained with one
  backend does not load into the other (the state dict holds tcnn's flat ``params`` as ``table``).
- precision: tcnn's Module keeps a parameter tensor and casts it per forward to its precision
  (``self.params.to(...)``, loss scale 128 in half precision; ``bindings/torch/tinycudann/modules.py``).
  We replace that tensor by a float32 master copy, so the optimiser sees float32 like ours. The grid
  runs in half when ``table_dtype == "float16"`` (like our half-table option) and in float32
  otherwise; ``FullyFusedMLP`` always computes in half precision (ours: float32). Outputs are
  returned as float32 ``[N, out_dim]``.
- MLPs: tcnn networks have no biases (ours have them unless ``bias=False``); ``FullyFusedMLP`` for
  hidden widths 16/32/64/128, ``CutlassMLP`` otherwise; no skip connections (those MLPs stay ours).
  Initialisation differs (tcnn's seeded initialisation vs torch's).
- ``import tinycudann`` raises ``EnvironmentError`` on a machine without a GPU; this module imports
  it only inside :func:`available` / the constructors, never at import time.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

_state: dict[str, object] = {}  # "module": the imported tinycudann, "error": why it did not import
_warned: set[str] = set()

FUSED_WIDTHS = (16, 32, 64, 128)
_ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "softplus": "Softplus", "none": "None"}


def _import_tcnn():
    """The ``tinycudann`` module, imported once per process; raises ``ImportError`` with the reason."""
    if "module" not in _state and "error" not in _state:
        try:
            import tinycudann  # noqa: PLC0415 - optional, heavy, raises without a GPU

            _state["module"] = tinycudann
        except Exception as exc:  # noqa: BLE001 - ImportError, or EnvironmentError without a GPU
            _state["error"] = f"tinycudann is not importable ({type(exc).__name__}: {exc})"
    if "module" in _state:
        return _state["module"]
    raise ImportError(str(_state["error"]))


def _cuda_device_present() -> bool:
    return torch.cuda.is_available()


def unavailable_reason() -> str | None:
    """Why tiny-cuda-nn cannot run here (no CUDA device, ``tinycudann`` not importable), or ``None``."""
    if not _cuda_device_present():
        return "no CUDA device (torch.cuda.is_available() is False)"
    try:
        _import_tcnn()
    except ImportError as exc:
        return str(exc)
    return None


def available() -> bool:
    """True when ``tinycudann`` imports and a CUDA device is present."""
    return unavailable_reason() is None


def warn_once(what: str, why: str) -> None:
    """One ``RuntimeWarning`` per distinct reason: ``what`` runs our implementation because ``why``."""
    key = f"{what}: {why}"
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"omnifield: tcnn backend: {what} uses omnifield's implementation ({why})",
                      RuntimeWarning, stacklevel=3)


# --- hash grid -------------------------------------------------------------------------------------


def per_level_scale(config) -> float:
    """tcnn's ``per_level_scale`` for a ``HashGridConfig``: our growth factor
    ``b = exp((ln N_max - ln N_min) / (L - 1))`` (1 for one level)."""
    if config.n_levels < 2:
        return 1.0
    return math.exp((math.log(config.max_resolution) - math.log(config.base_resolution)) / (config.n_levels - 1))


def encoding_config(config) -> dict:
    """The tcnn ``"HashGrid"`` encoding configuration of a ``HashGridConfig`` (see the module docs)."""
    return {
        "otype": "HashGrid",
        "n_levels": int(config.n_levels),
        "n_features_per_level": int(config.n_features),
        "log2_hashmap_size": int(config.log2_table_size),
        "base_resolution": int(config.base_resolution),
        "per_level_scale": per_level_scale(config),
        "interpolation": "Linear",
        "hash": "CoherentPrime",
    }


def tcnn_level_layout(encoding: dict) -> list[dict]:
    """What tiny-cuda-nn computes per level for an encoding config, in its float32 host arithmetic
    (``GridEncodingTemplated`` constructor): ``scale`` (multiplier of ``x``), ``resolution`` (vertices
    per side, ``ceil(scale) + 1``), ``rows`` (``min(next_multiple(resolution^3, 8), 2^log2_hashmap_size)``)
    and ``dense``. For documentation, tests, and to predict ``n_params = sum(rows) * F``."""
    log2_b = np.float32(np.log2(np.float32(encoding["per_level_scale"])))
    base, t = np.float32(encoding["base_resolution"]), 2 ** int(encoding["log2_hashmap_size"])
    levels = []
    for level in range(int(encoding["n_levels"])):
        scale = np.float32(np.exp2(np.float32(level) * log2_b) * base - np.float32(1.0))
        resolution = int(np.ceil(scale)) + 1
        padded = -(-resolution**3 // 8) * 8
        levels.append({"scale": float(scale), "resolution": resolution, "rows": min(padded, t), "dense": padded <= t})
    return levels


def grid_unsupported_reason(config) -> str | None:
    """Why tcnn cannot run this ``HashGridConfig`` (``n_features`` not in 1, 2, 4, 8), or ``None``."""
    if config.n_features not in (1, 2, 4, 8):
        return f"tcnn grids need n_features in (1, 2, 4, 8), got {config.n_features}"
    return None


class TcnnHashGrid(nn.Module):
    """tiny-cuda-nn's hash grid with our forward contract: ``x [N, 3]`` (clamped to the unit cube)
    -> float32 ``[N, L * F]``; differentiable w.r.t. the parameters and ``x``.

    ``self.encoding`` is the ``tinycudann.Encoding``; its ``params`` are a float32 master copy, cast
    to half per forward when ``config.table_dtype == "float16"``."""

    def __init__(self, config, seed: int = 1337):
        super().__init__()
        tcnn = _import_tcnn()
        half = getattr(config, "table_dtype", "float32") == "float16"
        try:
            self.encoding = tcnn.Encoding(3, encoding_config(config), seed=seed,
                                          dtype=torch.float16 if half else torch.float32)
        except TypeError:  # tinycudann < 1.7 has no dtype argument (its preferred precision: half)
            self.encoding = tcnn.Encoding(3, encoding_config(config), seed=seed)
        self.encoding.params = nn.Parameter(self.encoding.params.detach().float())
        self.out_dim = config.n_levels * config.n_features

    @property
    def params(self) -> nn.Parameter:
        """The flat float32 parameter vector (tcnn's layout, see :func:`tcnn_level_layout`)."""
        return self.encoding.params

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, 3]`` -> float32 ``[N, L * F]``."""
        if x.ndim != 2 or x.shape[1] != 3:
            raise ValueError(f"TcnnHashGrid expects positions [N, 3], got {tuple(x.shape)}")
        return self.encoding(x.float().clamp(0.0, 1.0).contiguous()).float()


# --- MLPs ------------------------------------------------------------------------------------------


def network_config(hidden_dim: int, n_hidden_layers: int, activation: str, output_activation: str) -> dict:
    """The tcnn network configuration of our MLP: ``FullyFusedMLP`` for hidden widths 16/32/64/128,
    ``CutlassMLP`` otherwise; the same hidden-layer count and activations (no biases in tcnn)."""
    return {
        "otype": "FullyFusedMLP" if hidden_dim in FUSED_WIDTHS else "CutlassMLP",
        "activation": _ACTIVATIONS[activation],
        "output_activation": _ACTIVATIONS[output_activation],
        "n_neurons": int(hidden_dim),
        "n_hidden_layers": int(n_hidden_layers),
    }


def mlp_unsupported_reason(out_dim: int | None, n_hidden_layers: int, skip_connections: tuple[int, ...]) -> str | None:
    """Why tcnn cannot run an MLP of this shape (skip connections; no layer at all), or ``None``."""
    if any(i > 0 for i in skip_connections):
        return "tcnn networks have no skip connections"
    if out_dim is None and n_hidden_layers == 0:
        return "an MLP without layers is the identity"
    return None


class TcnnMLP(nn.Module):
    """tiny-cuda-nn network with our MLP's forward contract: ``x [..., in_dim]`` -> float32
    ``[..., out_dim]``. ``out_dim=None`` (end after the last hidden layer) becomes a network with one
    hidden layer fewer whose output layer has ``hidden_dim`` outputs and the hidden activation."""

    def __init__(self, in_dim: int, out_dim: int | None, hidden_dim: int, n_hidden_layers: int,
                 activation: str, output_activation: str, seed: int = 1337):
        super().__init__()
        tcnn = _import_tcnn()
        if out_dim is None:
            out_dim, n_hidden_layers, output_activation = hidden_dim, n_hidden_layers - 1, activation
        self.in_dim, self.out_dim = in_dim, out_dim
        config = network_config(hidden_dim, n_hidden_layers, activation, output_activation)
        self.network = tcnn.Network(in_dim, out_dim, config, seed=seed)
        self.network.params = nn.Parameter(self.network.params.detach().float())

    @property
    def params(self) -> nn.Parameter:
        """The flat float32 parameter vector of the network (tcnn's layout)."""
        return self.network.params

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., in_dim]`` -> float32 ``[..., out_dim]``."""
        lead = x.shape[:-1]
        out = self.network(x.reshape(-1, self.in_dim).float().contiguous())
        return out.float().reshape(*lead, self.out_dim)
