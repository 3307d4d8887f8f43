"""The ``3dgs`` method: 3D Gaussian splatting (Kerbl et al. 2023), trained on whole images."""

from omnifield.scenes.gaussian_splatting.config import GaussianSplattingConfig
from omnifield.scenes.gaussian_splatting.model import GaussianSplatting, build, resolve_config
from omnifield.scenes.gaussian_splatting.strategy import Densifier, DensifyParams, DensifyState
from omnifield.scenes.registry import MethodSpec, register

SPEC = register(MethodSpec("3dgs", GaussianSplattingConfig, build, "3D Gaussian splatting: tile rasterizer, densification"))

__all__ = ["GaussianSplatting", "GaussianSplattingConfig", "Densifier", "DensifyParams", "DensifyState", "build",
           "resolve_config", "SPEC"]
