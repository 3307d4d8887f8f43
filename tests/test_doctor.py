"""``omnifield doctor``: which implementation each op runs and why (cuda/doctor.py, cli doctor)."""

from __future__ import annotations

import json

import pytest
import torch

from omnifield.cli.main import build_parser, main
from omnifield.cuda import backend, doctor, native, ops

BRIEF_OPS = {"hash_encode", "hash_encode_input_grad", "sh_encode", "ray_aabb_intersect", "march_occupancy_grid",
             "grid_lookup", "occupancy_ema_update", "render_weights", "composite_rays", "accumulate_along_rays",
             "quat_scale_to_covar", "project_gaussians", "spherical_harmonics", "isect_tiles",
             "rasterize_to_pixels", "slice_gaussians_4d", "spherindrical_harmonics"}
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report without a GPU")


@pytest.fixture
def clean(monkeypatch, tmp_path):
    """No backend variables, an empty build cache, fresh loader state: nothing built yet."""
    for var in (backend.ENV_VAR, native.DISABLE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "PREBUILT_DIR", tmp_path / "_prebuilt")
    for attr in ("_loaded", "_errors", "_cuda_loaded", "_cuda_errors", "_origins"):
        monkeypatch.setattr(native, attr, {})
    monkeypatch.setattr(backend, "_warned", set())
    return tmp_path


def _rows(report):
    return {r.op: r for r in report.ops}


def test_every_public_op_has_a_row():
    names = {spec.op for spec in doctor.OPS}
    assert names == BRIEF_OPS
    assert all(callable(getattr(ops, name)) for name in names)
    for spec in doctor.OPS:
        assert spec.cpu is None or spec.cpu in native.CPU_SOURCES
        assert spec.cuda is None or spec.cuda in native.CUDA_SOURCES


@no_gpu
def test_report_without_gpu_builds_nothing(clean):
    report = doctor.diagnose()
    rows = _rows(report)
    assert report.ok and report.backend.source == "automatic" and report.backend.selected == "cpp"
    assert "no CUDA device" in report.backend.reason
    assert rows["hash_encode"].cpu == doctor.CPP
    assert rows["hash_encode"].cpu_why.startswith("not built yet: builds on first use")
    assert rows["march_occupancy_grid"].cpu == doctor.CPP
    assert rows["sh_encode"].cpu == doctor.REFERENCE and "no C++ CPU kernel" in rows["sh_encode"].cpu_why
    assert rows["accumulate_along_rays"].cpu == rows["accumulate_along_rays"].cuda == doctor.TORCH
    assert rows["grid_lookup"].cuda == doctor.REFERENCE  # no CUDA kernel for it
    for name in BRIEF_OPS - {"accumulate_along_rays", "grid_lookup"}:
        assert rows[name].cuda == doctor.NONE and "CUDA" in rows[name].cuda_why
    assert not list(clean.rglob("*.so")) and native._loaded == {}  # nothing was built or loaded
    env = {r.name: r for r in report.environment}
    assert {"torch", "torch.version.cuda", "CUDA device", "nvcc", "C++ compiler", "tinycudann"} <= set(env)
    assert env["torch"].value == torch.__version__


def test_cached_prebuilt_disabled_and_torch_states(clean, monkeypatch):
    directory = native.build_directory("hash_grid")
    directory.mkdir(parents=True)
    (directory / f"omnifield_hash_grid_cpu_{native.build_key('hash_grid').rsplit('-', 1)[1]}.so").write_bytes(b"")
    assert _rows(doctor.diagnose("cpp"))["hash_encode"].cpu_why == f"built, cached in {directory}"

    prebuilt = clean / "_prebuilt"
    prebuilt.mkdir()
    monkeypatch.setattr(native, "PREBUILT_SUFFIXES", (".py",))
    (prebuilt / "compositing_cpu.py").write_text("")
    (prebuilt / "compositing_cpu.json").write_text(json.dumps({"key": native.prebuilt_key("compositing", "cpu")}))
    assert _rows(doctor.diagnose("cpp"))["render_weights"].cpu_why.startswith("prebuilt by pip install")

    row = _rows(doctor.diagnose("torch"))["hash_encode"]
    assert (row.cpu, row.cpu_why) == (doctor.REFERENCE, "backend 'torch' forces the references")
    monkeypatch.setenv(native.DISABLE_ENV, "1")
    report = doctor.diagnose()
    assert report.backend.selected == "torch" and report.ok
    assert _rows(report)["hash_encode"].cpu_why == "disabled by $OMNIFIELD_NO_NATIVE"


@no_gpu
def test_requested_backend_unusable_is_not_ok(clean, monkeypatch):
    report = doctor.diagnose("cuda")
    assert not report.ok and report.backend.source == "--backend" and report.backend.selected == "cpp"
    assert "no CUDA device" in report.backend.reason
    monkeypatch.setenv(backend.ENV_VAR, "tcnn")
    report = doctor.diagnose()
    assert not report.ok and report.backend.source == "$OMNIFIELD_BACKEND"
    monkeypatch.setenv(backend.ENV_VAR, "bogus")
    assert "unknown backend 'bogus'" in doctor.diagnose().backend.reason


def test_build_reports_failures(clean, monkeypatch):
    def fail(name):
        native._errors[name] = f"RuntimeError: {name} exploded"
        return None

    monkeypatch.setattr(native, "load_cpu_extension", fail)
    report = doctor.diagnose("cpp", build=True)
    builds = {r.name: r for r in report.builds}
    assert builds["hash_grid (cpu)"].value == "failed" and "exploded" in builds["hash_grid (cpu)"].note
    assert _rows(report)["hash_encode"].cpu == doctor.REFERENCE
    assert _rows(report)["hash_encode"].cpu_why == "build failed: RuntimeError: hash_grid exploded"
    assert not report.ok and "build failed" in report.backend.reason


def test_cli_doctor_json_and_exit_codes(clean, capsys):
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"environment", "backend", "ops", "builds", "ok"} <= set(data)
    assert {r["op"] for r in data["ops"]} >= BRIEF_OPS
    assert main(["--backend", "torch", "doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == {"requested": "torch", "source": "--backend", "selected": "torch",
                               "reason": "requested by --backend", "usable": True}
    import os

    assert backend.ENV_VAR not in os.environ  # restored after the command
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "hash_encode" in out and "backend:" in out
    if not torch.cuda.is_available():
        assert main(["doctor", "--backend", "cuda"]) == 1
        assert "backend 'cuda' is unusable here" in capsys.readouterr().err


def test_backend_flag_on_commands_and_unknown_name(capsys):
    parser = build_parser()
    for argv in (["train", "nerf", "--data", "d"], ["eval", "run"], ["render", "run"], ["export", "run", "mesh", "--out", "m.ply"],
                 ["view", "run"], ["demo"], ["doctor"]):
        assert parser.parse_args([*argv, "--backend", "cpp"]).backend == "cpp"
        assert parser.parse_args(["--backend", "torch", *argv]).backend == "torch"
        assert not hasattr(parser.parse_args(argv), "backend")
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--backend", "metal"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("omnifield: error: argument --backend: invalid choice: 'metal' "
                       "(choose from 'torch', 'cpp', 'cuda', 'tcnn')") or "invalid choice: 'metal'" in err[-1]


def test_backend_flag_sets_the_variable_for_the_command(clean, capsys):
    assert main(["doctor", "--json", "--backend", "torch"]) == 0
    env = {r["name"]: r["value"] for r in json.loads(capsys.readouterr().out)["environment"]}
    assert env["$OMNIFIELD_BACKEND"] == "torch"  # what the ops read per call during the command
