"""The inference sampler equals the reference Euler sampler (flowsdf.flow.euler_sample)."""

import pytest
import torch

from flowsdf.fast_sampler import FastSampler
from flowsdf.flow import euler_sample
from flowsdf.models.build import build_flow


@pytest.mark.parametrize("steps, batch", [(8, 1), (3, 5)])
def test_fast_sampler_equals_euler_sample(tiny_cfg, steps, batch):
    conditioner, velocity = build_flow(tiny_cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # trained-like weights: the zero-initialised layers would make v = 0
        for p in [*conditioner.parameters(), *velocity.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    images = torch.rand(batch, 3, 16, 16)
    fast = FastSampler(conditioner, velocity, sigma=0.1, steps=steps)
    z0 = fast.noise(batch, torch.Generator().manual_seed(1), torch.device("cpu"))
    with torch.no_grad():
        ref = euler_sample(velocity, z0, conditioner(images), steps=steps)
    out = fast(images, z0)
    assert (ref - z0).abs().max() > 0.05  # the flow really moves the noise
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6), (out - ref).abs().max()


def test_fast_sampler_reads_the_weights_once(tiny_cfg):
    conditioner, velocity = build_flow(tiny_cfg)
    fast = FastSampler(conditioner, velocity, sigma=0.1, steps=2)
    images, z0 = torch.rand(2, 3, 16, 16), torch.zeros(2, 128)
    before = fast(images, z0)
    with torch.no_grad():
        velocity.final.linear.bias.fill_(1.0)
    assert torch.equal(fast(images, z0), before)  # documented: rebuild after changing weights
    assert torch.allclose(FastSampler(conditioner, velocity, 0.1, 2)(images, z0), torch.ones(2, 128), atol=1e-6)
