"""Configuration of the ``tensorf`` scene (TensoRF VM, Chen et al. 2022, with PVD's shared colour head)."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.marching import CascadedMarchingConfig


@dataclass(frozen=True)
class TensoRFConfig(CascadedMarchingConfig):
    """TensoRF (VM decomposition). Fields left at ``None`` are filled from ``profile`` and the scene when the
    scene is built (the built scene's ``config`` holds the resolved values).

    Profiles: ``"paper"`` = the TensoRF repository's defaults (128^3 -> 300^3 voxels, upsampled at steps
    2000, 3000, 4000, 5500, 7000 of 30k; ranks 16 / 48); ``"cpu"`` = ranks 8 / 24, 64^3 -> 160^3 voxels
    upsampled at fractions of the Trainer's horizon (which follows a ``max_minutes`` budget), a coarser
    occupancy grid and marching step and a smaller sample budget.

    The occupancy-grid and marching fields are :class:`CascadedMarchingConfig`'s, as instant-ngp's (for
    unbounded scenes the VM grid spans all the cascades). ``render_step_size`` None: sqrt(3) x extent / 1024
    (paper: TensoRF's half-voxel step at 300^3), / 512 (cpu). The adapted ray count is capped by
    ``max_rays_per_batch`` (TensoRF itself trains on 4096 rays).
    """

    method: str = "tensorf"
    """Registry name."""
    profile: str = "auto"
    """"auto" (paper with CUDA, else cpu), "paper" or "cpu": fills the fields left at None."""

    # -- the VM grids --------------------------------------------------------------------------------
    density_components: int | None = None
    """Density rank per plane/line pair (x3). Paper 16; cpu 8."""
    app_components: int | None = None
    """Appearance rank per plane/line pair (x3). Paper 48; cpu 24."""
    n_voxels_init: int | None = None
    """Voxels of the initial VM grid (spread over the field box with cubic voxels). Paper 128^3; cpu 64^3."""
    n_voxels_final: int | None = None
    """Voxels after the last upsampling (log-linear in between). Paper 300^3; cpu 160^3."""
    upsample_at: tuple[float, ...] | None = None
    """When to upsample (in ``schedule_units``). Paper (2000, 3000, 4000, 5500, 7000) steps; cpu the same
    fractions of 30k (2000/30000, ...) of the run."""
    schedule_units: str | None = None
    """"steps": ``upsample_at`` are step counts (paper); "fraction": fractions of the Trainer's horizon (cpu)."""
    init_scale: float = 0.1
    """Initial plane/line values are ``init_scale * N(0, 1)`` (TensoRF)."""
    density_shift: float = -1.0
    """Added to the summed density products: ``sigma_pre = sum + shift``, so the initial density is about
    ``exp(-1)`` (as Instant-NGP's ``density_bias``; TensoRF's -10 belongs to its softplus activation)."""
    density_clamp: tuple[float, float] | None = (-2.0, 7.0)
    """``sigma = trunc_exp(clamp(sigma_pre, lo, hi))`` (PVD trains TensoRF students this way); None: no clamp."""

    # -- the shared colour head (PVD) ----------------------------------------------------------------
    geo_feat_dim: int = 15
    """Appearance basis outputs (``Linear(3 x app_components, 15, bias=False)``): PVD's geometry features."""
    hidden_dim: int = 64
    """Width of the colour MLP (Instant-NGP's shape)."""
    color_hidden_layers: int = 2
    """Hidden layers of the colour MLP."""
    sh_degree: int = 4
    """Spherical-harmonics bands of the view direction."""

    # -- optimisation (TensoRF) ----------------------------------------------------------------------
    lr_grid: float = 0.02
    """Adam learning rate of the planes and lines."""
    lr_network: float = 1e-3
    """Adam learning rate of the appearance basis and the colour MLP."""
    lr_decay_ratio: float = 0.1
    """Both learning rates decay exponentially to this fraction over the run (``lr_decay_target_ratio``).
    TensoRF also restarts the decay after each upsampling (``lr_upsample_reset``); here it runs once."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    l1_weight: float = 1e-4
    """Weight of the L1 norm of the density planes and lines (PVD ``l1_reg_weight``; TensoRF 8e-5)."""
