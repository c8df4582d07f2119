"""Uncertainty from samples: how much K sampled shapes disagree, per vertex of one mesh.

With K codes sampled for one picture, the decoded fields f_1 .. f_K are evaluated at the vertices
of the mean code's mesh. The per-vertex standard deviation over the K values (population std,
ddof 0: two samples at +d and -d give d) says where the samples disagree about the surface: a
vertex where every sample's surface passes through it has std 0. It is in the field's units
(object units for a distance field). Pure functions: fields in, numbers and colours out.

`vertex_std` evaluates every field at every vertex (the reference). `band_std` is what
reconstruction uses: the K fields are evaluated together (one `MultiField` call) only at the
corners of the grid cells the mesh passes through - the mean shape's narrow band on a grid a few
voxels coarse - and each field is interpolated trilinearly to the vertices before the std is
taken. That is exact where the fields differ by an affine function of position (a shift, a
thickening) and costs a few thousand points instead of one per vertex for each of the K fields.

Colours are on one absolute scale, in object units (`SCALE_MAX`), so meshes can be compared and
a spread that is tiny everywhere stays dark instead of being stretched to fill the colour map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps

from flowsdf.fields import PointField
from flowsdf.mesh.extract import MultiField

# The colour map of uncertainty everywhere it is shown (vertex colours, colour bars): dark = agree.
CMAP = "viridis"
# The top of the colour scale, in object units (shapes lie inside the unit sphere). Why 0.05: it is
# about one input pixel at the object for the 32 x 32 presets (2.5 units away, 40 degree field of
# view: 0.057 units), so samples that disagree by a pixel of the picture, the finest detail the
# model could have seen, are at the bright end; the spread of near-identical samples stays dark.
SCALE_MAX = 0.05
# The cell of `band_std`'s grid in object units: about 4 voxels of a 128^3 grid, a third of an
# input pixel at the object, where the spread of a trained decoder's samples is close to linear
# (measured against `vertex_std` by benchmarks/reconstruct_latency.py).
BAND_CELL = 0.06


@torch.no_grad()
def field_values(fields: Sequence[PointField], points: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The K fields at points (V, 3): (K, V) float64."""
    p = torch.as_tensor(np.asarray(points), dtype=torch.float32)  # (V, 3)
    rows = []
    for f in fields:
        parts = [f(p[s : s + chunk]).reshape(-1).double().cpu() for s in range(0, len(p), chunk)]
        rows.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64))
    return torch.stack(rows).numpy()  # (K, V)


def sample_std(values: np.ndarray) -> np.ndarray:
    """Per-point standard deviation over samples: values (K, V) -> (V,), ddof 0; K >= 2."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"need values of shape (K >= 2, V), got {values.shape}")
    return values.std(axis=0)


def vertex_std(fields: Sequence[PointField], vertices: np.ndarray) -> np.ndarray:
    """Per-vertex std (V,) of K >= 2 fields at the vertices (V, 3) of a mesh."""
    return sample_std(field_values(fields, vertices))


def band_std(fields: MultiField, count: int, vertices: np.ndarray, cell: float, origin: float = 0.0,
             chunk: int = 65536) -> np.ndarray:
    """Per-vertex std (V,) of `count` >= 2 fields, interpolated from the corners of the cells of
    side `cell` (a grid with a point at (origin, origin, origin)) that hold the vertices (V, 3).

    `fields` maps points (P, 3) to (K, P). Each field is interpolated trilinearly to the vertices
    and the std taken over the K interpolated values: exact when the fields differ by affine
    functions of position (tests/test_uncertainty.py); otherwise within the fields' curvature
    over one cell (measured on a trained decoder by benchmarks/reconstruct_latency.py).
    """
    if count < 2:
        raise ValueError(f"need K >= 2 fields for a spread, got {count}")
    v = np.asarray(vertices, dtype=np.float64) - origin  # (V, 3)
    if len(v) == 0:
        return np.zeros(0)
    base = np.floor(v / cell).astype(np.int64)  # (V, 3) each vertex's cell
    frac = v / cell - base  # (V, 3) in [0, 1)
    offsets = np.stack(np.meshgrid(*([0, 1],) * 3, indexing="ij"), axis=-1).reshape(8, 3)  # (8, 3)
    corners = base[:, None, :] + offsets  # (V, 8, 3)
    unique, index = np.unique(corners.reshape(-1, 3), axis=0, return_inverse=True)  # (C, 3), (V*8,)
    points = torch.from_numpy(unique * cell + origin).float()  # (C, 3)
    with torch.no_grad():
        step = max(1, chunk // count)
        values = torch.cat([fields(points[s : s + step]).reshape(count, -1).double().cpu()
                            for s in range(0, len(points), step)], dim=1).numpy()  # (K, C)
    weights = np.prod(np.where(offsets[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :]), axis=-1)  # (V, 8)
    at_corners = values[:, index.reshape(-1)].reshape(count, len(v), 8)  # (K, V, 8)
    return sample_std((at_corners * weights[None]).sum(axis=-1))  # (V,)


def std_colors(std: np.ndarray, vmax: float = SCALE_MAX, cmap: str = CMAP) -> tuple[np.ndarray, float]:
    """Vertex colours (V, 4) uint8 RGBA for per-vertex std: 0 maps to the colormap's low end,
    `vmax` (default the absolute SCALE_MAX, object units) and above to its high end. Returns the
    colours and the vmax used, for a colour bar."""
    std = np.asarray(std, dtype=np.float64)
    if not vmax > 0:
        raise ValueError(f"the colour scale's top must be positive, got {vmax}")
    rgba = colormaps[cmap](np.clip(std / vmax, 0.0, 1.0))  # (V, 4) floats in [0, 1]
    return (rgba * 255).round().astype(np.uint8), float(vmax)
