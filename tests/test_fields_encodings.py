"""Hash grid, SH and frequency encodings, MLP."""

from __future__ import annotations

import math

import pytest
import torch

from omnifield.cuda.reference import hash_encoding as ref
from omnifield.fields import MLP, FrequencyEncoding, HashGridConfig, HashGridEncoding, SHEncoding, hash_grid_layout, level_resolutions

# Level 0: 4 cells per side, 5^3 = 125 vertices <= 1024 rows: dense. Level 1: 32 cells, 33^3 > 1024: hashed.
SMALL = HashGridConfig(n_levels=2, n_features=3, log2_table_size=10, base_resolution=4, max_resolution=32)


def _grid(cfg=SMALL, dtype=torch.float32):
    enc = HashGridEncoding(cfg)
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    return enc.to(dtype)


def test_level_resolutions_and_dense_layout():
    res = level_resolutions(HashGridConfig())
    assert res[0] == 16 and res[-1] == 2048 and len(res) == 16
    assert bool((res[1:] > res[:-1]).all())
    r, off = hash_grid_layout(HashGridConfig())
    dense = ref.level_is_dense(r, off)
    assert dense[0] and not dense[-1]
    assert int(off[1] - off[0]) == 17**3  # coarse level stored densely: (16 + 1)^3 rows
    assert int(off[-1] - off[-2]) == 2**19
    r, off = hash_grid_layout(SMALL)
    assert r.tolist() == [4, 32] and off.tolist() == [0, 125, 125 + 1024]


def test_spatial_hash_known_coordinates():
    # (1 * 1) xor (2 * 2654435761) xor (3 * 805459861), low 19 bits.
    expected = (1 ^ 5308871522 ^ 2416379583) % 2**19
    assert expected == 128476
    got = ref.spatial_hash(torch.tensor([[1, 2, 3]]), 2**19)
    assert int(got[0]) == expected


def test_vertex_returns_its_table_row():
    enc = _grid()
    # The world point (0.25, 0.5, 0.75) is vertex (1, 2, 3) of level 0 (res 4) and (8, 16, 24) of level 1 (res 32).
    x = torch.tensor([[0.25, 0.5, 0.75]])
    out = enc(x)
    dense_row = 1 + 2 * 5 + 3 * 25
    hashed_row = 125 + ((8 * 1) ^ (16 * 2654435761) ^ (24 * 805459861)) % 1024
    assert hashed_row == 125 + 736
    torch.testing.assert_close(out[0, :3], enc.table[dense_row].detach())
    torch.testing.assert_close(out[0, 3:], enc.table[hashed_row].detach())


def test_dense_level_is_trilinear():
    cfg = HashGridConfig(n_levels=1, n_features=1, log2_table_size=10, base_resolution=4, max_resolution=4)
    enc = HashGridEncoding(cfg)
    with torch.no_grad():  # table = a linear function of the vertex coordinates -> exact interpolation
        v = torch.stack(torch.meshgrid(*[torch.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
        # row = ix + 5 iy + 25 iz, so rebuild the table in that order
        vals = torch.zeros(125)
        for ix, iy, iz in v.long().tolist():
            vals[ix + 5 * iy + 25 * iz] = 1.0 * ix + 2.0 * iy + 3.0 * iz
        enc.table.copy_(vals[:, None])
    x = torch.rand(64, 3)
    expected = (x * 4) @ torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(enc(x)[:, 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", [ref.hash_encode, ref.hash_encode_embedding_bag, ref.hash_encode_gather])
def test_fast_paths_match_naive(impl):
    enc = _grid()
    res, off = enc.resolutions, enc.offsets
    x = torch.rand(500, 3, requires_grad=True)
    table = enc.table.detach().clone().requires_grad_(True)
    g = torch.randn(500, 6)
    a = impl(x, table, res, off)
    ga = torch.autograd.grad(a, (x, table), g)
    b = ref.hash_encode_naive(x, table, res, off)
    gb = torch.autograd.grad(b, (x, table), g)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga[0], gb[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ga[1], gb[1], rtol=1e-5, atol=1e-5)


def test_gradcheck_table_and_positions(tol):
    enc = _grid(dtype=torch.float64)
    table = enc.table.detach().clone().requires_grad_(True)
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    g = tol["gradcheck"]
    assert torch.autograd.gradcheck(lambda x, t: ref.hash_encode(x, t, enc.resolutions, enc.offsets), (x, table),
                                    eps=g["eps"], atol=g["atol"], rtol=g["rtol"])


def test_sh_closed_form():
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    sh = SHEncoding(4)(d)
    assert sh.shape == (2, 16)
    c0 = 0.5 / math.sqrt(math.pi)
    c1 = math.sqrt(3 / (4 * math.pi))
    # +z: Y00, Y10 = c1, Y20 = sqrt(5/16pi) (3 - 1), Y30 = sqrt(7/16pi) (5 - 3); all others vanish.
    expected_z = torch.zeros(16)
    expected_z[0], expected_z[2] = c0, c1
    expected_z[6] = math.sqrt(5 / (16 * math.pi)) * 2
    expected_z[12] = math.sqrt(7 / (16 * math.pi)) * 2
    torch.testing.assert_close(sh[0], expected_z, rtol=1e-5, atol=1e-6)
    # +x: tiny-cuda-nn's sign convention gives -c1 for the x band-1 term.
    assert abs(float(sh[1, 3]) + c1) < 1e-6
    assert abs(float(sh[1, 8]) - 0.5 * math.sqrt(15 / (4 * math.pi))) < 1e-6


def test_sh_orthonormal_on_sphere():
    # Fibonacci sphere quadrature: integral of Y_i Y_j over the sphere = delta_ij.
    n = 20000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    y = SHEncoding(4)(d)
    gram = y.T @ y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-3, rtol=0)
    for deg in (1, 2, 3):
        torch.testing.assert_close(SHEncoding(deg)(d), y[:, : deg * deg])


def test_frequency_encoding():
    enc = FrequencyEncoding(3, 2, include_input=True)
    x = torch.tensor([[0.25, 0.5, -1.0]])
    out = enc(x)
    assert out.shape == (1, 3 * 5) and enc.out_dim == 15
    torch.testing.assert_close(out[0, :3], x[0])
    torch.testing.assert_close(out[0, 3:6], torch.sin(math.pi * x[0]))
    torch.testing.assert_close(out[0, 6:9], torch.cos(math.pi * x[0]))
    torch.testing.assert_close(out[0, 9:12], torch.sin(2 * math.pi * x[0]))
    assert FrequencyEncoding(3, 4, include_input=False).out_dim == 24


def test_mlp_shapes_and_skip():
    m = MLP(5, 2, 16, 4, skip_connections=(2,), output_activation="sigmoid")
    assert m.hidden[2].in_features == 16 + 5
    y = m(torch.randn(7, 5))
    assert y.shape == (7, 2) and bool(((y > 0) & (y < 1)).all())
    assert MLP(5, None, 8, 2).out_dim == 8
