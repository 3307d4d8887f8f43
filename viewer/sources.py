"""What the viewer can show, behind one Protocol: trained scenes, point clouds, meshes, datasets.

A :class:`ViewSource` renders one camera to an image-shaped :class:`RenderOutput` and can be
interrupted between chunks of work (``should_stop``), so the render thread drops a stale frame as
soon as the user moves. Sources know nothing of the display.

Coordinates: a run is shown in its normalised world (``world_from_dataset`` from the run); point and
mesh files in the coordinates they were written in (exports use the dataset's original coordinates),
``world_from_dataset`` identity; a dataset folder in its normalised world.
"""

from __future__ import annotations

import contextlib
import math
import threading
from pathlib import Path
from typing import Callable, ContextManager, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.errors import DataError
from omnifield.renderers.points import render_points
from omnifield.renderers.types import RayBundle, RenderOutput
from omnifield.scenes.base import RenderOptions, TimeVarying

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".off", ".stl")
SWEEP_SUFFIXES = (".npz", ".npy", ".bin", ".pcd")
"""Files :func:`open_source` tries as a dataset, then as point clouds (``.ply`` files open as points or meshes)."""
DEFAULT_MESH_SAMPLES = 300_000
CAMERA_CENTRE_COLOR = (1.0, 0.45, 0.1)


@runtime_checkable
class ViewSource(Protocol):
    """Anything the viewer can show.

    Attributes:
        name: shown in the title bar.
        channels: names of the channels :meth:`render` returns (``rgb``, ``alpha``, ``depth``,
            ``normals`` if any, extras).
        time_range: ``(t0, t1)`` for dynamic sources (the time slider's range), None for static ones.
        scene_box: ``[2, 3]`` float32 box (min, max) in the source's world.
        dataset_cameras: cameras to draw as frusta (source world), or None.
        world_from_dataset: ``[4, 4]`` similarity from dataset coordinates to the source's world.

    Optional: ``dataset_images``, a callable ``i -> [H, W, 3] uint8`` image of dataset camera ``i``
    (drawn in the frusta), or None; the viewer reads it off the UI thread. ``time_label(time) -> str``,
    shown after the time readout (a sequence's ``frame i / F``).
    """

    name: str
    channels: tuple[str, ...]
    time_range: tuple[float, float] | None
    scene_box: Tensor
    dataset_cameras: Cameras | None
    world_from_dataset: Tensor

    def stats(self) -> dict[str, str]:
        """Short facts for the info panel (name -> value)."""

    def render(self, cameras: Cameras, time: float | None, options: RenderOptions,
               should_stop: Callable[[], bool]) -> RenderOutput | None:
        """Render camera 0 of ``cameras`` to ``[H, W, k]`` (no grad); None once ``should_stop()`` is true.

        Sources may also take a keyword-only ``lock`` (held while each chunk renders); the
        :class:`~omnifield.viewer.worker.RenderWorker` passes it only when it has one.
        """


def _locked(lock: ContextManager | None) -> ContextManager:
    return lock if lock is not None else contextlib.nullcontext()


