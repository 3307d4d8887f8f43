"""Configuration of Neural Scene Flow Prior (Li, Kaesemodel Pontes, Lucey, NeurIPS 2021).

Defaults follow the released code (github.com/Lilac-Lee/Neural_Scene_Flow_Prior: ``config.py``,
``model.py``, ``optimization.py``, ``loss.py``, ``utils.py``); each field says where its value comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from omnifield.scenes.nsfp.rigid import RigidConfig
from omnifield.scenes.nsfp.rigid_pair import PAIR_RIGID

LOSSES = ("chamfer", "dt")
INITS = ("reinit", "warm")
ACTIVATIONS = ("relu", "sigmoid")
NN_BACKENDS = ("auto", "torch", "kdtree")
PROFILES = ("auto", "paper", "cpu")
PAPER_MAX_ITERATIONS = 5000
"""The released ``--iters``."""
CPU_MAX_ITERATIONS = 200
"""The ``cpu`` profile's iteration cap: 0.14 s per iteration of the two 8x128 MLPs on 8,192 points on
2 threads of the development machine (AMD EPYC, AVX-512), so about 28 s of optimisation."""


@dataclass(frozen=True)
class NSFPConfig:
    """Options of :func:`omnifield.scenes.nsfp.estimate_flow`."""

    layers: int = 8
    """Hidden layers of ``hidden`` units, each followed by the activation, then a linear 3-output layer
    (released ``model.py``: layer1 3->128, layer2..8 128->128, layer9 128->3; paper: 8 layers of 128)."""
    hidden: int = 128
    """Units per hidden layer (released ``--hidden_units 128``)."""
    activation: str = "relu"
    """``relu`` (released ``--act_fn relu``) or ``sigmoid`` (the other choice of the released model)."""
    lr: float = 8e-3
    """Adam learning rate (released ``--lr 0.008``, ``--optimizer adam``)."""
    weight_decay: float = 1e-4
    """Adam (coupled L2) weight decay of both MLPs: the released solver puts ``--weight_decay 1e-4`` in
    each parameter group when the backward flow is on."""
    max_iterations: int | None = None
    """Upper bound on optimisation steps; None: the profile's (``paper``: the released ``--iters 5000``;
    ``cpu``: 200)."""
    profile: str = "auto"
    """``paper``: the released schedule (up to 5,000 iterations, early stopping). ``cpu``: the same
    optimisation capped at :data:`CPU_MAX_ITERATIONS` iterations, for 27-30 s per 8,192-point pair on
    2 CPU threads (on the Argoverse 2 pair the released schedule ran 489 iterations, 62 s, for the
    same overall end-point error and a lower one on moving points, 0.31 m against 0.38 m). ``auto``:
    ``paper`` on a GPU, ``cpu`` on the CPU (by the device the flow is fitted on). Ours."""
    patience: int = 100
    """Early stopping: stop after this many iterations without a loss below best - ``min_delta``
    (released ``--early_patience 100``, ``utils.EarlyStopping``)."""
    min_delta: float = 1e-4
    """Improvement that resets the patience counter (the released solver hard-codes
    ``EarlyStopping(..., min_delta=0.0001)``)."""
    truncate_sq: float = 2.0
    """Nearest-neighbour matches with squared distance >= this (m^2) are dropped (released ``loss.py``:
    ``dist_thd = 2``)."""
    cycle: bool = True
    """Backward-flow MLP and cycle term (released ``--backward_flow`` default True)."""
    loss: str = "chamfer"
    """``chamfer``: exact nearest neighbours; ``dt``: FastNSF distance transform (Li et al., ICCV 2023),
    one-sided, a voxel grid of distances to the target built once per pair."""
    dt_voxel: float = 0.1
    """Distance-transform voxel size in metres (FastNSF ``--grid_factor 10``)."""
    dt_max_voxels: int = 100_000_000
    """Refuse distance-transform grids larger than this (memory bound; ~4 bytes per voxel). Ours."""
    nn_backend: str = "auto"
    """Nearest-neighbour search of the ``chamfer`` loss: ``torch`` (chunked exact search, any device),
    ``kdtree`` (scipy cKDTree, CPU) or ``auto`` (kdtree on CPU, torch on GPU). Ours: the released code
    uses pytorch3d's CUDA ``knn_points``; distances are recomputed in torch, so gradients are the same."""
    fit_points: int | None = None
    """Optimise on at most this many random rows of each cloud (seeded by ``seed``), then evaluate the
    fitted field at every row of ``points1`` (None: fit all rows, the paper's setting on its 2,048- and
    8,192-point samples). Ours: the flow is a continuous field, so a full lidar sweep (~80k points,
    hours of CPU at 5,000 iterations) is fitted on a sample and queried everywhere."""
    time_budget_s: float | None = None
    """Stop after this many seconds of optimisation and keep the best iterate (None: no limit). Ours,
    not in the paper; machine-dependent (``profile`` bounds the CPU runtime deterministically)."""
    rigid: RigidConfig = PAIR_RIGID
    """Rigid refinement of moving objects after the fit (:func:`~omnifield.scenes.nsfp.rigid_pair.refine_pair_flow`:
    rows whose flow beyond the ego motion exceeds ``rigid.motion_threshold`` clustered, each cluster
    registered onto the second sweep by ICP, kept when it fits better). Ours; off by default
    (``rigid.enabled=true``): see :data:`~omnifield.scenes.nsfp.rigid_pair.PAIR_RIGID`."""
    init: str = "reinit"
    """``reinit``: fresh MLPs per pair (paper); ``warm``: start from ``init_state`` (the released code
    builds the network once and keeps optimising it from pair to pair)."""
    seed: int = 0
    """Seed of the MLP initialisation (PyTorch's default ``nn.Linear`` init, as the released code)."""

    def __post_init__(self):
        checks = [
            (self.layers >= 1, "layers", "must be >= 1"),
            (self.hidden >= 1, "hidden", "must be >= 1"),
            (self.activation in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}"),
            (self.lr > 0, "lr", "must be > 0"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.max_iterations is None or self.max_iterations >= 1, "max_iterations", "must be >= 1 or None"),
            (self.profile in PROFILES, "profile", f"must be one of {PROFILES}"),
            (self.patience >= 0, "patience", "must be >= 0 (0 disables early stopping)"),
            (self.min_delta >= 0, "min_delta", "must be >= 0"),
            (self.truncate_sq > 0, "truncate_sq", "must be > 0"),
            (self.loss in LOSSES, "loss", f"must be one of {LOSSES}"),
            (self.dt_voxel > 0, "dt_voxel", "must be > 0"),
            (self.dt_max_voxels >= 8, "dt_max_voxels", "must be >= 8"),
            (self.nn_backend in NN_BACKENDS, "nn_backend", f"must be one of {NN_BACKENDS}"),
            (self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s", "must be > 0 or None"),
            (self.fit_points is None or self.fit_points >= 1, "fit_points", "must be >= 1 or None"),
            (self.init in INITS, "init", f"must be one of {INITS}"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"NSFPConfig: {name} {rule}, got {getattr(self, name)!r}")

    def resolved(self, device: str | torch.device = "cpu") -> "NSFPConfig":
        """This config with ``profile`` and ``max_iterations`` filled in for ``device`` (see ``profile``)."""
        profile = self.profile
        if profile == "auto":
            profile = "paper" if torch.device(device).type == "cuda" else "cpu"
        cap = self.max_iterations
        if cap is None:
            cap = PAPER_MAX_ITERATIONS if profile == "paper" else CPU_MAX_ITERATIONS
        return replace(self, profile=profile, max_iterations=cap)
