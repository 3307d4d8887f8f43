"""Differentiable building blocks of fields: encodings, grids and MLPs (no rendering).

Public: :class:`FrequencyEncoding`, :class:`SHEncoding`, :class:`HashGridEncoding`,
:class:`HashGridConfig`, :func:`hash_grid_layout`, :func:`level_resolutions`, :class:`MLP`,
:func:`trunc_exp`; TensoRF's VM grids: :class:`TensorVM`, :func:`vm_resolution`, :func:`voxel_schedule`;
dense voxel grids (Plenoxels): :class:`VoxelGrid`, :func:`interpolate`, :func:`trilinear`, :func:`sh_color`,
:func:`total_variation`, :func:`resample`.
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
from omnifield.fields.tensor_grids import TensorVM, vm_resolution, voxel_schedule
from omnifield.fields.voxel_grid import VoxelGrid, interpolate, resample, sh_color, total_variation, trilinear

__all__ = [
    "FrequencyEncoding",
    "HashGridConfig",
    "HashGridEncoding",
    "SHEncoding",
    "hash_grid_layout",
    "level_resolutions",
    "MLP",
    "TensorVM",
    "trunc_exp",
    "vm_resolution",
    "voxel_schedule",
    "VoxelGrid",
    "interpolate",
    "resample",
    "sh_color",
    "total_variation",
    "trilinear",
]
