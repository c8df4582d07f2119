"""Uncertainty from samples: how much K sampled shapes disagree, per vertex of one mesh.

With K codes sampled for one picture, the decoded fields f_1 .. f_K are evaluated at the vertices
of the mean code's mesh. The per-vertex standard deviation over the K values (population std,
ddof 0: two samples at +d and -d give d) says where the samples disagree about the surface: a
vertex where every sample's surface passes through it has std 0. It is in the field's units
(object units for a distance field). Pure functions: fields in, numbers and colours out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps

from flowsdf.fields import PointField

# The colour map of uncertainty everywhere it is shown (vertex colours, colour bars): dark = agree.
CMAP = "viridis"


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


def std_colors(std: np.ndarray, vmax: float | None = None, cmap: str = CMAP) -> tuple[np.ndarray, float]:
    """Vertex colours (V, 4) uint8 RGBA for per-vertex std: 0 maps to the colormap's low end,
    `vmax` (default: the largest std, or 1e-12 when all are 0) to its high end. Returns the
    colours and the vmax used, for a colour bar."""
    std = np.asarray(std, dtype=np.float64)
    vmax = float(std.max()) if vmax is None and len(std) else (vmax or 0.0)
    vmax = max(vmax, 1e-12)
    rgba = colormaps[cmap](np.clip(std / vmax, 0.0, 1.0))  # (V, 4) floats in [0, 1]
    return (rgba * 255).round().astype(np.uint8), vmax
