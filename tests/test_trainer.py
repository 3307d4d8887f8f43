"""The generic Trainer on a tiny fake scene: sampling, end to end, resume, Ctrl-C, NaN, budget, controls."""

from __future__ import annotations

import math
import os
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omnifield.datasets.cameras import Cameras
from omnifield.datasets.scene_data import ImageStore, SceneData
from omnifield.errors import TrainingDiverged
from omnifield.renderers.types import RayBundle, RenderOutput
from omnifield.scenes import runs
from omnifield.scenes.base import Scene, SceneConfig
from omnifield.scenes.trainer import PixelSampler, Trainer, TrainerConfig

pytest.importorskip("omnifield.renderers.rays", reason="renderers/rays.py (camera_rays) is not written yet")


# -- a tiny fake scene: an MLP on ray directions, Adam + a decaying LambdaLR, global-RNG noise ------------
@dataclass(frozen=True)
class FakeConfig(SceneConfig):
    method: str = "test-fake-trainer"
    hidden: int = 8
    lr: float = 1e-2
    batch_rays: int = 64
    nan_at_step: int = -1


class FakeScene(Scene):
    method = "test-fake-trainer"

    def __init__(self, config: FakeConfig, scene_box):
        super().__init__(config, scene_box)
        self.mlp = nn.Sequential(nn.Linear(3, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 4))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.hook = None  # test callback(step) run in on_step_end

    def render_rays(self, rays, background, options=None):
        out = self.mlp(rays.directions)
        alpha = torch.sigmoid(out[:, 3:])
        rgb = torch.sigmoid(out[:, :3]) * alpha + background * (1 - alpha)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=torch.zeros_like(alpha))

    def training_step(self, batch, step):
        noise = 1e-3 * torch.randn_like(batch.rays.directions)  # consumes the global RNG on purpose
        pred = self.render_rays(RayBundle(batch.rays.origins, batch.rays.directions + noise), batch.background)
        mse = ((pred.rgb - batch.rgb) ** 2).mean()
        if step == self.config.nan_at_step:
            mse = mse * float("nan")
        return {"loss": mse, "psnr": -10 * torch.log10(mse.detach())}

    def configure_optimizers(self, max_steps):
        opt = torch.optim.Adam(self.parameters(), lr=self.config.lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** (s / max(max_steps, 1)))

    def on_step_end(self, step):
        self.steps_seen += 1
        if self.hook is not None:
            self.hook(step)


def make_data(root: Path, sizes=((8, 8), (8, 8), (6, 10), (8, 8)), alpha=True) -> SceneData:
    """Cameras on a circle looking at the origin; random RGBA images (sizes may differ)."""
    rng = np.random.default_rng(0)
    n = len(sizes)
    c2w = []
    for k in range(n):
        a = 2 * math.pi * k / n
        pos = torch.tensor([3 * math.cos(a), 3 * math.sin(a), 0.5])
        z = -pos / pos.norm()
        x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, 1.0]))
        x = x / x.norm()
        y = torch.linalg.cross(z, x)
        m = torch.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, pos
        c2w.append(m)
    hs = [h for h, _ in sizes]
    ws = [w for _, w in sizes]
    cams = Cameras.create(torch.stack(c2w), fx=8.0, fy=8.0, cx=[w / 2 for w in ws], cy=[h / 2 for h in hs],
                          width=ws, height=hs)
    images = [rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8) for h, w in sizes]
    store = ImageStore([root / f"r_{i}.png" for i in range(n)], lambda i: images[i])
    return SceneData(root=root, format="test", cameras=cams, images=store,
                     splits={"train": list(range(n - 1)), "val": [n - 1], "test": [n - 1]},
                     scene_box=torch.tensor([[-1.0] * 3, [1.0] * 3]))


def fake_scene(**kw) -> FakeScene:
    torch.manual_seed(0)
    return FakeScene(FakeConfig(**kw), torch.tensor([[-1.0] * 3, [1.0] * 3]))


