import numpy as np
import torch

from flowsdf.render import cameras


def test_look_at_points_the_optical_axis_at_the_origin():
    rng = np.random.default_rng(0)
    for pos in cameras.random_viewpoints(rng, 20, distance=2.5):
        c2w = cameras.look_at(pos)
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)  # a rotation
        assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)
        forward = c2w[:3, 2]
        assert np.allclose(pos + np.linalg.norm(pos) * forward, 0.0, atol=1e-9)


def test_viewpoints_lie_on_the_sphere_within_the_elevation_band():
    pos = cameras.random_viewpoints(np.random.default_rng(1), 500, distance=2.5, min_elev_deg=-20, max_elev_deg=60)
    assert np.allclose(np.linalg.norm(pos, axis=1), 2.5)
    elev = np.degrees(np.arcsin(pos[:, 2] / 2.5))
    assert elev.min() >= -20 - 1e-9 and elev.max() <= 60 + 1e-9


def test_rays_are_unit_and_the_centre_rays_hit_the_origin():
    size = 8
    K = torch.tensor(cameras.intrinsics(size, 40.0))
    c2w = torch.tensor(cameras.look_at(np.array([0.0, -2.5, 1.0])))
    o, d = cameras.camera_rays(K, c2w, size)
    assert o.shape == (size * size, 3) and d.shape == (size * size, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(size * size, dtype=d.dtype))
    # The four pixels around the image centre are symmetric about the optical axis.
    centre = d.view(size, size, 3)[3:5, 3:5].reshape(4, 3).mean(0)
    axis = -o[0] / o[0].norm()
    assert torch.allclose(centre / centre.norm(), axis, atol=1e-6)
    # Corner rays open at half the diagonal field of view.
    half_diag = np.arctan(np.tan(np.radians(20.0)) * np.sqrt(2) * (size - 1) / size)
    corner_angle = torch.arccos((d[0] * axis).sum()).item()
    assert abs(corner_angle - half_diag) < 1e-6
