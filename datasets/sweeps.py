"""Raw lidar sweeps: one reader per file type (``.bin`` float32 x4 / x5, ``.ply``, ``.pcd``, ``.npy``,
AV2 ``.feather``), each giving the points and the intensity as stored (NaN rows included; the sequence
loaders of :mod:`omnifield.datasets.pointclouds` drop them). The ``.bin`` column rule is in that module's
docstring. Bad files raise ``DataError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omnifield.errors import DataError

SWEEP_SUFFIXES = (".bin", ".ply", ".pcd", ".npy", ".feather")


def read_sweep(path, columns: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """One raw sweep -> ``points [N, 3]`` float32 and ``intensity [N]`` float32 or None (rows as stored,
    NaN included). ``.bin`` (float32 x4 / x5; ``columns`` forces 4 or 5, see the module docstring),
    ``.ply`` (plyfile, else trimesh), ``.pcd`` (ascii / binary), ``.npy [N, 3+]`` (column 3 = intensity),
    ``.feather`` (AV2: x y z intensity; pyarrow). DataError naming the file when unreadable or empty."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", p)
    suffix = p.suffix.lower()
    if suffix == ".bin":
        pts, inten = _read_bin(p, columns)
    elif suffix == ".pcd":
        pts, inten = _read_pcd(p)
    elif suffix == ".ply":
        pts, inten = _read_ply(p)
    elif suffix == ".npy":
        pts, inten = _read_npy_sweep(p)
    elif suffix == ".feather":
        pts, inten = _read_feather_sweep(p)
    else:
        raise DataError(f"unknown sweep suffix {suffix!r} (known: {', '.join(SWEEP_SUFFIXES)})", p)
    if len(pts) == 0:
        raise DataError("empty point cloud", p)
    return np.ascontiguousarray(pts, dtype=np.float32), None if inten is None else np.asarray(inten, np.float32)


def _read_bin(p: Path, columns: int | None):
    if columns not in (None, 4, 5):
        raise ValueError(f"columns must be None, 4 or 5, got {columns!r}")
    size = p.stat().st_size
    if size % 4:
        raise DataError(f"truncated .bin: {size} bytes is not a whole number of float32 values", p)
    raw = np.fromfile(p, dtype="<f4")
    n = raw.size
    if columns is None:
        if n % 4 and n % 5:
            raise DataError(f"truncated .bin: {n} float32 values divide into neither 4 nor 5 columns", p)
        if n % 5:
            columns = 4
        elif n % 4:
            columns = 5
        else:
            ring = raw.reshape(-1, 5)[:, 4]
            columns = 5 if np.all((ring == np.round(ring)) & (ring >= 0) & (ring <= 255)) else 4
    elif n % columns:
        raise DataError(f"truncated .bin: {n} float32 values are not a multiple of {columns} columns", p)
    a = raw.reshape(-1, columns)
    return a[:, :3], a[:, 3]


_PCD_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
              ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8"}
_INTENSITY_NAMES = ("intensity", "i", "reflectance", "scalar_intensity")


