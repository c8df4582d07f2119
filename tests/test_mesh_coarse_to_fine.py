"""Coarse-to-fine marching cubes against the dense reference grid, on analytic shapes."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from flowsdf.mesh.export import is_watertight, to_trimesh
from flowsdf.mesh.extract import (
    extract_mesh,
    extract_mesh_coarse_to_fine,
    mesh_from_grid,
    sdf_grid_coarse_to_fine,
    sdf_grids_coarse_to_fine,
)

CENTER = torch.tensor([0.2, -0.1, 0.3])
RADIUS = 0.4


def sphere(p: torch.Tensor) -> torch.Tensor:
    return (p - CENTER).norm(dim=-1) - RADIUS


def torus(p: torch.Tensor) -> torch.Tensor:
    # A thin ring (tube radius 0.05, ~1.6 voxels at 64^3), tilted so no grid axis lines up with it.
    c, s = np.cos(0.4), np.sin(0.4)
    x, y, z = p[:, 0], c * p[:, 1] - s * p[:, 2], s * p[:, 1] + c * p[:, 2]
    ring = torch.stack([torch.sqrt(x**2 + y**2) - 0.5, z], dim=-1)  # (P, 2)
    return ring.norm(dim=-1) - 0.05


def box(p: torch.Tensor) -> torch.Tensor:
    # A thin slab with sharp edges: 0.6 x 0.5 x 0.06.
    q = (p - torch.tensor([0.05, -0.02, 0.1])).abs() - torch.tensor([0.3, 0.25, 0.03])
    return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)


def steep_sphere(p: torch.Tensor) -> torch.Tensor:
    # Not a distance: five times too steep, as silhouette-trained fields can be.
    return 5.0 * sphere(p)


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    return max(cKDTree(a).query(b)[0].max(), cKDTree(b).query(a)[0].max())


def test_sphere_vertices_lie_at_the_radius_and_the_mesh_is_watertight():
    resolution = 64
    voxel = 2.0 / (resolution - 1)
    vertices, faces = extract_mesh_coarse_to_fine(sphere, resolution=resolution)
    radii = np.linalg.norm(vertices - CENTER.numpy(), axis=1)
    assert len(vertices) > 100
    assert np.abs(radii - RADIUS).max() < 0.1 * voxel
    mesh = to_trimesh(vertices, faces)
    assert is_watertight(mesh)
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.03)  # positive: wound outwards


@pytest.mark.parametrize("field", [sphere, torus, box, steep_sphere], ids=["sphere", "torus", "box", "steep"])
@pytest.mark.parametrize("resolution", [48, 64])
def test_coarse_to_fine_gives_the_dense_mesh(field, resolution):
    voxel = 2.0 / (resolution - 1)
    dense_v, dense_f = extract_mesh(field, resolution=resolution)
    values, evaluated = sdf_grid_coarse_to_fine(field, resolution=resolution)
    fast_v, fast_f = mesh_from_grid(values)
    assert len(dense_v) > 50
    assert hausdorff(dense_v, fast_v) < 0.01 * voxel  # the same surface, not just a close one
    assert fast_v.shape == dense_v.shape and fast_f.shape == dense_f.shape
    assert is_watertight(to_trimesh(fast_v, fast_f)) == is_watertight(to_trimesh(dense_v, dense_f))
    assert evaluated < 0.5 * resolution**3  # and it skipped most of the grid


def test_unevaluated_points_keep_the_sign_of_the_field():
    resolution = 40
    values, _ = sdf_grid_coarse_to_fine(torus, resolution=resolution)
    axis = torch.linspace(-1, 1, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    truth = torus(grid).reshape((resolution,) * 3).numpy()
    assert np.array_equal(values < 0, truth < 0)


def test_coarse_to_fine_handles_no_surface_and_bad_values():
    for field in (lambda p: p.norm(dim=-1) + 1.0, lambda p: p.norm(dim=-1) - 5.0):
        vertices, faces = extract_mesh_coarse_to_fine(field, resolution=32)
        assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    with pytest.raises(ValueError, match="NaN"):
        extract_mesh_coarse_to_fine(lambda p: torch.full((p.shape[0],), float("nan")), resolution=16)
    with pytest.raises(ValueError, match="power of 2"):
        sdf_grid_coarse_to_fine(sphere, resolution=16, coarse_stride=6)


def test_batched_fields_give_each_fields_own_mesh_in_one_call_per_level():
    """Several fields at once (as K decoded codes are): each grid gives the mesh the field gives
    alone, the dense one; the fields are called once per level, all K together."""
    fields = [sphere, torus, box, steep_sphere]
    calls = []

    def together(p: torch.Tensor) -> torch.Tensor:
        calls.append(len(p))
        return torch.stack([f(p) for f in fields])  # (K, P)

    resolution = 48
    voxel = 2.0 / (resolution - 1)
    grids, evaluated = sdf_grids_coarse_to_fine(together, len(fields), resolution=resolution, chunk=1 << 20)
    assert grids.shape == (len(fields), resolution, resolution, resolution)
    assert len(calls) == 1 + 4  # the coarse grid, then one call per level (16 -> 8 -> 4 -> 2 -> 1)
    assert evaluated == sum(calls) < 0.5 * resolution**3
    for field, values in zip(fields, grids):
        dense_v, dense_f = extract_mesh(field, resolution=resolution)
        fast_v, fast_f = mesh_from_grid(values)
        assert fast_v.shape == dense_v.shape and fast_f.shape == dense_f.shape
        assert hausdorff(dense_v, fast_v) < 0.01 * voxel


def test_one_batched_field_is_the_single_field_grid():
    values, evaluated = sdf_grid_coarse_to_fine(torus, resolution=40)
    grids, evaluated_batched = sdf_grids_coarse_to_fine(lambda p: torus(p)[None], 1, resolution=40)
    np.testing.assert_array_equal(grids[0], values)
    assert evaluated_batched == evaluated
