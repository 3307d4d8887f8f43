"""Scenes: one subpackage per representation, the registry, the generic Trainer, runs, metrics, export.

Importing this package is light (no torch import): the public names below load on first access.

    from omnifield.scenes import Trainer, TrainerConfig, load_run, evaluate, get_method
"""

from __future__ import annotations

import importlib

_LAZY = {
    "Trainer": "omnifield.scenes.trainer",
    "TrainerConfig": "omnifield.scenes.trainer",
    "TrainResult": "omnifield.scenes.trainer",
    "train_method": "omnifield.scenes.trainer",
    "Run": "omnifield.scenes.runs",
    "SceneInfo": "omnifield.scenes.runs",
    "load_run": "omnifield.scenes.runs",
    "save_checkpoint": "omnifield.scenes.runs",
    "evaluate": "omnifield.scenes.evaluate",
    "psnr": "omnifield.scenes.metrics",
    "ssim": "omnifield.scenes.metrics",
    "get_method": "omnifield.scenes.registry",
    "available_methods": "omnifield.scenes.registry",
    "register": "omnifield.scenes.registry",
    "MethodSpec": "omnifield.scenes.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnifield.scenes' has no attribute {name!r}")
