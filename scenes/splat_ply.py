"""The standard 3D Gaussian splatting ``.ply`` (Kerbl et al. 2023), as the original code and splat viewers use it.

One ``vertex`` element, binary little endian, float32 properties in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_{3(K-1)-1}  opacity
    scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

- ``K = (degree + 1)^2`` SH coefficients per channel (3DGS basis); ``f_dc_c`` is coefficient 0 of
  channel ``c``; ``f_rest`` is *channel-major*: ``f_rest[c * (K - 1) + j] = sh[:, 1 + j, c]`` (all
  higher coefficients of R, then of G, then of B).
- ``opacity`` is the logit (``sigmoid`` activates it), ``scale_i`` the log of the standard deviation,
  ``rot`` the quaternion ``w x y z``, unnormalised; ``nx ny nz`` are zeros.

:func:`write_splat_ply` writes atomically; :func:`read_splat_ply` accepts any file of this schema
(other numeric property types are cast to float32, big-endian files too, extra vertex properties
ignored) and raises a one-line :class:`~omnifield.errors.DataError` naming the file otherwise.
Pure numpy: no PLY library needed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnifield.errors import DataError
from omnifield.scenes.runs import atomic_path

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">"}
_MAX_DEGREE = 4


def splat_property_names(sh_degree: int) -> list[str]:
    """The vertex properties of a file with SH degree ``sh_degree``, in file order."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


@dataclass(frozen=True)
class SplatData:
    """Gaussians as stored in a 3DGS ``.ply`` (raw, un-activated parameters; float32 numpy arrays).

    Attributes:
        means: ``[N, 3]`` world positions.
        log_scales: ``[N, 3]`` log standard deviations.
        quats: ``[N, 4]`` rotations ``(w, x, y, z)``, as stored (unnormalised).
        opacity_logits: ``[N]`` logits of the opacity.
        sh: ``[N, K, 3]`` SH coefficients, ``K = (sh_degree + 1)^2``, coefficient 0 = DC.
        sh_degree: SH degree.
    """

    means: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    sh_degree: int

    def __len__(self) -> int:
        return int(self.means.shape[0])


def _as_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array or tensor, got {type(x).__name__}") from None


def _degree_of(k: int) -> int | None:
    d = math.isqrt(k) - 1
    return d if k >= 1 and (d + 1) ** 2 == k else None


def write_splat_ply(path, means, log_scales, quats, opacity_logits, sh) -> Path:
    """Write Gaussians as a standard 3DGS ``.ply`` (module docstring), atomically; returns ``path``.

    Args (numpy arrays or tensors, stored as float32):
        means: ``[N, 3]``; log_scales: ``[N, 3]``; quats: ``[N, 4]`` (w, x, y, z);
        opacity_logits: ``[N]`` (or ``[N, 1]``); sh: ``[N, K, 3]`` with ``K = (degree + 1)^2``.
    """
    means, log_scales = _as_array(means, "means"), _as_array(log_scales, "log_scales")
    quats, sh = _as_array(quats, "quats"), _as_array(sh, "sh")
    opacity = _as_array(opacity_logits, "opacity_logits")
    n = means.shape[0] if means.ndim == 2 else -1
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {means.shape}")
    for name, arr, shape in (("log_scales", log_scales, (n, 3)), ("quats", quats, (n, 4))):
        if arr.shape != shape:
            raise ValueError(f"{name} must be [N, {shape[1]}] with N = {n}, got {arr.shape}")
    if opacity.shape == (n, 1):
        opacity = opacity[:, 0]
    if opacity.shape != (n,):
        raise ValueError(f"opacity_logits must be [N] with N = {n}, got {opacity.shape}")
    if sh.ndim != 3 or sh.shape[0] != n or sh.shape[2] != 3 or _degree_of(sh.shape[1]) is None:
        raise ValueError(f"sh must be [N, K, 3] with N = {n} and K = (degree + 1)^2, got {sh.shape}")
    degree = _degree_of(sh.shape[1])
    names = splat_property_names(degree)
    columns = np.concatenate(
        [
            means,
            np.zeros((n, 3), np.float32),
            sh[:, 0, :],
            sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (sh.shape[1] - 1)),  # channel-major f_rest
            opacity[:, None],
            log_scales,
            quats,
        ],
        axis=1,
    )
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(("\n".join(header) + "\n").encode("ascii"))
            f.write(np.ascontiguousarray(columns, dtype="<f4").tobytes())
    return path


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy type code without byte order)
    has_list: bool


