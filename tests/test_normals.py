"""Normal accuracy on analytic spheres: exact field -> ~0 degrees; a smaller concentric sphere ->
the closed-form angle per pixel."""

import math

import numpy as np
import torch

from flowsdf.data.dataset import Views
from flowsdf.metrics.normals import angle_deg, normal_errors
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig

SIZE = 24


def _views(positions):
    K = torch.tensor(cameras.intrinsics(SIZE, 40.0), dtype=torch.float32)
    c2w = torch.stack([torch.tensor(cameras.look_at(np.array(p)), dtype=torch.float32) for p in positions])
    V = len(positions)
    return Views(images=torch.zeros(1, V, 3, SIZE, SIZE), masks=torch.zeros(1, V, SIZE, SIZE),
                 K=K.expand(1, V, 3, 3), c2w=c2w[None], light=torch.zeros(1, V, 3))


def _sphere_spec(radius):
    return {"kind": "sphere", "params": {"radius": radius}, "rotation": np.eye(3).tolist(), "translation": [0.0, 0.0, 0.0]}


def _closed_form_angles(views, r_gt, r_pred):
    """Per pixel seen by both spheres: angle between the normals at the two ray-sphere hits."""
    out = []
    for v in range(views.K.shape[1]):
        o, d = cameras.camera_rays(views.K[0, v].double(), views.c2w[0, v].double(), SIZE)
        b = (o * d).sum(-1)
        c2 = (o * o).sum(-1)
        hits = []
        for r in (r_gt, r_pred):
            disc = b * b - (c2 - r * r)
            t = -b - disc.clamp(min=0).sqrt()
            hits.append((disc > 0, (o + t[:, None] * d) / r))
        both = hits[0][0] & hits[1][0]
        out.append(angle_deg(hits[0][1][both], hits[1][1][both]))
    return torch.cat(out)


def test_the_exact_sphere_has_near_zero_normal_error():
    views = _views([(2.5, 0.0, 0.3), (0.0, -2.2, 1.2)])
    field = lambda p, item: p.norm(dim=-1) - 0.5  # noqa: E731
    res = normal_errors(field, [_sphere_spec(0.5)], views, RenderConfig(n_samples=32))
    assert res["views"] == 2 and res["mean_angle_deg"] < 0.3
    assert res["coverage"] > 0.97  # only a few grazing rim pixels differ between the two searches


def test_a_smaller_concentric_sphere_scores_the_closed_form_angle():
    views = _views([(2.5, 0.0, 0.3), (0.0, -2.2, 1.2)])
    field = lambda p, item: p.norm(dim=-1) - 0.4  # noqa: E731
    res = normal_errors(field, [_sphere_spec(0.5)], views, RenderConfig(n_samples=48))
    expected = _closed_form_angles(views, 0.5, 0.4)
    assert expected.mean() > 5  # a real difference to detect
    assert math.isclose(res["mean_angle_deg"], expected.mean().item(), abs_tol=0.3)
    assert res["per_shape_mean_angle_deg"][0] == res["mean_angle_deg"]
