"""``omnifield convert``: a conversion through the command line, refused pairs (exit 2 with the reason),
Ctrl-C and ``--resume`` (equal to an uninterrupted conversion), mesh and point-cloud targets, and
``omnifield eval`` on the converted run."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import torch

from omnifield.cli.main import main
from omnifield.cuda.reference.gaussians import SH_C0
from omnifield.datasets.load import load_scene
from omnifield.scenes import runs
from omnifield.scenes.registry import get_method
from omnifield.scenes.trainer import Trainer, TrainerConfig

pytest.importorskip("omnifield.distill.poses", reason="distill/poses.py (sample_poses) is not written yet")

TINY_NGP = ["profile=cpu", "n_levels=2", "log2_hashmap_size=10", "max_resolution=32", "grid_resolution=8",
            "hidden_dim=8", "target_samples_per_batch=1024"]


@pytest.fixture(autouse=True)
def keep_threads():
    """``--threads 1`` sets torch's thread count for the process: give the other tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def teacher_run(tmp_path, blender_dataset) -> Path:
    """A 3dgs run holding three hand-set opaque Gaussians, trained on a tiny Blender folder (0 steps)."""
    root = tmp_path / "teacher_run"
    data = load_scene(blender_dataset(root / "data", n=6, size=16, image="gradient"))
    means = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.2, 0.1], [-0.3, 0.3, -0.1]])
    spec = get_method("3dgs")
    from dataclasses import replace

    scene = spec.build(spec.config_cls(profile="cpu", sh_degree=0), replace(data, points=means, point_colors=None))
    with torch.no_grad():
        scene.log_scales.fill_(math.log(0.25))
        scene.opacity_logits.fill_(4.0)
        scene.sh_dc.copy_((torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9]]) - 0.5)[:, None] / SH_C0)
    out = root / "teacher"
    Trainer(scene, data, TrainerConfig(max_steps=0, eval_every=0, progress=False), out).train()
    return out


def convert_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", str(run), "--to", "instant-ngp", "--out", str(out), "--steps", "6", "--views", "4",
            "--no-progress", "--threads", "1", "--set", *TINY_NGP, *extra]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return runs.read_safetensors(run_dir / runs.MODEL_FILE)[0]


def test_refused_and_unknown_targets_exit_2_with_the_reason(teacher_run, tmp_path, capsys):
    for target, reason in (("4dgs", "a static teacher has no time"), ("3dgs", "nothing to gain"),
                           ("no-such-method", "targets: ")):
        assert main(["convert", str(teacher_run), "--to", target, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("omnifield: error: ") and reason in err and len(err.splitlines()) == 1, err
    assert main(["convert", str(teacher_run), "--to", "instant-ngp", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["convert", str(teacher_run), "--to", "mesh"]) == 2  # a file target needs --out
    assert "--out" in capsys.readouterr().err


def test_convert_interrupt_and_resume_equal_an_uninterrupted_run(teacher_run, tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    assert main(convert_args(teacher_run, straight)) == 0
    printed = capsys.readouterr().out
    assert "plan: render (3dgs -> instant-ngp): " in printed and f"run: {straight}" in printed
    assert "student vs teacher" in printed
    rec = runs.read_json(straight / "distill.json")
    assert rec["status"] == "finished" and rec["steps"] == 6 and rec["teacher_run"] == str(teacher_run.resolve())
    assert main(convert_args(teacher_run, straight)) == 2  # an existing conversion is not overwritten
    assert "--resume" in capsys.readouterr().err
    # The converted run is an ordinary run: eval reads the real dataset it records.
    assert main(["eval", str(straight), "--max-images", "1", "--no-renders"]) == 0
    capsys.readouterr()

    step = Trainer.step

    def interrupting_step(self):
        logs = step(self)
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the trainer finishes the step, saves, stops
        return logs

    monkeypatch.setattr(Trainer, "step", interrupting_step)
    split = tmp_path / "split"
    assert main(convert_args(teacher_run, split)) == 130
    err = capsys.readouterr().err
    assert "omnifield convert" in err and "--resume" in err and "omnifield train" not in err  # one, right, hint
    assert runs.read_json(split / "trainer_state.json")["step"] == 3
    monkeypatch.setattr(Trainer, "step", step)
    resume = ["convert", str(teacher_run), "--to", "instant-ngp", "--out", str(split), "--resume", "--no-progress",
              "--threads", "1"]
    assert main(resume) == 0
    assert runs.read_json(split / "distill.json")["steps"] == 6
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mesh_and_pointcloud_targets(teacher_run, tmp_path, capsys):
    import trimesh

    printed = {}
    for target, name in (("mesh", "m.ply"), ("pointcloud", "p.ply")):
        assert main(["convert", str(teacher_run), "--to", target, "--out", str(tmp_path / name)]) == 0
        printed[target] = capsys.readouterr().out
        assert f"plan: {target} (3dgs -> {target})" in printed[target] and f"wrote {tmp_path / name}" in printed[target]
    assert "TSDF" in printed["mesh"]  # Gaussians have no density: their rendered depth is fused
    assert len(trimesh.load(tmp_path / "m.ply", process=False).faces) > 50
    assert len(trimesh.load(tmp_path / "p.ply", process=False).vertices) > 50
