"""Checks that run on the device FLOWSDF_TEST_DEVICE names (default cpu; benchmarks/gpu_check.sh
sets cuda): the renderer's fast path equals the naive graph, the coarse search agrees with the
exhaustive one, the inference sampler equals euler_sample, a tiny Stage 1 trains, and (CUDA only)
a captured training step replays new batches correctly."""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowsdf.build import build_flow, build_stage1
from flowsdf.data import dataset
from flowsdf.device import device_name
from flowsdf.fast_sampler import CUDAGraphed, FastSampler
from flowsdf.flow import euler_sample
from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_min_sdf, silhouette_logits
from flowsdf.train.graphed import GraphedStep, make_capturable
from flowsdf.train.loop import Phase, SilhouetteObjective, flatten_views, index_views
from flowsdf.train.stage1 import train_stage1

DEVICE = torch.device(os.environ.get("FLOWSDF_TEST_DEVICE", "cpu"))


def rays(batch: int = 2, size: int = 12):
    K = torch.tensor(cameras.intrinsics(size, 40.0)).float().expand(batch, 3, 3)
    pos = cameras.random_viewpoints(np.random.default_rng(0), batch, 2.5)
    c2w = torch.stack([torch.tensor(cameras.look_at(p)).float() for p in pos])
    return (t.to(DEVICE) for t in cameras.camera_rays(K, c2w, size))


def loss_and_grads(decoder, z, o, d, cfg):
    decoder.zero_grad()
    z = z.clone().requires_grad_(True)
    target = (torch.arange(o.shape[1], device=DEVICE) % 3 == 0).float().expand(o.shape[0], -1)
    loss = F.binary_cross_entropy_with_logits(silhouette_logits(render_min_sdf(decoder.field(z), o, d, cfg), 0.05), target)
    loss.backward()
    return loss.detach(), [z.grad.clone(), *(p.grad.clone() for p in decoder.parameters())]


def test_fast_renderer_equals_the_naive_graph_on_the_device():
    torch.manual_seed(0)
    decoder = SDFDecoder(DecoderConfig(hidden=160)).to(DEVICE)
    z = (torch.randn(2, 128) * 0.5).to(DEVICE)
    o, d = rays()
    fast = loss_and_grads(decoder, z, o, d, RenderConfig(n_samples=24))
    naive = loss_and_grads(decoder, z, o, d, RenderConfig(n_samples=24, naive=True))
    assert abs(fast[0].item() - naive[0].item()) <= 1e-5 * abs(naive[0].item())
    for gf, gn in zip(fast[1], naive[1]):
        assert (gf - gn).abs().max() <= 1e-4 * max(gn.abs().max().item(), 1e-6)
    assert fast[1][0].abs().sum() > 0


def test_fast_sampler_equals_euler_sample_on_the_device(tiny_cfg):
    conditioner, velocity = (m.to(DEVICE) for m in build_flow(tiny_cfg))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in velocity.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, z0 = torch.rand(3, 3, 16, 16, device=DEVICE), 0.1 * torch.randn(3, 128, device=DEVICE)
    with torch.no_grad():
        ref = euler_sample(velocity, z0, conditioner(images), steps=8)
    fast = FastSampler(velocity, 0.1, 8)
    with torch.no_grad():
        assert torch.allclose(fast(conditioner(images), z0), ref, rtol=1e-4, atol=1e-5)
    if DEVICE.type == "cuda":
        graphed = CUDAGraphed(lambda i, z: fast(conditioner(i), z), images, z0)
        assert torch.allclose(graphed(images, z0), ref, rtol=1e-4, atol=1e-5)
        assert torch.allclose(graphed(images.flip(0), z0.flip(0)), ref.flip(0), rtol=1e-4, atol=1e-5)  # new inputs


def test_tiny_stage1_trains_on_the_device(tmp_path, tiny_cfg, tiny_data_dir):
    cfg = dataclasses.replace(tiny_cfg, render=dataclasses.replace(tiny_cfg.render, search="coarse", search_dtype="bfloat16"))
    summary = train_stage1(cfg, tmp_path / "run", tiny_data_dir, progress=False, device=str(DEVICE))
    assert summary["device"] == device_name(DEVICE)
    assert summary["train_loss_last_epoch"] > 0


def test_a_captured_training_step_replays_new_batches_like_eager_steps(tiny_cfg, tiny_data_dir):
    """Three different batches through one captured step (train/graphed.py) give the losses and
    the weights of three eager steps. A CUDA graph needs CUDA: on a CPU the graphed step is the
    eager step by construction (tests/test_graphed.py), so the check itself runs in the GPU check."""
    if DEVICE.type != "cuda":
        pytest.skip("needs CUDA: benchmarks/gpu_check.sh runs it on the GPU")
    cfg = dataclasses.replace(tiny_cfg, render=dataclasses.replace(tiny_cfg.render, search="static"))
    views = flatten_views(dataset.load(tiny_data_dir).train.input).to(DEVICE)
    batches = [index_views(views, torch.tensor(idx, device=DEVICE)) for idx in ([0, 1], [2, 3], [3, 0])]
    runs = []
    for captured in (False, True):
        torch.manual_seed(0)
        encoder, decoder = (m.to(DEVICE) for m in build_stage1(cfg))
        phase = Phase("stage1", {"encoder": encoder, "decoder": decoder}, lambda im, gen: encoder(im), decoder, cfg.stage1)
        objective = SilhouetteObjective(phase, cfg)
        params = [*encoder.parameters(), *decoder.parameters()]
        optimizer = torch.optim.Adam(params, lr=1e-3)
        losses = []
        if captured:
            make_capturable(optimizer, DEVICE)
            step = GraphedStep(lambda v, t: objective(v, None, t, slice(0, 2))[0], params, optimizer, 1.0, batches[0])
            losses = [step.step(b, 0.05, [1e-3])[0].item() for b in batches]
        else:
            for b in batches:
                optimizer.zero_grad(set_to_none=True)
                loss = objective(b, None, 0.05, slice(0, 2))[0]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                losses.append(loss.item())
        runs.append((losses, [p.detach().clone() for p in params]))
    (eager_losses, eager_weights), (graph_losses, graph_weights) = runs
    assert len(set(eager_losses)) == 3  # three different batches
    assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(eager_losses, graph_losses))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(eager_weights, graph_weights))
