"""Copy what the GPU benchmarks read into ``gpu_data/`` (git-ignored), for a GPU machine that gets only the tree.

``bench/gpu.py`` trains instant-ngp on lego (``gpu_data/lego``: ``transforms_train.json`` and the
100 training PNGs, ~42 MB); ``bench/gpu_gaussians.py`` makes its Gaussians itself and reads nothing;
``OMNIFIELD_SHARED_DATA=gpu_data bench/flow.py --only av2 --device cuda`` reads the Argoverse 2 pair
(``gpu_data/av2_flow_pair/pair.npz``, 2.2 MB).
The copy is checked to stay under ``--limit-mib`` (60 MiB: the device tool carries 64 MiB in all).
Prints the ``carry`` list to pass with the command. Without ``../shared/data`` (or
``$OMNIFIELD_SHARED_DATA``) it says so and exits 0 with nothing copied.

``python bench/prepare_gpu_data.py`` (``--dest`` to write elsewhere, ``--force`` to copy again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import shared_data_root  # noqa: E402  (sibling benchmark module)

#: dataset folder -> the files bench/gpu.py reads from it (globs relative to the folder)
NEEDED: dict[str, tuple[str, ...]] = {"lego": ("transforms_train.json", "train/*.png"),
                                       "av2_flow_pair": ("pair.npz",)}


def files_to_copy(root: Path) -> list[tuple[Path, Path]]:
    """``(source, relative destination)`` of every needed file under the shared data ``root``."""
    pairs = []
    for name, patterns in NEEDED.items():
        for pattern in patterns:
            pairs += [(p, Path(name) / p.relative_to(root / name)) for p in sorted((root / name).glob(pattern))]
    return pairs


def prepare(dest: Path, limit_mib: float = 60.0, force: bool = False) -> dict:
    """Copy the needed files into ``dest``; returns ``{"copied", "bytes", "dest", "carry"}`` or ``{"skipped"}``."""
    root = shared_data_root()
    if root is None:
        return {"skipped": "no ../shared/data (or $OMNIFIELD_SHARED_DATA): nothing to copy"}
    pairs = files_to_copy(root)
    missing = [name for name in NEEDED if not any(rel.parts[0] == name for _, rel in pairs)]
    if missing:
        return {"skipped": f"{', '.join(missing)} absent from {root}"}
    total = sum(src.stat().st_size for src, _ in pairs)
    if total > limit_mib * 2**20:
        raise SystemExit(f"prepare_gpu_data: {total / 2**20:.1f} MiB exceeds the {limit_mib:g} MiB limit")
    copied = 0
    for src, rel in pairs:
        target = dest / rel
        if not force and target.is_file() and target.stat().st_size == src.stat().st_size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        copied += 1
    carry = str(dest.relative_to(REPO)) if dest.is_relative_to(REPO) else str(dest)
    return {"dest": str(dest), "files": len(pairs), "copied": copied, "bytes": total, "carry": [carry]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=REPO / "gpu_data")
    ap.add_argument("--limit-mib", type=float, default=60.0)
    ap.add_argument("--force", action="store_true", help="copy files that are already there")
    args = ap.parse_args(argv)
    result = prepare(args.dest.resolve(), args.limit_mib, args.force)
    if "skipped" in result:
        print(f"prepare_gpu_data: skipped ({result['skipped']})")
        return 0
    print(f"prepare_gpu_data: {result['files']} files ({result['bytes'] / 2**20:.1f} MiB) in {result['dest']}, "
          f"{result['copied']} copied now")
    print(f"carry: {json.dumps(result['carry'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
