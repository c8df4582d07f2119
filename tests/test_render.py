import math

import numpy as np
import pytest
import torch

from flowsdf.data import shapes
from flowsdf.data.dataset import load
from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.render import cameras
from flowsdf.render.rays import MISS_SDF, RenderConfig, sphere_interval
from flowsdf.render.shading import first_hit, lambertian
from flowsdf.render.silhouette import render_min_sdf, render_views, silhouette_logits


def sphere_field(radius: float, centre=(0.0, 0.0, 0.0)):
    c = torch.tensor(centre)
    return lambda p, item: (p - c.to(p.dtype)).norm(dim=-1) - radius


def test_sphere_interval_known_values():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 2.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    hit, t_near, t_far = sphere_interval(o, d, 1.0)
    assert hit.tolist() == [True, False]  # the second ray passes 2 from the centre of a unit sphere
    assert t_near[0].item() == pytest.approx(2.0) and t_far[0].item() == pytest.approx(4.0)


def test_rendered_sphere_matches_its_analytic_disc():
    size, r, dist, fov = 64, 0.5, 2.5, 40.0
    K = torch.tensor(cameras.intrinsics(size, fov)).float()
    c2w = torch.tensor(cameras.look_at(np.array([0.0, -dist, 0.0]))).float()
    min_sdf = render_views(sphere_field(r), K[None], c2w[None], size, RenderConfig(n_samples=48))[0]
    sil = torch.sigmoid(silhouette_logits(min_sdf, 0.01)) > 0.5  # (H, W)
    o, d = cameras.camera_rays(K, c2w, size)
    # A ray hits the sphere iff its angle to the centre direction is below asin(r / dist).
    angle = torch.arccos((d * (-o / o.norm(dim=-1, keepdim=True))).sum(-1).clamp(-1, 1)).view(size, size)
    disc = angle < math.asin(r / dist)
    mismatch = sil ^ disc
    assert disc.sum() > 500
    assert mismatch.float().sum() <= 0.02 * disc.sum()
    # Any disagreement sits on the rim, where a ray only grazes the sphere.
    if mismatch.any():
        assert (angle[mismatch] - math.asin(r / dist)).abs().max() < 0.01


def test_min_sdf_along_rays_that_miss_and_hit():
    o = torch.tensor([[[0.0, 0.95, -3.0], [0.0, 0.3, -3.0]]])
    d = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    m = render_min_sdf(sphere_field(0.5), o, d, RenderConfig(n_samples=48, bound_radius=0.9))
    # The first ray misses the bounding sphere (radius 0.9): no surface, silhouette ~0.
    assert m[0, 0].item() == MISS_SDF
    assert torch.sigmoid(silhouette_logits(m[0, 0], 0.01)).item() < 1e-40
    # The second passes 0.3 from the centre of a 0.5 sphere: its minimum SDF is 0.3 - 0.5.
    assert m[0, 1].item() == pytest.approx(-0.2, abs=2e-3)


def _decoder_and_rays(seed: int = 0, batch: int = 2, size: int = 12):
    torch.manual_seed(seed)
    dec = SDFDecoder(DecoderConfig(hidden=160))
    z = torch.randn(batch, 128) * 0.5
    K = torch.tensor(cameras.intrinsics(size, 40.0)).float().expand(batch, 3, 3)
    pos = cameras.random_viewpoints(np.random.default_rng(seed), batch, 2.5)
    c2w = torch.stack([torch.tensor(cameras.look_at(p)).float() for p in pos])
    o, d = cameras.camera_rays(K, c2w, size)
    return dec, z, o, d


def _loss_and_grads(dec, z, o, d, cfg):
    dec.zero_grad()
    z = z.clone().requires_grad_(True)
    target = (torch.arange(o.shape[1]) % 3 == 0).float().expand(o.shape[0], -1)
    logits = silhouette_logits(render_min_sdf(dec.field(z), o, d, cfg), 0.05)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    loss.backward()
    return loss.detach(), z.grad.clone(), [p.grad.clone() for p in dec.parameters()]


