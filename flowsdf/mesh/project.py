"""Silhouettes by projecting points: a cheap stand-in for the ray-marcher when searching views.

Searching the camera of a picture renders the predicted shape from ~150 viewpoints; ray marching
the decoder for each costs millions of network evaluations (tens of seconds on a CPU). A closed
surface covers exactly its silhouette when projected, so points sampled densely on the mesh of the
code, projected through each camera, give the silhouettes for the price of a matrix product.
Same camera convention as flowsdf.data.cameras (OpenCV: x right, y down, z forward).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from flowsdf.mesh.extract import sample_surface


def point_silhouettes(points: Tensor, K: Tensor, c2w: Tensor, size: int) -> Tensor:
    """Which pixels the points (P, 3) fall in, per camera: K (G, 3, 3), c2w (G, 4, 4) ->
    (G, size, size) bool. Points behind a camera are ignored."""
    R, t = c2w[:, :3, :3], c2w[:, :3, 3]  # (G, 3, 3), (G, 3)
    cam = (points[None] - t[:, None]) @ R  # (G, P, 3) world -> camera: R^T (p - t)
    z = cam[..., 2]  # (G, P)
    front = z > 1e-6
    z = torch.where(front, z, torch.ones_like(z))
    u = K[:, None, 0, 0] * cam[..., 0] / z + K[:, None, 0, 2]  # (G, P) column coordinate
    v = K[:, None, 1, 1] * cam[..., 1] / z + K[:, None, 1, 2]  # (G, P) row coordinate
    col, row = u.floor().long(), v.floor().long()
    keep = front & (col >= 0) & (col < size) & (row >= 0) & (row < size)  # (G, P)
    G = c2w.shape[0]
    flat = (torch.arange(G)[:, None] * size + row) * size + col  # (G, P)
    out = torch.zeros(G * size * size, dtype=torch.bool)
    out[flat[keep]] = True
    return out.view(G, size, size)


def surface_samples(vertices: np.ndarray, faces: np.ndarray, pixel: float, seed: int = 0) -> Tensor:
    """Points on a mesh dense enough to cover every pixel of footprint `pixel` (world units at the
    object) about 4 times over: (n, 3) with n from the mesh area, at most 200 000."""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    n = int(min(200_000, max(1_000, math.ceil(4.0 * area / pixel**2))))
    return torch.from_numpy(sample_surface(vertices, faces, n, seed=seed))  # (n, 3)
