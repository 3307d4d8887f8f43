"""Neural Scene Flow Prior (Li, Kaesemodel Pontes, Lucey, NeurIPS 2021): scene flow between two lidar
sweeps by optimising a coordinate MLP at runtime, with FastNSF's distance-transform loss as an option.

    from omnifield.scenes.nsfp import NSFPConfig, estimate_flow
    est = estimate_flow(points1, points2, NSFPConfig())   # est.flow [N, 3]
"""

from __future__ import annotations

from .chamfer import DistanceTransform, nearest_neighbors, truncated_chamfer
from .config import NSFPConfig
from .estimate import FlowEstimate, estimate_flow, nn_flow, zero_flow
from .model import FlowMLP

__all__ = [
    "DistanceTransform",
    "FlowEstimate",
    "FlowMLP",
    "NSFPConfig",
    "estimate_flow",
    "nearest_neighbors",
    "nn_flow",
    "truncated_chamfer",
    "zero_flow",
]