def _device_of(module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _box_of(points: Tensor) -> Tensor:
    """``[2, 3]`` bounds of ``points [P, 3]`` padded by 2% (unit box around the origin when empty)."""
    if points.numel() == 0:
        return torch.tensor([[-1.0] * 3, [1.0] * 3])
    lo, hi = points.min(0).values.float().cpu(), points.max(0).values.float().cpu()
    pad = ((hi - lo).max() * 0.02).clamp_min(1e-3)
    return torch.stack([lo - pad, hi + pad])


def _fmt_count(n: int) -> str:
    return f"{n:,}"


class SceneSource:
    """Any :class:`~omnifield.scenes.base.Scene`, rendered ray chunk by ray chunk.

    ``info``: the run's :class:`~omnifield.scenes.runs.SceneInfo` (cameras, scene box, world), or
    None. ``extra_stats``: more lines for :meth:`stats` (e.g. the run's step). ``lock``: held while
    the channel probe (a 4x4 render at construction) runs, for a scene that is training.
    ``dataset_images``: ``i -> [H, W, 3]`` uint8 image of ``info.cameras[i]`` (see :func:`run_images`).
    ``render_rays`` is only an optional capability: scenes that override ``render`` (rasterizers such
    as 3DGS) are rendered with one ``scene.render(cameras, time, options)`` call, checked for
    ``should_stop`` before and after.
    """

    def __init__(self, scene, info=None, name: str = "scene", *, extra_stats: dict[str, str] | None = None,
                 lock: ContextManager | None = None, dataset_images: Callable[[int], np.ndarray] | None = None):
        self.scene = scene
        self.info = info
        self.name = name
        self.device = _device_of(scene)
        box = info.scene_box if info is not None else getattr(scene, "scene_box", None)
        self.scene_box = _box_of(torch.zeros(0, 3)) if box is None else torch.as_tensor(box).detach().float().cpu().clone()
        self.dataset_cameras = None if info is None else info.cameras
        self.dataset_images = dataset_images if self.dataset_cameras is not None else None
        self.world_from_dataset = torch.eye(4) if info is None else torch.as_tensor(info.world_from_dataset).float().cpu()
        self.time_range = tuple(float(t) for t in scene.time_range) if isinstance(scene, TimeVarying) else None
        self._extra_stats = dict(extra_stats or {})
        self.channels = self._probe_channels(lock)

    def _probe_channels(self, lock) -> tuple[str, ...]:
        """Channel names, from rendering a 4x4 probe once (here, so the UI thread never renders)."""
        from omnifield.viewer.camera import default_view, to_cameras

        cams = to_cameras(default_view(self.scene_box, self.dataset_cameras), 4, 4)
        t = None if self.time_range is None else self.time_range[0]
        out = self.render(cams, t, RenderOptions(chunk=16), lambda: False, lock=lock)
        return tuple(out.channels())

    def stats(self) -> dict[str, str]:
        """Method, parameter count, device, dataset cameras, time range, plus ``extra_stats``."""
        n = sum(p.numel() for p in self.scene.parameters())
        out = {"method": str(getattr(self.scene, "method", "") or type(self.scene).__name__),
               "parameters": _fmt_count(n), "device": str(self.device)}
        if self.dataset_cameras is not None:
            out["cameras"] = str(len(self.dataset_cameras))
        if self.time_range is not None:
            out["time"] = f"{self.time_range[0]:g} .. {self.time_range[1]:g}"
        out.update({k: str(v) for k, v in self._extra_stats.items()})
        return out

    def _uses_rays(self) -> bool:
        """Render in interruptible ray chunks only where that is what ``scene.render`` would do anyway: the
        scene keeps :meth:`Scene.render` and implements ``render_rays``. Scenes that override ``render``
        (rasterizers such as 3DGS, or any scene with its own image path) are rendered by one ``render`` call."""
        from omnifield.scenes.base import Scene

        cls = type(self.scene)
        own_rays = getattr(cls, "render_rays", None) not in (None, Scene.render_rays)
        return own_rays and getattr(cls, "render", None) is Scene.render

    def render(self, cameras: Cameras, time: float | None, options: RenderOptions,
               should_stop: Callable[[], bool], *, lock: ContextManager | None = None) -> RenderOutput | None:
        """Render camera 0 in chunks of ``options.chunk`` rays with ``scene.render_rays`` (no grad), or
        with one ``scene.render`` call for scenes that override it.

        Returns None as soon as ``should_stop()`` is true (checked before every chunk). ``lock``
        (e.g. a Trainer's ``.lock``) is held while each chunk renders; during it the scene is put in
        eval mode and restored after, so a live-training scene renders deterministically.
        ``options.crop_box`` and ``near``/``far`` are passed to the scene.
        """
        from omnifield.renderers.rays import image_rays

        cameras = cameras[0].to(self.device)
        h, w = int(cameras.height[0]), int(cameras.width[0])
        with torch.no_grad():
            if not self._uses_rays():
                if should_stop():
                    return None
                with _locked(lock), self._eval_mode():
                    out = self.scene.render(cameras, time=time, options=options)[0]
                return None if should_stop() else out
            rays = image_rays(cameras, 0)
            if time is not None:
                rays = RayBundle(rays.origins, rays.directions, rays.camera_indices,
                                 torch.full_like(rays.origins[:, 0], float(time)), rays.pixel_radius)
            bg = self._background(options)
            parts = []
            chunk = max(int(options.chunk), 1)
            for i in range(0, len(rays), chunk):
                if should_stop():
                    return None
                with _locked(lock), self._eval_mode():
                    parts.append(self.scene.render_rays(rays[i: i + chunk], bg, options))
        return RenderOutput.cat(parts).map(lambda t: t.reshape(h, w, -1))

    def _background(self, options: RenderOptions) -> Tensor:
        if hasattr(self.scene, "background_tensor"):
            return self.scene.background_tensor(options)
        return torch.tensor(options.background or (1.0, 1.0, 1.0), dtype=torch.float32, device=self.device)

    @contextlib.contextmanager
    def _eval_mode(self):
        was = bool(getattr(self.scene, "training", False))
        if was:
            self.scene.train(False)
        try:
            yield
        finally:
            if was:
                self.scene.train(True)


class PointSource:
    """A coloured point cloud, rendered by :func:`omnifield.renderers.points.render_points`.

    ``points [P, 3]`` world, ``colors [P, 3]`` float in [0, 1] or uint8 (None: light grey),
    ``cameras``: dataset cameras to draw as frusta, ``dataset_images`` their images (``i -> [H, W, 3]``
    uint8). ``normals [P, 3]`` optional (adds the normals channel). ``options.crop_box`` hides points
    outside the box.
    """

    kind = "points"

    def __init__(self, points, colors=None, name: str = "points", cameras: Cameras | None = None, *,
                 normals=None, scene_box=None, world_from_dataset=None, point_size_px: float = 2.0,
                 device="cpu", extra_stats: dict[str, str] | None = None,
                 dataset_images: Callable[[int], np.ndarray] | None = None):
        pts = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points).float()
        if pts.ndim != 2 or pts.shape[-1] != 3:
            raise ValueError(f"{name}: points must be [P, 3], got {tuple(pts.shape)}")
        if colors is None:
            cols = torch.full_like(pts, 0.8)
        else:
            cols = torch.as_tensor(np.asarray(colors) if not isinstance(colors, Tensor) else colors)
            cols = cols.float() / 255.0 if cols.dtype == torch.uint8 else cols.float()
            cols = cols[:, :3]
        if cols.shape != pts.shape:
            raise ValueError(f"{name}: colors must be [P, 3] like points {tuple(pts.shape)}, got {tuple(cols.shape)}")
        self.device = torch.device(device)
        self.points, self.colors = pts.to(self.device), cols.clamp(0, 1).to(self.device)
        self.normals = None if normals is None else torch.as_tensor(normals).float().to(self.device)
        self.name = name
        self.point_size_px = float(point_size_px)
        self.dataset_cameras = cameras
        self.dataset_images = dataset_images if cameras is not None else None
        self.scene_box = _box_of(pts) if scene_box is None else torch.as_tensor(scene_box).float().cpu().reshape(2, 3)
        self.world_from_dataset = torch.eye(4) if world_from_dataset is None else torch.as_tensor(world_from_dataset).float().cpu()
        self.time_range = None
        self.channels = ("rgb", "alpha", "depth") + (("normals",) if self.normals is not None else ())
        self._extra_stats = dict(extra_stats or {})

    def stats(self) -> dict[str, str]:
        """Point count, bounds, cameras, plus ``extra_stats``."""
        lo, hi = self.scene_box.tolist()
        out = {"points": _fmt_count(len(self.points)),
               "bounds": " .. ".join("(" + ", ".join(f"{v:.3g}" for v in b) + ")" for b in (lo, hi))}
        if self.dataset_cameras is not None:
            out["cameras"] = str(len(self.dataset_cameras))
        out.update({k: str(v) for k, v in self._extra_stats.items()})
        return out

    def render(self, cameras: Cameras, time: float | None, options: RenderOptions,
               should_stop: Callable[[], bool], *, lock: ContextManager | None = None) -> RenderOutput | None:
        """Render camera 0 with the z-buffered point renderer (no grad); None when ``should_stop()``."""
        if should_stop():
            return None
        pts, cols, nrm = self.points, self.colors, self.normals
        if options.crop_box is not None:
            box = torch.tensor(options.crop_box, dtype=pts.dtype, device=pts.device)
            keep = ((pts >= box[0]) & (pts <= box[1])).all(-1)
            pts, cols, nrm = pts[keep], cols[keep], None if nrm is None else nrm[keep]
        with torch.no_grad():
            out = render_points(pts, cols, cameras[0].to(self.device), options.background or (1.0, 1.0, 1.0),
                                self.point_size_px, normals=nrm, near=options.near or 1e-6)
        if options.far is not None:  # beyond far: empty, like a ray renderer
            far = out.depth > options.far
            bg = torch.tensor(options.background or (1.0, 1.0, 1.0), device=out.rgb.device)
            out = RenderOutput(torch.where(far, bg, out.rgb), torch.where(far, 0.0, out.alpha),
                               torch.where(far, 0.0, out.depth), None if out.normals is None else torch.where(far, 0.0, out.normals))
        return None if should_stop() else out


