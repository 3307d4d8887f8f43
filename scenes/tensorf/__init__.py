"""The ``tensorf`` method: TensoRF VM-decomposed grids + PVD's shared colour head + occupancy grid (Chen et al. 2022)."""

from omnifield.scenes.registry import MethodSpec, register
from omnifield.scenes.tensorf.config import TensoRFConfig
from omnifield.scenes.tensorf.model import TensoRF, build, resolve_config

SPEC = register(MethodSpec("tensorf", TensoRFConfig, build, "TensoRF: VM-decomposed density/appearance grids, occupancy grid"))

__all__ = ["TensoRF", "TensoRFConfig", "build", "resolve_config", "SPEC"]
