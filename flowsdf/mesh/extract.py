"""Meshes from signed distance fields: marching cubes and area-weighted surface sampling.

A field is a callable mapping (P, 3) points to (P,) signed distances, negative inside. Meshes are
plain numpy arrays: vertices (V, 3) float32 in world coordinates and faces (F, 3) int64 indices,
wound so that normals point outwards (out of the sdf < 0 region).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from skimage.measure import marching_cubes
from torch import Tensor

Field = Callable[[Tensor], Tensor]


def _empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)


@torch.no_grad()
def sdf_grid(
    field: Field,
    resolution: int = 64,
    bound: float = 1.0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Evaluate a field on a regular grid of ``resolution`` points per axis over [-bound, bound]^3.

    Returns:
        (R, R, R) float32 array; entry [i, j, k] is the sdf at (x_i, y_j, z_k).
    """
    axis = torch.linspace(-bound, bound, resolution)  # (R,)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # (R, R, R, 3)
    points = grid.reshape(-1, 3).to(device)  # (R^3, 3)
    values = []
    for start in range(0, points.shape[0], chunk):
        sdf = field(points[start : start + chunk]).reshape(-1)  # (C,)
        values.append(sdf.float().cpu())
    return torch.cat(values).reshape(resolution, resolution, resolution).numpy()  # (R, R, R)


def extract_mesh(
    field: Field,
    resolution: int = 64,
    bound: float = 1.0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Extract the zero level set of a field with marching cubes.

    The grid has ``resolution`` points per axis over [-bound, bound]^3, so a voxel is
    2 * bound / (resolution - 1) wide. The field runs under ``torch.no_grad`` in chunks of
    ``chunk`` points on ``device``.

    Returns:
        vertices (V, 3) float32 in world coordinates and faces (F, 3) int64, normals outwards.
        If the field has no zero crossing on the grid (all inside or all outside) both arrays are
        empty, shape (0, 3), rather than an error: callers report an empty mesh.
    Raises:
        ValueError: if the field returns NaN or infinite values.
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    values = sdf_grid(field, resolution, bound, chunk, device)  # (R, R, R)
    if not np.isfinite(values).all():
        raise ValueError("the field returned NaN or infinite values; cannot extract a mesh")
    if not (values.min() < 0.0 < values.max()):
        return _empty_mesh()
    voxel = 2.0 * bound / (resolution - 1)
    # With skimage's default gradient_direction="descent" the faces of a low-inside field (ours,
    # sdf < 0 inside) are wound counter-clockwise seen from outside, i.e. normals point outwards;
    # test_mesh pins this with the signed volume of a sphere.
    vertices, faces, _, _ = marching_cubes(
        values, level=0.0, spacing=(voxel, voxel, voxel), gradient_direction="descent"
    )
    vertices = (vertices - bound).astype(np.float32)  # (V, 3) grid origin is at -bound
    return vertices, faces.astype(np.int64)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sample ``n`` points uniformly by area on a triangle mesh.

    A triangle is chosen with probability proportional to its area, then a point uniformly inside
    it (folding the unit square onto the triangle). Seeded, so the same seed gives the same points.

    Args:
        vertices: (V, 3) float array.
        faces: (F, 3) integer array.
        n: number of points.
        seed: seed of the numpy generator.
    Returns:
        (n, 3) float32 points; (0, 3) for an empty mesh or one of zero area.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0 or n <= 0:
        return np.zeros((0, 3), dtype=np.float32)
    a, b, c = (vertices[faces[:, i]] for i in range(3))  # each (F, 3)
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)  # (F,)
    total = areas.sum()
    if total <= 0:
        return np.zeros((0, 3), dtype=np.float32)
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(faces), size=n, p=areas / total)  # (n,)
    u, v = rng.random(n), rng.random(n)  # (n,), (n,)
    # A point with u + v > 1 lies in the other half of the parallelogram; reflect it back.
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    ab, ac = b[tri] - a[tri], c[tri] - a[tri]  # (n, 3), (n, 3)
    points = a[tri] + u[:, None] * ab + v[:, None] * ac  # (n, 3)
    return points.astype(np.float32)


def surface_points(
    field: Field,
    n: int = 10_000,
    resolution: int = 64,
    seed: int = 0,
    bound: float = 1.0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Points sampled uniformly on the marching-cubes surface of a field (for surface metrics).

    Returns:
        (n, 3) float32 points, or (0, 3) if the field has no surface on the grid.
    """
    vertices, faces = extract_mesh(field, resolution=resolution, bound=bound, device=device)
    return sample_surface(vertices, faces, n, seed=seed)
