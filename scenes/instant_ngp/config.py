"""Configuration of the ``instant-ngp`` scene (Mueller et al. 2022, as in nerfacc's NGP example)."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.base import SceneConfig


@dataclass(frozen=True)
class InstantNGPConfig(SceneConfig):
    """Instant-NGP. Fields left at ``None`` are filled from ``profile`` and the scene when the scene is built
    (the built scene's ``config`` holds the resolved values).

    Profiles: ``"paper"`` = the paper / nerfacc defaults (GPU); ``"cpu"`` = a smaller table, coarser
    occupancy grid and marching step and a smaller sample budget that train best per CPU second.
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
    grid_resolution: int | None = None
    """Occupancy-grid cells per side. Paper 128; cpu profile 64 (a grid update costs a density evaluation per cell)."""
    grid_levels: int | None = None
    """Occupancy cascades: 1 for bounded scenes, 4 for unbounded ones when None."""
    grid_update_every: int = 16
    """Occupancy-grid update interval in steps."""
    grid_warmup_steps: int | None = None
    """Steps during which every cell is updated. Paper 256; cpu profile 64."""
    grid_update_fraction: float | None = None
    """After warmup, this fraction of cells is updated at random, plus as many occupied ones. Paper 1/4; cpu 1/8."""
    grid_threshold: float = 0.01
    """Occupancy threshold on density x step size."""
    grid_ema_decay: float = 0.95
    """EMA decay of cell values."""
    render_step_size: float | None = None
    """Marching step in world units. Paper: sqrt(3) x extent / 1024; cpu profile: sqrt(3) x extent / 512."""
    cone_angle: float | None = None
    """Cone marching: the step at distance t is max(t * cone_angle, render_step_size). None: 0 (constant
    steps) for bounded scenes, 1/256 for unbounded ones (Instant-NGP / nerfacc)."""
    alpha_thre: float = 0.0
    """Samples with lower opacity are skipped by the sampler."""
    early_stop_eps: float = 1e-4
    """Rays stop once transmittance falls below this."""
    target_samples_per_batch: int | None = None
    """Samples per training batch the ray count adapts to. Paper 2^18; cpu profile 2^15."""
    init_rays_per_batch: int | None = None
    """Rays in the first batch; None: target_samples_per_batch / 128."""
    max_rays_per_batch: int = 2**16
    """Upper bound of the adapted ray count."""
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
    near: float | None = None
    """Ray start; None: the dataset's near plane (or 0)."""
    far: float | None = None
    """Ray end; None: the dataset's far plane (or the box exit)."""
    background: tuple[float, float, float] | None = None
    """Render background; None: the dataset's."""
