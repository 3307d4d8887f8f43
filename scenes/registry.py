"""Method registry: a method name maps to its config class and scene builder.

Built-in methods register lazily (no import-time scanning); external packages register through
the ``omnifield.scenes`` entry-point group, scanned on the first lookup. Duplicate names are refused.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from omnifield.errors import ConfigError

ENTRY_POINT_GROUP = "omnifield.scenes"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the method name used on the command line.
        config_cls: its frozen config dataclass.
        build: ``build(config, data) -> Scene`` (``data`` is a SceneData).
        description: one line for ``omnifield train --help``.
    """

    name: str
    config_cls: type
    build: Callable
    description: str = ""


_REGISTRY: dict[str, MethodSpec] = {}
_BUILTINS = {
    "nerf": "omnifield.scenes.nerf",
    "instant-ngp": "omnifield.scenes.instant_ngp",
    "tensorf": "omnifield.scenes.tensorf",
    "plenoxels": "omnifield.scenes.plenoxels",
    "3dgs": "omnifield.scenes.gaussian_splatting",
    "4dgs": "omnifield.scenes.gaussians_4d",
}
_scanned = False
_BROKEN: dict[str, str] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Register a method; a second method with the same name is refused."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ConfigError(f"method {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _scan() -> None:
    global _scanned
    if _scanned:
        return
    _scanned = True
    for name, module in _BUILTINS.items():
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken built-in must not hide the others
            _BROKEN[name] = f"{type(exc).__name__}: {exc}"
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, MethodSpec):
            register(obj)


def get_method(name: str) -> MethodSpec:
    """The spec of a method name, or ConfigError listing the known names."""
    _scan()
    if name not in _REGISTRY and name in _BROKEN:
        raise ConfigError(f"method {name!r} failed to import ({_BROKEN[name]})")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(available_methods())})")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    _scan()
    return sorted(_REGISTRY)