class MeshSource(PointSource):
    """A triangle mesh shown as a dense set of surface points (area-uniform samples, seeded).

    Colours: vertex colours interpolated barycentrically, else a grey shaded by the face normal
    against a fixed light. Normals channel: the face normals. A true mesh rasterizer arrives with
    the DNMP issue; until then thin features and close-ups show gaps between samples.
    """

    kind = "mesh"

    def __init__(self, vertices, faces, vertex_colors=None, name: str = "mesh", *, samples: int = DEFAULT_MESH_SAMPLES,
                 seed: int = 0, device="cpu", point_size_px: float = 2.0):
        import trimesh

        v = np.asarray(vertices, np.float64)
        f = np.asarray(faces, np.int64)
        if f.ndim != 2 or f.shape[-1] != 3 or len(f) == 0:
            raise ValueError(f"{name}: faces must be [F, 3] with F > 0, got {f.shape}")
        mesh = trimesh.Trimesh(v, f, process=False)
        pts, face_idx, bary = trimesh.sample.sample_surface(mesh, int(samples), return_barycentric=True, seed=seed)
        normals = mesh.face_normals[face_idx]
        if vertex_colors is not None:
            vc = np.asarray(vertex_colors)[:, :3]
            vc = vc.astype(np.float64) / 255.0 if vc.dtype == np.uint8 else vc.astype(np.float64)
            colors = np.einsum("pk,pkc->pc", bary, vc[f[face_idx]])
        else:
            light = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
            colors = np.repeat((0.35 + 0.6 * np.abs(normals @ light))[:, None], 3, -1)
        super().__init__(pts, colors, name, normals=normals, device=device, point_size_px=point_size_px,
                         scene_box=_box_of(torch.from_numpy(v).float()),
                         extra_stats={"vertices": _fmt_count(len(v)), "faces": _fmt_count(len(f)),
                                      "shown as": f"{_fmt_count(int(samples))} surface points"})


