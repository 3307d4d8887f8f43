"""Differentiable building blocks of fields: encodings and MLPs (no rendering).

Public: :class:`FrequencyEncoding`, :class:`SHEncoding`, :class:`HashGridEncoding`,
:class:`HashGridConfig`, :func:`hash_grid_layout`, :func:`level_resolutions`, :class:`MLP`,
:func:`trunc_exp`.
"""

from omnifield.fields.activations import trunc_exp
from omnifield.fields.encodings import (
    FrequencyEncoding,
    HashGridConfig,
    HashGridEncoding,
    SHEncoding,
    hash_grid_layout,
    level_resolutions,
)
from omnifield.fields.mlp import MLP

__all__ = [
    "FrequencyEncoding",
    "HashGridConfig",
    "HashGridEncoding",
    "SHEncoding",
    "hash_grid_layout",
    "level_resolutions",
    "MLP",
    "trunc_exp",
]
