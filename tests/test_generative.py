"""The generative recipe: a table of codes fitted to all views (the teacher), a flow trained by
conditional flow matching with condition dropout, best-of-K Phase 2, guidance at sampling."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.data.dataset import Views
from flowsdf.errors import FlowSDFError
from flowsdf.models.codes import CodeTable, picture_keys
from flowsdf.pipeline import FlowSDF
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views
from flowsdf.train.flow import train_flow
from flowsdf.train.loop import best_of_k_loss, silhouette_loss
from flowsdf.train.stage1 import train_stage1


def test_a_code_table_answers_its_registered_pictures_and_refuses_others():
    torch.manual_seed(0)
    pictures = torch.rand(5, 3, 8, 8)
    table = CodeTable(5, (3, 2))
    table.register(pictures)
    torch.testing.assert_close(table(pictures[[3, 0]]), table.codes[[3, 0]])
    with pytest.raises(FlowSDFError, match="only has codes for the training pictures"):
        table(torch.rand(1, 3, 8, 8))
    with pytest.raises(FlowSDFError, match="same input picture"):
        CodeTable(2, (3,)).register(pictures[[1, 1]])
    fresh = CodeTable(5, (3, 2))  # a table loaded from a checkpoint knows the pictures it was fitted to
    fresh.load_state_dict(table.state_dict())
    torch.testing.assert_close(fresh(pictures[[4]]), table.codes[[4]])
    assert picture_keys(pictures[:1] + 0.3 / 255).item() != picture_keys(pictures[:1]).item()  # one 8-bit step apart


class SphereDecoder(nn.Module):
    """Codes (B, 1) are radii: f(p) = |p| - r."""

    def field(self, codes):
        return lambda p, item: p.norm(dim=-1) - (codes[item, 0] if isinstance(item, torch.Tensor) else codes[item, 0])


def sphere_views(radius: float, n: int = 2, size: int = 16) -> Views:
    K = torch.tensor(cameras.intrinsics(size, 40.0)).float().expand(n, 3, 3)
    c2w = torch.stack([torch.tensor(cameras.look_at(p)).float() for p in
                       cameras.random_viewpoints(__import__("numpy").random.default_rng(0), n, 2.5)])
    codes = torch.full((n, 1), radius)
    masks = (render_views(SphereDecoder().field(codes), K, c2w, size, RenderConfig(n_samples=48)) < 0).float()
    return Views(torch.zeros(n, 3, size, size), masks, K, c2w, torch.zeros(n, 3))


def test_best_of_k_keeps_the_best_samples_loss():
    views = sphere_views(0.5)  # one shape, 2 supervising views
    batch = Views(*(x[None] for x in (views.images, views.masks, views.K, views.c2w, views.light)))  # (1, V, ...)
    cfg, tau = RenderConfig(n_samples=48), 0.05
    samples = torch.tensor([[0.2], [0.5], [0.8]])  # K = 3: only the middle one is the shape
    loss, parts = best_of_k_loss(SphereDecoder(), samples, batch, cfg, tau, 3)
    each = [silhouette_loss(SphereDecoder(), s[None].expand(2, 1), views, cfg, tau)[0] for s in samples]
    torch.testing.assert_close(loss, each[1])  # the best sample, scored on all views
    assert loss < min(each[0], each[2])
    assert parts["mean_of_k_bce"] == pytest.approx(sum(e.item() for e in each) / 3, rel=1e-5)


GENERATIVE = ["data.train_views=2", "encoder.kind=table", "stage1.all_views=true", "stage1.code_l2=0.001",
              "stage1.epochs=2", "phase2.all_views=true", "phase2.best_of=2", "phase2.epochs=1", "phase1.iterations=10",
              "flow.cond_dropout=0.25", "flow.sampling_weight=0", "flow.time_sampling=logit_normal"]


@pytest.fixture(scope="module")
def generative_run(tmp_path_factory):
    cfg = overrides.apply(config_mod.preset("tiny"), GENERATIVE)
    run = tmp_path_factory.mktemp("generative") / "run"
    train_stage1(cfg, run, progress=False)
    train_flow(cfg, run, run, progress=False)
    return run


def test_the_generative_recipe_trains_end_to_end(generative_run):
    with pytest.raises(FlowSDFError, match="table of codes"):
        FlowSDF.from_run(generative_run, "cnn")  # a table is not a picture encoder
    pipe = FlowSDF.from_run(generative_run, "flow", "cpu")
    images = torch.rand(2, 3, 16, 16)
    plain = pipe(images, samples=2, seed=1).codes
    torch.testing.assert_close(pipe(images, samples=2, seed=1, guidance=1.0).codes, plain, rtol=0, atol=0)
    assert not torch.allclose(pipe(images, samples=2, seed=1, guidance=3.0).codes, plain)  # guidance acts
    with pytest.raises(FlowSDFError, match="guidance"):
        pipe(images, guidance=-1)


def test_the_tables_codes_are_fitted_to_every_view(tiny_cfg):
    """The gradient a shape's code gets depends on its second view too: its code explains all views."""
    from flowsdf.build import build_stage1
    from flowsdf.data import dataset

    cfg = overrides.apply(config_mod.preset("tiny"), GENERATIVE)
    data = dataset.ensure(cfg.data, dataset.default_root(cfg.data), progress=False)
    table, decoder = build_stage1(cfg)
    table.register(data.train.input.images[:, 0])
    views = data.train.input  # (N, 2, ...)

    def grad_of_row0(masks):
        table.zero_grad()
        codes = table(views.images[:1, 0]).repeat_interleave(2, dim=0)  # shape 0's code for both views
        v = Views(views.images[0], masks, views.K[0], views.c2w[0], views.light[0])
        silhouette_loss(decoder, codes, v, cfg.render, 0.05)[0].backward()
        return table.codes.grad[0].clone()

    g = grad_of_row0(views.masks[0])
    changed = views.masks[0].clone()
    changed[1] = 1.0 - changed[1]  # another second view
    assert not torch.allclose(g, grad_of_row0(changed))
    assert table.codes.grad[1:].abs().sum() == 0  # only the shape's own row learns from its views


