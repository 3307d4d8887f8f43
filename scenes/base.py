"""The scene contract every representation implements, its optional capabilities, and the training batch.

A :class:`Scene` is an ``nn.Module`` built from a frozen config dataclass. The Trainer, the
exporter, the viewer and the converter only use what is declared here; they ask for capabilities
(``isinstance(scene, HasDensity)`` on the runtime-checkable Protocols below), never for concrete
scene classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from omnifield.datasets.cameras import Cameras
from omnifield.renderers.types import PackedSamples, RayBundle, RenderOutput


@dataclass(frozen=True)
class RenderOptions:
    """Options for rendering full images.

    Attributes:
        chunk: rays per forward pass (memory bound).
        background: RGB in [0, 1] composited behind the scene, or None for the scene's training background.
        crop_box: optional ``[2, 3]`` box (min, max) in the normalised world; outside is empty.
        near, far: optional override of ray bounds.
        step_scale: preview quality: scenes that march rays multiply their step size by this (the
            viewer renders its coarse, moving-camera levels with 2); 1 is full quality.
    """

    chunk: int = 8192
    background: tuple[float, float, float] | None = None
    crop_box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    near: float | None = None
    far: float | None = None
    step_scale: float = 1.0


@dataclass
class RayBatch:
    """One training batch of rays with their ground truth.

    Attributes:
        rays: the rays (normalised world).
        rgb: ``[R, 3]`` float target colour in [0, 1] (composited on ``background``).
        background: ``[R, 3]`` or ``[3]`` background colour the target was composited on.
        alpha: ``[R, 1]`` target opacity or None.
    """

    rays: RayBundle
    rgb: Tensor
    background: Tensor
    alpha: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ImageBatch:
    """One training batch of whole images (for rasterized scenes, ``Scene.batch_kind == "images"``).

    Attributes:
        cameras: the ``V`` cameras of the views (normalised world, on the scene's device).
        indices: ``[V]`` int64 indices of the views in ``data.cameras``.
        rgb: ``[V, H, W, 3]`` float target in [0, 1] (composited on ``background``).
        background: ``[V, 3]`` background colour each target was composited on (random per image when
            the data has alpha and the trainer's ``random_background`` is on, else the data's).
        alpha: ``[V, H, W, 1]`` target opacity or None.
        times: ``[V]`` normalised times of the views, or None for static data.
    """

    cameras: Cameras
    indices: Tensor
    rgb: Tensor
    background: Tensor
    alpha: Tensor | None = None
    times: Tensor | None = None

    def __len__(self) -> int:
        """Pixels in the batch (the Trainer reports pixels per second)."""
        return int(self.rgb.shape[0] * self.rgb.shape[1] * self.rgb.shape[2])


@dataclass(frozen=True)
class SceneConfig:
    """Base of every scene config (each scene subclasses it with its own frozen fields)."""

    method: str = ""


class Scene(nn.Module):
    """Base class: a trainable representation.

    Subclasses set ``method`` and implement :meth:`render_rays` (ray-based representations) or
    override :meth:`render` (rasterized ones), plus :meth:`training_step` and
    :meth:`param_groups`.

    ``batch_kind`` tells the Trainer what :meth:`training_step` receives: ``"rays"`` (a
    :class:`RayBatch` of :meth:`rays_per_batch` random pixels) or ``"images"`` (an
    :class:`ImageBatch` of :meth:`views_per_batch` whole training images).
    """

    method: str = ""
    batch_kind: str = "rays"

    def __init__(self, config: SceneConfig, scene_box: Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("scene_box", torch.as_tensor(scene_box, dtype=torch.float32).clone())

    # -- rendering -----------------------------------------------------------------------------
    def render_rays(self, rays: RayBundle, background: Tensor, options: RenderOptions | None = None) -> RenderOutput:
        """Render ``R`` rays to ``[R, k]`` channels. Differentiable when called under grad."""
        raise NotImplementedError(f"{type(self).__name__} does not render rays")

    @torch.no_grad()
    def render(self, cameras: Cameras, time: float | None = None, options: RenderOptions | None = None) -> list[RenderOutput]:
        """Render every camera to image-shaped ``[H, W, k]`` outputs (no grad), chunked over rays."""
        from omnifield.renderers.rays import image_rays

        options = options or RenderOptions()
        bg = self.background_tensor(options)
        outs = []
        for c in range(len(cameras)):
            rays = image_rays(cameras, c)
            if time is not None:
                rays = RayBundle(rays.origins, rays.directions, rays.camera_indices,
                                 torch.full_like(rays.origins[:, 0], float(time)), rays.pixel_radius)
            h, w = int(cameras.height[c]), int(cameras.width[c])
            parts = [self.render_rays(rays[i : i + options.chunk], bg, options) for i in range(0, len(rays), options.chunk)]
            outs.append(RenderOutput.cat(parts).map(lambda t: t.reshape(h, w, -1)))
        return outs

    def background_tensor(self, options: RenderOptions | None = None) -> Tensor:
        bg = (options.background if options is not None else None) or getattr(self.config, "background", (1.0, 1.0, 1.0))
        return torch.tensor(bg, dtype=torch.float32, device=self.scene_box.device)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: RayBatch | ImageBatch, step: int) -> dict[str, Tensor]:
        """Losses for one batch; ``"loss"`` is the total to minimise, others are logged."""
        raise NotImplementedError

    def on_step_begin(self, step: int) -> None:
        """Hook before the forward pass (e.g. occupancy-grid updates)."""

    def on_step_end(self, step: int) -> None:
        """Hook after the optimiser step (densification, occupancy updates, ...)."""

    def configure_optimizers(self, max_steps: int) -> tuple[torch.optim.Optimizer, object | None]:
        """The paper's optimiser and learning-rate schedule for a run of ``max_steps`` steps.

        Returns ``(optimizer, scheduler_or_None)``; the Trainer calls ``scheduler.step()`` once per step.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=1e-3), None

    def rays_per_batch(self) -> int:
        """How many rays the Trainer should put in the next batch (scenes may adapt it, as Instant-NGP does)."""
        return int(getattr(self.config, "batch_rays", 4096))

    def views_per_batch(self) -> int:
        """How many whole images the next :class:`ImageBatch` holds (``batch_kind == "images"``)."""
        return 1

    def prepare_load(self, weights: dict[str, Tensor]) -> None:
        """Called with a checkpoint's weights before the strict ``load_state_dict``: scenes whose
        parameter shapes change in training (Gaussian counts) resize them here. Default: nothing."""

    def extra_state(self) -> dict[str, Tensor]:
        """Non-parameter tensors to checkpoint (adaptive batch size, counters); buffers are saved already."""
        return {}

    def load_extra_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`extra_state` returned (called when a checkpoint is loaded)."""
        if state:
            raise NotImplementedError(f"{type(self).__name__} saved extra state but cannot load it")


# -- capabilities -------------------------------------------------------------------------------
@runtime_checkable
class HasDensity(Protocol):
    """A radiance field: volume density and view-dependent colour anywhere in space."""

    def density(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` world points -> ``[N]`` density (sigma >= 0)."""

    def color(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` points, ``d [N, 3]`` unit view directions -> ``[N, 3]`` colour in [0, 1]."""


@dataclass
class FieldOutputs:
    """A radiance field evaluated at points, split as PVD (Fang et al. 2023) splits every architecture:
    its own volume part gives an intermediate feature, shared heads turn it into density and colour.

    Attributes:
        sigma_pre: ``[N]`` density pre-activation; the density is ``trunc_exp(clamp(sigma_pre))``
            (the scene's ``density_clamp``, PVD: (-2, 7)).
        features: ``[N, F]`` the shared intermediate feature (column 0 is ``sigma_pre``, then the
            geometry features the colour head reads), or None for architectures without one (plenoxels).
        rgb: ``[N, 3]`` colour in [0, 1], or None when no directions were given.
    """

    sigma_pre: Tensor
    features: Tensor | None = None
    rgb: Tensor | None = None


@runtime_checkable
class HasFieldFeatures(Protocol):
    """A radiance field PVD can distil into and out of (nerf with shared heads, instant-ngp, tensorf, plenoxels).

    ``grid`` is the scene's :class:`~omnifield.renderers.occupancy.OccupancyGrid`; the converter fills
    it from the teacher's density before distilling so the student marches where the teacher has matter.
    """

    grid: nn.Module

    def field_outputs(self, x: Tensor, d: Tensor | None = None) -> FieldOutputs:
        """``x [N, 3]`` world points (``d [N, 3]`` unit directions or None) -> :class:`FieldOutputs`. Differentiable."""

    def march(self, rays: RayBundle, stratified: bool = False) -> PackedSamples:
        """The samples the scene's occupancy-grid marcher takes on ``rays`` (constant or cone steps),
        without density-based early termination. Not differentiable."""


@runtime_checkable
class HasSDF(Protocol):
    def sdf(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """``x [N, 3]`` -> ``[N]`` signed distance."""


@runtime_checkable
class HasGaussians(Protocol):
    def gaussians(self, t: float | None = None):
        """The Gaussian primitives (at time t for dynamic scenes)."""


@runtime_checkable
class HasMesh(Protocol):
    def mesh(self):
        """(vertices [V, 3], faces [F, 3], vertex colours [V, 3] or None)."""


@runtime_checkable
class HasPoints(Protocol):
    def points(self):
        """(points [P, 3], colours [P, 3] or None)."""


@runtime_checkable
class TimeVarying(Protocol):
    time_range: tuple[float, float]


@runtime_checkable
class HasFlow(Protocol):
    def flow(self, x: Tensor, t0: float, t1: float) -> Tensor:
        """``x [N, 3]`` at t0 -> ``[N, 3]`` displacement to t1."""
