"""tiny-cuda-nn backend: configuration mapping and fallback (CPU tier), the construction hook with a
stand-in ``tinycudann`` (CPU tier), and tcnn against ours on a small fit (GPU tier, needs tinycudann)."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch
from torch import nn

from omnifield.cuda import backend, tcnn_backend
from omnifield.fields import MLP, HashGridConfig, HashGridEncoding, hash_grid_layout, level_resolutions

CONFIGS = [HashGridConfig(), HashGridConfig(n_levels=8, n_features=4, log2_table_size=15, base_resolution=8,
                                            max_resolution=512), HashGridConfig(n_levels=16, base_resolution=16, max_resolution=4096)]


@pytest.fixture
def fresh(monkeypatch):
    """No backend variable, no remembered warnings, tinycudann import state reset."""
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.setattr(tcnn_backend, "_warned", set())
    monkeypatch.setattr(tcnn_backend, "_state", {})


@pytest.mark.parametrize("config", CONFIGS)
def test_grid_mapping_reproduces_our_resolutions(config):
    enc = tcnn_backend.encoding_config(config)
    assert enc["otype"] == "HashGrid" and enc["n_levels"] == config.n_levels
    assert enc["n_features_per_level"] == config.n_features and enc["log2_hashmap_size"] == config.log2_table_size
    assert enc["base_resolution"] == config.base_resolution
    b = enc["per_level_scale"]
    assert math.isclose(config.base_resolution * b ** (config.n_levels - 1), config.max_resolution, rel_tol=1e-12)
    ours = level_resolutions(config).numpy()  # cells per side; ours + 1 vertices
    levels = tcnn_backend.tcnn_level_layout(enc)
    for level, (lv, res) in enumerate(zip(levels, ours)):
        exact = config.base_resolution * b**level  # our resolution before flooring
        tol = 1e-3 + 1e-6 * exact  # tcnn computes the scale in float32 (exp2f)
        if abs(exact - round(exact)) > tol:
            assert lv["resolution"] == res + 1, level  # tcnn's vertices per side == ours
        else:
            assert lv["resolution"] in (res, res + 1), level  # integer level: tcnn may have one fewer
        assert res - 1 - tol <= lv["scale"] < res + tol  # tcnn's cells per unit length: within one below ours
        padded = -(-lv["resolution"] ** 3 // 8) * 8
        assert lv["rows"] == min(padded, 2 ** config.log2_table_size) and lv["dense"] == (padded <= 2 ** config.log2_table_size)


def test_dense_and_hashed_levels_match_ours():
    config = HashGridConfig()
    res, off = hash_grid_layout(config)
    ours = (off[1:] - off[:-1]).tolist()
    levels = tcnn_backend.tcnn_level_layout(tcnn_backend.encoding_config(config))
    t = 2 ** config.log2_table_size
    assert [n < t for n in ours] == [lv["dense"] and lv["rows"] < t for lv in levels]  # same dense / hashed split
    assert ours[0] == 17**3 and levels[0]["rows"] == 16**3  # coarsest level: N_min = 16 is an integer
    assert ours[1] == levels[1]["rows"] - (-ours[1] % 8)  # others: the same vertices, padded to 8


def test_grid_and_network_support_checks():
    assert tcnn_backend.grid_unsupported_reason(HashGridConfig(n_features=3)) is not None
    assert tcnn_backend.grid_unsupported_reason(HashGridConfig(n_features=8)) is None
    net = tcnn_backend.network_config(64, 2, "relu", "sigmoid")
    assert net == {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "Sigmoid",
                   "n_neurons": 64, "n_hidden_layers": 2}
    assert tcnn_backend.network_config(100, 1, "softplus", "none")["otype"] == "CutlassMLP"
    assert tcnn_backend.mlp_unsupported_reason(3, 8, (4,)) is not None
    assert tcnn_backend.mlp_unsupported_reason(None, 0, ()) is not None
    assert tcnn_backend.mlp_unsupported_reason(3, 2, ()) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without a GPU")
def test_tcnn_requested_without_tcnn_warns_once_and_builds_ours(fresh, monkeypatch):
    monkeypatch.setenv(backend.ENV_VAR, "tcnn")
    config = HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64)
    with pytest.warns(RuntimeWarning, match=r"backend 'tcnn' is not available here \(no CUDA device") as record:
        modules = [HashGridEncoding(config), MLP(8, 3, 16, 2), HashGridEncoding(config), MLP(8, 3, 16, 2)]
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert all(m.backend == "omnifield" for m in modules)
    assert modules[0](torch.rand(5, 3)).shape == (5, 8) and modules[1](torch.randn(5, 8)).shape == (5, 3)
    assert tcnn_backend.available() is False and "no CUDA device" in tcnn_backend.unavailable_reason()


def test_tinycudann_import_failure_is_a_reason(fresh, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tcnn(name, *args, **kwargs):
        if name == "tinycudann":
            raise EnvironmentError("Unknown compute capability. Ensure PyTorch with CUDA support is installed.")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tcnn)
    monkeypatch.setattr(tcnn_backend, "_cuda_device_present", lambda: True)
    why = tcnn_backend.unavailable_reason()
    assert why.startswith("tinycudann is not importable (OSError: Unknown compute capability")
    assert backend.unavailable_reason("tcnn") == why


# --- the construction hook, with a stand-in tinycudann (CPU) --------------------------------------------


class _FakeModule(nn.Module):
    """Mimics tinycudann.Module: a flat ``params`` cast to its precision per forward, half/float output."""

    def __init__(self, n_in, n_out, n_params, dtype):
        super().__init__()
        self.n_input_dims, self.n_output_dims, self.dtype = n_in, n_out, dtype
        self.params = nn.Parameter(torch.linspace(-1e-2, 1e-2, n_params).to(dtype))

    def forward(self, x):
        assert x.dtype == torch.float32 and x.is_contiguous()
        w = self.params.to(self.dtype)[: self.n_input_dims * self.n_output_dims].view(self.n_input_dims, self.n_output_dims)
        return (x.to(self.dtype) @ w).to(self.dtype)


def _fake_tinycudann():
    calls = []

    def encoding(n_input_dims, encoding_config, seed=1337, dtype=None):
        calls.append(("Encoding", encoding_config, dtype))
        n_out = encoding_config["n_levels"] * encoding_config["n_features_per_level"]
        return _FakeModule(n_input_dims, n_out, 4096, dtype or torch.half)

    def network(n_input_dims, n_output_dims, network_config, seed=1337):
        calls.append(("Network", network_config, None))
        return _FakeModule(n_input_dims, n_output_dims, 1024, torch.half)

    return types.SimpleNamespace(Encoding=encoding, Network=network, calls=calls)


@pytest.fixture
def fake_tcnn(fresh, monkeypatch):
    fake = _fake_tinycudann()
    monkeypatch.setattr(tcnn_backend, "_state", {"module": fake})
    monkeypatch.setattr(tcnn_backend, "_cuda_device_present", lambda: True)
    return fake


def test_hash_grid_builds_tcnn_module_with_our_contract(fake_tcnn):
    config = HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64, table_dtype="float16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc = HashGridEncoding(config, backend="tcnn")
    assert enc.backend == "tcnn" and fake_tcnn.calls[0] == ("Encoding", tcnn_backend.encoding_config(config), torch.float16)
    assert list(enc.state_dict()) == ["table"] and [p for p in enc.parameters()] == [enc.table]
    assert enc.table.dtype == torch.float32  # float32 master copy, cast to half inside each forward
    x = torch.rand(6, 3) * 1.4 - 0.2  # outside the cube: clamped like ours
    out = enc(x)
    assert out.dtype == torch.float32 and out.shape == (6, enc.out_dim)
    out.square().sum().backward()
    assert enc.table.grad is not None and enc.table.grad.dtype == torch.float32
    assert HashGridEncoding(HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64), backend="tcnn") \
        .__dict__["_tcnn"].encoding.dtype == torch.float32


def test_mlp_builds_tcnn_network_and_falls_back_for_skips(fake_tcnn):
    mlp = MLP(16, 3, 64, 2, activation="relu", output_activation="sigmoid", backend="tcnn")
    assert mlp.backend == "tcnn" and list(mlp.state_dict()) == ["params"] and mlp.params.dtype == torch.float32
    assert fake_tcnn.calls[-1] == ("Network", tcnn_backend.network_config(64, 2, "relu", "sigmoid"), None)
    y = mlp(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 3) and y.dtype == torch.float32
    trunk = MLP(16, None, 32, 3, backend="tcnn")  # out_dim None: last hidden layer becomes the output layer
    assert trunk.out_dim == 32 and fake_tcnn.calls[-1][1]["n_hidden_layers"] == 2
    assert fake_tcnn.calls[-1][1]["output_activation"] == "ReLU"
    with pytest.warns(RuntimeWarning, match="skip connections"):
        nerf = MLP(16, None, 32, 6, skip_connections=(4,), backend="tcnn")
    assert nerf.backend == "omnifield"
    with pytest.warns(RuntimeWarning, match="n_features"):
        assert HashGridEncoding(HashGridConfig(n_levels=2, n_features=3, log2_table_size=10, max_resolution=32),
                                backend="tcnn").backend == "omnifield"


# --- GPU tier ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and tinycudann")
def test_tcnn_and_ours_fit_the_same_signal(fresh):
    pytest.importorskip("tinycudann")
    torch.manual_seed(0)
    config = HashGridConfig(n_levels=8, n_features=2, log2_table_size=14, base_resolution=8, max_resolution=256)

    def target(x):
        return torch.sin(6 * x[:, :1]) * torch.cos(5 * x[:, 1:2]) + 0.5 * x[:, 2:3] ** 2

    def fit(name):
        enc = HashGridEncoding(config, backend=name).cuda()
        mlp = MLP(enc.out_dim, 1, 64, 2, bias=False, backend=name).cuda()
        assert enc.backend == mlp.backend == ("tcnn" if name == "tcnn" else "omnifield")
        opt = torch.optim.Adam([*enc.parameters(), *mlp.parameters()], lr=1e-2, eps=1e-15)
        gen = torch.Generator(device="cuda").manual_seed(1)
        for _ in range(400):
            x = torch.rand(4096, 3, device="cuda", generator=gen)
            loss = (mlp(enc(x)) - target(x)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        x = torch.rand(16384, 3, device="cuda", generator=gen)
        with torch.no_grad():
            return (mlp(enc(x)) - target(x)).square().mean().item(), enc

    ours, _ = fit("cuda")
    theirs, enc = fit("tcnn")
    layout = tcnn_backend.tcnn_level_layout(tcnn_backend.encoding_config(config))
    assert enc.table.numel() == sum(lv["rows"] for lv in layout) * config.n_features  # tcnn's n_params
    signal = 0.3  # variance of the target is ~0.3: both must fit it to a small fraction
    assert ours < 0.01 * signal and theirs < 0.01 * signal, (ours, theirs)
    assert 0.2 < theirs / ours < 5.0, (ours, theirs)  # same capacity, same quality within a factor
