"""Put this folder first on PYTHONPATH to run Python as on the GPU machine, as far as packages go: the
ones omnifield uses that its image lacks (device README, package list of 2026-11-17) fail to import.
tests/test_bench_gpu.py runs the GPU scripts' CPU paths this way, so that a top-level import of one of
them cannot break a GPU session that has no network to install it."""

import sys

MISSING_ON_GPU_MACHINE = frozenset({"trimesh", "open3d", "plyfile", "dearpygui", "imageio_ffmpeg", "rtree", "gsplat"})


class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in MISSING_ON_GPU_MACHINE:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)", name=name)
        return None


sys.meta_path.insert(0, _Missing())
