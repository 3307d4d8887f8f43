"""bench/gpu.py (the GPU benchmark of issue 5) runs end to end on the CPU (--device cpu --smoke), and its
tolerance table covers every op that cuda/ops.py dispatches to the radiance-field CUDA kernels."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CUDA_MODULES = ("_cuda_enc", "_cuda_march")  # the radiance-field wrappers (Gaussians: bench/gpu_gaussians.py)


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_dispatched_ops() -> set[str]:
    """Public functions of cuda/ops.py whose body calls the CUDA encodings or marching wrappers."""
    tree = ast.parse((REPO / "cuda" / "ops.py").read_text())
    names = set()
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                     and isinstance(n.func.value, ast.Name) and n.func.value.id in CUDA_MODULES]
            if calls:
                names.add(fn.name)
    return names


def test_tolerance_table_covers_every_cuda_op():
    gpu = _load("omnifield_bench_gpu", REPO / "bench" / "gpu.py")
    ops = cuda_dispatched_ops()
    assert {"hash_encode", "sh_encode", "march_occupancy_grid", "composite_rays"} <= ops
    assert ops <= set(gpu.TOLERANCES), f"no tolerance for {sorted(ops - set(gpu.TOLERANCES))}"
    for name, entry in gpu.TOLERANCES.items():
        assert entry.get("why"), name
        assert entry.get("exact") or "fwd" in entry, name


GPU_MACHINE_ENV = Path(__file__).resolve().parent / "gpu_machine_env"


def gpu_machine_env(**extra) -> dict:
    """This environment with the GPU machine's missing packages unimportable (``gpu_machine_env/``)."""
    path = os.pathsep.join(p for p in (str(GPU_MACHINE_ENV), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``bench/gpu.py --device cpu --smoke``, without the packages the GPU machine lacks."""
    out = tmp_path_factory.mktemp("bench_gpu") / "tmp.json"
    env = gpu_machine_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_run_reports_every_op_and_a_finite_psnr(smoke):
    result, stdout = smoke
    ops = cuda_dispatched_ops()
    assert {p["op"].split("[")[0] for p in result["parity"]} >= ops
    assert {p["op"] for p in result["parity"]} == set(result["tolerances"])
    assert {t["op"] for t in result["timings"]} >= ops
    for t in result["timings"]:
        assert t.get("compile_ms") is not None or t.get("compile_note", "").startswith("n/a"), t
    checkpoints = result["train"]["checkpoints"]
    assert [c["seconds"] for c in checkpoints] == [1.0, 2.0, 3.0]
    assert all(math.isfinite(c["psnr"]) and c["psnr"] > 5 for c in checkpoints)
    assert 0 < checkpoints[0]["steps"] < checkpoints[-1]["steps"]
    assert result["train"]["render_ms"] > 0
    assert "parity march_occupancy_grid" in stdout and "tiny PSNR after 3 s" in stdout


def test_smoke_parity_passes_where_the_cpu_ops_exist(smoke):
    # On the CPU the ops run their C++ kernels or the references: every row must pass except where
    # an op's reference is still missing (reported as an error row, not a crash).
    result, _ = smoke
    missing = ("does not exist", "has no attribute")
    failed = [p for p in result["parity"] if not p["pass"] and not any(m in p.get("error", "") for m in missing)]
    assert not failed, failed


def test_no_gpu_path_exits_cleanly(tmp_path):
    gpu = _load("omnifield_bench_gpu_nogpu", REPO / "bench" / "gpu.py")
    if gpu.torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu.main(["--out", str(tmp_path / "x.json")]) == 0
    assert not (tmp_path / "x.json").exists()


def test_prepare_gpu_data_copies_lego_or_skips(tmp_path, monkeypatch):
    prep = _load("omnifield_bench_prepare_gpu_data", REPO / "bench" / "prepare_gpu_data.py")
    monkeypatch.setattr(prep, "shared_data_root", lambda: None)
    assert "skipped" in prep.prepare(tmp_path / "none")
    assert not (tmp_path / "none").exists()
    monkeypatch.undo()
    if prep.shared_data_root() is None or not (prep.shared_data_root() / "lego").is_dir():
        pytest.skip("../shared/data/lego is absent")
    result = prep.prepare(tmp_path / "gpu_data")
    source_pair = prep.shared_data_root() / "av2_flow_pair" / "pair.npz"
    assert result["bytes"] < 60 * 2**20 and result["files"] == 101 + source_pair.is_file()
    assert (tmp_path / "gpu_data" / "lego" / "transforms_train.json").is_file()
    if source_pair.is_file():  # what bench/flow.py --device cuda reads there
        assert (tmp_path / "gpu_data" / "av2_flow_pair" / "pair.npz").read_bytes() == source_pair.read_bytes()
    assert prep.prepare(tmp_path / "gpu_data")["copied"] == 0  # already there


def test_the_gpu_session_script_parses_and_names_files_that_exist():
    import re
    import shutil

    script = REPO / "bench" / "gpu_session.sh"
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    named = set(re.findall(r"(?:bench|tests)/[\w/]+\.py", script.read_text()))
    assert {"bench/gpu.py", "bench/gpu_gaussians.py", "bench/flow.py", "tests/test_nsfp.py"} <= named
    assert all((REPO / path).is_file() for path in named), named


def test_the_gpu_machine_env_hides_its_missing_packages():
    proc = subprocess.run([sys.executable, "-c", "import trimesh"], capture_output=True, text=True, env=gpu_machine_env(), timeout=60)
    assert proc.returncode != 0 and "not on the GPU machine" in proc.stderr


def test_gpu_session_steps_import_without_the_gpu_machines_missing_packages(tmp_path):
    """What bench/gpu_session.sh runs besides bench/gpu.py (covered by the smoke run): gpu_gaussians.py's
    no-GPU path, flow.py's imports and the collection of the CUDA test tier."""
    env = gpu_machine_env(PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "flow.py"), "--help"], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_gaussians.py"), "--no-gpu", "--out",
                           str(tmp_path / "g.json")], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "no GPU" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    import re

    tier = sorted(set(re.findall(r"tests/[\w/]+\.py", (REPO / "bench" / "gpu_session.sh").read_text())))
    assert "tests/test_cuda_gaussians.py" in tier
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tier],
                          capture_output=True, text=True, env=env, timeout=180, cwd=REPO)
    assert proc.returncode == 0 and "error" not in proc.stdout.lower(), proc.stdout[-3000:] + proc.stderr[-2000:]
