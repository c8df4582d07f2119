import numpy as np
import pytest
import torch

from flowsdf.data import shapes

EXACT = ["sphere", "box", "rounded_box", "torus", "cylinder", "cone", "capsule", "octahedron"]


def make(kind: str, seed: int = 0) -> shapes.Spec:
    rng = np.random.default_rng(seed)
    return {
        "kind": kind,
        "params": shapes._random_params(kind, rng, 1.0),
        "rotation": shapes.random_rotation(rng).tolist(),
        "translation": [0.05, -0.03, 0.02],
    }


def test_sphere_sign_and_distance():
    spec = {"kind": "sphere", "params": {"radius": 0.5}, "rotation": np.eye(3).tolist(), "translation": [0, 0, 0]}
    p = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.9, 0.0]])
    assert torch.allclose(shapes.sdf(spec, p), torch.tensor([-0.5, 0.0, 0.4]), atol=1e-6)


def test_box_distance_to_corner():
    spec = {"kind": "box", "params": {"half": [0.1, 0.2, 0.3]}, "rotation": np.eye(3).tolist(), "translation": [0, 0, 0]}
    p = torch.tensor([[0.4, 0.6, 0.7], [0.0, 0.0, 0.0]])
    d = shapes.sdf(spec, p)
    assert d[0].item() == pytest.approx(np.sqrt(0.3**2 + 0.4**2 + 0.4**2), abs=1e-6)
    assert d[1].item() == pytest.approx(-0.1, abs=1e-6)  # nearest face is the x face


@pytest.mark.parametrize("kind", EXACT)
def test_exact_primitives_have_unit_gradient(kind):
    p = (torch.rand(3000, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    d = shapes.sdf(make(kind), p)
    (g,) = torch.autograd.grad(d.sum(), p)
    norm = g.norm(dim=-1)
    # Away from the medial axis (where the gradient jumps) the gradient has unit length.
    assert (norm - 1).abs().median() < 1e-4
    assert ((norm - 1).abs() < 1e-3).float().mean() > 0.98


@pytest.mark.parametrize("kind", EXACT)
def test_exact_primitives_project_onto_their_surface(kind):
    """For a true SDF, p - f(p) grad f(p) lands on the surface: f there is ~0."""
    spec = make(kind, seed=3)
    p = (torch.rand(2000, 3, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8).requires_grad_(True)
    d = shapes.sdf(spec, p)
    (g,) = torch.autograd.grad(d.sum(), p)
    outside = d > 0.02  # outside points: the projection is unique and well defined
    q = (p - d[:, None] * g).detach()[outside]
    assert shapes.sdf(spec, q).abs().max() < 1e-4


def test_every_random_shape_fits_in_the_bounding_sphere():
    rng = torch.Generator().manual_seed(0)
    dirs = torch.randn(4000, 3, generator=rng)
    shell = dirs / dirs.norm(dim=-1, keepdim=True) * shapes.MAX_RADIUS  # points on the max sphere
    for spec in shapes.random_shapes(60, seed=5):
        assert shapes.bounding_radius(spec) <= shapes.MAX_RADIUS + 1e-9
        assert (shapes.sdf(spec, shell) >= -1e-6).all(), shapes.family(spec)
        # and the shape is not empty: some point near the origin region is inside
        grid = torch.rand(20000, 3, generator=rng) * 1.7 - 0.85
        assert (shapes.sdf(spec, grid) < 0).any(), shapes.family(spec)


def test_random_shapes_are_deterministic_by_seed_and_cover_the_families():
    a, b, c = shapes.random_shapes(40, seed=7), shapes.random_shapes(40, seed=7), shapes.random_shapes(40, seed=8)
    assert a == b
    assert a != c
    many = shapes.random_shapes(200, seed=0)
    kinds = {s["kind"] for s in many if "kind" in s}
    assert kinds == set(shapes.PRIMITIVES)
    assert {s["op"] for s in many if "op" in s} == {"union", "difference"}


def test_csg_union_and_difference():
    eye = np.eye(3).tolist()
    big = {"kind": "sphere", "params": {"radius": 0.5}, "rotation": eye, "translation": [0, 0, 0]}
    small = {"kind": "sphere", "params": {"radius": 0.2}, "rotation": eye, "translation": [0.5, 0, 0]}
    p = torch.tensor([[0.6, 0.0, 0.0], [0.45, 0.0, 0.0], [0.0, 0.0, 0.0]])
    union = shapes.sdf({"op": "union", "a": big, "b": small}, p)
    diff = shapes.sdf({"op": "difference", "a": big, "b": small}, p)
    assert (union[:2] < 0).all() and union[2] < 0  # 0.6 is inside the small sphere only
    assert diff[1] > 0 and diff[2] < 0 and diff[0] > 0  # the small sphere is carved away
