"""Training signals beyond the BCE: the eikonal term and the background lower bound."""

from __future__ import annotations

import pytest
import torch

from flowsdf.data import dataset, shapes
from flowsdf.data.dataset import Views
from flowsdf.render.rays import RenderConfig
from flowsdf.train import losses

CPU = torch.device("cpu")


def test_eikonal_is_zero_for_a_distance_field_and_positive_for_a_scaled_one():
    gen = torch.Generator().manual_seed(0)
    sphere = lambda p, item: torch.linalg.vector_norm(p, dim=-1) - 0.5  # noqa: E731
    assert losses.eikonal_loss(sphere, 3, 500, 0.9, gen, CPU).item() < 1e-10
    for k in (0.5, 3.0):
        scaled = lambda p, item, k=k: k * sphere(p, item)  # noqa: E731
        # |grad| = k everywhere: the term is exactly (k - 1)^2.
        assert abs(losses.eikonal_loss(scaled, 3, 500, 0.9, gen, CPU).item() - (k - 1) ** 2) < 1e-6


def test_eikonal_gradient_reaches_the_decoder(tiny_cfg):
    from flowsdf.models.sdf import SDFDecoder

    decoder = SDFDecoder(tiny_cfg.decoder.mlp)
    codes = torch.randn(2, tiny_cfg.decoder.mlp.latent_dim) * 0.1
    loss = losses.eikonal_loss(decoder.field(codes), 2, 64, 0.9, torch.Generator().manual_seed(0), CPU)
    loss.backward()
    assert loss.item() > 0 and decoder.l1.weight.grad.abs().sum() > 0


def test_background_bound_is_met_by_the_exact_sdf(tiny_data_dir):
    """On every view of the dataset, the analytic SDF at points of background rays is at least the
    bound, up to pixel discretisation (a silhouette can reach a fraction of a pixel past its mask)."""
    data = dataset.load(tiny_data_dir)
    gen = torch.Generator().manual_seed(0)
    focal = float(data.train.input.K[0, 0, 0, 0])
    # One pixel's footprint at the far side of the bounding sphere.
    pixel = (data.config.cam_distance + 0.9) / focal
    checked = 0
    for split in (data.train, data.heldout):
        for v in (split.input, split.novel):
            N, V = v.masks.shape[:2]
            flat = Views(*(x.flatten(0, 1) for x in (v.images, v.masks, v.K, v.c2w, v.light)))
            points, item, bound = losses.background_bound_points(flat, RenderConfig(), 10_000, 8, gen)
            for b in item.unique().tolist():
                m = item == b
                sdf = shapes.sdf(split.shapes[b // V], points[m])
                assert (bound[m] - sdf).max().item() < pixel
                checked += int(m.sum())
            assert (bound > 0).any()
    assert checked > 1000


def test_background_bound_is_violated_by_a_too_large_shape(tiny_data_dir):
    """Sanity: a shape twice too large breaks the bound by far more than a pixel."""
    data = dataset.load(tiny_data_dir)
    v = data.train.input
    flat = Views(*(x[:, 0] for x in (v.images, v.masks, v.K, v.c2w, v.light)))
    points, item, bound = losses.background_bound_points(flat, RenderConfig(), 10_000, 8, torch.Generator().manual_seed(0))
    sdf = torch.cat([shapes.sdf(data.train.shapes[b], points[item == b] / 2.0) * 2.0 for b in item.unique().tolist()])
    order = torch.cat([torch.nonzero(item == b).squeeze(1) for b in item.unique().tolist()])
    assert (bound[order] - sdf).max().item() > 0.2


def test_background_sines_are_zero_on_the_silhouette_and_grow_away_from_it():
    mask = torch.zeros(1, 16, 16)
    mask[0, 6:10, 6:10] = 1.0
    import numpy as np

    from flowsdf.render import cameras

    K = torch.from_numpy(cameras.intrinsics(16, 40.0)).float()[None]
    c2w = torch.from_numpy(cameras.look_at(np.array([2.5, 0.0, 0.0]))).float()[None]
    s = losses.background_sines(mask, K, c2w)[0]  # (16, 16)
    assert (s[6:10, 6:10] == 0).all()
    assert s[8, 10] == 0  # the neighbouring pixel: within the one-pixel margin
    assert 0 < s[8, 12] < s[8, 14] < s[8, 15]


def test_extra_terms_are_off_by_default(tiny_cfg):
    from flowsdf.models.sdf import SDFDecoder

    assert losses.extra_terms(SDFDecoder(tiny_cfg.decoder.mlp), torch.zeros(1, tiny_cfg.decoder.mlp.latent_dim), None,
                              tiny_cfg.render, tiny_cfg.stage1.sdfsrn, torch.Generator()) is None


def test_seed_and_quick_stay_faithful_and_shapes_scales_the_data():
    from flowsdf import config as config_mod

    for name in ("seed", "quick"):
        cfg = config_mod.preset(name)
        assert cfg.frame == "world"
        for tc in (cfg.stage1, cfg.phase2):
            assert tc.sdfsrn.eikonal_weight == 0 and tc.sdfsrn.bg_bound_weight == 0
    shapes_cfg = config_mod.preset("shapes")
    assert shapes_cfg.data.n_train_shapes > config_mod.preset("quick").data.n_train_shapes


def test_all_views_pairs_each_code_with_every_view_of_its_shape():
    B, V, S = 2, 3, 4
    views = Views(torch.rand(B, V, 3, S, S), torch.rand(B, V, S, S), torch.rand(B, V, 3, 3), torch.rand(B, V, 4, 4),
                  torch.rand(B, V, 3))
    codes = torch.arange(B, dtype=torch.float32)[:, None].expand(B, 5)  # code b is all b
    flat_codes, flat = losses.all_views_batch(codes, views)
    assert flat_codes.shape == (B * V, 5) and flat.masks.shape == (B * V, S, S)
    for i in range(B * V):
        assert (flat_codes[i] == i // V).all()
        assert torch.equal(flat.c2w[i], views.c2w[i // V, i % V])


def test_stage1_trains_with_every_view_supervising(tmp_path, tiny_cfg):
    import dataclasses

    from flowsdf import runs
    from flowsdf.train.stage1 import train_stage1

    cfg = dataclasses.replace(tiny_cfg, data=dataclasses.replace(tiny_cfg.data, train_views=2),
                              stage1=dataclasses.replace(tiny_cfg.stage1, epochs=1, all_views=True))
    data_dir = tmp_path / "data"
    dataset.generate(cfg.data, data_dir, progress=False)
    train_stage1(cfg, tmp_path / "run", data_dir, progress=False)
    rows = runs.read_metrics(tmp_path / "run", "stage1")
    # One sample per shape, each rendered from its 2 views: 8 images for 4 shapes.
    assert len(rows) == 1 and rows[0]["images_per_s"] * rows[0]["seconds"] == pytest.approx(8)
