"""The ``instant-ngp`` method: multiresolution hash grid + tiny MLPs + occupancy grid (Mueller et al. 2022)."""

from omnifield.scenes.instant_ngp.config import InstantNGPConfig
from omnifield.scenes.instant_ngp.model import InstantNGP, build, resolve_config
from omnifield.scenes.registry import MethodSpec, register

SPEC = register(MethodSpec("instant-ngp", InstantNGPConfig, build, "Instant-NGP: hash grid + tiny MLP, occupancy grid"))

__all__ = ["InstantNGP", "InstantNGPConfig", "build", "resolve_config", "SPEC"]
