"""The desktop viewer (``omnifield view RUN|FILE|DATA``) and its display-free core.

Importing this package is light (no torch, no dearpygui): the names below load on first access.

    from omnifield.viewer import open_source, RenderWorker, FrameRequest, default_view
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ViewCamera": "omnifield.viewer.camera",
    "orbit": "omnifield.viewer.camera",
    "pan": "omnifield.viewer.camera",
    "zoom": "omnifield.viewer.camera",
    "fly": "omnifield.viewer.camera",
    "look": "omnifield.viewer.camera",
    "with_fov": "omnifield.viewer.camera",
    "to_cameras": "omnifield.viewer.camera",
    "from_cameras": "omnifield.viewer.camera",
    "default_view": "omnifield.viewer.camera",
    "frustum_lines": "omnifield.viewer.camera",
    "project_segments": "omnifield.viewer.camera",
    "ViewSource": "omnifield.viewer.sources",
    "SceneSource": "omnifield.viewer.sources",
    "PointSource": "omnifield.viewer.sources",
    "MeshSource": "omnifield.viewer.sources",
    "open_source": "omnifield.viewer.sources",
    "SequenceSource": "omnifield.viewer.sequence",
    "open_sequence": "omnifield.viewer.sequence",
    "FrameRequest": "omnifield.viewer.worker",
    "Frame": "omnifield.viewer.worker",
    "RenderWorker": "omnifield.viewer.worker",
    "level_size": "omnifield.viewer.worker",
    "time_levels": "omnifield.viewer.timing",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omnifield.viewer' has no attribute {name!r}")
