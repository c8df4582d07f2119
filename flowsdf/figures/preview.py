"""Pictures of reconstructions: shaded turntable views of meshes and the preview of one picture.

Matplotlib only (no display, no OpenGL): each triangle is drawn flat, shaded by a light placed over
the viewer's shoulder so every view is lit from the front, as the training renders are.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import trimesh
from matplotlib import colormaps
from matplotlib.colors import Normalize
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from flowsdf.figures.plots import save_figure
from flowsdf.mesh.uncertainty import CMAP

VIEW_LIMIT = 0.9  # the renderer's bounding sphere: every predicted surface lies inside it


def camera_angles(c2w: np.ndarray) -> tuple[float, float]:
    """Azimuth and elevation (degrees) of a camera-to-world matrix (4, 4) looking at the origin."""
    x, y, z = np.asarray(c2w, dtype=np.float64)[:3, 3]
    return math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y)))


def _view_light(azimuth: float, elevation: float) -> np.ndarray:
    """A unit light direction from over the viewer's shoulder (up and to the left of the eye)."""
    a, e = math.radians(azimuth + 25.0), math.radians(elevation + 30.0)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def draw_mesh(ax, mesh: trimesh.Trimesh, azimuth: float, elevation: float) -> None:
    """Draw a mesh on a 3-D axis seen from (azimuth, elevation): its vertex colours (mean per
    triangle) when it has them, light grey otherwise, times Lambertian shading."""
    ax.set_axis_off()
    ax.set_xlim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_ylim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_zlim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_box_aspect((1, 1, 1), zoom=1.5)  # matplotlib leaves wide margins around 3-D axes
    ax.view_init(elev=elevation, azim=azimuth)
    if len(mesh.faces) == 0:
        ax.text2D(0.25, 0.5, "empty shape", transform=ax.transAxes, fontsize=7)
        return
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    shade = 0.3 + 0.7 * np.clip(normals @ _view_light(azimuth, elevation), 0.0, 1.0)  # (F,)
    if mesh.visual.kind == "vertex":
        base = np.asarray(mesh.visual.vertex_colors)[np.asarray(mesh.faces), :3].mean(axis=1) / 255.0  # (F, 3)
    else:
        base = np.full((len(tri), 3), 0.8)
    colors = np.concatenate([base * shade[:, None], np.ones((len(tri), 1))], axis=1)  # (F, 4)
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, linewidths=0))


def reconstruction_preview(rec, path: Path, views: int = 3) -> None:
    """The preview PNG of one `flowsdf.reconstruct.Reconstruction`.

    Row 1: the input picture, the predicted silhouette from the input camera, and the first
    sample's mesh from `views` azimuths starting at the input camera's. With K >= 2, row 2: the
    mean code's mesh coloured by per-vertex uncertainty (with its colour bar), and row 3: every
    sample (up to 2 + views) from the input camera's direction.
    """
    azimuth, elevation = camera_angles(rec.camera[1].numpy())
    azimuths = [azimuth + 360.0 * i / views for i in range(views)]
    many = rec.mean_mesh is not None
    cols = 2 + views
    rows = 3 if many else 1
    fig = plt.figure(figsize=(1.7 * cols, 1.8 * rows))

    def cell(r: int, c: int, projection: str | None = None):
        return fig.add_subplot(rows, cols, r * cols + c + 1, projection=projection)

    ax = cell(0, 0)
    ax.imshow(rec.image.permute(1, 2, 0).numpy())
    ax.set_title("input", fontsize=7)
    ax.set_axis_off()
    ax = cell(0, 1)
    ax.imshow(rec.silhouette.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"silhouette, IoU {rec.camera_iou:.2f}", fontsize=7)
    ax.set_axis_off()
    for j, az in enumerate(azimuths):
        ax = cell(0, 2 + j, "3d")
        draw_mesh(ax, rec.meshes[0], az, elevation)
        ax.set_title(f"sample 1, {az - azimuth:+.0f} deg" if j else "sample 1, input view", fontsize=7)
    if many:
        for j, az in enumerate(azimuths):
            ax = cell(1, 2 + j, "3d")
            draw_mesh(ax, rec.mean_mesh, az, elevation)
            if j == 0:
                ax.set_title("mean code, uncertainty", fontsize=7)
        bar = cell(1, 1)
        bar.set_axis_off()
        mappable = plt.cm.ScalarMappable(norm=Normalize(0.0, rec.std_max), cmap=colormaps[CMAP])
        cb = fig.colorbar(mappable, ax=bar, fraction=0.4)
        cb.set_label("std of SDF over samples", fontsize=7)
        cb.ax.tick_params(labelsize=6)
        for k, mesh in enumerate(rec.meshes[:cols]):
            ax = cell(2, k, "3d")
            draw_mesh(ax, mesh, azimuth, elevation)
            ax.set_title(f"sample {k + 1}", fontsize=7)
    fig.suptitle(f"{rec.model}, seed {rec.seed}, {len(rec.meshes)} sample(s)", fontsize=8)
    save_figure(fig, path, dpi=90)

