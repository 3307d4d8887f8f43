"""Configs as JSON and ``key=value`` overrides typed by the dataclass fields (``--set`` on the CLI).

Every config in omnifield is a frozen dataclass; these helpers turn one into a JSON-ready dict and
back (``config.json`` of a run), and apply command-line overrides with the field types (ints,
floats, booleans ``true/false``, tuples ``1,1,1`` or ``[1,1,1]``, ``none`` for Optional fields,
dotted keys for nested configs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any

from torch import Tensor

from omnifield.errors import ConfigError

def config_to_dict(config: Any) -> dict:
    """A config dataclass as a JSON-ready dict (tuples -> lists, enums -> values, paths -> str)."""

    def conv(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, Tensor):
            return v.tolist()
        return v

    return conv(config)


def _hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolved forward references: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _convert(value: Any, tp: Any, from_string: bool) -> Any:
    """Convert ``value`` (a JSON value, or a command-line string when ``from_string``) to type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, str):
        if from_string:
            with contextlib.suppress(json.JSONDecodeError):
                return json.loads(value)
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if value is None or (from_string and str(value).lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in options:
            with contextlib.suppress(ValueError, TypeError):
                return _convert(value, a, from_string)
        raise ValueError(f"{value!r} is not a valid {tp}")
    if origin is typing.Literal:
        for a in args:
            if str(a) == str(value) or a == value:
                return a
        raise ValueError(f"{value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list) or tp in (tuple, list):
        if from_string:
            s = str(value).strip()
            items = json.loads(s) if s.startswith("[") else [x.strip() for x in s.split(",") if x.strip()]
            inner_from_string = not s.startswith("[")
        else:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"expected a list, got {value!r}")
            items, inner_from_string = list(value), False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(items)}")
            out = [_convert(x, a, inner_from_string) for x, a in zip(items, args)]
        else:
            inner = args[0] if args else Any
            out = [_convert(x, inner, inner_from_string) for x in items]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        return json.loads(value) if from_string else dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        data = json.loads(value) if from_string else value
        if not isinstance(data, dict):
            raise ValueError(f"expected an object for {tp.__name__}, got {value!r}")
        return config_from_dict(tp, data)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for m in tp:
            if str(value) in (m.name, str(m.value)) or value == m.value:
                return m
        raise ValueError(f"{value!r} is not one of {', '.join(m.name for m in tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not an integer")
        if isinstance(value, int):
            return value
        f = float(value)
        if not f.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if tp is str:
        return str(value)
    if tp is Path:
        return Path(value)
    return value


def config_from_dict(cls: type, data: dict) -> Any:
    """Build config dataclass ``cls`` from a dict (inverse of :func:`config_to_dict`).

    Unknown keys raise ValueError; missing keys take the field defaults.
    """
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    kwargs = {k: _convert(v, hints.get(k, Any), from_string=False) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(config: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Return ``config`` with ``key=value`` overrides applied, typed by the dataclass field types.

    Dotted keys reach nested config dataclasses (``grid.levels=8``). Tuples accept ``1,1,1`` or
    ``[1, 1, 1]``; Optional fields accept ``none``. Raises ConfigError naming the bad key or value.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value")
        config = _override_one(config, key.split("."), value, key)
    return config


def _override_one(config: Any, parts: list[str], value: str, full_key: str) -> Any:
    cls = type(config)
    names = [f.name for f in dataclasses.fields(config)]
    name = parts[0]
    if name not in names:
        raise ConfigError(f"unknown option {full_key!r} for {cls.__name__} (options: {', '.join(names)})")
    if len(parts) > 1:
        inner = getattr(config, name)
        if not dataclasses.is_dataclass(inner):
            raise ConfigError(f"option {'.'.join(parts[:1])!r} of {cls.__name__} has no sub-options")
        return dataclasses.replace(config, **{name: _override_one(inner, parts[1:], value, full_key)})
    tp = _hints(cls).get(name, Any)
    try:
        converted = _convert(value, tp, from_string=True)
        return dataclasses.replace(config, **{name: converted})
    except (ValueError, TypeError, json.JSONDecodeError) as e:
        raise ConfigError(f"bad value for {full_key!r}: {e}") from None