def _parse_header(raw: bytes, path: Path) -> tuple[str, list[_Element], int]:
    """(byte order, elements, byte offset of the body)."""
    if not raw.startswith(b"ply"):
        raise DataError("not a PLY file (no 'ply' magic)", path)
    m = re.search(rb"end_header\r?\n", raw[:1 << 20])
    if m is None:
        raise DataError("PLY header has no 'end_header'", path)
    order, elements = None, []
    for line in raw[: m.start()].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _FORMATS:
                fmt = words[1] if len(words) > 1 else "?"
                raise DataError(f"unsupported PLY format {fmt!r} (binary_little_endian expected)", path)
            order = _FORMATS[words[1]]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_Element(words[1], int(words[2]), [], False))
        elif words[0] == "property" and elements and len(words) >= 3:
            if words[1] == "list":
                elements[-1] = _Element(elements[-1].name, elements[-1].count, elements[-1].properties, True)
            elif words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise DataError(f"unknown PLY property type {words[1]!r} in {line.strip()!r}", path)
        else:
            raise DataError(f"malformed PLY header line {line.strip()!r}", path)
    if order is None:
        raise DataError("PLY header has no 'format' line", path)
    return order, elements, m.end()


def _vertex_table(path: Path) -> np.ndarray:
    """The ``vertex`` element as a structured array (fields in file order)."""
    if not path.is_file():
        raise DataError("file not found", path)
    raw = path.read_bytes()
    order, elements, offset = _parse_header(raw, path)
    for el in elements:
        if el.has_list:
            raise DataError(f"PLY element {el.name!r} has list properties (a mesh?), not a 3DGS splat file", path)
        dtype = np.dtype([(name, order + code) for name, code in el.properties])
        if el.name == "vertex":
            if offset + el.count * dtype.itemsize > len(raw):
                raise DataError(f"truncated: {len(raw) - offset} bytes for {el.count} vertices of "
                                f"{dtype.itemsize} bytes", path)
            return np.frombuffer(raw, dtype, el.count, offset)
        offset += el.count * dtype.itemsize
    raise DataError("PLY file has no 'vertex' element", path)


def read_splat_ply(path) -> SplatData:
    """Read a standard 3DGS ``.ply`` into :class:`SplatData` (float32 arrays, bit-exact for float files).

    Raises DataError naming the file when it is not a PLY, is truncated, lacks a required property, or
    has an ``f_rest`` count that is not ``3 * ((d + 1)^2 - 1)`` for a degree ``d`` (with contiguous indices).
    """
    path = Path(path)
    table = _vertex_table(path)
    names = set(table.dtype.names or ())
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [p for p in required if p not in names]
    if missing:
        raise DataError(f"not a 3DGS splat file: missing vertex properties {', '.join(missing)}", path)
    rest_idx = sorted(int(n[7:]) for n in names if re.fullmatch(r"f_rest_\d+", n))
    n_rest = len(rest_idx)
    degree = _degree_of(n_rest // 3 + 1) if n_rest % 3 == 0 else None
    if degree is None or degree > _MAX_DEGREE or rest_idx != list(range(n_rest)):
        valid = ", ".join(str(3 * ((d + 1) ** 2 - 1)) for d in range(_MAX_DEGREE + 1))
        raise DataError(f"inconsistent f_rest properties: {n_rest} found (indices 0..n-1 expected, n one of "
                        f"{valid} for SH degree 0..{_MAX_DEGREE})", path)

    def cols(*keys) -> np.ndarray:
        return np.stack([table[k].astype(np.float32) for k in keys], axis=1).reshape(len(table), len(keys))

    n, k = len(table), (degree + 1) ** 2
    sh = np.empty((n, k, 3), np.float32)
    sh[:, 0, :] = cols("f_dc_0", "f_dc_1", "f_dc_2")
    if k > 1:
        sh[:, 1:, :] = cols(*(f"f_rest_{i}" for i in range(n_rest))).reshape(n, 3, k - 1).transpose(0, 2, 1)
    return SplatData(
        means=cols("x", "y", "z"),
        log_scales=cols("scale_0", "scale_1", "scale_2"),
        quats=cols("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=cols("opacity")[:, 0].copy(),
        sh=sh,
        sh_degree=degree,
    )


__all__ = ["SplatData", "read_splat_ply", "splat_property_names", "write_splat_ply"]
