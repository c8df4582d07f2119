"""Meshes from signed distance fields: marching cubes and area-weighted surface sampling.

A field is a callable mapping (P, 3) points to (P,) signed distances, negative inside. Meshes are
plain numpy arrays: vertices (V, 3) float32 in world coordinates and faces (F, 3) int64 indices,
wound so that normals point outwards (out of the sdf < 0 region).

Two ways to fill the grid: `extract_mesh` evaluates every grid point (the reference), and
`extract_mesh_coarse_to_fine` evaluates a coarse grid and refines only the cells that can hold
the surface, which makes 128^3 affordable on a CPU (see `sdf_grid_coarse_to_fine`);
`sdf_grids_coarse_to_fine` does it for K fields at once (K decoded codes: one call per level).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from skimage.measure import marching_cubes
from torch import Tensor
from torch.nn import functional as F

from flowsdf.fields import PointField

# K fields evaluated together: points (P, 3) -> values (K, P) (e.g. one decoder pass over K codes).
MultiField = Callable[[Tensor], Tensor]


def _empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.int64)


@torch.no_grad()
def sdf_grid(
    field: PointField,
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
    field: PointField,
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
    return mesh_from_grid(values, bound)


def mesh_from_grid(values: np.ndarray, bound: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of a grid of sdf values (R, R, R) spanning [-bound, bound]^3 (see extract_mesh)."""
    if not np.isfinite(values).all():
        raise ValueError("the field returned NaN or infinite values; cannot extract a mesh")
    if not (values.min() < 0.0 < values.max()):
        return _empty_mesh()
    voxel = 2.0 * bound / (values.shape[0] - 1)
    # With skimage's default gradient_direction="descent" the faces of a low-inside field (ours,
    # sdf < 0 inside) are wound counter-clockwise seen from outside, i.e. normals point outwards;
    # test_mesh pins this with the signed volume of a sphere.
    vertices, faces, _, _ = marching_cubes(
        values, level=0.0, spacing=(voxel, voxel, voxel), gradient_direction="descent"
    )
    vertices = (vertices - bound).astype(np.float32)  # (V, 3) grid origin is at -bound
    return vertices, faces.astype(np.int64)