def quiet(**kw) -> TrainerConfig:
    base = dict(max_steps=6, eval_every=0, checkpoint_every=0, checkpoint_minutes=None, log_every=1, progress=False)
    base.update(kw)
    return TrainerConfig(**base)


def test_sampler_covers_images_of_different_sizes(tmp_path):
    data = make_data(tmp_path, sizes=((4, 4), (3, 5), (2, 2)), alpha=False)
    s = PixelSampler(data, [0, 1, 2])
    assert s.num_pixels == 16 + 15 + 4
    g = torch.Generator().manual_seed(0)
    cams, uv, rgb, bg, alpha = s.sample(4000, g)
    assert alpha is None and torch.all(bg == 1)
    for c in range(3):
        sel = cams == c
        u, v = uv[sel, 0].floor().long(), uv[sel, 1].floor().long()
        h, w = int(data.cameras.height[c]), int(data.cameras.width[c])
        assert u.min() >= 0 and v.min() >= 0 and u.max() < w and v.max() < h
        img = data.images.rgb(c)
        assert torch.equal(rgb[sel], img[v, u].float() / 255)  # target is the pixel the ray goes through
        assert len(torch.unique(v * w + u)) == h * w  # every pixel is reached
        assert abs(int(sel.sum()) / 4000 - h * w / 35) < 0.05  # uniform over pixels, not over images


def test_sampler_recomposites_alpha_on_random_backgrounds(tmp_path, tol):
    data = make_data(tmp_path, sizes=((4, 4), (4, 4)))
    s = PixelSampler(data, [0, 1])
    cams, uv, rgb, bg, alpha = s.sample(500, torch.Generator().manual_seed(1))
    assert alpha is not None and bg.std(0).min() > 0.1  # random colour per ray
    raw = torch.stack([torch.from_numpy(data.images._loader(int(c)))[int(v), int(u)]
                       for c, u, v in zip(cams, uv[:, 0].floor(), uv[:, 1].floor())]).float() / 255
    expected = raw[:, :3] * raw[:, 3:] + bg * (1 - raw[:, 3:])
    torch.testing.assert_close(rgb, expected, atol=1 / 255, rtol=0)  # uint8 rounding of the stored composite


def test_train_end_to_end_writes_run(tmp_path):
    data = make_data(tmp_path / "data")
    scene = fake_scene()
    before = [p.detach().clone() for p in scene.parameters()]
    cfg = quiet(max_steps=40, eval_every=20, checkpoint_every=20)
    result = Trainer(scene, data, cfg, tmp_path / "run").train()
    assert result.status == "finished" and result.step == 40 and scene.steps_seen == 40
    assert any(not torch.equal(a, b) for a, b in zip(before, scene.parameters()))
    run = tmp_path / "run"
    for name in ("config.json", "cameras.safetensors", "model.safetensors", "trainer_state.safetensors",
                 "trainer_state.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    records = runs.read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 41))
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in evals] == [20, 40] and all(math.isfinite(r["psnr"]) for r in evals)
    assert result.eval_psnr == evals[-1]["psnr"]
    cfg_json = runs.read_json(run / "config.json")
    assert cfg_json["method"] == "test-fake-trainer" and cfg_json["trainer_config"]["max_steps"] == 40
    assert Path(cfg_json["data_path"]).is_absolute()


def _state(trainer: Trainer):
    return ({k: v.clone() for k, v in trainer.scene.state_dict().items()},
            trainer.optimizer.state_dict(), trainer.scheduler.state_dict(), trainer.generator.get_state())


def _assert_same_state(a, b):
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    oa, ob = a[1], b[1]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        for k, v in oa["state"][i].items():
            assert torch.equal(v, ob["state"][i][k]), (i, k)
    assert a[2] == b[2]
    assert torch.equal(a[3], b[3])


def _straight(tmp_path, data):
    t = Trainer(fake_scene(), data, quiet(), tmp_path / "straight")
    t.train()
    return _state(t)


