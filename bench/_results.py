"""What the CPU benchmark scripts (``cpu.py``, ``flow.py``, ``convert.py``) share: where the shared data
is, which machine ran, and their results JSON.

A results file holds ``{"parts": {name: {...}}, "machine": {...}}``. :func:`save_part` re-reads the file
under a lock, replaces one part (keeping the rows of ``merge`` measured by earlier runs) and writes it
atomically, so two benchmark processes writing the same file, or runs of one part at a time, keep each
other's results.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_data_root() -> Path | None:
    """``$OMNIFIELD_SHARED_DATA`` or ``../shared/data`` next to the repository, when present."""
    env = os.environ.get("OMNIFIELD_SHARED_DATA")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if c.is_dir():
            return c
    return None


def machine() -> dict:
    """CPU count, torch threads and version, platform: recorded with every part."""
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor()}


def load(path: Path) -> dict:
    """The results in ``path``: ``{"parts": {...}, ...}`` (empty when the file is absent; a file that is
    not valid JSON is reported on stdout and treated as empty, so a run never dies on it)."""
    results = {}
    if path.is_file():
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"warning: {path} is not valid JSON; starting a new results file")
    if not isinstance(results, dict):
        results = {}
    results.setdefault("parts", {})
    return results


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def save_part(path: Path, name: str, part: dict, *, merge: str | None = None) -> dict:
    """Store ``part`` as ``parts[name]`` of the results file ``path`` and return the whole results.

    ``part`` gets ``date`` (now) and ``machine`` unless it has them. With ``merge`` (a key of ``part``
    holding a dict of rows, e.g. ``"pairs"``), the rows of the part already in the file are kept unless
    ``part`` measured them again. The file is re-read under a lock and written atomically."""
    from omnifield.scenes.runs import atomic_write_json

    part = dict(part)
    part.setdefault("date", time.strftime("%Y-%m-%d %H:%M:%S"))
    part.setdefault("machine", machine())
    with _locked(path):
        results = load(path)
        old = results["parts"].get(name, {})
        if merge is not None and isinstance(old.get(merge), dict) and isinstance(part.get(merge), dict):
            part[merge] = {**old[merge], **part[merge]}
        results["parts"][name] = part
        results["machine"] = part["machine"]
        atomic_write_json(path, results)
    return results
