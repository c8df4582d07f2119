"""What the commands that write meshes share: the output folder, a mesh's summary entry, PNG bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import trimesh
from PIL import Image

from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import is_watertight


def make_out_folder(out: Path) -> None:
    """Create the output folder and prove it writable, before any work is done."""
    if out.exists() and not out.is_dir():
        raise FlowSDFError(f"--out {out} is a file, not a folder")
    try:  # os.access says yes to root everywhere, so the folder is made rather than predicted
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowSDFError(f"cannot create --out {out}: {e.strerror or e}") from e
    probe = out / ".flowsdf-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FlowSDFError(f"cannot write to --out {out}: {e.strerror or e}") from e


def mesh_entry(mesh: trimesh.Trimesh, path: Path | None, out: Path) -> dict[str, Any]:
    """A written mesh (or an empty one, path None) as summary.json lists it."""
    return {"path": str(path.relative_to(out)) if path else None, "vertices": len(mesh.vertices),
            "faces": len(mesh.faces), "watertight": is_watertight(mesh), "empty": len(mesh.faces) == 0}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