def test_resume_after_stop_matches_uninterrupted_run(tmp_path):
    data = make_data(tmp_path / "data")
    straight = _straight(tmp_path, data)

    scene = fake_scene()
    first = Trainer(scene, data, quiet(), tmp_path / "split")
    scene.hook = lambda step: first.stop() if step == 2 else None
    assert first.train().status == "stopped" and first.global_step == 3
    assert runs.read_json(tmp_path / "split" / "trainer_state.json")["step"] == 3

    torch.manual_seed(123)  # the resumed process starts with another global RNG state and fresh weights
    fresh = fake_scene()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    second = Trainer(fresh, data, quiet(), tmp_path / "split")
    assert second.resume() == 3
    assert second.train().step == 6
    _assert_same_state(straight, _state(second))


def test_ctrl_c_saves_and_resume_matches(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    straight = _straight(tmp_path, data)
    scene = fake_scene()
    scene.hook = lambda step: os.kill(os.getpid(), signal.SIGINT) if step == 3 else None
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background job
    with pytest.raises(KeyboardInterrupt):
        Trainer(scene, data, quiet(), tmp_path / "run").train()
    err = capsys.readouterr().err
    assert "interrupted at step 4" in err and "--resume" in err
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    second = Trainer(fake_scene(), data, quiet(), tmp_path / "run")
    assert second.resume() == 4
    second.train()
    _assert_same_state(straight, _state(second))


def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path):
    data = make_data(tmp_path / "data")
    scene = fake_scene(nan_at_step=5)
    run = tmp_path / "run"
    seen = {}
    scene.hook = lambda step: seen.setdefault("bytes", (run / "model.safetensors").read_bytes()) if step == 4 else None
    with pytest.raises(TrainingDiverged) as e:
        Trainer(scene, data, quiet(max_steps=10, checkpoint_every=2), run).train()
    msg = str(e.value)
    assert "at step 5" in msg and "step 4" in msg and "kept" in msg
    assert (run / "model.safetensors").read_bytes() == seen["bytes"]  # saved at step 4, never touched again
    assert runs.read_json(run / "trainer_state.json")["step"] == 4


def test_time_budget_stops_cleanly(tmp_path):
    data = make_data(tmp_path / "data")
    result = Trainer(fake_scene(), data, quiet(max_steps=100000, max_minutes=0.002), tmp_path / "run").train()
    assert result.status == "time_budget" and 0 < result.step < 100000
    assert runs.read_json(tmp_path / "run" / "trainer_state.json")["step"] == result.step


def test_a_kernel_build_on_the_first_step_is_not_training_time(tmp_path):
    """A native kernel builds on first use (30-60 s): that step's build is left out of the budget."""
    import time
    import types

    from omnifield.cuda import native

    data = make_data(tmp_path / "data")
    scene = fake_scene()
    loaded, build_seconds = {}, 1.5

    def build():
        time.sleep(build_seconds)
        return types.ModuleType("fake_kernel")

    scene.hook = lambda step: native._load_once("fake_kernel", "test kernel", threading.Lock(), loaded, {}, build)
    before = native.load_seconds()
    trainer = Trainer(scene, data, quiet(max_steps=20, max_minutes=1.0))
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    assert result.step == 20 and "fake_kernel" in loaded
    assert native.load_seconds() - before >= build_seconds
    assert result.elapsed_seconds < wall - build_seconds + 0.05
    assert trainer._step_seconds < 0.5  # the step-time estimate does not see the build either


def test_pause_resume_stop_from_another_thread(tmp_path):
    data = make_data(tmp_path / "data")
    trainer = Trainer(fake_scene(), data, quiet(max_steps=10**6), None)
    trainer.pause()
    results = []
    thread = threading.Thread(target=lambda: results.append(trainer.train()))
    thread.start()
    thread.join(0.3)
    assert trainer.global_step == 0 and trainer.paused
    trainer.resume_training()
    while trainer.global_step < 3:
        thread.join(0.01)
    trainer.stop()
    thread.join(10)
    assert not thread.is_alive() and results[0].status == "stopped" and results[0].step >= 3