def test_fast_renderer_equals_the_naive_reference_in_loss_and_gradients():
    dec, z, o, d = _decoder_and_rays()
    fast = _loss_and_grads(dec, z, o, d, RenderConfig(n_samples=24))
    naive = _loss_and_grads(dec, z, o, d, RenderConfig(n_samples=24, naive=True))
    assert torch.allclose(fast[0], naive[0], rtol=1e-6, atol=1e-7)
    assert torch.allclose(fast[1], naive[1], rtol=1e-4, atol=1e-7)
    for gf, gn in zip(fast[2], naive[2]):
        assert torch.allclose(gf, gn, rtol=1e-4, atol=1e-6)
    assert fast[1].abs().sum() > 0  # the latent really receives gradient


def test_chunk_size_does_not_change_the_result():
    dec, z, o, d = _decoder_and_rays(seed=1)
    with torch.no_grad():
        a = render_min_sdf(dec.field(z), o, d, RenderConfig(n_samples=16, chunk_points=16))
        b = render_min_sdf(dec.field(z), o, d, RenderConfig(n_samples=16, chunk_points=1 << 20))
    assert torch.equal(a, b)


def test_bfloat16_search_stays_close_to_the_exact_search():
    dec, z, o, d = _decoder_and_rays(seed=2)
    with torch.no_grad():
        exact = render_min_sdf(dec.field(z), o, d, RenderConfig(n_samples=24))
        bf16 = render_min_sdf(dec.field(z), o, d, RenderConfig(n_samples=24, search_dtype="bfloat16"))
    # bf16 may pick a neighbouring sample, never a smaller value than the true minimum.
    assert (bf16 >= exact - 1e-6).all()
    assert (bf16 - exact).abs().max() < 0.05 * exact.abs().max()


def test_an_empty_scene_costs_no_loss_anywhere_in_the_frame():
    """No constant BCE floor: every ray, including those grazing the bounding sphere's rim in the
    image corners, sees an empty field as empty."""
    size = 64
    K = torch.tensor(cameras.intrinsics(size, 40.0)).float()[None]
    c2w = torch.tensor(cameras.look_at(np.array([0.0, -2.5, 0.5]))).float()[None]
    empty = lambda p, item: torch.full(p.shape[:1], 0.2)  # noqa: E731  (positive everywhere)
    logits = silhouette_logits(render_views(empty, K, c2w, size, RenderConfig(n_samples=48)), 0.01)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    assert loss.item() < 1e-6


def test_renderer_on_the_analytic_sdf_reproduces_the_ground_truth_silhouettes(tiny_data_dir):
    data = load(tiny_data_dir)
    cfg = RenderConfig(n_samples=48)
    size = data.config.image_size
    ious = []
    for split in (data.train, data.heldout):
        for i, spec in enumerate(split.shapes):
            views = split.novel
            field = lambda p, item, spec=spec: shapes.sdf(spec, p)  # noqa: E731
            min_sdf = render_views(field, views.K[i], views.c2w[i], size, cfg)  # (V, H, W)
            pred = min_sdf < 0
            gt = views.masks[i] > 0.5
            ious.append(((pred & gt).sum() / (pred | gt).sum()).item())
    assert min(ious) > 0.9 and sum(ious) / len(ious) > 0.95


def test_first_hit_lands_on_the_surface():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.1, -3.0], [0.0, 0.95, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    hit, depth = first_hit(sphere_field(0.5), o, d, radius=0.9)
    assert hit.tolist() == [True, True, False]
    assert depth[0].item() == pytest.approx(2.5, abs=1e-5)
    assert depth[1].item() == pytest.approx(3.0 - math.sqrt(0.25 - 0.01), abs=1e-5)


def test_lambertian_shading():
    n = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    rgb = lambertian(n, torch.tensor([0.5, 1.0, 0.2]), torch.tensor([0.0, 0.0, 1.0]), ambient=0.1)
    assert torch.allclose(rgb[0], torch.tensor([0.6, 1.0, 0.3]))  # lit: albedo + ambient, clamped
    assert torch.allclose(rgb[1], torch.tensor([0.1, 0.1, 0.1]))  # facing away: ambient only