def test_a_table_needs_several_supervising_views():
    with pytest.raises(FlowSDFError, match="train_views >= 2"):
        overrides.apply(config_mod.preset("tiny"), ["encoder.kind=table"])
    with pytest.raises(FlowSDFError, match="all_views"):
        overrides.apply(config_mod.preset("tiny"), ["phase2.best_of=4"])
    base = config_mod.preset("tiny")
    assert dataclasses.replace(base.flow).cond_dropout == 0 and base.flow.guidance == 1  # the seed's flow is unchanged


def test_the_views_gen_preset_is_views_with_the_generative_recipe():
    views, gen = config_mod.preset("views"), config_mod.preset("views-gen")
    same = ("frame", "data", "decoder", "render", "conditioner", "velocity", "eval")
    assert all(getattr(gen, name) == getattr(views, name) for name in same)  # same data and models: comparable
    assert gen.encoder.kind == "table" and views.encoder.kind == "picture"
    assert gen.flow.sampling_weight == 0 and gen.flow.cond_dropout > 0 and gen.phase2.best_of > 1
    assert gen.flow.temperature > 1 and views.flow.temperature == 1  # only the generative preset samples hotter
    assert gen.flow.consistency > 0 and views.flow.consistency == 0  # and redraws samples its picture contradicts


def test_the_viewer_opens_a_generative_run_and_plots_its_tables_codes(generative_run):
    from flowsdf.loading import load_model
    from flowsdf.viewer.backend import Viewer

    viewer = Viewer.load(generative_run, "cpu", progress=False)  # its Stage 1 has no picture encoder to ask
    table = load_model(generative_run, "cnn", "cpu").encoder.codes.detach().flatten(1).double().numpy()  # (N, D)
    frame = viewer.frame
    assert "table" in frame.source
    np.testing.assert_allclose(frame.mean, table.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(frame.project(table), frame.points, rtol=1e-6, atol=1e-9)


def test_reproducing_the_generative_recipe_reports_without_a_stage3(tmp_path):
    from flowsdf.reproduce import reproduce

    # Stage 3 (RGB for one sample per shape) does not apply to a best-of-K Phase 2: it once failed
    # there, after the whole of Stages 1-2 had trained.
    report = reproduce("tiny", tmp_path / "run", "cpu", progress=False, set_items=GENERATIVE).read_text()
    assert "Not run: this preset's Phase 2 keeps the best of 2 samples" in report
    assert not (tmp_path / "run" / "stage3").exists()
    assert "| Rectified flow (Stage 2, Flow-SDF) |" in report
