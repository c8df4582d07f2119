"""Marching cubes and surface sampling against analytic spheres and hand-made triangles."""

import numpy as np
import pytest
import torch

from flowsdf.mesh.extract import extract_mesh, sample_surface, surface_points

CENTER = np.array([0.2, -0.1, 0.3], dtype=np.float32)
RADIUS = 0.4


def off_center_sphere(p: torch.Tensor) -> torch.Tensor:
    # Off centre and off axis, so a swapped axis or a wrong grid origin would show.
    return (p - torch.from_numpy(CENTER)).norm(dim=-1) - RADIUS


def test_marching_cubes_vertices_lie_on_the_sphere():
    resolution = 40
    voxel = 2.0 / (resolution - 1)
    vertices, faces = extract_mesh(off_center_sphere, resolution=resolution, chunk=10_000)
    assert vertices.dtype == np.float32 and vertices.shape[1] == 3 and faces.shape[1] == 3
    assert faces.min() >= 0 and faces.max() < len(vertices)
    radii = np.linalg.norm(vertices - CENTER, axis=1)
    assert np.abs(radii - RADIUS).max() < 0.1 * voxel
    assert np.allclose(vertices.mean(axis=0), CENTER, atol=0.1 * voxel)


def test_faces_are_wound_outwards():
    vertices, faces = extract_mesh(off_center_sphere, resolution=40)
    a, b, c = (vertices[faces[:, i]].astype(np.float64) for i in range(3))
    # Divergence theorem: the signed volume is positive only if the normals point outwards.
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.03)


def test_field_without_surface_gives_empty_mesh():
    for field in (lambda p: p.norm(dim=-1) + 1.0, lambda p: p.norm(dim=-1) - 5.0):
        vertices, faces = extract_mesh(field, resolution=16)
        assert vertices.shape == (0, 3) and faces.shape == (0, 3)
        assert sample_surface(vertices, faces, 100).shape == (0, 3)
    assert surface_points(lambda p: p.norm(dim=-1) + 1.0, n=10, resolution=8).shape == (0, 3)


def test_samples_lie_inside_their_triangle():
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0]], dtype=np.float32)
    faces = np.array([[0, 1, 2]])
    points = sample_surface(vertices, faces, 2000, seed=0)
    assert points.shape == (2000, 3)
    assert np.allclose(points[:, 2], 0.0)
    # Inside the triangle x >= 0, y >= 0, x / 2 + y <= 1.
    x, y = points[:, 0], points[:, 1]
    assert (x >= 0).all() and (y >= 0).all() and (x / 2 + y <= 1 + 1e-6).all()
    # Uniform in area: the centroid of the samples is the centroid of the triangle.
    assert np.allclose(points.mean(axis=0), vertices.mean(axis=0), atol=0.03)


def test_sampling_is_area_weighted():
    # Two triangles of area 0.5 and 1.5, far apart: three quarters of the points go to the big one.
    vertices = np.array(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [10, 0, 0], [13, 0, 0], [10, 1, 0]], dtype=np.float32
    )
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    points = sample_surface(vertices, faces, 20_000, seed=1)
    assert (points[:, 0] >= 10).mean() == pytest.approx(0.75, abs=0.015)


def test_sphere_samples_are_near_radius_and_seeded():
    resolution = 40
    voxel = 2.0 / (resolution - 1)
    points = surface_points(off_center_sphere, n=3000, resolution=resolution, seed=7)
    assert points.shape == (3000, 3)
    radii = np.linalg.norm(points - CENTER, axis=1)
    # Triangle interiors sit slightly inside the sphere (chord sag), well under a voxel.
    assert np.abs(radii - RADIUS).max() < 0.25 * voxel
    again = surface_points(off_center_sphere, n=3000, resolution=resolution, seed=7)
    other = surface_points(off_center_sphere, n=3000, resolution=resolution, seed=8)
    assert np.array_equal(points, again)
    assert not np.array_equal(points, other)


def test_non_finite_field_fails_loudly():
    with pytest.raises(ValueError, match="NaN"):
        extract_mesh(lambda p: torch.full((p.shape[0],), float("nan")), resolution=8)
