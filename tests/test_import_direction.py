"""Imports flow one way (DESIGN.md): cuda <- fields, renderers <- scenes <- distill, viewer, cli; datasets is a leaf."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# folder -> the omnifield folders it may import (besides itself). `errors` is the shared leaf module.
ALLOWED = {
    "datasets": {"errors"},
    "cuda": {"errors"},
    "fields": {"errors", "cuda", "datasets"},
    "renderers": {"errors", "cuda", "datasets", "fields"},
    "scenes": {"errors", "cuda", "datasets", "fields", "renderers"},
    "distill": {"errors", "cuda", "datasets", "fields", "renderers", "scenes"},
    "viewer": {"errors", "cuda", "datasets", "fields", "renderers", "scenes", "distill"},
    "cli": {"errors", "cuda", "datasets", "fields", "renderers", "scenes", "distill", "viewer"},
}


def _imported_folders(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "omnifield" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_imports_flow_one_way():
    bad = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            for dep in _imported_folders(path) - allowed - {folder}:
                bad.append(f"{path.relative_to(REPO)} imports omnifield.{dep}")
    assert not bad, "\n".join(bad)


def test_no_relative_imports_escape_the_folder():
    # Relative imports beyond the package (`from .. import x`) would hide a forbidden dependency.
    bad = []
    for folder in ALLOWED:
        for path in (REPO / folder).rglob("*.py"):
            depth = len(path.relative_to(REPO / folder).parts)  # 1 for files directly in the folder
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level >= depth:
                    bad.append(str(path.relative_to(REPO)))
    assert not bad, bad


def test_viewer_and_exporters_ask_for_capabilities_not_classes():
    # Concrete scene classes never appear in isinstance checks outside their own package.
    bad = []
    for path in list((REPO / "viewer").rglob("*.py")) + list((REPO / "cli").rglob("*.py")) + list((REPO / "scenes").glob("*.py")):
        src = path.read_text()
        for cls in ("InstantNGPScene", "NeRFScene", "NerfScene", "InstantNGP("):
            if f"isinstance(scene, {cls}" in src or f"isinstance(self.scene, {cls}" in src:
                bad.append(f"{path.relative_to(REPO)}: isinstance on {cls}")
    assert not bad, bad
