"""The demo end to end on a tiny budget: every artefact is written and the summary is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest


def test_demo_smoke_with_a_tiny_budget(tmp_path):
    pytest.importorskip("open3d", reason="the synthetic scene is rendered with open3d (pip install open3d-cpu)")
    from omnifield.datasets.synth import SynthConfig
    from omnifield.scenes.demo import DemoOptions, run_demo
    from omnifield.scenes.registry import available_methods

    if "instant-ngp" not in available_methods():
        pytest.skip("the instant-ngp method is not registered")
    synth = SynthConfig(n_train=6, n_test=2, width=24, height=24, supersample=1)
    options = DemoOptions(
        max_steps=3, trainer_overrides={"log_every": 1}, video_frames=3,
        # A tiny instant-ngp: the smoke test checks the plumbing, not the quality.
        scene_overrides=("profile=cpu", "n_levels=4", "log2_hashmap_size=12", "max_resolution=64",
                         "render_step_size=0.05", "init_rays_per_batch=64", "grid_resolution=16"),
        video_downscale=2.0, mesh_resolution=24, mesh_threshold=1e-3, min_component_fraction=0.0,
        pointcloud_views=2, pointcloud_downscale=2.0, max_points=500, chamfer_points=2000, progress=False,
    )
    summary = run_demo(tmp_path / "demo", train_minutes=0.5, options=options, synth_config=synth)
    run_dir = tmp_path / "demo" / "run"
    stored = json.loads((run_dir / "summary.json").read_text())
    for key in ("psnr", "ssim", "train_seconds", "chamfer", "chamfer_ratio", "total_seconds", "video", "mesh", "pointcloud"):
        assert key in stored, key
        assert stored[key] == summary[key]
    assert summary["step"] == 3
    assert np.isfinite(summary["psnr"]) and 0 <= summary["ssim"] <= 1
    assert summary["chamfer"] > 0 and summary["chamfer_ratio"] == pytest.approx(summary["chamfer"] / summary["gt_diagonal"])
    for key in ("video", "mesh", "pointcloud"):
        assert (run_dir / summary[key].split("/run/")[-1]).is_file()
    # A second call reuses the synthesized data and, with retrain=False, the trained run.
    from dataclasses import replace

    again = run_demo(tmp_path / "demo", train_minutes=0.5, options=replace(options, retrain=False), synth_config=synth)
    assert "synthesize" not in again["timings"] and again["timings"]["train"] == 0.0