def _read_pcd(p: Path):
    data = p.read_bytes()
    header, offset = {}, 0
    for _ in range(64):
        end = data.find(b"\n", offset)
        if end < 0:
            raise DataError("bad .pcd header: no DATA line", p)
        line = data[offset:end].decode("ascii", "replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            break
    else:
        raise DataError("bad .pcd header: no DATA line in the first 64 lines", p)
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = [t.upper() for t in header["TYPE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
        n = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        kind = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"bad .pcd header: missing or malformed {e}", p) from None
    if not (len(names) == len(sizes) == len(types) == len(counts)):
        raise DataError(f"bad .pcd header: FIELDS/SIZE/TYPE/COUNT lengths differ ({len(names)}, {len(sizes)}, "
                        f"{len(types)}, {len(counts)})", p)
    if not {"x", "y", "z"} <= set(names):
        raise DataError(f"bad .pcd header: FIELDS {names} lack x y z", p)
    try:
        dtype = np.dtype([(nm if nm != "_" else f"_pad{i}", "<" + _PCD_TYPES[(t, s)], (c,) if c > 1 else ())
                          for i, (nm, s, t, c) in enumerate(zip(names, sizes, types, counts))])
    except (KeyError, ValueError) as e:
        raise DataError(f"bad .pcd header: unsupported TYPE/SIZE or duplicate field ({e})", p) from None
    if kind == "ascii":
        values = np.array(data[offset:].split(), dtype=np.float64)
        width = sum(counts)
        if values.size != n * width:
            raise DataError(f"truncated .pcd: {values.size} ascii values for {n} points of {width}", p)
        flat = values.reshape(n, width)
        col = {nm: int(np.sum(counts[:i])) for i, nm in enumerate(names)}
        pts = flat[:, [col["x"], col["y"], col["z"]]]
        inten_name = next((nm for nm in _INTENSITY_NAMES if nm in col), None)
        return pts, None if inten_name is None else flat[:, col[inten_name]]
    if kind == "binary":
        if len(data) - offset < n * dtype.itemsize:
            raise DataError(f"truncated .pcd: {len(data) - offset} bytes of data for {n} points of "
                            f"{dtype.itemsize} bytes", p)
        rec = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
        pts = np.stack([rec["x"], rec["y"], rec["z"]], axis=1).astype(np.float64)
        inten_name = next((nm for nm in _INTENSITY_NAMES if nm in names), None)
        return pts, None if inten_name is None else rec[inten_name].astype(np.float32)
    raise DataError(f"unsupported .pcd DATA {kind!r} (ascii and binary are read; convert binary_compressed "
                    "with pcl_convert_pcd_ascii_binary)", p)


def _read_ply(p: Path):
    try:
        from plyfile import PlyData
    except ImportError:
        PlyData = None
    if PlyData is None:
        import trimesh

        try:
            geom = trimesh.load(str(p), process=False)
        except Exception as e:  # noqa: BLE001 - trimesh raises many types for a bad file
            raise DataError(f"cannot read .ply ({type(e).__name__}: {e})", p) from None
        raw = getattr(geom, "metadata", {}).get("_ply_raw", {}).get("vertex", {}).get("data")
        pts = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
        names = () if raw is None else raw.dtype.names or ()
        inten = next((raw[nm].reshape(-1) for nm in _INTENSITY_NAMES if nm in names), None)
        return pts, inten
    try:
        vertex = PlyData.read(str(p))["vertex"].data
    except Exception as e:  # noqa: BLE001 - plyfile raises PlyParseError, KeyError, ValueError ...
        raise DataError(f"cannot read .ply ({type(e).__name__}: {e})", p) from None
    names = vertex.dtype.names or ()
    if not {"x", "y", "z"} <= set(names):
        raise DataError(f".ply vertex element lacks x y z (has {list(names)})", p)
    pts = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    inten = next((vertex[nm] for nm in _INTENSITY_NAMES if nm in names), None)
    return pts, inten


def _read_npy_sweep(p: Path):
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"malformed npy: {e}", p) from None
    if a.dtype.names:
        if not {"x", "y", "z"} <= set(a.dtype.names):
            raise DataError(f"structured .npy lacks fields x y z (has {list(a.dtype.names)})", p)
        inten = next((a[nm] for nm in _INTENSITY_NAMES if nm in a.dtype.names), None)
        return np.stack([a["x"], a["y"], a["z"]], axis=1), inten
    if a.ndim != 2 or a.shape[1] < 3:
        raise DataError(f".npy sweep must be [N, 3+], got shape {a.shape}", p)
    return a[:, :3], a[:, 3] if a.shape[1] > 3 else None


def _pyarrow_feather():
    try:
        import pyarrow.feather as feather
    except ImportError as err:
        raise ImportError("reading Argoverse 2 .feather files needs pyarrow: pip install pyarrow "
                          "(or pip install 'omnifield[flow]')") from err
    return feather


def _read_table(p: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    feather = _pyarrow_feather()
    try:
        table = feather.read_table(str(p))
    except FileNotFoundError:
        raise DataError("file not found", p) from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ...
        raise DataError(f"cannot read .feather ({type(e).__name__}: {e})", p) from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"missing columns {missing} (has {table.column_names})", p)
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def _read_feather_sweep(p: Path):
    t = _read_table(p, ("x", "y", "z"))
    return np.stack([t["x"], t["y"], t["z"]], axis=1).astype(np.float64), t.get("intensity")
