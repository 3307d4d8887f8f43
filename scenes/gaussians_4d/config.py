"""Configuration of the ``4dgs`` scene (Yang et al., ICLR 2024, "Real-time Photorealistic Dynamic Scene
Representation and Rendering with 4D Gaussian Splatting")."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.base import SceneConfig


@dataclass(frozen=True)
class Gaussians4DConfig(SceneConfig):
    """4D Gaussian splatting. Fields left at ``None`` are filled from ``profile`` and the data when the
    scene is built (the built scene's ``config`` holds the resolved values).

    Profiles: ``"paper"`` = the paper's setting (30k steps, 100k random initial Gaussians, 3DGS
    densification every 100 steps from 500 to 15k, opacity reset every 3k, one SH degree more every
    1k, several views per step); ``"cpu"`` = fewer initial Gaussians, a cap on their number, two views
    per step and a schedule in fractions of the run (``schedule_units = "fraction"``) that follows the
    Trainer's horizon (``max_steps``, or the steps a ``max_minutes`` budget allows).

    Time: cameras carry normalised times (the loaders map the data's time stamps to [0, 1]); every
    time below is in those units.
    """

    method: str = "4dgs"
    """Registry name."""
    profile: str = "auto"
    """"auto" (paper with CUDA, else cpu), "paper" or "cpu": fills the fields left at None."""

    # -- initialisation --------------------------------------------------------------------------
    num_random_points: int | None = None
    """Gaussians drawn uniformly in the scene box x time range when the data has no points. Paper
    100k; cpu profile 20k."""
    max_init_points: int | None = None
    """Dataset points beyond this many are subsampled (None: keep all). Paper None; cpu 20k."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian."""
    init_seed: int = 0
    """Seed of the random initial points, times, colours and of subsampling (independent of the trainer)."""
    init_time_scale: float | None = None
    """Initial temporal standard deviation of every Gaussian. None: ``init_time_scale_spacings`` times
    the spacing of the training times (the median gap between consecutive distinct times)."""
    init_time_scale_spacings: float = 6.0
    """See ``init_time_scale``: 6 spacings keep a new Gaussian visible (marginal > 0.05) over about
    +-15 training frames, so each gets gradients from many views while it settles (our choice; 3 and 6
    differ by ~0.1 dB on the synthetic dynamic scene)."""
    sh_degree: int = 3
    """Highest spatial degree of the spherindrical harmonics (0..3)."""
    n_time: int = 2
    """Temporal cosine terms of the spherindrical harmonics (1 = colour constant in time)."""
    time_period: float | None = None
    """Period ``T`` of the temporal basis ``cos(2 pi n (t - mu_t) / T)``. None: the time span."""

    # -- schedule (steps or fractions of the run, see schedule_units) -------------------------------
    schedule_units: str | None = None
    """"steps": the schedule fields below are step counts (paper); "fraction": fractions of the
    Trainer's horizon (the LR factor's ``max_steps``, which follows a ``max_minutes`` budget) (cpu)."""
    sh_degree_every: float | None = None
    """One spatial SH degree more every this long. Paper 1000 steps; cpu 0.05 of the run."""
    densify_start: float | None = None
    """Densification starts after this. Paper 500 steps; cpu 0.02 of the run."""
    densify_stop: float | None = None
    """... and stops after this (statistics stop accumulating too). Paper 15000 steps; cpu 0.6."""
    densify_every: float | None = None
    """Densify (clone, split, prune) every this long. Paper 100 steps; cpu 0.01 of the run."""
    opacity_reset_every: float | None = None
    """Clamp every opacity to ``opacity_reset_value`` every this long (during densification). Paper
    3000 steps; cpu 0.25 of the run."""
    views_per_batch: int | None = None
    """Training views rendered per optimiser step, each at its own time (4DGS batches views across
    time; the count is our choice). Paper profile 4; cpu 2 (4 reached the same held-out PSNR per CPU
    second on the synthetic dynamic scene, with half the Gaussians)."""

    # -- densification and pruning --------------------------------------------------------------
    densify_grad_threshold: float = 2e-4
    """Mean view-space gradient norm (NDC units, as 3DGS) above which a Gaussian is cloned or split."""
    percent_dense: float = 0.01
    """Gaussians whose largest *spatial* scale is below this fraction of ``extent`` are cloned, larger
    ones split (children sampled from the 4D Gaussian)."""
    split_count: int = 2
    """Gaussians a split Gaussian becomes."""
    split_scale_divisor: float = 1.6
    """A split child's spatial scales are the parent's divided by this (its temporal scale is kept)."""
    prune_opacity: float = 0.005
    """Gaussians with a lower opacity (before the temporal marginal) are pruned at each densification."""
    prune_world_size: float = 0.1
    """After the first opacity reset, Gaussians whose largest spatial scale exceeds this fraction of
    ``extent`` are pruned."""
    prune_screen_size: float = 20.0
    """After the first opacity reset, Gaussians whose radius ever exceeded this many pixels (since the
    last densification) are pruned."""
    opacity_reset_value: float = 0.01
    """Opacities are clamped to at most this at each reset."""
    max_gaussians: int | None = None
    """Cap on the number of Gaussians (densification grows the candidates with the largest gradients
    that fit). Paper: no cap (0); cpu profile 150k."""
    marginal_threshold: float = 0.05
    """At time t, Gaussians whose temporal marginal ``p(t)`` is at most this are culled (4DGS)."""

    # -- optimisation -------------------------------------------------------------------------------
    position_lr_init: float = 1.6e-4
    """Learning rate of the spatial means at the start, times ``extent`` (3DGS)."""
    position_lr_final: float = 1.6e-6
    """... decaying exponentially to this (times ``extent``) at the end of the run."""
    time_lr_init: float = 1.6e-4
    """Learning rate of the temporal means, times the time span; decays like the spatial one (our
    choice: the same relative step as the positions)."""
    sh_dc_lr: float = 2.5e-3
    """Learning rate of the DC coefficient (spatial degree 0, temporal term 0)."""
    sh_rest_lr_divisor: float = 20.0
    """Every other coefficient learns ``sh_dc_lr`` divided by this (3DGS)."""
    opacity_lr: float = 0.05
    """Learning rate of the opacity logits."""
    scaling_lr: float = 5e-3
    """Learning rate of the spatial log-scales."""
    time_scaling_lr: float = 5e-3
    """Learning rate of the temporal log-scale (our choice: the spatial one)."""
    rotation_lr: float = 1e-3
    """Learning rate of both quaternions (left and right isoclinic) of the 4D rotation."""
    adam_eps: float = 1e-15
    """Adam epsilon."""
    ssim_weight: float = 0.2
    """lambda of the loss ``(1 - lambda) L1 + lambda (1 - SSIM)``."""

    # -- scene and rendering --------------------------------------------------------------------
    extent: float | None = None
    """Scene extent (3DGS ``cameras_extent``): 1.1 x the largest distance of a training camera from
    their mean position; None: from the data. Scales the position LR and size thresholds."""
    time_range: tuple[float, float] | None = None
    """``(t0, t1)``: the times the scene covers (the scene's ``time_range``: the viewer's time slider and
    the time sweep of ``omnifield render`` span it; rendering other times is allowed). None: the range
    of the cameras' times."""
    background: tuple[float, float, float] | None = None
    """Render background; None: the dataset's."""
    antialias: bool = False
    """Mip-Splatting 2D filter (opacity compensation) in the rasterizer."""
    near: float = 0.01
    """Gaussians closer to the camera than this (camera z) are culled."""
    far: float = 1e10
    """... and those farther than this."""