def test_trainer_config_is_validated():
    from omnifield.errors import ConfigError

    with pytest.raises(ConfigError, match="max_steps"):
        TrainerConfig(max_steps=-1)
    with pytest.raises(ConfigError, match="max_minutes"):
        replace(TrainerConfig(), max_minutes=0)


def test_time_budget_fits_the_lr_schedule_to_the_projected_steps(tmp_path):
    from omnifield.scenes._common import WarmupMultiStep

    data = make_data(tmp_path / "data")
    scene = fake_scene()

    def configure(max_steps):
        opt = torch.optim.Adam(scene.parameters(), lr=1.0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, WarmupMultiStep(max_steps, warmup=0))

    scene.configure_optimizers = configure
    trainer = Trainer(scene, data, quiet(max_steps=10_000, max_minutes=1.0))
    factor = trainer.scheduler.lr_lambdas[0]
    # 100 steps at 0.1 s each leave 50 s of the 60 s budget: 500 more steps, a horizon of 600.
    trainer.elapsed_seconds = 10.0
    for step in range(1, 101):
        trainer._fit_schedule_to_budget(step, 0.1)
    assert factor.max_steps == 600
    assert factor(299) == 1.0 and abs(factor(300) - 0.33) < 1e-12  # first decay at 50 % of the horizon
    # Without a time budget the schedule keeps max_steps.
    plain = Trainer(scene, data, quiet(max_steps=10_000))
    for step in range(1, 101):
        plain._fit_schedule_to_budget(step, 0.1)
    assert plain.scheduler.lr_lambdas[0].max_steps == 10_000


class CountingObjective:
    """A minimal Trainer objective: the fake scene's MSE on trainer batches, a call counter as its state."""

    def __init__(self):
        self.calls, self.horizon = 0, None

    def training_step(self, trainer, step):
        batch = trainer.sample_batch(16)
        self.calls += 1
        mse = ((trainer.scene.render_rays(batch.rays, batch.background).rgb - batch.rgb) ** 2).mean()
        return {"loss": mse, "psnr": -10 * torch.log10(mse.detach()), "num_rays": 16.0}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


def test_objective_replaces_the_training_step_and_is_checkpointed(tmp_path):
    data = make_data(tmp_path / "data")
    real = make_data(tmp_path / "real", sizes=((8, 8),) * 6)  # what the run records instead of the training data
    scene = fake_scene()
    scene.training_step = None  # never called with an objective
    run = tmp_path / "run"
    objective = CountingObjective()
    trainer = Trainer(scene, data, quiet(max_steps=4), run, objective=objective, record_data=real)
    assert objective.horizon == 4
    assert trainer.train().step == 4
    assert objective.calls == 4 and scene.steps_seen == 4  # the scene's on_step_end still runs
    assert runs.read_json(run / "trainer_state.json")["trainer"]["objective"] == {"calls": 4}
    assert runs.read_json(run / "config.json")["splits"]["train"] == [0, 1, 2, 3, 4]  # the recorded data's
    assert len(runs._load_cameras(run / "cameras.safetensors")) == 6
    train = [r for r in runs.read_jsonl(run / "metrics.jsonl") if r["type"] == "train"]
    assert len(train) == 4 and all(r["num_rays"] == 16.0 and "psnr" in r for r in train)

    resumed = Trainer(fake_scene(), data, quiet(max_steps=6), run, objective=CountingObjective(), record_data=real)
    assert resumed.resume() == 4 and resumed.objective.calls == 4
    assert resumed.train().step == 6 and resumed.objective.calls == 6
    # a time budget moves the objective's horizon with the LR schedule's
    budget = Trainer(fake_scene(), data, quiet(max_steps=10_000, max_minutes=1.0), objective=CountingObjective())
    budget.elapsed_seconds = 10.0
    for step in range(1, 101):
        budget._fit_schedule_to_budget(step, 0.1)
    assert budget.objective.horizon == 600