@torch.no_grad()
def _evaluate(fields: MultiField, count: int, points: Tensor, chunk: int, device: torch.device | str) -> Tensor:
    """`count` fields at points (P, 3) in chunks of about `chunk` evaluations, as float32 on the CPU: (K, P)."""
    step = max(1, chunk // count)
    out = [fields(points[s : s + step].to(device)).reshape(count, -1).float().cpu()
           for s in range(0, points.shape[0], step)]
    return torch.cat(out, dim=1) if out else torch.zeros(count, 0)


# The 27 offsets of a cell's points on the grid of half its size: its corners, edge midpoints,
# face centres and centre.
_CELL_POINTS = torch.stack(torch.meshgrid(*(torch.arange(3),) * 3, indexing="ij"), dim=-1).reshape(27, 3)


@torch.no_grad()
def sdf_grid_coarse_to_fine(
    field: PointField,
    resolution: int = 128,
    bound: float = 1.0,
    coarse_stride: int = 16,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
    slope: float | None = None,
) -> tuple[np.ndarray, int]:
    """The grid of `sdf_grid`, evaluated exactly only near the surface.

    The field is evaluated on a grid `coarse_stride` times coarser than the fine one, then cells
    are halved level by level (stride 16 -> 8 -> 4 -> 2 -> 1); a cell's points on the finer grid are
    evaluated only if the cell is marked:

    - cells of 4 voxels or more: marked if their corners change sign or the smallest |sdf| at
      their corners is below `slope` x their diagonal. Why that bound: if the surface passes
      through a cell and the field changes by at most `slope` per unit length, every corner is
      within one diagonal of a surface point, so its |sdf| is at most slope x diagonal; a cell
      whose corners all exceed it holds no surface. (The nearest corner is within half a
      diagonal, so the test keeps a factor 2 of margin on the slope.) Our decoders' fields are
      not exact distances (silhouette training leaves them steeper or flatter than 1 per unit),
      so `slope` defaults to the steepest finite difference on the coarse grid, at least 1.
    - cells of 2 voxels (the last level): marked if their corners change sign. A distance band
      here would be several voxels thick and cost 2-3x more field evaluations on trained
      decoders; what it could add is a surface piece inside a 2-voxel cell whose 8 corners all
      share one sign: a sliver thinner than 2 voxels, finer than the 32-64 pixel renders the
      models learn from resolve at 128^3.

    Points that are not evaluated are filled by trilinear interpolation from the level above.
    Inside a cell that was not refined all corners share one sign, and an interpolation of such
    values keeps it, so marching cubes finds no surface there: every triangle comes from cells
    whose eight corners are exact, as on the dense grid (tested against it on analytic shapes,
    thin ones included, and measured on trained decoders by benchmarks/reconstruct_latency.py).

    Returns:
        values (R, R, R) float32 as `sdf_grid` (exact where refined, same-sign fill elsewhere) and
        the number of points the field was evaluated at.
    """
    grids, evaluated = sdf_grids_coarse_to_fine(lambda p: field(p).reshape(1, -1), 1, resolution, bound,
                                                coarse_stride, chunk, device, slope)
    return grids[0], evaluated


@torch.no_grad()
def sdf_grids_coarse_to_fine(
    fields: MultiField,
    count: int,
    resolution: int = 128,
    bound: float = 1.0,
    coarse_stride: int = 16,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
    slope: float | None = None,
) -> tuple[np.ndarray, int]:
    """`sdf_grid_coarse_to_fine` for `count` fields at once, evaluated together.

    `fields` maps points (P, 3) to (K, P): the K fields at every point, e.g. a decoder run on K
    codes in one batch. A cell is refined when it is marked for any of the fields (each with its
    own slope), and every refined point is evaluated for all of them in the same call, so each
    field's grid is exact wherever its own `sdf_grid_coarse_to_fine` would be exact (and at the
    points marked for the others too). What it saves is calls, not evaluations: K near-identical
    fields (flow samples) share one narrow band and one set of decoder calls per level.

    Returns:
        values (K, R, R, R) float32 and the number of points evaluated (each for all K fields).
    """
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if coarse_stride < 1 or coarse_stride & (coarse_stride - 1):
        raise ValueError(f"coarse_stride must be a power of 2, got {coarse_stride}")
    if count < 1:
        raise ValueError(f"need at least one field, got {count}")
    h = 2.0 * bound / (resolution - 1)  # the fine voxel
    n = max(1, math.ceil((resolution - 1) / coarse_stride))  # coarse cells per axis
    # The padded fine grid has n * stride + 1 points per axis (>= resolution); cropped at the end.
    stride = coarse_stride
    axis = -bound + h * stride * torch.arange(n + 1, dtype=torch.float64)  # (n+1,)
    coarse = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).float()  # (n+1, n+1, n+1, 3)
    values = _evaluate(fields, count, coarse.reshape(-1, 3), chunk, device).reshape(count, *(n + 1,) * 3)  # (K, n+1, n+1, n+1)
    evaluated = coarse.shape[0] ** 3
    if not torch.isfinite(values).all():
        raise ValueError("the field returned NaN or infinite values; cannot extract a mesh")
    if slope is None:  # per field: the steepest finite difference on the coarse grid, at least 1
        steps = [values.diff(dim=d).abs().amax(dim=(1, 2, 3)) for d in range(1, 4) if values.shape[d] > 1]
        slopes = (torch.stack(steps).amax(dim=0) / (h * stride)).clamp(min=1.0) if steps else torch.ones(count)
    else:
        slopes = torch.full((count,), float(slope))
    exact = torch.ones(values.shape[1:], dtype=torch.bool)  # (n+1, n+1, n+1)
    while stride > 1:
        lo = hi = near = None
        for a in (0, 1):  # min, max and min |.| over the 8 corners of every cell, (K, n, n, n) each
            for b in (0, 1):
                for c in (0, 1):
                    v = values[:, a : a + n, b : b + n, c : c + n]
                    lo = v if lo is None else torch.minimum(lo, v)
                    hi = v if hi is None else torch.maximum(hi, v)
                    near = v.abs() if near is None else torch.minimum(near, v.abs())
        crosses = (lo <= 0) & (hi >= 0)  # (K, n, n, n)
        if stride > 2:
            limit = (slopes * stride * h * math.sqrt(3.0)).view(count, 1, 1, 1)  # (K, 1, 1, 1)
            marked = (crosses | (near < limit)).any(dim=0)  # (n, n, n)
        else:  # the last level: sign changes only
            marked = crosses.any(dim=0)
        cells = marked.nonzero()  # (M, 3)
        # Every point of a marked cell on the grid of half the stride: (P, 3), each once.
        pts = (2 * cells[:, None, :] + _CELL_POINTS).reshape(-1, 3)  # (M*27, 3)
        m = 2 * n + 1
        flat = torch.unique((pts[:, 0] * m + pts[:, 1]) * m + pts[:, 2])  # (P,)
        pts = torch.stack([flat // (m * m), (flat // m) % m, flat % m], dim=-1)  # (P, 3)
        even = (pts % 2 == 0).all(dim=1)  # (P,) points of the level above
        known = torch.zeros_like(even)
        known[even] = exact[tuple((pts[even] // 2).T)]
        pts, flat = pts[~known], flat[~known]
        stride, n = stride // 2, 2 * n
        values = F.interpolate(values[:, None], size=(n + 1,) * 3, mode="trilinear", align_corners=True)[:, 0]
        points = (-bound + h * stride * pts.double()).float()  # (P, 3)
        values.view(count, -1)[:, flat] = _evaluate(fields, count, points, chunk, device)  # (K, P)
        evaluated += len(flat)
        if stride > 1:
            was_exact = exact
            exact = torch.zeros((n + 1,) * 3, dtype=torch.bool)
            exact[::2, ::2, ::2] = was_exact
            exact.view(-1)[flat] = True
    return values[:, :resolution, :resolution, :resolution].contiguous().numpy(), evaluated


def extract_mesh_coarse_to_fine(
    field: PointField,
    resolution: int = 128,
    bound: float = 1.0,
    coarse_stride: int = 16,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """`extract_mesh` with the grid filled by `sdf_grid_coarse_to_fine`: the same mesh (to the
    float rounding of the grid coordinates) for a fraction of the field evaluations."""
    values, _ = sdf_grid_coarse_to_fine(field, resolution, bound, coarse_stride, chunk, device)  # (R, R, R)
    return mesh_from_grid(values, bound)


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
    field: PointField,
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
