"""Conversion between representations (see README.md). Names load lazily: ``import omnifield.distill``
imports nothing heavy."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "PVDConfig": "omnifield.distill.pvd",
    "PVDObjective": "omnifield.distill.pvd",
    "distill_fields": "omnifield.distill.pvd",
    "student_overrides": "omnifield.distill.pvd",
    "stage_of": "omnifield.distill.pvd",
    "teacher_occupancy": "omnifield.distill.pvd",
    "render_psnr": "omnifield.distill.pvd",
    "sample_poses": "omnifield.distill.poses",
    "perturb_poses": "omnifield.distill.poses",
    "look_at_centre": "omnifield.distill.poses",
    "convert": "omnifield.distill.convert",
    "convert_run": "omnifield.distill.convert",
    "plan_conversion": "omnifield.distill.convert",
    "ConvertOptions": "omnifield.distill.convert",
    "ConversionPlan": "omnifield.distill.convert",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'omnifield.distill' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