# -- opening paths ---------------------------------------------------------------------------------
def _load_trimesh(path: Path, force: str | None = None):
    import trimesh

    try:
        return trimesh.load(str(path), process=False, force=force)
    except Exception as e:  # trimesh raises many types (ValueError, KeyError, struct.error, ...) on bad files
        raise DataError(f"cannot read {path.suffix} file ({type(e).__name__}: {e})", path) from None


def _gaussian_colors(geom) -> np.ndarray | None:
    """Colours of a 3DGS ``.ply`` (SH degree-0 ``f_dc_*`` properties), when trimesh kept them."""
    raw = (getattr(geom, "metadata", None) or {}).get("_ply_raw", {})
    vert = raw.get("vertex", {}).get("data") if isinstance(raw, dict) else None
    if vert is None or not hasattr(vert, "dtype") or vert.dtype.names is None or "f_dc_0" not in vert.dtype.names:
        return None
    c0 = 0.28209479177387814
    return np.clip(0.5 + c0 * np.stack([vert[f"f_dc_{i}"] for i in range(3)], -1), 0, 1)


def _from_geometry(geom, path: Path, device, mesh_samples: int):
    import trimesh

    if isinstance(geom, trimesh.Scene):
        geom = geom.to_geometry() if hasattr(geom, "to_geometry") else geom.dump(concatenate=True)
    if isinstance(geom, trimesh.Trimesh) and len(geom.faces) > 0:
        colors = None
        visual = geom.visual
        if getattr(visual, "kind", None) == "vertex":
            colors = np.asarray(visual.vertex_colors)[:, :3]
        elif getattr(visual, "kind", None) == "texture":
            with contextlib.suppress(Exception):  # textures without UVs / images: fall back to shading
                colors = np.asarray(visual.to_color().vertex_colors)[:, :3]
        return MeshSource(geom.vertices, geom.faces, colors, path.name, samples=mesh_samples, device=device)
    vertices = np.asarray(getattr(geom, "vertices", np.zeros((0, 3))))
    if len(vertices) == 0:
        raise DataError("holds no points or faces", path)
    colors = _gaussian_colors(geom)
    if colors is None:
        vc = getattr(geom, "colors", None)
        colors = np.asarray(vc)[:, :3] if vc is not None and len(vc) == len(vertices) else None
    return PointSource(vertices, colors, path.name, device=device, extra_stats={"file": str(path)})


def _dataset_source(path: Path, device) -> PointSource:
    from omnifield.datasets.load import load_scene

    data = load_scene(path)
    cams = data.cameras
    if data.points is not None and len(data.points) > 0:
        pts, cols, what = data.points, data.point_colors, "dataset points"
    else:
        pts = cams.c2w[:, :3, 3]
        cols, what = torch.tensor(CAMERA_CENTRE_COLOR).expand(len(pts), 3).clone(), "camera centres"
    return PointSource(pts, cols, path.name, cameras=cams, scene_box=data.scene_box, device=device,
                       world_from_dataset=data.world_from_dataset, point_size_px=3.0,
                       dataset_images=lambda i: data.images.rgb(i).numpy(),
                       extra_stats={"format": data.format, "showing": what, "images": str(len(data))})


