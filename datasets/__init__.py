"""Data layer: cameras, scene data and the parsers of every dataset format (see README.md).

Import-light and side-effect free: names resolve on first access (PEP 562), so importing
``omnifield.datasets`` (or ``load_scene``/``describe`` from it) does not import torch or any parser.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "Cameras": "omnifield.datasets.cameras",
    "CameraModel": "omnifield.datasets.cameras",
    "SceneData": "omnifield.datasets.scene_data",
    "load_scene": "omnifield.datasets.load",
    "describe": "omnifield.datasets.info",
    "format_info": "omnifield.datasets.info",
    "load_n3v": "omnifield.datasets.n3v",
    "DynamicSynthConfig": "omnifield.datasets.synth_dynamic",
    "write_dynamic_scene": "omnifield.datasets.synth_dynamic",
    "PointCloudFrame": "omnifield.datasets.pointclouds",
    "PointCloudSequence": "omnifield.datasets.pointclouds",
    "load_point_clouds": "omnifield.datasets.pointclouds",
    "load_pair": "omnifield.datasets.pointclouds",
    "read_sweep": "omnifield.datasets.pointclouds",
    "remove_ground": "omnifield.datasets.pointclouds",
    "crop": "omnifield.datasets.pointclouds",
    "LidarSynthConfig": "omnifield.datasets.synth_lidar",
    "synthesize_lidar": "omnifield.datasets.synth_lidar",
    "true_positions": "omnifield.datasets.synth_lidar",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from omnifield.datasets.cameras import CameraModel, Cameras
    from omnifield.datasets.info import describe, format_info
    from omnifield.datasets.load import load_scene
    from omnifield.datasets.n3v import load_n3v
    from omnifield.datasets.scene_data import SceneData
    from omnifield.datasets.synth_dynamic import DynamicSynthConfig, write_dynamic_scene
    from omnifield.datasets.pointclouds import (PointCloudFrame, PointCloudSequence, crop, load_pair,
                                                load_point_clouds, read_sweep, remove_ground)
    from omnifield.datasets.synth_lidar import LidarSynthConfig, synthesize_lidar, true_positions


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omnifield.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
