"""Configuration of the ``plenoxels`` scene (Fridovich-Keil et al., CVPR 2022, as PVD trains it)."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.marching import GridMarchingConfig


@dataclass(frozen=True)
class PlenoxelsConfig(GridMarchingConfig):
    """Plenoxels: a dense grid of ``1 + 3 * sh_degree^2`` values per vertex (density pre-activation, then
    the SH coefficients of red, green, blue), trilinearly interpolated. Fields left at ``None`` are filled
    from ``profile`` and the scene when the scene is built (the built scene's ``config`` holds them).

    Profiles: ``"paper"`` = PVD's plenoxels (128^3, init ``0.02 * randn``, Adam lr 1e-2, no upsampling) with
    the Instant-NGP occupancy grid and a batch of 2^18 samples (GPU); ``"cpu"`` = a 64^3 grid upsampled to
    96^3 half-way, density starting at ``exp(-1)``, Adam lr 0.3, a coarser occupancy grid and marching
    step, 2^15 samples per batch (measured best for a few minutes on two cores: lego --downscale 4 reaches
    26.9 dB on its 13 held-out views after 3 minutes on one thread).

    The occupancy-grid and marching fields are :class:`GridMarchingConfig`'s (no cascades: the grid covers the
    scene box). ``render_step_size`` None: half the voxel size of the final grid (paper, as Plenoxels), one
    voxel of it (cpu). The first batch has ``target_samples_per_batch / 64`` rays. Of the sample budgets,
    2^14 and 2^16 were worse than the cpu profile's 2^15 in 3 minutes (the step's cost has a part per grid
    vertex: the dense gradient and Adam).
    """

    method: str = "plenoxels"
    """Registry name."""
    profile: str = "auto"
    """"auto" (paper with CUDA, else cpu), "paper" or "cpu": fills the fields left at None."""
    resolution: int | None = None
    """Vertices per side of the voxel grid at the start (align_corners: they span the scene box). Paper 128 (PVD
    ``plenoxel_res``); cpu 64."""
    upsample_resolutions: tuple[int, ...] | None = None
    """Coarse-to-fine: the resolution after each upsampling (increasing). Paper (); cpu (96,)."""
    upsample_at: tuple[float, ...] | None = None
    """When to upsample, as fractions of the run's horizon (``max_steps``, or the steps a time budget allows);
    one per entry of ``upsample_resolutions``. Paper (); cpu (0.5,)."""
    sh_degree: int = 3
    """SH bands of the colour (1..4): ``sh_degree^2`` coefficients per colour channel (3 -> 9, 28 values per vertex)."""
    init_std: float = 0.02
    """Every value starts as ``init_std * randn`` (PVD) plus the means below."""
    init_density: float | None = None
    """Mean of the density pre-activation at the start. Paper 0 (PVD: density 1 per unit length); cpu -1 (a
    thinner start: 24 dB instead of 16 dB after 150 steps on the synthetic scene, empty space prunes sooner)."""
    density_clamp: tuple[float, float] | None = (-2.0, 7.0)
    """``sigma = trunc_exp(clamp(sigma_pre, *density_clamp))`` (PVD); None: no clamp."""
    sparse_grad: bool = False
    """Row-sparse gradients and Adam updates of only the voxels a batch touches (``RowSparseAdam``); else a dense
    gradient and fused Adam, faster up to about 128^3 on CPU (measurements in ``fields/voxel_grid.py``)."""
    tv_density: float = 1e-5
    """Weight of the total variation of the density channel (Plenoxels lambda_TV for density)."""
    tv_sh: float = 1e-3
    """Weight of the total variation of the SH channels (summed over channels; Plenoxels lambda_TV for SH)."""
    tv_voxels: int | None = None
    """Cells whose total variation is computed each step (a random subset, as Plenoxels' ``tv_sparsity``).
    Paper 2^15 (1.6 % of 128^3); cpu 2^14."""
    lr: float | None = None
    """Adam learning rate of every value. Paper 1e-2 (PVD trains plenoxels with one learning rate); cpu 0.3
    (on the synthetic scene 0.05 / 0.1 / 0.3 / 0.5 / 1.0 gave 15 / 22 / 24 / 25 / 23 dB after 150 steps: a
    sigmoid SH colour needs coefficients of several units, which a small rate reaches only after
    thousands of steps)."""
    lr_final_ratio: float = 0.1
    """The learning rate decays exponentially to ``lr * lr_final_ratio`` at the end of the run."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas."""
    eps: float = 1e-15
    """Adam epsilon."""
