"""The standard 3DGS .ply: bit-exact round trips, the property order, f_rest layout, other readers, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnifield.errors import DataError
from omnifield.scenes.splat_ply import SplatData, read_splat_ply, splat_property_names, write_splat_ply


def _random_splats(n: int, degree: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "log_scales": rng.normal(-3, 1, size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),  # unnormalised on purpose
        "opacity_logits": rng.normal(size=n).astype(np.float32),
        "sh": rng.normal(size=(n, k, 3)).astype(np.float32),
    }


def _write_raw_ply(path, names: list[str], values: np.ndarray) -> None:
    """A float32 binary little-endian vertex PLY with the given properties (an independent writer)."""
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {len(values)}\n"
    header += "".join(f"property float {n}\n" for n in names) + "end_header\n"
    path.write_bytes(header.encode() + values.astype("<f4").tobytes())


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_bit_exact(tmp_path, degree):
    g = _random_splats(57, degree, seed=degree)
    path = write_splat_ply(tmp_path / "g.ply", **g)
    back = read_splat_ply(path)
    assert isinstance(back, SplatData) and back.sh_degree == degree and len(back) == 57
    for name, value in g.items():
        got = getattr(back, name)
        assert got.dtype == np.float32 and got.shape == value.shape, name
        assert got.tobytes() == value.tobytes(), name
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]  # atomic: no temporary file left


def test_accepts_tensors_and_empty(tmp_path):
    g = {k: torch.from_numpy(v).requires_grad_(k == "means") for k, v in _random_splats(5, 1).items()}
    back = read_splat_ply(write_splat_ply(tmp_path / "t.ply", **g))
    np.testing.assert_array_equal(back.means, g["means"].detach().numpy())
    empty = read_splat_ply(write_splat_ply(tmp_path / "e.ply", **_random_splats(0, 2)))
    assert len(empty) == 0 and empty.sh.shape == (0, 9, 3)


def test_header_order_and_layout_read_by_plyfile(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = _random_splats(11, 2)
    path = write_splat_ply(tmp_path / "g.ply", **g)
    ply = plyfile.PlyData.read(str(path))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [
        f"f_rest_{i}" for i in range(24)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                             "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == splat_property_names(2)
    assert all(np.dtype(p.val_dtype) == np.float32 for p in v.properties)
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), g["means"])
    for c in "xyz":
        assert (v["n" + c] == 0).all()
    np.testing.assert_array_equal(v["opacity"], g["opacity_logits"])
    np.testing.assert_array_equal(np.stack([v[f"rot_{i}"] for i in range(4)], 1), g["quats"])
    np.testing.assert_array_equal(np.stack([v[f"scale_{i}"] for i in range(3)], 1), g["log_scales"])
    # f_rest is channel-major: f_rest[c * (K - 1) + j] = sh[:, 1 + j, c]
    for c in range(3):
        np.testing.assert_array_equal(v[f"f_dc_{c}"], g["sh"][:, 0, c])
        for j in range(8):
            np.testing.assert_array_equal(v[f"f_rest_{c * 8 + j}"], g["sh"][:, 1 + j, c])


def test_f_rest_order_from_a_hand_built_file(tmp_path):
    names = splat_property_names(1)  # K = 4: f_rest_0..8
    row = np.arange(len(names), dtype=np.float32)  # each property holds its own column index
    _write_raw_ply(tmp_path / "h.ply", names, row[None])
    g = read_splat_ply(tmp_path / "h.ply")
    col = {n: i for i, n in enumerate(names)}
    assert g.sh_degree == 1
    expected = np.array([[col[f"f_dc_{c}"] for c in range(3)]] + [
        [col[f"f_rest_{c * 3 + j}"] for c in range(3)] for j in range(3)], np.float32)
    np.testing.assert_array_equal(g.sh[0], expected)  # R coefficients 1..3 are f_rest_0..2, then G, then B
    np.testing.assert_array_equal(g.means[0], [0, 1, 2])
    np.testing.assert_array_equal(g.opacity_logits, [col["opacity"]])
    np.testing.assert_array_equal(g.log_scales[0], [col[f"scale_{i}"] for i in range(3)])
    np.testing.assert_array_equal(g.quats[0], [col[f"rot_{i}"] for i in range(4)])


def test_open3d_reads_it_as_a_point_cloud(tmp_path):
    o3d = pytest.importorskip("open3d")
    g = _random_splats(123, 3)
    path = write_splat_ply(tmp_path / "g.ply", **g)
    pcd = o3d.io.read_point_cloud(str(path))
    assert len(pcd.points) == 123
    np.testing.assert_array_equal(np.asarray(pcd.points), g["means"].astype(np.float64))


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    return text


def test_missing_property_gives_one_line_error(tmp_path):
    names = [n for n in splat_property_names(0) if n != "opacity"]
    _write_raw_ply(tmp_path / "m.ply", names, np.zeros((2, len(names))))
    with pytest.raises(DataError) as err:
        read_splat_ply(tmp_path / "m.ply")
    assert "missing vertex properties opacity" in _one_line(err, tmp_path / "m.ply")


@pytest.mark.parametrize("drop", ["f_rest_3", "f_rest_8"])
def test_inconsistent_f_rest_gives_one_line_error(tmp_path, drop):
    names = [n for n in splat_property_names(1) if n != drop]  # 8 of 9, or a gap in the indices
    if drop == "f_rest_3":
        names = names + ["f_rest_9"]
    _write_raw_ply(tmp_path / "r.ply", names, np.zeros((2, len(names))))
    with pytest.raises(DataError) as err:
        read_splat_ply(tmp_path / "r.ply")
    assert "f_rest" in _one_line(err, tmp_path / "r.ply")


def test_other_bad_files(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"hello")
    with pytest.raises(DataError, match="not a PLY"):
        read_splat_ply(bad)
    path = write_splat_ply(tmp_path / "g.ply", **_random_splats(4, 0))
    (tmp_path / "cut.ply").write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_splat_ply(tmp_path / "cut.ply")
    (tmp_path / "ascii.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(DataError, match="ascii"):
        read_splat_ply(tmp_path / "ascii.ply")
    with pytest.raises(DataError, match="not found"):
        read_splat_ply(tmp_path / "nope.ply")


@pytest.mark.parametrize(
    "name, value, match",
    [("means", np.zeros((3, 2)), "means"), ("quats", np.zeros((3, 3)), "quats"),
     ("opacity_logits", np.zeros(2), "opacity_logits"), ("sh", np.zeros((3, 5, 3)), "sh"),
     ("log_scales", np.zeros((2, 3)), "log_scales")],
)
def test_write_validates_shapes(tmp_path, name, value, match):
    g = _random_splats(3, 1)
    g[name] = value
    with pytest.raises(ValueError, match=match):
        write_splat_ply(tmp_path / "x.ply", **g)
    assert not list(tmp_path.iterdir())
