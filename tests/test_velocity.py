"""Velocity net: AdaLN-Zero identity at init, conditioning wired, published size."""

import pytest
import torch

from flowsdf.models.conditioner import ConditionerConfig
from flowsdf.models.velocity import (
    AdaLNBlock,
    VelocityConfig,
    VelocityNet,
    timestep_embedding,
)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_published_size():
    assert n_params(VelocityNet()) == pytest.approx(3.9e6, rel=0.10)


def test_cond_dim_matches_conditioner_embedding_by_default():
    assert VelocityNet().cond_dim == ConditionerConfig().embed_dim  # the seed's CNN token


def test_output_shape_and_exact_zero_at_init():
    torch.manual_seed(0)
    net = VelocityNet()
    z = torch.randn(5, 128)
    v = net(z, torch.rand(5), torch.randn(5, 512))
    assert v.shape == (5, 128)
    assert torch.count_nonzero(v) == 0


def test_every_block_is_identity_at_init():
    torch.manual_seed(0)
    net = VelocityNet(VelocityConfig(hidden=32, depth=3), 16, 8)
    x = torch.randn(4, 32)
    c = torch.randn(4, 32)
    for block in net.blocks:
        assert torch.equal(block(x, c), x)


def test_perturbed_modulation_breaks_identity():
    torch.manual_seed(0)
    block = AdaLNBlock(hidden=32, mlp_ratio=2)
    x, c = torch.randn(4, 32), torch.randn(4, 32)
    with torch.no_grad():
        block.adaLN_modulation[-1].weight.normal_(0.0, 0.1)
    assert not torch.allclose(block(x, c), x)


def test_time_and_condition_change_the_output_once_trained():
    torch.manual_seed(0)
    net = VelocityNet(VelocityConfig(hidden=32, depth=2), 16, 8)
    with torch.no_grad():  # stand-in for training: move every zero-initialised weight
        for p in net.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.1)
    z, cond = torch.randn(3, 16), torch.randn(3, 8)
    t = torch.full((3,), 0.2)
    base = net(z, t, cond)
    assert not torch.allclose(base, net(z, torch.full((3,), 0.7), cond))
    assert not torch.allclose(base, net(z, t, torch.randn(3, 8)))
    assert not torch.allclose(base, net(torch.randn(3, 16), t, cond))


def test_timestep_embedding_known_values():
    emb = timestep_embedding(torch.tensor([0.0, 0.5, 1.0]), 64)
    assert emb.shape == (3, 64)
    assert torch.equal(emb[0, :32], torch.ones(32))  # cos(0)
    assert torch.equal(emb[0, 32:], torch.zeros(32))  # sin(0)
    assert not torch.allclose(emb[1], emb[2])
    assert timestep_embedding(torch.tensor([0.3]), 7).shape == (1, 7)
