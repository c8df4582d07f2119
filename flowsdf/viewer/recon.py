"""The "Reconstruct" tab's work: an uploaded picture -> K sampled shapes -> mesh files to view and
download, bounded by the viewer's limits (K, the meshing resolution, the seed's range)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch import Tensor

from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import FORMATS, export_mesh
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import reconstruct_image
from flowsdf.viewer import panes

Progress = Callable[[float, str], None]


@dataclass
class ReconOutput:
    """What the tab shows for one request."""

    files: dict[str, Path]  # format -> the mesh file (glb, obj, ply)
    picture: np.ndarray  # (H, W, 3) uint8: the picture as the model saw it
    silhouette: np.ndarray  # (H, W, 3) uint8: predicted silhouette from the picture's camera
    caption: str  # Markdown


class MeshFolder:
    """A private temporary folder for the tab's mesh files: one subfolder per request, only the
    latest `keep` kept (the web server copies what it serves into its own cache)."""

    def __init__(self, keep: int = 8):
        self._root = tempfile.TemporaryDirectory(prefix="flowsdf-view-")
        self._keep, self._count, self._lock = keep, 0, threading.Lock()

    def new(self) -> Path:
        with self._lock:
            self._count += 1
            folder = Path(self._root.name) / f"{self._count:06d}"
            folder.mkdir()
            old = Path(self._root.name) / f"{self._count - self._keep:06d}"
        if old.is_dir():
            shutil.rmtree(old)
        return folder


def reconstruct_upload(pipe: FlowSDF, image: Tensor, name: str, samples: int, resolution: int, seed: int,
                       folder: Path, progress: Progress) -> ReconOutput:
    """Reconstruct one picture (3, S, S) and write its mesh as glb/obj/ply into `folder`, named
    after `name`. The caller checks the bounds. With K >= 2 the files hold the mean code's mesh
    with uncertainty colours."""
    progress(0.1, f"sampling {samples} code(s), meshing at {resolution}^3, searching the camera")
    rec = reconstruct_image(pipe, image, samples=samples, seed=seed, resolution=resolution)
    mesh = rec.mean_mesh if rec.mean_mesh is not None else rec.meshes[0]
    if len(mesh.faces) == 0:
        raise FlowSDFError("the decoded shape has no surface inside the bounding sphere; try another seed or picture")
    progress(0.9, "writing glb, obj and ply")
    stem = f"{name or 'shape'}-seed{seed}-k{samples}"
    files = {fmt: export_mesh(mesh, folder / f"{stem}.{fmt}") for fmt in FORMATS}
    lines = [f"**{samples} sample(s)**, seed {seed}, {rec.steps} Euler steps, mesh at {resolution}^3: "
             f"{len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces."]
    if rec.vertex_std is not None:
        lines.append(f"Shown: the mean code's mesh; colour = std of the {samples} decoded SDFs at each vertex "
                     f"(viridis, 0 to {rec.std_max:.4f} object units; median {float(np.median(rec.vertex_std)):.4f}).")
    else:
        lines.append("One sample: no uncertainty colouring (it needs K >= 2).")
    lines.append(f"Camera: searched (IoU of the silhouette with the picture's foreground {rec.camera_iou:.2f}).")
    lines.append("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in rec.timings.items()) + ".")
    return ReconOutput(files, panes.rgb_pane(rec.image.permute(1, 2, 0).numpy()),
                       panes.gray_pane(rec.silhouette.numpy()), "\n\n".join(lines))
