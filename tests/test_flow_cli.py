"""``omnifield flow estimate / eval / accumulate`` and ``data synth --lidar`` end to end on tiny data
(small configs through --set, seconds each), their files, and the one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omnifield.cli.main import main

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
AV2_PAIR = SHARED / "av2_flow_pair" / "pair.npz"
FAST_NSFP = ["--set", "max_iterations=15", "layers=3", "hidden=16", "--threads", "1", "--no-progress"]
FAST_TRAJ = ["--set", "max_iterations=10", "layers=3", "hidden=16", "points_per_frame=256", "--threads", "1",
             "--no-progress"]
METRICS = ("epe3d", "acc3d_strict", "acc3d_relax", "outliers", "angle_error", "n_points")


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("omnifield: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def lidar_seq(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flowcli") / "lidar"
    code = main(["data", "synth", "--lidar", str(out), "--set", "frames=3", "beams=8", "azimuths=256", "cars=2",
                 "buildings=2", "poles=2"])
    assert code == 0
    return out


def _sweeps(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    p1 = rng.uniform(-10, 10, (300, 3)).astype(np.float32)
    p2 = p1 + np.float32([0.3, 0.0, 0.0])
    a, b = tmp_path / "a.npy", tmp_path / "b.bin"
    np.save(a, p1)
    np.concatenate([p2, np.ones((300, 1), np.float32)], 1).tofile(b)  # KITTI .bin: x y z intensity
    return a, b, p1


def test_data_synth_lidar_writes_a_readable_sequence(lidar_seq):
    from omnifield.datasets.pointclouds import load_point_clouds

    seq = load_point_clouds(lidar_seq)
    assert seq.format == "synth_lidar" and len(seq) == 3
    assert seq.frames[0].flow is not None and seq.frames[0].ego_pose is not None


def test_flow_estimate_two_sweeps_writes_flow_npz(tmp_path, capsys):
    a, b, p1 = _sweeps(tmp_path)
    out = tmp_path / "flow.npz"
    code, stdout, err = run_cli(["flow", "estimate", a, b, "--out", out, "--points", 200, *FAST_NSFP], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    d = np.load(out)
    assert set(d.files) >= {"flow", "points", "indices", "loss", "iterations", "runtime_s"}
    assert d["flow"].shape == d["points"].shape == (200, 3) and d["flow"].dtype == np.float32
    np.testing.assert_array_equal(d["points"], p1[d["indices"]])  # indices are rows of the input
    assert int(d["iterations"]) >= 1 and float(d["runtime_s"]) > 0 and np.isfinite(float(d["loss"]))


def test_flow_estimate_options_ground_and_range(tmp_path, capsys):
    a, b, p1 = _sweeps(tmp_path)
    out = tmp_path / "flow.npz"
    code, _, err = run_cli(["flow", "estimate", a, b, "--out", out, "--max-range", 8, "--ground", "height", *FAST_NSFP], capsys)
    assert code == 0, err
    d = np.load(out)
    assert (np.linalg.norm(d["points"], axis=1) <= 8).all() and len(d["indices"]) < len(p1)


@pytest.mark.skipif(not AV2_PAIR.is_file(), reason="../shared/data/av2_flow_pair absent")
def test_flow_estimate_and_eval_on_the_av2_pair(tmp_path, capsys):
    code, _, err = run_cli(["flow", "estimate", AV2_PAIR, "--out", tmp_path / "f.npz", "--points", 256, *FAST_NSFP], capsys)
    assert code == 0, err
    metrics = tmp_path / "m.json"
    code, stdout, err = run_cli(["flow", "eval", AV2_PAIR, "--out", metrics, "--points", 256, "--baselines", *FAST_NSFP], capsys)
    assert code == 0, err
    m = json.loads(metrics.read_text())
    assert m["protocol"] == "av2" and m["n_points"] == 256 and m["ego_motion"] is True
    for key in (*METRICS, "runtime_s"):
        assert key in m
    assert m["static"]["n_points"] + m["dynamic"]["n_points"] == 256
    assert set(m["baselines"]) >= {"zero", "nn"}
    assert m["baselines"]["zero"]["epe3d"] > 0 and "protocol: av2" in stdout


def test_flow_eval_on_synthetic_lidar_sequence(lidar_seq, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    code, stdout, err = run_cli(["flow", "eval", lidar_seq, "--out", metrics, "--points", 300, "--max-pairs", 1,
                                 *FAST_NSFP], capsys)
    assert code == 0, err
    m = json.loads(metrics.read_text())
    for key in (*METRICS, "runtime_s"):
        assert key in m
    assert m["pairs"] == 1 and 0 < m["n_points"] <= 300 and "static" in m and "dynamic" in m
    assert "baselines" not in m
    assert f"metrics: {metrics}" in stdout


def test_flow_eval_fits_a_sample_queries_every_point_and_reports_the_rigid_refinement(lidar_seq, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    code, stdout, err = run_cli(["flow", "eval", lidar_seq, "--out", metrics, "--max-pairs", 1, *FAST_NSFP,
                                 "--set", "fit_points=50", "rigid.enabled=true"], capsys)
    assert code == 0, err
    m = json.loads(metrics.read_text())
    assert m["n_points"] > 50 and m["config"]["fit_points"] == 50  # every point scored, 50 fitted
    assert m["field_only"]["n_points"] == m["n_points"] and "rigid" in m["per_pair"][0]
    assert "nsfp+rigid" in stdout
    code, stdout, err = run_cli(["flow", "estimate", lidar_seq, "--out", tmp_path / "f.npz", *FAST_NSFP,
                                 "--set", "rigid.enabled=true"], capsys)
    assert code == 0, err
    assert "rigid refinement: " in stdout


def test_flow_accumulate_writes_a_ply_trimesh_and_open3d_read(lidar_seq, tmp_path, capsys):
    from omnifield.datasets.pointclouds import load_point_clouds

    total = sum(len(f) for f in load_point_clouds(lidar_seq).frames)
    out = tmp_path / "map.ply"
    code, stdout, err = run_cli(["flow", "accumulate", lidar_seq, "--out", out, "--ref", 0, *FAST_TRAJ], capsys)
    assert code == 0, err
    assert "at frame 0" in stdout and f"wrote {out}" in stdout and "rigid refinement: " in stdout
    trimesh = pytest.importorskip("trimesh")
    assert len(trimesh.load(out).vertices) == total
    o3d = pytest.importorskip("open3d")
    pc = o3d.io.read_point_cloud(str(out))
    assert len(pc.points) == total and pc.has_colors()
    code, _, err = run_cli(["flow", "accumulate", lidar_seq, "--out", tmp_path / "ego.ply", "--ego-only"], capsys)
    assert code == 0, err


# -- bad input: one line naming the file, exit code 2 ------------------------------------------------
def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.bin"
    code, _, err = run_cli(["flow", "estimate", missing, missing, "--out", tmp_path / "f.npz", *FAST_NSFP], capsys)
    assert code == 2 and "nope.bin" in one_error_line(err)
    code, _, err = run_cli(["flow", "eval", missing], capsys)
    assert code == 2 and "nope.bin" in one_error_line(err)
    code, _, err = run_cli(["flow", "accumulate", tmp_path / "nodir", "--out", tmp_path / "m.ply"], capsys)
    assert code == 2 and "nodir" in one_error_line(err)


def test_empty_cloud(tmp_path, capsys):
    empty, other = tmp_path / "empty.npy", tmp_path / "other.npy"
    np.save(empty, np.zeros((0, 3), np.float32))
    np.save(other, np.ones((10, 3), np.float32))
    code, _, err = run_cli(["flow", "estimate", empty, other, "--out", tmp_path / "f.npz", *FAST_NSFP], capsys)
    assert code == 2 and "empty.npy" in one_error_line(err)
    assert not (tmp_path / "f.npz").exists()


def test_nothing_left_after_cropping(tmp_path, capsys):
    a, b, _ = _sweeps(tmp_path)
    code, _, err = run_cli(["flow", "estimate", a, b, "--out", tmp_path / "f.npz", "--max-range", 0.01, *FAST_NSFP], capsys)
    assert code == 2 and "a.npy" in one_error_line(err) and "no points left" in err


def test_unknown_npz_keys(tmp_path, capsys):
    bad = tmp_path / "weird.npz"
    np.savez(bad, foo=np.zeros((5, 3)), bar=np.zeros((5, 3)))
    code, _, err = run_cli(["flow", "eval", bad], capsys)
    line = one_error_line(err)
    assert code == 2 and "weird.npz" in line and "foo" in line
    code, _, err = run_cli(["flow", "estimate", bad, "--out", tmp_path / "f.npz"], capsys)
    assert code == 2 and "weird.npz" in one_error_line(err)


def test_a_bad_config_value_names_the_option_and_the_value(tmp_path, capsys):
    a, b, _ = _sweeps(tmp_path)
    for setting, value in (("profile=fast", "'fast'"), ("max_iterations=0", "0")):
        code, _, err = run_cli(["flow", "estimate", a, b, "--out", tmp_path / "f.npz", "--set", setting], capsys)
        line = one_error_line(err)
        assert code == 2 and setting.split("=")[0] in line and line.endswith(f"got {value}") and len(line) < 200, line
    assert not (tmp_path / "f.npz").exists()


def test_eval_needs_labels_and_accumulate_checks_its_arguments(lidar_seq, tmp_path, capsys):
    a, b, _ = _sweeps(tmp_path)
    folder = tmp_path / "sweeps"
    folder.mkdir()
    np.save(folder / "000.npy", np.load(a))
    np.save(folder / "001.npy", np.load(a) + 1)
    code, _, err = run_cli(["flow", "eval", folder], capsys)
    assert code == 2 and "no ground-truth flow" in one_error_line(err)
    code, _, err = run_cli(["flow", "accumulate", lidar_seq, "--out", tmp_path / "map.xyz"], capsys)
    assert code == 2 and ".ply" in one_error_line(err)
    code, _, err = run_cli(["flow", "accumulate", lidar_seq, "--out", tmp_path / "map.ply", "--ref", 7], capsys)
    assert code == 2 and "--ref 7" in one_error_line(err)
    code, _, err = run_cli(["flow", "accumulate", lidar_seq, "--out", tmp_path / "map.ply", "--set", "nope=1"], capsys)
    assert code == 2 and "nope" in one_error_line(err)
    code, _, err = run_cli(["data", "synth", "--lidar", "--dynamic", tmp_path / "x"], capsys)
    assert code == 2


def test_flow_help_lists_the_actions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["flow", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "eval" in out and "accumulate" in out
