"""Meshes as files any 3-D tool opens: .glb, .obj and .ply through trimesh.

Vertices stay in object units (the decoder's world frame: shapes lie inside the unit sphere), and
per-vertex colours are written when a mesh has them (glTF COLOR_0, OBJ `v x y z r g b`, PLY
vertex properties). Files are written through a temporary file and renamed, so an interrupted
export never leaves half a mesh under the final name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from flowsdf.checkpoint import atomic_write_bytes
from flowsdf.errors import FlowSDFError

FORMATS = ("glb", "obj", "ply")


def to_trimesh(vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None) -> trimesh.Trimesh:
    """A trimesh from marching-cubes arrays: vertices (V, 3), faces (F, 3), optional colours (V, 4)
    uint8 RGBA. `process=False` keeps the vertex order, so colours stay on their vertices."""
    if colors is not None and len(colors) != len(vertices):
        raise ValueError(f"{len(colors)} colours for {len(vertices)} vertices")
    return trimesh.Trimesh(np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64),
                           vertex_colors=colors, process=False)


def is_watertight(mesh: trimesh.Trimesh) -> bool:
    """Closed and consistently wound (trimesh's check); False for an empty mesh."""
    return len(mesh.faces) > 0 and bool(mesh.is_watertight)


def export_mesh(mesh: trimesh.Trimesh, path: str | Path, file_format: str | None = None) -> Path:
    """Write `mesh` to `path` as glb, obj or ply (default: the path's suffix), atomically."""
    path = Path(path)
    file_format = (file_format or path.suffix.lstrip(".")).lower()
    if file_format not in FORMATS:
        raise FlowSDFError(f"{path}: unknown mesh format {file_format!r}; choose one of: {', '.join(FORMATS)}")
    data = mesh.export(file_type=file_format)
    data = data.encode() if isinstance(data, str) else data  # OBJ comes back as text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a mesh file back as one trimesh (a glTF scene is merged), vertex order kept."""
    return trimesh.load(str(path), force="mesh", process=False)
