"""Run directories: atomic writes, checkpoints without pickle, corrupt / foreign checkpoints, loading runs."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from omnifield.errors import CheckpointError, ConfigError
from omnifield.renderers.types import RenderOutput
from omnifield.scenes import registry, runs
from omnifield.scenes.base import Scene, SceneConfig
from omnifield.scenes.registry import MethodSpec
from omnifield.scenes.trainer import Trainer, TrainerConfig


@dataclass(frozen=True)
class ColorConfig(SceneConfig):
    method: str = "test-runs-color"
    hidden: int = 4
    batch_rays: int = 32
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


class ColorScene(Scene):
    method = "test-runs-color"

    def __init__(self, config, scene_box, near=None):
        super().__init__(config, scene_box)
        self.mlp = nn.Sequential(nn.Linear(3, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 3))
        self.near = near

    def render_rays(self, rays, background, options=None):
        rgb = torch.sigmoid(self.mlp(rays.directions))
        return RenderOutput(rgb=rgb, alpha=torch.ones_like(rgb[:, :1]), depth=torch.ones_like(rgb[:, :1]))

    def training_step(self, batch, step):
        return {"loss": ((self.render_rays(batch.rays, batch.background).rgb - batch.rgb) ** 2).mean()}


class OtherScene(ColorScene):
    method = "test-runs-other"

    def __init__(self, config, scene_box, near=None):
        super().__init__(config, scene_box, near)
        self.extra = nn.Parameter(torch.zeros(2))


def _build(config, data):
    # what a real builder may read: scene_box, near, far, background, unbounded, cameras
    _ = (data.near, data.far, data.background, data.unbounded, len(data.cameras))
    return ColorScene(config, data.scene_box, data.near)


@pytest.fixture
def methods(monkeypatch):
    try:
        registry.available_methods()
    except ImportError:  # a built-in scene module is not written yet: use the registry without it
        monkeypatch.setattr(registry, "_scanned", True)
    monkeypatch.setitem(registry._REGISTRY, "test-runs-color", MethodSpec("test-runs-color", ColorConfig, _build))
    monkeypatch.setitem(registry._REGISTRY, "test-runs-other", MethodSpec(
        "test-runs-other", ColorConfig, lambda c, d: OtherScene(c, d.scene_box)))


def _data(root):
    from omnifield.datasets.load import load_scene

    return load_scene(root)


def _train(tmp_path, blender_dataset, steps=3, name="run", world=None):
    data = _data(blender_dataset(tmp_path / "data"))
    if world is not None:  # as a parser that normalises the cameras would do
        data = data.with_world(world, data.scene_box)
    torch.manual_seed(0)
    scene = _build(ColorConfig(), data)
    cfg = TrainerConfig(max_steps=steps, eval_every=0, checkpoint_every=0, checkpoint_minutes=None, progress=False)
    Trainer(scene, data, cfg, tmp_path / name).train()
    return tmp_path / name, scene, data


# -- atomic writes ---------------------------------------------------------------------------------
def test_crash_mid_write_keeps_previous_file(tmp_path):
    path = tmp_path / "a.json"
    runs.atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(path) as tmp:
            tmp.write_text('{"v": 2, "trunc')  # half written, then the process "dies"
            raise RuntimeError("crash")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left behind


def test_crash_while_saving_checkpoint_keeps_previous_weights(tmp_path, methods, monkeypatch, blender_dataset):
    run, scene, _ = _train(tmp_path, blender_dataset)
    before = (run / "model.safetensors").read_bytes()
    with torch.no_grad():
        for p in scene.parameters():
            p.add_(1)

    def dying_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 10)  # partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", dying_save)
    with pytest.raises(OSError):
        runs.save_checkpoint(run, scene, 99)
    assert (run / "model.safetensors").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# -- checkpoints -----------------------------------------------------------------------------------
def test_trainer_state_is_json_and_safetensors_only(tmp_path, methods, blender_dataset):
    run, _, _ = _train(tmp_path, blender_dataset)
    state = json.loads((run / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["method"] == "test-runs-color"
    tensors, meta = runs.read_safetensors(run / "trainer_state.safetensors")
    assert meta["step"] == "3" and "rng/torch" in tensors and "rng/generator" in tensors
    assert any(k.startswith("optimizer/state/") and k.endswith("exp_avg") for k in tensors)
    st = runs.load_trainer_state(run)
    assert set(st.optimizer) == {"state", "param_groups"} and isinstance(st.optimizer["param_groups"][0]["betas"], tuple)


def test_load_run_without_the_dataset(tmp_path, methods, blender_dataset):
    run_dir, scene, data = _train(tmp_path, blender_dataset)
    shutil.rmtree(tmp_path / "data")
    run = runs.load_run(run_dir)
    assert run.method == "test-runs-color" and run.step == 3 and run.downscale == 1
    assert run.data_path == (tmp_path / "data").resolve()
    for k, v in scene.state_dict().items():
        assert torch.equal(run.scene.state_dict()[k], v)
    torch.testing.assert_close(run.world_from_dataset, data.world_from_dataset)
    torch.testing.assert_close(run.scene_box, data.scene_box)
    torch.testing.assert_close(run.info.cameras.c2w, data.cameras.c2w)
    assert run.info.splits == data.splits and run.info.near == data.near and run.info.far == data.far
    assert run.scene.near == data.near
    out = run.scene.render(run.info.cameras[[0]])[0]
    assert out.rgb.shape == (8, 8, 3)


def test_run_load_data_uses_the_run_world(tmp_path, methods, blender_dataset):
    c, si = math.cos(0.3), math.sin(0.3)
    world = torch.tensor([[0.5 * c, -0.5 * si, 0, 0.1], [0.5 * si, 0.5 * c, 0, -0.2], [0, 0, 0.5, 0.3], [0, 0, 0, 1]])
    run_dir, _, data = _train(tmp_path, blender_dataset, world=world)
    run = runs.load_run(run_dir)
    torch.testing.assert_close(run.world_from_dataset, world)
    same = run.load_data(split="test")
    torch.testing.assert_close(same.cameras.c2w, data.cameras.c2w, atol=1e-5, rtol=0)
    assert same.near == data.near and same.far == data.far
    # another folder (frames 0-3 only, same original coordinates) lands in the run's world too
    other_root = blender_dataset(tmp_path / "other", frames=[0, 1, 2, 3], n=6)
    other = run.load_data(path=other_root)
    own = _data(other_root)
    assert not torch.allclose(own.cameras.c2w, other.cameras.c2w, atol=1e-3)
    ref = data.cameras.c2w[data.split("test")]
    torch.testing.assert_close(other.cameras.c2w[other.split("test")], ref, atol=1e-4, rtol=0)
    with pytest.raises(Exception, match="split"):
        run.load_data(split="nope")


def test_truncated_checkpoint_names_the_file(tmp_path, methods, blender_dataset):
    run, _, _ = _train(tmp_path, blender_dataset)
    path = run / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as e:
        runs.load_run(run)
    assert e.value.path == path and "model.safetensors" in str(e.value)
    tpath = run / "trainer_state.safetensors"
    tpath.write_bytes(tpath.read_bytes()[:20])
    with pytest.raises(CheckpointError) as e:
        runs.load_trainer_state(run)
    assert e.value.path == tpath


def test_missing_and_malformed_files(tmp_path, methods, blender_dataset):
    with pytest.raises(CheckpointError, match="does not exist"):
        runs.load_run(tmp_path / "nope")
    run, _, _ = _train(tmp_path, blender_dataset)
    (run / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        runs.load_run(run)
    assert e.value.path == run / "model.safetensors"
    (run / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError) as e:
        runs.load_run(run)
    assert e.value.path == run / "config.json" and "malformed JSON" in str(e.value)


def test_checkpoint_of_another_method(tmp_path, methods, blender_dataset):
    run, _, data = _train(tmp_path, blender_dataset)
    with pytest.raises(CheckpointError) as e:
        runs.load_run(run, expect_method="test-runs-other")
    assert e.value.path == run / "config.json" and "test-runs-color" in str(e.value)
    # weights whose names do not fit the scene (config.json edited / files mixed up)
    other = OtherScene(ColorConfig(), data.scene_box)
    with pytest.raises(CheckpointError) as e:
        runs.load_weights(other, run / "model.safetensors")
    assert e.value.path == run / "model.safetensors" and "missing extra" in str(e.value)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        runs.load_weights(ColorScene(ColorConfig(hidden=5), data.scene_box), run / "model.safetensors")
    # resuming a run with another method's trainer
    cfg = TrainerConfig(max_steps=6, progress=False)
    trainer = Trainer(other, data, cfg, run, method="test-runs-other")
    with pytest.raises(CheckpointError, match="test-runs-color"):
        trainer.resume()


def test_mismatched_checkpoint_files_are_refused(tmp_path, methods, blender_dataset):
    run, scene, data = _train(tmp_path, blender_dataset)
    runs.save_checkpoint(run, scene, 7)  # weights only: trainer_state still says step 3
    trainer = Trainer(scene, data, TrainerConfig(progress=False), run)
    with pytest.raises(CheckpointError, match="step 7"):
        trainer.resume()


# -- configs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inner:
    levels: int = 16


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-2
    steps: int = 10
    flag: bool = False
    name: str = "a"
    bg: tuple[float, float, float] = (1.0, 1.0, 1.0)
    far: float | None = None
    mode: Literal["fast", "slow"] = "fast"
    grid: Inner = Inner()


def test_overrides_are_typed_by_the_dataclass():
    c = runs.apply_overrides(Cfg(), ["lr=0.5", "steps=1e3", "flag=true", "name=x", "bg=0,0.5,1", "far=2",
                                     "mode=slow", "grid.levels=8"])
    assert c == Cfg(0.5, 1000, True, "x", (0.0, 0.5, 1.0), 2.0, "slow", Inner(8))
    assert runs.apply_overrides(c, ["far=none", "bg=[1, 1, 1]"]).far is None
    for bad in ["lr=abc", "steps=1.5", "flag=maybe", "bg=1,2", "mode=medium", "nope=1", "grid.x=1", "lr"]:
        with pytest.raises(ConfigError):
            runs.apply_overrides(Cfg(), [bad])
    assert runs.config_from_dict(Cfg, json.loads(json.dumps(runs.config_to_dict(c)))) == c
    with pytest.raises(ValueError, match="unknown"):
        runs.config_from_dict(Cfg, {"zzz": 1})
