"""DiT velocity: zero at init yet trainable, masks and token order respected, both latent kinds."""

import pytest
import torch

from flowsdf.flow import euler_sample
from flowsdf.models.dit import DiTConfig, DiTVelocity
from flowsdf.models.velocity import VelocityNet

SMALL = DiTConfig(hidden=32, depth=2, heads=2, mlp_ratio=2, tokens=4, patch_size=2, time_embed_dim=16)
PLANE = (3, 4, 8, 8)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def perturbed(net: DiTVelocity, seed: int = 0) -> DiTVelocity:
    """Stand-in for training: move every zero-initialised weight so the output is non-trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return net


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_default_size_is_comparable_to_the_mlp_velocity_net():
    n = n_params(DiTVelocity(DiTConfig(), latent_shape=(128,), cond_dim=512))
    assert n == 3_921_104  # the count worked out in dit.py's docstring
    assert n == pytest.approx(n_params(VelocityNet()), rel=0.05)


@pytest.mark.parametrize("shape", [(16,), PLANE])
def test_output_is_exactly_zero_at_init_but_the_gradient_is_not(shape):
    torch.manual_seed(0)
    net = DiTVelocity(SMALL, latent_shape=shape, cond_dim=12)
    z = torch.randn(3, *shape)
    v = net(z, torch.rand(3), torch.randn(3, 5, 12))
    assert v.shape == (3, *shape)
    assert torch.count_nonzero(v) == 0
    torch.nn.functional.mse_loss(v, torch.randn_like(v)).backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert torch.count_nonzero(grads["final_layer.linear.weight"]) > 0
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())


def test_every_block_is_the_identity_at_init():
    torch.manual_seed(0)
    net = DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12)
    x, c = torch.randn(2, 4, 32), torch.randn(2, 32)
    cond = net.prepare(torch.randn(2, 5, 12))
    for block, kv in zip(net.blocks, cond.kv):
        assert torch.equal(block(x, c, kv), x)


def test_a_block_with_zeroed_modulation_and_cross_attention_output_is_the_identity():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12))
    block = net.blocks[0]
    with torch.no_grad():
        for layer in (block.adaLN_modulation[-1], block.cross_attn.proj):
            layer.weight.zero_()
            layer.bias.zero_()
    x, c = torch.randn(2, 4, 32), torch.randn(2, 32)
    kv = block.cross_attn.context_kv(torch.randn(2, 5, 12))
    assert torch.equal(block(x, c, kv), x)
    with torch.no_grad():  # and moving the cross-attention output alone breaks it
        block.cross_attn.proj.weight.normal_(0.0, 0.1)
    assert not torch.allclose(block(x, c, kv), x)


def test_masked_condition_tokens_are_ignored_and_real_ones_are_read():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12))
    z, t = torch.randn(2, 16), torch.rand(2)
    cond = torch.randn(2, 6, 12)
    mask = torch.tensor([[True, True, True, False, False, False], [True, False, True, True, True, False]])
    base = net(z, t, cond, mask)
    for _ in range(3):
        changed = cond.clone()
        changed[~mask] = 10.0 * torch.randn(int((~mask).sum()), 12)
        assert torch.equal(net(z, t, changed, mask), base)
    changed = cond.clone()
    changed[0, 1] = torch.randn(12)  # a real token of row 0
    out = net(z, t, changed, mask)
    assert not torch.allclose(out[0], base[0])
    assert torch.equal(out[1], base[1])  # rows are independent


def test_a_row_with_no_real_token_gets_no_cross_attention():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12))
    z, t = torch.randn(1, 16), torch.rand(1)
    none = torch.zeros(1, 4, dtype=torch.bool)
    out = net(z, t, torch.randn(1, 4, 12), none)
    assert torch.isfinite(out).all()
    assert torch.equal(net(z, t, torch.randn(1, 4, 12), none), out)  # whatever the padding holds
    with torch.no_grad():  # same as a net whose cross-attention outputs nothing
        for block in net.blocks:
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
    assert torch.allclose(net(z, t, torch.randn(1, 4, 12)), out, atol=1e-6)


def test_permuting_condition_tokens_leaves_the_output_unchanged():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=PLANE, cond_dim=12))
    z, t = torch.randn(2, *PLANE), torch.rand(2)
    cond = torch.randn(2, 7, 12) + torch.randn(1, 7, 12)  # tokens carrying their own "positions"
    mask = torch.rand(2, 7) > 0.3
    mask[:, 0] = True
    perm = torch.randperm(7)
    base = net(z, t, cond, mask)
    assert torch.allclose(net(z, t, cond[:, perm], mask[:, perm]), base, atol=1e-5)
    assert not torch.allclose(net(z, t, cond[:, perm], mask), base, atol=1e-5)  # the mask must follow


def test_prepared_condition_gives_the_same_velocity():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12))
    z, t = torch.randn(3, 16), torch.rand(3)
    cond, mask = torch.randn(3, 5, 12), torch.rand(3, 5) > 0.4
    assert torch.equal(net(z, t, net.prepare(cond, mask)), net(z, t, cond, mask))
    with pytest.raises(ValueError, match="prepare"):
        net(z, t, net.prepare(cond), mask)
    fast = euler_sample(net, z, net.prepare(cond, mask), steps=3)  # the sampler passes it through
    assert torch.equal(fast, euler_sample(lambda z_t, t, c: net(z_t, t, c, mask), z, cond, steps=3))


def test_time_condition_and_latent_all_change_the_output_once_trained():
    torch.manual_seed(0)
    net = perturbed(DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12))
    z, cond, t = torch.randn(2, 16), torch.randn(2, 3, 12), torch.full((2,), 0.2)
    base = net(z, t, cond)
    assert not torch.allclose(base, net(z, torch.full((2,), 0.7), cond))
    assert not torch.allclose(base, net(z, t, torch.randn(2, 3, 12)))
    assert not torch.allclose(base, net(torch.randn(2, 16), t, cond))
    null = net(z, t, torch.zeros(2, 3, 12))  # the guidance's null condition is well defined
    assert torch.isfinite(null).all()
    assert torch.equal(net(z, t, cond[:, 0]), net(z, t, cond[:, :1]))  # (B, C) is one token


@pytest.mark.parametrize("shape", [(16,), PLANE])
def test_tokens_round_trip_to_the_latent_shape(shape):
    net = DiTVelocity(SMALL, latent_shape=shape, cond_dim=12)
    z = torch.randn(2, *shape)
    tokens = net.tokenize(z)
    assert tokens.shape == (2, net.num_tokens, net.token_dim)
    assert torch.equal(net.untokenize(tokens), z)
    assert net(z, torch.rand(2), torch.randn(2, 1, 12)).shape == z.shape


def test_a_plane_token_is_one_patch_of_one_plane():
    net = DiTVelocity(SMALL, latent_shape=PLANE, cond_dim=12)  # (3, 4, 8, 8), patch 2 -> 3 * 16 tokens
    z = torch.randn(1, *PLANE)
    tokens = net.tokenize(z)
    assert net.num_tokens == 48 and net.token_dim == 4 * 2 * 2
    # plane 1, patch row 2, patch column 3 is token 16 + 2 * 4 + 3
    assert torch.equal(tokens[0, 16 + 11], z[0, 1, :, 4:6, 6:8].reshape(-1))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="split"):
        DiTVelocity(SMALL, latent_shape=(15,), cond_dim=12)
    with pytest.raises(ValueError, match="patch_size"):
        DiTVelocity(SMALL, latent_shape=(3, 4, 7, 7), cond_dim=12)
    with pytest.raises(ValueError, match="latent_shape"):
        DiTVelocity(SMALL, latent_shape=(4, 8, 8), cond_dim=12)
    net = DiTVelocity(SMALL, latent_shape=(16,), cond_dim=12)
    with pytest.raises(ValueError, match="z_t"):
        net(torch.randn(2, 8), torch.rand(2), torch.randn(2, 1, 12))
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(2, 16), torch.rand(2), torch.randn(2, 1, 10))
    with pytest.raises(ValueError, match="cond_mask"):
        net(torch.randn(2, 16), torch.rand(2), torch.randn(2, 3, 12), torch.ones(2, 3))
