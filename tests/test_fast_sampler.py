"""The inference sampler equals the reference Euler sampler (flowsdf.flow.euler_sample)."""

import pytest
import torch

from flowsdf.build import build_flow
from flowsdf.fast_sampler import (
    FastSampler,
    ReferenceSampler,
    make_sampler,
    sampler_predictor,
)
from flowsdf.flow import euler_sample, sample_noise
from flowsdf.models.dit import DiTConfig, DiTVelocity


def trained_like(tiny_cfg):
    conditioner, velocity = build_flow(tiny_cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # trained-like weights: the zero-initialised layers would make v = 0
        for p in [*conditioner.parameters(), *velocity.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return conditioner.eval(), velocity.eval()


@pytest.mark.parametrize("steps, batch", [(8, 1), (3, 5)])
def test_fast_sampler_equals_euler_sample(tiny_cfg, steps, batch):
    conditioner, velocity = trained_like(tiny_cfg)
    images = torch.rand(batch, 3, 16, 16)
    fast = FastSampler(velocity, sigma=0.1, steps=steps)
    z0 = fast.noise(list(range(batch)), "cpu")
    with torch.no_grad():
        cond = conditioner(images)
        ref, ref_traj = euler_sample(velocity, z0, cond, steps=steps, return_trajectory=True)
    out, traj = fast(cond, z0, trajectory=True)
    assert (ref - z0).abs().max() > 0.05  # the flow really moves the noise
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traj, ref_traj, rtol=1e-5, atol=1e-6)
    assert torch.equal(fast(cond, z0), out)


def test_sampler_noise_is_the_seeds_noise_scaled_by_sigma(tiny_cfg):
    _, velocity = trained_like(tiny_cfg)
    for sampler in (FastSampler(velocity, sigma=0.25, steps=2), ReferenceSampler(velocity, 0.25, 2, (128,))):
        z0 = sampler.noise([7, 3], "cpu")
        expected = torch.stack([torch.randn(128, generator=torch.Generator().manual_seed(s)) for s in (7, 3)])
        torch.testing.assert_close(z0, 0.25 * expected)


def test_make_sampler_picks_the_fast_path_only_where_it_exists(tiny_cfg):
    conditioner, velocity = trained_like(tiny_cfg)
    assert type(make_sampler(velocity, 0.1, 4, (128,))) is FastSampler
    torch.manual_seed(1)
    dit = DiTVelocity(DiTConfig(hidden=32, depth=2, heads=2, tokens=4), (128,), 64).eval()
    with torch.no_grad():  # trained-like: its zero-initialised layers would make v = 0
        for p in dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = make_sampler(dit, 0.1, 4, (128,))
    assert type(reference) is ReferenceSampler
    tokens, z0 = conditioner(torch.rand(2, 3, 16, 16)).detach(), 0.1 * torch.randn(2, 128)
    with torch.no_grad():
        expected = euler_sample(dit, z0, tokens, 4)
    assert (expected - z0).abs().max() > 0.01
    torch.testing.assert_close(reference(tokens, z0), expected, rtol=1e-5, atol=1e-6)


def test_sampler_predictor_draws_the_noise_the_training_predictor_draws(tiny_cfg):
    conditioner, velocity = trained_like(tiny_cfg)
    images = torch.rand(3, 3, 16, 16)
    codes = sampler_predictor(conditioner, FastSampler(velocity, 0.1, 8))(images, torch.Generator().manual_seed(4))
    z0 = sample_noise((3, 128), 0.1, torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = euler_sample(velocity, z0, conditioner(images), 8)
    torch.testing.assert_close(codes, ref, rtol=1e-5, atol=1e-6)
    assert not codes.is_inference()  # callers may optimise the codes further (test-time refinement)


def test_fast_sampler_reads_the_weights_once(tiny_cfg):
    _, velocity = build_flow(tiny_cfg)
    fast = FastSampler(velocity, sigma=0.1, steps=2)
    cond, z0 = torch.rand(2, 64), torch.zeros(2, 128)
    before = fast(cond, z0)
    with torch.no_grad():
        velocity.final.linear.bias.fill_(1.0)
    assert torch.equal(fast(cond, z0), before)  # documented: rebuild after changing weights
    torch.testing.assert_close(FastSampler(velocity, 0.1, 2)(cond, z0), torch.ones(2, 128), atol=1e-6, rtol=0)
