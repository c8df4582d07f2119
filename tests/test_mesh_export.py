"""Mesh files through trimesh: every format round-trips with its vertex colours."""

import numpy as np
import pytest

from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import (
    FORMATS,
    export_mesh,
    is_watertight,
    load_mesh,
    to_trimesh,
)
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine


@pytest.mark.parametrize("file_format", FORMATS)
def test_formats_round_trip_with_vertex_colours(tmp_path, file_format):
    vertices, faces = extract_mesh_coarse_to_fine(lambda p: p.norm(dim=-1) - 0.5, resolution=24)
    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, size=(len(vertices), 4), dtype=np.uint8)
    colors[:, 3] = 255
    path = export_mesh(to_trimesh(vertices, faces, colors), tmp_path / f"ball.{file_format}")
    back = load_mesh(path)
    assert back.vertices.shape == vertices.shape and back.faces.shape == faces.shape
    np.testing.assert_allclose(back.vertices, vertices, atol=1e-6)  # object units, same order
    assert np.array_equal(back.faces, faces)
    assert np.array_equal(back.visual.vertex_colors, colors)
    assert is_watertight(back)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_unknown_format_and_colour_count_are_refused(tmp_path):
    vertices, faces = extract_mesh_coarse_to_fine(lambda p: p.norm(dim=-1) - 0.5, resolution=12)
    with pytest.raises(FlowSDFError, match="unknown mesh format"):
        export_mesh(to_trimesh(vertices, faces), tmp_path / "ball.stl")
    with pytest.raises(ValueError, match="colours"):
        to_trimesh(vertices, faces, np.zeros((3, 4), np.uint8))
    assert not is_watertight(to_trimesh(np.zeros((0, 3)), np.zeros((0, 3), np.int64)))


def test_an_open_surface_is_not_watertight():
    vertices, faces = extract_mesh_coarse_to_fine(lambda p: p.norm(dim=-1) - 0.5, resolution=16)
    mesh = to_trimesh(vertices, faces[:-1])  # one triangle removed
    assert not is_watertight(mesh)
