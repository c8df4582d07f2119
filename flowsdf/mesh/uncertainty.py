"""Uncertainty from samples: how much K sampled shapes disagree, per vertex of one mesh.

With K codes sampled for one picture, the decoded fields f_1 .. f_K are evaluated at the vertices
of the mean code's mesh. Where the K surfaces pass near a vertex v, sample k's surface lies at a
signed distance of about -f_k(v) / |grad f(v)| along the normal, f the mean of the K fields. The
spread is the standard deviation (population, ddof 0: two surfaces at +d and -d give d) of those
positions: std_k f_k(v) / |grad f(v)|, in object units. For exact distance fields |grad f| = 1 and
it is the plain std of the values; our decoders' fields are steeper or flatter than 1 per unit
(silhouette training does not ask for a distance), and dividing by the slope keeps a steep field's
small disagreement from looking certain (on held-out shapes it moved the rank correlation with the
true error from -0.07 to +0.17 pooled over shapes, benchmarks/uncertainty.py). Pure functions:
fields in, numbers and colours out.

`vertex_std` evaluates every field at every vertex, and the mean field's gradient by central
differences (the reference). `band_std` is what reconstruction uses: the K fields are evaluated
together (one `MultiField` call) only at the corners of the grid cells the mesh passes through -
the mean shape's narrow band on a grid a few voxels coarse - and each field and the mean's
gradient are interpolated trilinearly to the vertices. That is exact where the fields are affine
over a cell (planes, tilts) and costs a few thousand points instead of seven per vertex for each
of the K fields.

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
# A field flatter than this per unit length says little about where its surface is; the spread's
# divisor never goes below it (a flat spot would otherwise turn any disagreement into a huge one).
SLOPE_FLOOR = 0.1
# The central-difference step of `vertex_std`'s gradient, object units (a 20th of a 128^3 voxel).
GRADIENT_STEP = 1e-3


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


def surface_spread(values: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """The spread of K surfaces at V points, object units: values (K, V) of the K fields, gradient
    (V, 3) of their mean -> (V,) std over K of the values / max(|gradient|, SLOPE_FLOOR)."""
    slope = np.maximum(np.linalg.norm(np.asarray(gradient, dtype=np.float64), axis=-1), SLOPE_FLOOR)  # (V,)
    return sample_std(values) / slope


def vertex_std(fields: Sequence[PointField], vertices: np.ndarray) -> np.ndarray:
    """Per-vertex spread (V,) of K >= 2 fields' surfaces at the vertices (V, 3) of a mesh (the
    reference: every field at every vertex, the mean's gradient by central differences)."""
    v = np.asarray(vertices, dtype=np.float32)
    values = field_values(fields, v)  # (K, V)
    if len(v) == 0:
        return sample_std(values)
    steps = np.eye(3, dtype=np.float32) * GRADIENT_STEP  # (3, 3)
    ahead = field_values(fields, (v[None] + steps[:, None]).reshape(-1, 3)).mean(axis=0).reshape(3, -1)  # (3, V)
    behind = field_values(fields, (v[None] - steps[:, None]).reshape(-1, 3)).mean(axis=0).reshape(3, -1)  # (3, V)
    return surface_spread(values, ((ahead - behind) / (2 * GRADIENT_STEP)).T)


def band_std(fields: MultiField, count: int, vertices: np.ndarray, cell: float, origin: float = 0.0,
             chunk: int = 65536) -> np.ndarray:
    """Per-vertex spread (V,) of `count` >= 2 fields' surfaces (as `vertex_std`), interpolated from
    the corners of the cells of side `cell` (a grid with a point at (origin, origin, origin)) that
    hold the vertices (V, 3).

    `fields` maps points (P, 3) to (K, P). Each field is interpolated trilinearly to the vertices,
    and the mean field's gradient is that of its trilinear interpolant: exact when the fields are
    affine over each cell (tests/test_uncertainty.py); otherwise within the fields' curvature over
    one cell (measured on a trained decoder by benchmarks/reconstruct_latency.py).
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
    along = np.where(offsets[None] == 1, frac[:, None, :], 1.0 - frac[:, None, :])  # (V, 8, 3) per-axis weights
    weights = np.prod(along, axis=-1)  # (V, 8)
    at_corners = values[:, index.reshape(-1)].reshape(count, len(v), 8)  # (K, V, 8)
    # d(weight)/d(axis a): the other two axes' weights times +-1/cell along a.
    sign = np.where(offsets == 1, 1.0, -1.0) / cell  # (8, 3)
    d_weights = np.stack([sign[None, :, a] * np.prod(np.delete(along, a, axis=-1), axis=-1) for a in range(3)],
                         axis=-1)  # (V, 8, 3)
    gradient = (at_corners.mean(axis=0)[..., None] * d_weights).sum(axis=1)  # (V, 3) of the mean field
    return surface_spread((at_corners * weights[None]).sum(axis=-1), gradient)  # (V,)


def std_colors(std: np.ndarray, vmax: float = SCALE_MAX, cmap: str = CMAP) -> tuple[np.ndarray, float]:
    """Vertex colours (V, 4) uint8 RGBA for per-vertex std: 0 maps to the colormap's low end,
    `vmax` (default the absolute SCALE_MAX, object units) and above to its high end. Returns the
    colours and the vmax used, for a colour bar."""
    std = np.asarray(std, dtype=np.float64)
    if not vmax > 0:
        raise ValueError(f"the colour scale's top must be positive, got {vmax}")
    rgba = colormaps[cmap](np.clip(std / vmax, 0.0, 1.0))  # (V, 4) floats in [0, 1]
    return (rgba * 255).round().astype(np.uint8), float(vmax)
