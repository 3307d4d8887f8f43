"""Meshes of scenes without a density field (Gaussians): TSDF fusion of their rendered depth.

Curless & Levoy 1996 volumetric fusion, as open3d's ``ScalableTSDFVolume`` implements it (Zhou &
Koltun's voxel-hashed volume): every camera's rendered depth (pixels with alpha > 0.5) and colour are
integrated into a truncated signed distance volume, whose zero level set is extracted with marching
cubes. Scenes with a density (:class:`~omnifield.scenes.base.HasDensity`) do not come here: they are
meshed on their own level set by :func:`omnifield.scenes.export.export_mesh`.

open3d (``pip install open3d-cpu``) is imported lazily; without it a ConfigError says what to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from omnifield.datasets.cameras import Cameras
from omnifield.distill.render_distill import pinhole, render_rgba
from omnifield.errors import ConfigError
from omnifield.scenes.export import MESH_FORMATS, keep_faces, transform_points, write_mesh


def _open3d():
    try:
        import open3d
    except ImportError:
        raise ConfigError("meshing a scene without density needs open3d for TSDF fusion "
                          "(pip install open3d-cpu)") from None
    return open3d


def z_depth(cameras: Cameras, c: int, depth: np.ndarray) -> np.ndarray:
    """Distance along the unit pixel ray ``[H, W]`` -> camera-space z (pinhole, pixel centres at +0.5)."""
    h, w = depth.shape
    u = (np.arange(w, dtype=np.float64) + 0.5 - float(cameras.cx[c])) / float(cameras.fx[c])
    v = (np.arange(h, dtype=np.float64) + 0.5 - float(cameras.cy[c])) / float(cameras.fy[c])
    length = np.sqrt(1.0 + u[None, :] ** 2 + v[:, None] ** 2)
    return (depth / length).astype(np.float32)


@torch.no_grad()
def tsdf_mesh(scene, cameras: Cameras, box: Tensor, *, time: float | None = None, resolution: int = 256,
              trunc_voxels: float = 4.0, min_alpha: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse the scene's renders from ``cameras`` into a mesh (world coordinates).

    Args:
        scene: anything with ``render`` (a dynamic scene is rendered at ``time``).
        cameras: the views to fuse (distortion is dropped: the renders are made for pinhole cameras).
        box: ``[2, 3]`` world box; the voxel size is its longest side / ``resolution``, and faces with
            a vertex outside the box (dilated by the truncation band) are dropped.
        trunc_voxels: truncation distance of the signed distance, in voxels.

    Returns:
        ``vertices [V, 3]`` float64, ``faces [F, 3]`` int64, ``colours [V, 3]`` float in [0, 1].
    """
    o3d = _open3d()
    box = torch.as_tensor(box, dtype=torch.float64).cpu().reshape(2, 3)
    voxel = float((box[1] - box[0]).max()) / max(8, int(resolution))
    volume = o3d.pipelines.integration.ScalableTSDFVolume(
        voxel_length=voxel, sdf_trunc=trunc_voxels * voxel,
        color_type=o3d.pipelines.integration.TSDFVolumeColorType.RGB8)
    cams = pinhole(cameras.to("cpu"))
    for c in range(len(cams)):
        rgba, depth = render_rgba(scene, cams, c, time)
        z = z_depth(cams, c, depth)
        z[rgba[..., 3] < min_alpha * 255] = 0.0
        h, w = z.shape
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(rgba[..., :3])), o3d.geometry.Image(np.ascontiguousarray(z)),
            depth_scale=1.0, depth_trunc=1e9, convert_rgb_to_intensity=False)
        # open3d's pixel (i, j) is at (i, j); ours is at (i + 0.5, j + 0.5).
        intrinsic = o3d.camera.PinholeCameraIntrinsic(w, h, float(cams.fx[c]), float(cams.fy[c]),
                                                      float(cams.cx[c]) - 0.5, float(cams.cy[c]) - 0.5)
        extrinsic = np.linalg.inv(cams.c2w[c].double().numpy())
        volume.integrate(rgbd, intrinsic, extrinsic)
    mesh = volume.extract_triangle_mesh()
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.triangles, dtype=np.int64)
    colours = np.asarray(mesh.vertex_colors, dtype=np.float64)
    if len(faces) == 0:
        raise ConfigError("TSDF fusion found no surface (the renders have no pixel with alpha > "
                          f"{min_alpha}); check the cameras and the scene")
    if len(colours) != len(verts):
        colours = np.full((len(verts), 3), 0.5)
    margin = trunc_voxels * voxel
    inside = ((verts >= box[0].numpy() - margin) & (verts <= box[1].numpy() + margin)).all(-1)
    keep = inside[faces].all(-1)
    if not keep.any():
        raise ConfigError("TSDF fusion found no surface inside the scene box")
    verts, faces, colours = keep_faces(verts, faces, keep, colours)
    return verts, faces, colours


def export_fused_mesh(run, out, *, cameras: Cameras, time: float | None = None, resolution: int = 256) -> Path:
    """:func:`tsdf_mesh` of ``run.scene`` over ``run.scene_box``, written in the dataset's original
    coordinates (``run.world_from_dataset`` inverted) as ``.ply`` / ``.obj`` / ``.glb`` with vertex colours."""
    out = Path(out)
    if out.suffix.lower() not in MESH_FORMATS:
        raise ConfigError(f"unknown mesh format {out.suffix!r} (use {', '.join(MESH_FORMATS)})", out)
    verts, faces, colours = tsdf_mesh(run.scene, cameras, run.scene_box, time=time, resolution=resolution)
    m = torch.linalg.inv(torch.as_tensor(run.world_from_dataset, dtype=torch.float64).cpu())
    verts = transform_points(m, verts)
    if float(torch.linalg.det(m[:3, :3])) < 0:  # a reflection flips the winding
        faces = faces[:, ::-1].copy()
    return write_mesh(out, verts, faces, colours)


__all__ = ["tsdf_mesh", "export_fused_mesh", "z_depth"]
