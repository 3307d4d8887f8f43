"""The repository root is the ``omnifield`` package; nothing of ours shadows NVIDIA's ``cuda`` or HF ``datasets``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib.util, json, sys
import omnifield, omnifield.cuda, omnifield.datasets
out = {
    "omnifield": omnifield.__file__,
    "cuda": omnifield.cuda.__file__,
    "datasets": omnifield.datasets.__file__,
    "bare_cuda": getattr(importlib.util.find_spec("cuda"), "origin", None),
    "bare_datasets": getattr(importlib.util.find_spec("datasets"), "origin", None),
    "repo_on_path": any(p and __import__("os").path.samefile(p, sys.argv[1]) for p in sys.path if __import__("os").path.isdir(p)),
}
print(json.dumps(out))
"""


def test_subpackages_resolve_into_repo_and_shadow_nothing(tmp_path):
    # Run from an unrelated folder, as a user would, so the cwd is not the repo.
    res = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = json.loads(res.stdout)
    assert Path(found["omnifield"]).resolve() == REPO / "__init__.py"
    assert Path(found["cuda"]).resolve() == REPO / "cuda" / "__init__.py"
    assert Path(found["datasets"]).resolve() == REPO / "datasets" / "__init__.py"
    # A bare `import cuda` / `import datasets` must not find our folders (it may find NVIDIA's / HF's).
    for key in ("bare_cuda", "bare_datasets"):
        origin = found[key]
        assert origin is None or REPO not in Path(origin).resolve().parents, (key, origin)
    assert not found["repo_on_path"], "the repository root must never be on sys.path"


def test_pytest_does_not_put_repo_root_on_sys_path():
    import os

    roots = [p for p in sys.path if p and os.path.isdir(p) and os.path.samefile(p, REPO)]
    assert roots == []


def test_importing_the_package_is_cheap_and_side_effect_free(tmp_path):
    # No building, no env writes, no heavy imports: `import omnifield.cli.main` must not import torch.
    probe = "import sys, omnifield.cli.main; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
