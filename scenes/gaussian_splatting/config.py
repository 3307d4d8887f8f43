"""Configuration of the ``3dgs`` scene (Kerbl et al. 2023, "3D Gaussian Splatting for Real-Time Radiance Field Rendering")."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.base import SceneConfig


@dataclass(frozen=True)
class GaussianSplattingConfig(SceneConfig):
    """3D Gaussian splatting. Fields left at ``None`` are filled from ``profile`` and the data when the
    scene is built (the built scene's ``config`` holds the resolved values).

    Profiles: ``"paper"`` = the paper's settings (30k steps; densification every 100 steps from step
    500 to 15k, opacity reset every 3k, one SH degree more every 1k); ``"cpu"`` = fewer initial
    Gaussians, a cap on their number, and a schedule in fractions of the run (``schedule_units =
    "fraction"``) so that it follows the Trainer's horizon (``max_steps``, or the steps a
    ``max_minutes`` budget allows) instead of assuming 30k steps.
    """

    method: str = "3dgs"
    """Registry name."""
    profile: str = "auto"
    """"auto" (paper with CUDA, else cpu), "paper" or "cpu": fills the fields left at None."""

    # -- initialisation --------------------------------------------------------------------------
    num_random_points: int | None = None
    """Gaussians drawn uniformly in the scene box when the data has no points. Paper 100k (the
    synthetic-scene protocol of 3DGS); cpu profile 20k."""
    max_init_points: int | None = None
    """Dataset points (COLMAP ``points3D``) beyond this many are subsampled (None: keep all)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_seed: int = 0
    """Seed of the random initial points, their colours and of subsampling (independent of the trainer)."""
    sh_degree: int = 3
    """Highest spherical-harmonics degree of the view-dependent colour."""

    # -- schedule (steps or fractions of the run, see schedule_units) -------------------------------
    schedule_units: str | None = None
    """"steps": the schedule fields below are step counts (paper); "fraction": fractions of the
    Trainer's horizon (the LR factor's ``max_steps``, which follows a ``max_minutes`` budget) (cpu)."""
    sh_degree_every: float | None = None
    """One SH degree more every this long. Paper 1000 steps; cpu 0.05 of the run."""
    densify_start: float | None = None
    """Densification starts after this. Paper 500 steps; cpu 0.02 of the run."""
    densify_stop: float | None = None
    """... and stops after this (statistics stop accumulating too). Paper 15000 steps; cpu 0.6."""
    densify_every: float | None = None
    """Densify (clone, split, prune) every this long. Paper 100 steps; cpu 0.01 of the run."""
    opacity_reset_every: float | None = None
    """Clamp every opacity to ``opacity_reset_value`` every this long (during densification). Paper
    3000 steps; cpu 0.2 of the run."""

    # -- densification and pruning --------------------------------------------------------------
    densify_grad_threshold: float = 2e-4
    """Mean view-space gradient norm above which a Gaussian is cloned or split. Units: the gradient of
    the loss w.r.t. the projected mean in NDC, ``|(dL/du * W/2, dL/dv * H/2)|`` with ``(u, v)`` in
    pixels, averaged over the steps in which the Gaussian was visible (3DGS)."""
    percent_dense: float = 0.01
    """Gaussians whose largest scale is below this fraction of ``extent`` are cloned, larger ones split."""
    split_count: int = 2
    """Gaussians a split Gaussian becomes (sampled from itself)."""
    split_scale_divisor: float = 1.6
    """A split child's scales are the parent's divided by this (3DGS: 0.8 x split_count)."""
    prune_opacity: float = 0.005
    """Gaussians with a lower opacity are pruned at each densification."""
    prune_world_size: float = 0.1
    """After the first opacity reset, Gaussians larger than this fraction of ``extent`` are pruned."""
    prune_screen_size: float = 20.0
    """After the first opacity reset, Gaussians whose radius ever exceeded this many pixels (since the
    last densification) are pruned."""
    opacity_reset_value: float = 0.01
    """Opacities are clamped to at most this at each reset."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians: when densification would exceed it, only the candidates with
    the largest gradients grow. Paper: no cap (0 means none); cpu profile 300k."""

    # -- optimisation -------------------------------------------------------------------------------
    position_lr_init: float = 1.6e-4
    """Learning rate of the means at the start, times ``extent``."""
    position_lr_final: float = 1.6e-6
    """... decaying exponentially to this (times ``extent``) at the end of the run."""
    sh_dc_lr: float = 2.5e-3
    """Learning rate of the SH DC coefficients."""
    sh_rest_lr_divisor: float = 20.0
    """The higher SH coefficients learn ``sh_dc_lr`` divided by this."""
    opacity_lr: float = 0.05
    """Learning rate of the opacity logits."""
    scaling_lr: float = 5e-3
    """Learning rate of the log-scales."""
    rotation_lr: float = 1e-3
    """Learning rate of the quaternions."""
    adam_eps: float = 1e-15
    """Adam epsilon."""
    ssim_weight: float = 0.2
    """lambda of the loss ``(1 - lambda) L1 + lambda (1 - SSIM)``."""

    # -- scene and rendering --------------------------------------------------------------------
    extent: float | None = None
    """Scene extent (3DGS ``cameras_extent``): 1.1 x the largest distance of a training camera from
    their mean position; None: computed from the data. Scales the position LR and size thresholds."""
    background: tuple[float, float, float] | None = None
    """Render background; None: the dataset's."""
    antialias: bool = False
    """Mip-Splatting 2D filter (opacity compensation) in the rasterizer."""
    near: float = 0.01
    """Gaussians closer to the camera than this (camera z) are culled."""
    far: float = 1e10
    """... and those farther than this."""
