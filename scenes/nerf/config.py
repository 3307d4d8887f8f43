"""Configuration of the ``nerf`` scene (Mildenhall et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from omnifield.scenes.base import SceneConfig


@dataclass(frozen=True)
class NeRFConfig(SceneConfig):
    """NeRF with the paper's defaults (slow on CPU by nature)."""

    method: str = "nerf"
    """Registry name."""
    pos_frequencies: int = 10
    """Positional-encoding frequencies of xyz (normalised to the scene box, [-1, 1])."""
    dir_frequencies: int = 4
    """Positional-encoding frequencies of the view direction."""
    hidden_dim: int = 256
    """Width of the trunk MLP."""
    n_layers: int = 8
    """Hidden layers of the trunk."""
    skip_layer: int = 4
    """Trunk layer that receives the encoded position again (skip connection)."""
    color_hidden_dim: int = 128
    """Width of the view-dependent colour head (heads="paper"; the shared head is 64 wide)."""
    n_coarse: int = 64
    """Stratified samples per ray of the coarse network."""
    n_fine: int = 128
    """Extra importance samples per ray of the fine network (it evaluates n_coarse + n_fine)."""
    heads: str = "paper"
    """"paper": the NeRF MLP (relu density, 128-wide colour head). "shared": PVD's split (Fang et al. 2023):
    the trunk ends in ``Linear(hidden_dim, 16)`` = [sigma_pre, 15 geometry features], density
    ``trunc_exp(clamp(sigma_pre))``, colour = the instant-ngp colour MLP (64 wide, 2 hidden layers) on
    [SH degree 4 of the direction, the 15 features]; needs ``use_occupancy_grid``."""
    density_clamp: tuple[float, float] | None = None
    """Clamp of the density pre-activation (heads="shared" only; PVD: (-2, 7)). None: no clamp."""
    use_occupancy_grid: bool = False
    """Replace the coarse network by an occupancy grid (Instant-NGP style marching)."""
    grid_resolution: int = 128
    """Occupancy-grid cells per side (use_occupancy_grid only)."""
    grid_update_every: int = 16
    """Occupancy-grid update interval (use_occupancy_grid only)."""
    render_step_size: float | None = None
    """Marching step with the grid; None: sqrt(3) x extent / 512."""
    batch_rays: int = 1024
    """Rays per training batch."""
    lr: float = 5e-4
    """Initial Adam learning rate."""
    lr_final: float = 5e-5
    """Learning rate reached (exponentially) at max_steps."""
    near: float | None = None
    """Ray start; None: the dataset's near plane (or the box entry)."""
    far: float | None = None
    """Ray end; None: the dataset's far plane (or the box exit)."""
    background: tuple[float, float, float] | None = None
    """Render background; None: the dataset's."""
