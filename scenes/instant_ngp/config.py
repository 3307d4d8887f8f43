"""Configuration of the ``instant-ngp`` scene (Mueller et al. 2022, as in nerfacc's NGP example)."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.marching import CascadedMarchingConfig


@dataclass(frozen=True)
class InstantNGPConfig(CascadedMarchingConfig):
    """Instant-NGP. Fields left at ``None`` are filled from ``profile`` and the scene when the scene is built
    (the built scene's ``config`` holds the resolved values).

    Profiles: ``"paper"`` = the paper / nerfacc defaults (GPU); ``"cpu"`` = a smaller table, coarser
    occupancy grid and marching step and a smaller sample budget that train best per CPU second.

    The occupancy-grid and marching fields (``grid_*``, ``render_step_size``, ``cone_angle``, the ray
    budget, ``near`` / ``far`` / ``background``) are :class:`CascadedMarchingConfig`'s. ``render_step_size``
    None: sqrt(3) x extent / 1024 (paper), / 512 (cpu); the first batch has ``target_samples_per_batch / 128`` rays.
    """

    method: str = "instant-ngp"
    """Registry name."""
    profile: str = "auto"
    """"auto" (paper with CUDA, else cpu), "paper" or "cpu": fills the fields left at None."""
    n_levels: int = 16
    """L: hash-grid levels."""
    n_features_per_level: int = 2
    """F: features per level."""
    log2_hashmap_size: int | None = None
    """log2 T: rows per hashed level. Paper 19; cpu profile 17 (a 4x smaller Adam update, same quality at 200 px)."""
    base_resolution: int = 16
    """N_min: coarsest grid resolution."""
    max_resolution: int | None = None
    """N_max: finest resolution. Paper: 2048 x scene extent (largest side of the scene box); cpu profile: 512 x extent."""
    hidden_dim: int = 64
    """Width of both MLPs."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density MLP to the colour MLP."""
    density_hidden_layers: int = 1
    """Hidden layers of the density MLP."""
    color_hidden_layers: int = 2
    """Hidden layers of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics bands of the view direction."""
    density_bias: float = -1.0
    """Added before trunc_exp (nerfacc), so the initial density is ~exp(-1)."""
    density_clamp: tuple[float, float] | None = None
    """Clamp of the density pre-activation ``h_0 + density_bias`` before trunc_exp (PVD: (-2, 7)). None: no clamp."""
    lr: float = 1e-2
    """Adam learning rate."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""
    weight_decay: float = 1e-6
    """L2 on the MLP weights only (not the hash table)."""
    lr_warmup_steps: int = 100
    """Linear LR warmup from 1%."""
