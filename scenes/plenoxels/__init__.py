"""The ``plenoxels`` method: a dense SH voxel grid, no MLP, occupancy-grid marching (Fridovich-Keil et al. 2022)."""

from omnifield.scenes.plenoxels.config import PlenoxelsConfig
from omnifield.scenes.plenoxels.model import Plenoxels, RowSparseAdam, build, resolve_config
from omnifield.scenes.registry import MethodSpec, register

SPEC = register(MethodSpec("plenoxels", PlenoxelsConfig, build,
                           "Plenoxels: dense SH voxel grid, no MLP, occupancy grid"))

__all__ = ["Plenoxels", "PlenoxelsConfig", "RowSparseAdam", "build", "resolve_config", "SPEC"]
