"""Errors a user can cause. The CLI turns each into one line and exit code 2."""

from __future__ import annotations

from pathlib import Path


class OmnifieldError(Exception):
    """Base of every user-facing error: bad input, bad files, bad options."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class DataError(OmnifieldError, ValueError):
    """A dataset file is missing, malformed or inconsistent (names the file)."""


class CheckpointError(OmnifieldError, ValueError):
    """A run directory or checkpoint is truncated, missing or from another method."""


class ConfigError(OmnifieldError, ValueError):
    """An unknown method, option or value."""


class TrainingDiverged(OmnifieldError, RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


class ConversionRefused(OmnifieldError, ValueError):
    """A representation cannot be converted into the one asked for (the message says why)."""
