"""Pictures of reconstructions: shaded turntable views of meshes and the preview of one picture.

Matplotlib only (no display, no OpenGL): each triangle is drawn flat, shaded by a light placed over
the viewer's shoulder so every view is lit from the front, as the training renders are. Figures are
built on their own Agg canvas, never through pyplot, so the viewer's threads can draw at once.
Drawing cost grows with the triangles, so previews draw meshes made at a preview resolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import trimesh
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from flowsdf.figures.plots import save_figure
from flowsdf.mesh.uncertainty import CMAP

VIEW_LIMIT = 0.9  # the renderer's bounding sphere: every predicted surface lies inside it
GREY = (0.8, 0.8, 0.8)  # a mesh without colours
SAMPLE_COLOUR = (86 / 255, 118 / 255, 160 / 255)  # a generated sample: the viewer's slate blue for single meshes


def camera_angles(c2w: np.ndarray) -> tuple[float, float]:
    """Azimuth and elevation (degrees) of a camera-to-world matrix (4, 4) looking at the origin."""
    x, y, z = np.asarray(c2w, dtype=np.float64)[:3, 3]
    return math.degrees(math.atan2(y, x)), math.degrees(math.atan2(z, math.hypot(x, y)))


def _view_light(azimuth: float, elevation: float) -> np.ndarray:
    """A unit light direction from over the viewer's shoulder (up and to the left of the eye)."""
    a, e = math.radians(azimuth + 25.0), math.radians(elevation + 30.0)
    return np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])


def draw_mesh(ax, mesh: trimesh.Trimesh, azimuth: float, elevation: float, colour: tuple[float, float, float] = GREY
              ) -> None:
    """Draw a mesh on a 3-D axis seen from (azimuth, elevation): its vertex colours (mean per
    triangle) when it has them, `colour` otherwise, times Lambertian shading."""
    ax.set_axis_off()
    ax.set_xlim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_ylim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_zlim(-VIEW_LIMIT, VIEW_LIMIT)
    ax.set_box_aspect((1, 1, 1), zoom=1.5)  # matplotlib leaves wide margins around 3-D axes
    ax.view_init(elev=elevation, azim=azimuth)
    if len(mesh.faces) == 0:
        ax.text2D(0.2, 0.5, "empty shape:\nno surface", transform=ax.transAxes, fontsize=7)
        return
    tri = np.asarray(mesh.vertices)[np.asarray(mesh.faces)]  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    lambert = np.clip(normals @ _view_light(azimuth, elevation), 0.0, 1.0)  # (F,)
    # Coloured meshes are shaded more gently: the uncertainty map's dark end must keep its form.
    shade = (0.55 + 0.45 * lambert) if mesh.visual.kind == "vertex" else (0.3 + 0.7 * lambert)  # (F,)
    if mesh.visual.kind == "vertex":
        base = np.asarray(mesh.visual.vertex_colors)[np.asarray(mesh.faces), :3].mean(axis=1) / 255.0  # (F, 3)
    else:
        base = np.broadcast_to(np.asarray(colour, dtype=np.float64), (len(tri), 3))
    colors = np.concatenate([base * shade[:, None], np.ones((len(tri), 1))], axis=1)  # (F, 4)
    ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, linewidths=0))


def colour_bar(fig: Figure, ax, vmax: float, std: np.ndarray | None = None, horizontal: bool = False) -> None:
    """The uncertainty colour bar on `ax`: 0 .. vmax object units (the absolute scale of
    flowsdf.mesh.uncertainty), with the shown mesh's median and largest spread marked."""
    mappable = ScalarMappable(norm=Normalize(0.0, vmax), cmap=colormaps[CMAP])
    cb = fig.colorbar(mappable, cax=ax, orientation="horizontal" if horizontal else "vertical",
                      extend="max")
    cb.set_label("spread of the samples' surfaces (object units)", fontsize=7)
    cb.ax.tick_params(labelsize=6)
    if std is not None and len(std):
        for value, style in ((float(np.median(std)), ":"), (float(std.max()), "-")):
            at = min(value, vmax)
            (cb.ax.axvline if horizontal else cb.ax.axhline)(at, color="red", lw=1.0, ls=style)


def _title(rec) -> str:
    """One line: model, seed, K, and the verdict."""
    v = rec.verdict
    head = f"{rec.model}, seed {rec.seed}, {rec.samples} sample(s), score {v.score:.2f}"
    return head + (" - LOW CONFIDENCE" if v.low else "")


