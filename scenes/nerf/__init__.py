"""The ``nerf`` method: positional encoding + 8x256 MLP, coarse/fine sampling (Mildenhall et al. 2020)."""

from omnifield.scenes.nerf.config import NeRFConfig
from omnifield.scenes.nerf.model import NeRF, NeRFField, build
from omnifield.scenes.registry import MethodSpec, register

SPEC = register(MethodSpec("nerf", NeRFConfig, build, "NeRF: positional encoding + 8x256 MLP, coarse/fine sampling"))

__all__ = ["NeRF", "NeRFConfig", "NeRFField", "build", "SPEC"]
