"""Projected-point silhouettes agree with the ray-marcher, and the view search finds the camera."""

import math
from types import SimpleNamespace

import torch
from scipy import ndimage

from flowsdf import config
from flowsdf.data.frames import canonical_c2w
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.project import point_silhouettes, surface_samples
from flowsdf.pipeline import FlowSDF
from flowsdf.render.silhouette import render_views


def l_shape(p: torch.Tensor) -> torch.Tensor:
    # Two boxes meeting in an L, off centre: no two views of it look alike.
    def box(c, h):
        q = (p - torch.tensor(c)).abs() - torch.tensor(h)
        return q.clamp(min=0).norm(dim=-1) + q.max(dim=-1).values.clamp(max=0)

    return torch.minimum(box([0.1, 0.0, -0.2], [0.45, 0.15, 0.15]), box([-0.25, 0.2, 0.15], [0.12, 0.3, 0.3]))


def stub(size: int) -> SimpleNamespace:
    """What FlowSDF.input_camera needs of a pipeline, given a mesh: its config and FlowSDF.camera."""
    cfg = config.preset("quick")
    cfg.data.image_size = size
    ns = SimpleNamespace(cfg=cfg, image_size=size)
    ns.camera = lambda a=0.0, e=20.0: FlowSDF.camera(ns, a, e)
    return ns


def rendered_mask(pipe, azimuth: float, elevation: float) -> torch.Tensor:
    K, c2w = pipe.camera(azimuth, elevation)
    min_sdf = render_views(lambda p, item: l_shape(p), K[None], c2w[None], pipe.image_size, pipe.cfg.render)
    return min_sdf[0] < 0  # (S, S)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_projected_points_cover_the_rendered_silhouette():
    pipe = stub(48)
    vertices, faces = extract_mesh_coarse_to_fine(l_shape, resolution=64)
    K, c2w = pipe.camera(100.0, 25.0)
    points = surface_samples(vertices, faces, pixel=2.5 / float(K[0, 0]))
    projected = point_silhouettes(points, K[None], c2w[None], 48)[0]
    truth = rendered_mask(pipe, 100.0, 25.0)
    assert truth.sum() > 100
    # No holes: every pixel whose centre ray hits the shape is covered. A pixel the shape only
    # grazes is covered too, so the projection is at most one pixel wider than the render.
    assert (truth & ~projected).sum() <= 0.01 * truth.sum()
    ring = torch.from_numpy(ndimage.binary_dilation(truth.numpy()))
    assert not (projected & ~ring).any()
    assert iou(projected, truth) > 0.8


def test_points_behind_the_camera_are_ignored():
    pipe = stub(16)
    K, c2w = pipe.camera(0.0, 0.0)
    behind = c2w[:3, 3] * 2.0  # farther out along the camera's own position vector
    assert not point_silhouettes(behind[None], K[None], c2w[None], 16).any()


def test_view_search_finds_the_camera_of_a_picture():
    pipe = stub(32)
    vertices, faces = extract_mesh_coarse_to_fine(l_shape, resolution=64)
    mesh = to_trimesh(vertices, faces)
    for azimuth, elevation in ((135.0, 30.0), (15.0, 0.0)):  # both on the searched grid
        mask = rendered_mask(pipe, azimuth, elevation)
        camera = FlowSDF.input_camera(pipe, None, mask.float(), mesh)
        assert camera.searched
        position = camera.c2w[:3, 3]
        found_az = math.degrees(math.atan2(position[1], position[0])) % 360.0
        found_el = math.degrees(math.asin(position[2] / position.norm()))
        assert abs(found_az - azimuth) < 1e-3 and abs(found_el - elevation) < 1e-3


def test_a_view_frame_model_takes_its_pictures_from_c0_without_a_search():
    pipe = stub(32)
    pipe.cfg.frame = "view"
    mesh = to_trimesh(*extract_mesh_coarse_to_fine(l_shape, resolution=32))
    mask = rendered_mask(pipe, 135.0, 30.0)  # whatever the picture shows, the camera is C0
    camera = FlowSDF.input_camera(pipe, None, mask.float(), mesh)
    assert not camera.searched
    torch.testing.assert_close(camera.c2w, torch.from_numpy(canonical_c2w(pipe.cfg.data.cam_distance)).float())
    assert camera.c2w[:3, 3].tolist() == [pipe.cfg.data.cam_distance, 0.0, 0.0]  # on +x, level
