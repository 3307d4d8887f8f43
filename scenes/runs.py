"""Run directories: configuration, checkpoints and loading a trained scene back, without pickle.

A run directory holds::

    config.json                 method, scene config, trainer config, data path, downscale, background,
                                world_from_dataset, scene_box, near/far, splits, omnifield version
    cameras.safetensors         every dataset camera (normalised world) so a run loads without its data
    model.safetensors           scene.state_dict() (+ scene.extra_state() under "__extra__.<name>")
    trainer_state.safetensors   optimizer / scheduler tensors and RNG states
    trainer_state.json          everything else of the optimizer / scheduler state dicts, step, clocks
    metrics.jsonl               one JSON record per log / evaluation
    renders/                    evaluation renders and videos

Every file is written atomically (temporary file in the same folder, fsync, ``os.replace``), so a
crash mid-write leaves the previous version intact. The checkpoint files carry the step in their
metadata; a resume refuses files that disagree. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import CheckpointError
from omnifield.scenes.configs import apply_overrides, config_from_dict, config_to_dict  # noqa: F401 (re-exported)

CONFIG_FILE = "config.json"
CAMERAS_FILE = "cameras.safetensors"
MODEL_FILE = "model.safetensors"
STATE_TENSORS_FILE = "trainer_state.safetensors"
STATE_JSON_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
RENDERS_DIR = "renders"
EXTRA_PREFIX = "__extra__."
FORMAT_VERSION = 1


# -- atomic writes -------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success fsync it and ``os.replace`` it onto ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def atomic_save_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically (copies to CPU, contiguous, unshared)."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def read_json(path: str | Path, error=CheckpointError) -> Any:
    """Read a JSON file, raising ``error`` naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error("file is missing", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read file ({e})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})", path) from None


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; CheckpointError naming the file if missing or corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("file is missing", path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError / ValueError on bad headers
        raise CheckpointError(f"corrupt or truncated checkpoint ({type(e).__name__}: {e})", path) from None
    return tensors, metadata


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a crash can at worst leave a partial last line, which readers skip)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSON-lines file (missing file -> []; a truncated last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def truncate_metrics(path: str | Path, step: int) -> None:
    """Drop records logged after ``step`` (used on resume, so the log matches an uninterrupted run)."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_jsonl(path) if int(r.get("step", 0)) <= step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


# -- a SceneData stand-in that loads without the dataset ---------------------------------------------
@dataclass
class SceneInfo:
    """What scene builders may read from the data, stored with every run (no images).

    Builders receive either a real :class:`~omnifield.datasets.scene_data.SceneData` (training) or
    this (loading a run); both have these attributes with the same meaning.
    """

    root: Path
    format: str
    cameras: Cameras
    splits: dict[str, list[int]]
    scene_box: Tensor
    world_from_dataset: Tensor = field(default_factory=lambda: torch.eye(4))
    near: float | None = None
    far: float | None = None
    time_range: tuple[float, float] | None = None
    unbounded: bool = False
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    metadata: dict = field(default_factory=dict)
    points: Tensor | None = None
    point_colors: Tensor | None = None
    point_times: Tensor | None = None
    images: None = None
    depths: None = None
    masks: None = None

    def __len__(self) -> int:
        return len(self.cameras)

    def split(self, name: str) -> list[int]:
        """Camera indices of a split (or "all")."""
        if name == "all":
            return list(range(len(self.cameras)))
        if name not in self.splits or not self.splits[name]:
            raise CheckpointError(f"no cameras in split {name!r}", self.root)
        return list(self.splits[name])

    @staticmethod
    def from_data(data) -> "SceneInfo":
        """The builder-relevant part of a SceneData."""
        return SceneInfo(
            root=Path(data.root),
            format=str(getattr(data, "format", "")),
            cameras=data.cameras,
            splits={k: list(v) for k, v in data.splits.items()},
            scene_box=torch.as_tensor(data.scene_box, dtype=torch.float32).cpu(),
            world_from_dataset=torch.as_tensor(data.world_from_dataset, dtype=torch.float32).cpu(),
            near=data.near,
            far=data.far,
            time_range=None if data.time_range is None else tuple(float(t) for t in data.time_range),
            unbounded=bool(data.unbounded),
            background=tuple(float(b) for b in data.background),
            metadata=dict(getattr(data, "metadata", {}) or {}),
        )


_CAMERA_FIELDS = ("c2w", "fx", "fy", "cx", "cy", "width", "height", "distortion", "model")


def _save_cameras(path: Path, cameras: Cameras) -> None:
    tensors = {k: getattr(cameras, k) for k in _CAMERA_FIELDS}
    if cameras.times is not None:
        tensors["times"] = cameras.times
    atomic_save_safetensors(path, tensors, {"format": "omnifield-cameras"})


def _load_cameras(path: Path) -> Cameras:
    tensors, _ = read_safetensors(path)
    missing = [k for k in _CAMERA_FIELDS if k not in tensors]
    if missing:
        raise CheckpointError(f"missing camera tensors {', '.join(missing)}", path)
    return Cameras(**{k: tensors[k] for k in _CAMERA_FIELDS}, times=tensors.get("times"))


def _json_safe(obj: Any) -> Any:
    """Drop what JSON cannot hold from free-form metadata (kept as strings)."""
    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        if isinstance(obj, dict):
            return {str(k): _json_safe(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [_json_safe(v) for v in obj]
        return str(obj)


def write_run_config(run_dir: str | Path, *, method: str, scene_config: Any, trainer_config: Any, data, downscale: int) -> Path:
    """Write ``config.json`` and ``cameras.safetensors`` of a run from the (normalised) training data."""
    import omnifield

    run_dir = Path(run_dir)
    (run_dir / RENDERS_DIR).mkdir(parents=True, exist_ok=True)
    info = SceneInfo.from_data(data)
    cfg = {
        "omnifield_version": omnifield.__version__,
        "format_version": FORMAT_VERSION,
        "method": method,
        "scene_config": config_to_dict(scene_config),
        "trainer_config": config_to_dict(trainer_config),
        "data_path": str(Path(info.root).expanduser().resolve()),
        "data_format": info.format,
        "downscale": int(downscale),
        "background": list(info.background),
        "world_from_dataset": info.world_from_dataset.tolist(),
        "scene_box": info.scene_box.tolist(),
        "near": info.near,
        "far": info.far,
        "unbounded": info.unbounded,
        "time_range": None if info.time_range is None else list(info.time_range),
        "splits": info.splits,
        "data_metadata": _json_safe(info.metadata),
    }
    _save_cameras(run_dir / CAMERAS_FILE, info.cameras.to("cpu"))
    atomic_write_json(run_dir / CONFIG_FILE, cfg)
    return run_dir / CONFIG_FILE


# -- structured state (optimizer / scheduler state dicts) as JSON + tensors ---------------------------
def _encode(obj: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """JSON-encode nested dicts/lists of scalars and tensors; tensors go to ``tensors[prefix/...]``."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (int, str, float, bool)):
                raise TypeError(f"cannot store key {k!r} of {prefix}")
            items.append([k, _encode(v, f"{prefix}/{k}", tensors)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} without pickle")


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return obj


# -- checkpoints ---------------------------------------------------------------------------------
def _rng_state(generator: torch.Generator | None, tensors: dict[str, Tensor]) -> dict:
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    if generator is not None:
        tensors["rng/generator"] = generator.get_state()
    np_state = np.random.get_state()
    tensors["rng/numpy_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    return {
        "python": _encode(random.getstate(), "python", {}),
        "numpy": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def restore_rng(tensors: dict[str, Tensor], rng: dict, generator: torch.Generator | None) -> None:
    """Restore the global torch / CUDA / numpy / Python RNGs and ``generator`` saved by :func:`save_checkpoint`."""
    torch.set_rng_state(tensors["rng/torch"].to("cpu", torch.uint8))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.to("cpu", torch.uint8) for c in cuda[: torch.cuda.device_count()]])
    if generator is not None and "rng/generator" in tensors:
        generator.set_state(tensors["rng/generator"].to("cpu", torch.uint8))
    if "rng/numpy_keys" in tensors and rng.get("numpy"):
        name, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, tensors["rng/numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    if rng.get("python") is not None:
        random.setstate(_decode(rng["python"], {}))


def save_checkpoint(
    run_dir: str | Path,
    scene,
    step: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
    trainer_extra: dict | None = None,
) -> Path:
    """Write the scene's weights and (when ``optimizer`` is given) the full trainer state, atomically.

    ``model.safetensors`` holds ``scene.state_dict()`` plus ``scene.extra_state()`` under
    ``"__extra__.<name>"``; ``trainer_state.safetensors`` / ``.json`` hold the optimizer and
    scheduler state dicts (tensors in safetensors, the rest in JSON), the RNG states (global
    torch, CUDA, numpy, Python and ``generator``), ``step`` and ``trainer_extra`` (JSON values).
    Returns the run directory.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    method = str(getattr(scene, "method", "") or getattr(scene.config, "method", ""))
    meta = {"format": "omnifield-checkpoint", "format_version": str(FORMAT_VERSION), "step": str(int(step)), "method": method}
    weights = dict(scene.state_dict())
    for name, t in (scene.extra_state() or {}).items():
        weights[EXTRA_PREFIX + name] = t
    atomic_save_safetensors(run_dir / MODEL_FILE, weights, meta)
    if optimizer is None:
        return run_dir
    tensors: dict[str, Tensor] = {}
    state = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "method": method,
        "optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "scheduler", tensors),
        "rng": _rng_state(generator, tensors),
        "trainer": trainer_extra or {},
    }
    atomic_save_safetensors(run_dir / STATE_TENSORS_FILE, tensors, meta)
    atomic_write_json(run_dir / STATE_JSON_FILE, state)  # written last: it commits the checkpoint
    return run_dir


@dataclass
class TrainerState:
    """A checkpoint's trainer state (see :func:`load_trainer_state`)."""

    step: int
    optimizer: dict
    scheduler: dict | None
    rng: dict
    rng_tensors: dict[str, Tensor]
    trainer: dict


def load_trainer_state(run_dir: str | Path) -> TrainerState:
    """Read ``trainer_state.json`` + ``.safetensors``; CheckpointError naming the file on any problem."""
    run_dir = Path(run_dir)
    jpath, tpath = run_dir / STATE_JSON_FILE, run_dir / STATE_TENSORS_FILE
    state = read_json(jpath)
    tensors, meta = read_safetensors(tpath)
    if not isinstance(state, dict) or "step" not in state or "optimizer" not in state:
        raise CheckpointError("not a trainer state (no step / optimizer)", jpath)
    if str(meta.get("step")) != str(state["step"]):
        raise CheckpointError(f"holds step {meta.get('step')} but {jpath.name} says step {state['step']} "
                              "(interrupted while saving?)", tpath)
    try:
        optimizer = _decode(state["optimizer"], tensors)
        scheduler = None if state.get("scheduler") is None else _decode(state["scheduler"], tensors)
    except KeyError as e:
        raise CheckpointError(f"tensor {e} referenced by {jpath.name} is missing", tpath) from None
    return TrainerState(int(state["step"]), optimizer, scheduler, state.get("rng", {}),
                        {k: v for k, v in tensors.items() if k.startswith("rng/")}, state.get("trainer", {}))


def load_weights(scene, path: str | Path, *, method: str | None = None) -> int:
    """Load ``model.safetensors`` into ``scene`` (strict); returns the checkpoint's step.

    ``scene.prepare_load(weights)`` (when the scene has it) runs first, so scenes whose parameter
    shapes change in training (Gaussian counts) can resize to the checkpoint.

    Raises CheckpointError naming the file when it is missing, corrupt, from another method, or when
    the weight names or shapes do not match the scene.
    """
    path = Path(path)
    device = scene.scene_box.device if hasattr(scene, "scene_box") else "cpu"
    tensors, meta = read_safetensors(path, device=device)
    if method is not None and meta.get("method") and meta["method"] != method:
        raise CheckpointError(f"checkpoint of method {meta['method']!r}, not {method!r}", path)
    extra = {k[len(EXTRA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    weights = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    prepare = getattr(scene, "prepare_load", None)
    if prepare is not None:  # scenes whose sizes change in training (Gaussian counts) resize first
        prepare(weights)
    expected = scene.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        name = method or getattr(scene, "method", "") or type(scene).__name__
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else "",
                 f"shape mismatch {_few(shapes)}" if shapes else ""]
        raise CheckpointError(f"weights do not match a {name!r} scene ({'; '.join(p for p in parts if p)})", path)
    scene.load_state_dict(weights, strict=True)
    if extra:
        loader = getattr(scene, "load_extra_state", None)
        if loader is None:
            warnings.warn(f"{type(scene).__name__} saved extra state {sorted(extra)} but has no load_extra_state()")
        else:
            loader(extra)
    try:
        return int(meta.get("step", 0))
    except ValueError:
        raise CheckpointError(f"bad step {meta.get('step')!r} in metadata", path) from None


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


# -- loading a run -------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained run loaded from its directory (see :func:`load_run`).

    Attributes:
        path: the run directory.
        method: registered method name.
        scene_config: the scene's frozen config.
        trainer_config: the :class:`~omnifield.scenes.trainer.TrainerConfig` it was trained with.
        data_path: absolute path of the training data.
        downscale: image downscale factor used for training.
        world_from_dataset: ``[4, 4]`` similarity from dataset coordinates to the run's world.
        scene_box: ``[2, 3]`` box (min, max) in the run's world.
        step: training steps of the loaded weights.
        scene: the scene, weights loaded, in eval mode.
        background: the data background the images were composited on.
        info: the stored :class:`SceneInfo` (cameras, splits, near/far, ...).
    """

    path: Path
    method: str
    scene_config: Any
    trainer_config: Any
    data_path: Path
    downscale: int
    world_from_dataset: Tensor
    scene_box: Tensor
    step: int
    scene: Any
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    info: SceneInfo | None = None

    def load_data(self, path: str | Path | None = None, downscale: int | None = None, split: str | None = None):
        """Parse a dataset folder (default: the training data) into the run's world.

        ``path`` may be another folder whose cameras are in the same original coordinates as the
        training data. ``split``, when given, must exist in it (DataError otherwise).
        """
        from omnifield.datasets.load import load_scene, recorded_frame_options

        folder = Path(path) if path is not None else self.data_path
        frames = recorded_frame_options(self.info.metadata if self.info is not None else None)  # video runs
        data = load_scene(folder, downscale=downscale or self.downscale, background=self.background, **frames)
        data = data.with_world(self.world_from_dataset, self.scene_box)
        if split is not None:
            data.split(split)
        return data


def read_run_config(run_dir: str | Path) -> dict:
    """The run's ``config.json`` as a dict (CheckpointError naming the file if absent or malformed)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError("run directory does not exist", run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError("not a run directory (no config.json)", run_dir)
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise CheckpointError("expected a JSON object", path)
    for key in ("method", "scene_config", "scene_box", "world_from_dataset", "data_path"):
        if key not in cfg:
            raise CheckpointError(f"missing key {key!r}", path)
    return cfg


def load_scene_info(run_dir: str | Path, cfg: dict | None = None) -> SceneInfo:
    """The stored :class:`SceneInfo` of a run (what its scene builder needs)."""
    run_dir = Path(run_dir)
    cfg = cfg if cfg is not None else read_run_config(run_dir)
    path = run_dir / CONFIG_FILE
    try:
        return SceneInfo(
            root=Path(cfg["data_path"]),
            format=str(cfg.get("data_format", "")),
            cameras=_load_cameras(run_dir / CAMERAS_FILE),
            splits={k: [int(i) for i in v] for k, v in (cfg.get("splits") or {}).items()},
            scene_box=torch.tensor(cfg["scene_box"], dtype=torch.float32).reshape(2, 3),
            world_from_dataset=torch.tensor(cfg["world_from_dataset"], dtype=torch.float32).reshape(4, 4),
            near=cfg.get("near"),
            far=cfg.get("far"),
            time_range=None if cfg.get("time_range") is None else tuple(cfg["time_range"]),
            unbounded=bool(cfg.get("unbounded", False)),
            background=tuple(float(b) for b in cfg.get("background", (1.0, 1.0, 1.0))),
            metadata=dict(cfg.get("data_metadata") or {}),
        )
    except (TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"bad data description ({e})", path) from None


def load_run(path: str | Path, *, device: str | torch.device = "cpu", expect_method: str | None = None) -> Run:
    """Load a run directory: config, stored scene info, the scene (weights loaded, eval mode).

    Works without the dataset folder. ``expect_method`` (on resume) must equal the stored method.
    Raises CheckpointError naming the offending file (missing, truncated, other method, mismatch).
    """
    from omnifield.scenes.registry import get_method
    from omnifield.scenes.trainer import TrainerConfig

    run_dir = Path(path)
    cfg = read_run_config(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    method = str(cfg["method"])
    if expect_method is not None and method != expect_method:
        raise CheckpointError(f"run was trained with method {method!r}, not {expect_method!r}", cfg_path)
    spec = get_method(method)
    try:
        scene_config = config_from_dict(spec.config_cls, cfg["scene_config"])
        trainer_config = config_from_dict(TrainerConfig, cfg.get("trainer_config") or {})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"config does not fit this omnifield version ({e})", cfg_path) from None
    info = load_scene_info(run_dir, cfg)
    scene = spec.build(scene_config, info).to(device)
    step = load_weights(scene, run_dir / MODEL_FILE, method=method)
    scene.eval()
    return Run(
        path=run_dir,
        method=method,
        scene_config=scene_config,
        trainer_config=trainer_config,
        data_path=Path(cfg["data_path"]),
        downscale=int(cfg.get("downscale", 1)),
        world_from_dataset=info.world_from_dataset,
        scene_box=info.scene_box,
        step=step,
        scene=scene,
        background=info.background,
        info=info,
    )