def open_source(path, *, device="cpu", mesh_samples: int = DEFAULT_MESH_SAMPLES, flow=None) -> ViewSource:
    """Open what ``omnifield view PATH`` shows.

    - a run directory (has ``config.json``): :func:`~omnifield.scenes.runs.load_run` -> :class:`SceneSource`;
    - ``.ply``: faces -> :class:`MeshSource`, else :class:`PointSource` (3DGS files show their DC colours);
    - ``.obj``, ``.glb``, ``.gltf``, ``.off``, ``.stl`` -> :class:`MeshSource`;
    - a dataset folder or file (:func:`~omnifield.datasets.load.load_scene`) -> :class:`PointSource` of its
      points (else its camera centres) with its cameras as frusta;
    - anything else :func:`~omnifield.datasets.pointclouds.load_point_clouds` reads (a scene-flow ``.npz``,
      a sweep ``.bin`` / ``.pcd`` / ``.npy``, a folder of sweeps, a synth_lidar or AV2 log folder) ->
      :class:`~omnifield.viewer.sequence.SequenceSource` (``flow``: a ``flow.npz`` of ``omnifield flow
      estimate``, drawn as the ``flow`` channel; only for these).

    Raises :class:`DataError` naming the path when it is missing or not viewable (CheckpointError for
    a broken run).
    """
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", p)
    if flow is not None:
        from omnifield.viewer.sequence import open_sequence

        try:
            return open_sequence(p, flow=flow, device=device)
        except DataError as e:
            if e.path is not None and e.path.resolve() == Path(flow).resolve():
                raise
            raise DataError(f"a flow file is drawn over point clouds, and these are not: {e.message}", p) from None
    if p.is_dir() and (p / "config.json").is_file():
        from omnifield.scenes.runs import load_run

        run = load_run(p, device=device)
        return SceneSource(run.scene, run.info, p.name, extra_stats={"step": str(run.step), "run": str(p)},
                           dataset_images=run_images(run))
    suffix = p.suffix.lower()
    if p.is_file() and suffix == ".ply":
        return _from_geometry(_load_trimesh(p), p, device, mesh_samples)
    if p.is_file() and suffix in MESH_SUFFIXES:
        return _from_geometry(_load_trimesh(p, force="mesh"), p, device, mesh_samples)
    if p.is_dir() or suffix in (".json",) + SWEEP_SUFFIXES:
        return _dataset_or_sequence(p, device)
    raise DataError(f"cannot view {suffix or 'this'} files; expected a run directory, a dataset folder, "
                    f"a .ply point cloud, a mesh ({', '.join(MESH_SUFFIXES)}) or lidar / scene-flow data "
                    f"({', '.join(SWEEP_SUFFIXES)} files, a folder of sweeps)", p)


def _dataset_or_sequence(p: Path, device) -> ViewSource:
    """A dataset (:func:`~omnifield.datasets.load.detect_format` knows it) or else a point-cloud sequence."""
    from omnifield.datasets.load import detect_format

    try:
        detect_format(p)
    except DataError as not_dataset:
        from omnifield.viewer.sequence import open_sequence

        try:
            return open_sequence(p, device=device)
        except DataError as not_sequence:
            raise DataError(f"neither a dataset ({not_dataset.message}) nor point clouds ({not_sequence.message})",
                            p) from None
    return _dataset_source(p, device)


def run_images(run) -> Callable[[int], np.ndarray]:
    """``i -> [H, W, 3]`` uint8 image of the run's camera ``i`` (``run.info.cameras``, every split), read
    from the run's dataset folder on first use (:class:`DataError` naming the folder when it is gone)."""
    state: dict = {}
    lock = threading.Lock()

    def image(i: int) -> np.ndarray:
        with lock:
            if "data" not in state:
                if not Path(run.data_path).exists():
                    raise DataError("the run's dataset folder is gone, so the frusta cannot show its images", run.data_path)
                state["data"] = run.load_data()
        return state["data"].images.rgb(int(i)).numpy()

    return image


def frustum_scale(box: Tensor) -> float:
    """A depth for drawing dataset cameras as frusta: 5% of the diagonal of ``box [2, 3]``."""
    diag = float((box[1] - box[0]).norm())
    return 0.05 * diag if math.isfinite(diag) and diag > 0 else 0.1
