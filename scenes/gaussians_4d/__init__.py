"""The ``4dgs`` method: 4D Gaussian splatting (Yang et al., ICLR 2024), sliced at time t and splatted."""

from omnifield.scenes.gaussians_4d.config import Gaussians4DConfig
from omnifield.scenes.gaussians_4d.model import Gaussians4D, build, resolve_config
from omnifield.scenes.gaussians_4d.strategy import Densifier4D
from omnifield.scenes.registry import MethodSpec, register

SPEC = register(MethodSpec("4dgs", Gaussians4DConfig, build, "4D Gaussian splatting: dynamic scenes sliced in time"))

__all__ = ["Gaussians4D", "Gaussians4DConfig", "Densifier4D", "build", "resolve_config", "SPEC"]