def preview_figure(rec, views: int = 3, max_samples: int = 5) -> Figure:
    """The preview of one `flowsdf.reconstruct.Reconstruction`, as a Figure (no pyplot: safe in threads).

    Row 1: the picture as the model saw it (prepared), the predicted silhouette from the input
    camera with its IoU, and the result mesh from `views` azimuths starting at the input camera's
    (K >= 2: the mean code's mesh coloured by the samples' spread, its colour bar beside it).
    With K >= 2, row 2: up to `max_samples` samples from the input camera's direction. Meshes are
    drawn at the reconstruction's preview resolution (`Reconstruction.preview_mesh`, `preview_samples`).
    """
    azimuth, elevation = camera_angles(rec.camera[1].numpy())
    azimuths = [azimuth + 360.0 * i / views for i in range(views)]
    many = rec.samples >= 2
    cols = 2 + views + (1 if many else 0)
    rows = 2 if many else 1
    fig = Figure(figsize=(1.7 * cols, 1.8 * rows + 0.3))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols, width_ratios=[1] * (2 + views) + ([0.25] if many else []))

    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(rec.image.permute(1, 2, 0).numpy())
    ax.set_title("as the model sees it", fontsize=7)
    ax.set_axis_off()
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(rec.silhouette.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"silhouette, IoU {rec.camera_iou:.2f}", fontsize=7)
    ax.set_axis_off()
    main = rec.preview_mesh()
    for j, az in enumerate(azimuths):
        ax = fig.add_subplot(grid[0, 2 + j], projection="3d")
        draw_mesh(ax, main, az, elevation)
        name = f"mean of {rec.samples}" if many else "shape"
        ax.set_title(f"{az - azimuth:+.0f} deg" if j else f"{name}, input view", fontsize=7)
    if many:
        colour_bar(fig, fig.add_subplot(grid[0, -1]), rec.colour_max, rec.vertex_std)
        for k, mesh in enumerate(rec.preview_samples()[:max_samples]):
            ax = fig.add_subplot(grid[1, k], projection="3d")
            draw_mesh(ax, mesh, azimuth, elevation)
            ax.set_title(f"sample {k + 1}", fontsize=7)
    fig.suptitle(_title(rec), fontsize=8, color="firebrick" if rec.verdict.low else "black")
    return fig


def reconstruction_preview(rec, path: Path, views: int = 3) -> None:
    """Write `preview_figure(rec)` as a PNG at `path`."""
    save_figure(preview_figure(rec, views), path, dpi=90)


def generation_figure(prompt: str, meshes: list[trimesh.Trimesh], mean: trimesh.Trimesh | None,
                      colour_max: float | None, std: np.ndarray | None, subtitle: str, max_samples: int = 6,
                      azimuth: float = 35.0, elevation: float = 20.0) -> Figure:
    """The preview of one prompt's samples (flowsdf.generate): the mean code's mesh coloured by the
    samples' spread with its colour bar (K >= 2), then up to `max_samples` samples, all from one
    viewpoint; the prompt as the title."""
    shown = meshes[:max_samples]
    cols = len(shown) + (2 if mean is not None else 0)
    fig = Figure(figsize=(1.7 * cols + 0.2, 2.2))
    FigureCanvasAgg(fig)
    ratios = ([1, 0.25] if mean is not None else []) + [1] * len(shown)
    grid = fig.add_gridspec(1, cols, width_ratios=ratios)
    col = 0
    if mean is not None:
        ax = fig.add_subplot(grid[0, 0], projection="3d")
        draw_mesh(ax, mean, azimuth, elevation)
        ax.set_title(f"mean of {len(meshes)}", fontsize=7)
        colour_bar(fig, fig.add_subplot(grid[0, 1]), colour_max, std)
        col = 2
    for k, mesh in enumerate(shown):
        ax = fig.add_subplot(grid[0, col + k], projection="3d")
        draw_mesh(ax, mesh, azimuth, elevation, SAMPLE_COLOUR)
        ax.set_title(f"sample {k + 1}", fontsize=7)
    fig.suptitle(f'"{prompt}"  ({subtitle})', fontsize=8)
    return fig


def mesh_image(mesh: trimesh.Trimesh, azimuth: float, elevation: float, size: int = 160,
               title: str | None = None, colour: tuple[float, float, float] = GREY) -> np.ndarray:
    """One mesh drawn from (azimuth, elevation) as RGB uint8 (size, size, 3) (a gallery tile);
    `colour` for a mesh without vertex colours."""
    fig = Figure(figsize=(size / 80, size / 80), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.9 if title else 1.0), projection="3d")
    draw_mesh(ax, mesh, azimuth, elevation, tuple(colour))
    if title:
        fig.text(0.5, 0.93, title, ha="center", fontsize=8)
    return figure_array(fig)


def figure_array(fig: Figure) -> np.ndarray:
    """A Figure drawn on its Agg canvas: RGB uint8 (H, W, 3)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
