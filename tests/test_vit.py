"""ViT conditioner: token shapes at 32 and 64 px, positions in the tokens, feeds the DiT."""

import pytest
import torch

from flowsdf.models.dit import DiTConfig, DiTVelocity
from flowsdf.models.vit import ViTConditioner, ViTConfig

TINY = {"hidden": 32, "depth": 2, "heads": 2, "mlp_ratio": 2}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "size, patch, cls, tokens",
    [(32, 8, False, 16), (32, 4, False, 64), (64, 8, False, 64), (64, 8, True, 65), (32, 4, True, 65)],
)
def test_token_shapes(size, patch, cls, tokens):
    torch.manual_seed(0)
    vit = ViTConditioner(ViTConfig(patch_size=patch, cls_token=cls, **TINY), size)
    out = vit(torch.rand(3, 3, size, size))
    assert out.shape == (3, tokens, 32) and vit.num_tokens == tokens and vit.embed_dim == 32
    assert torch.isfinite(out).all()


def test_default_parameter_count_matches_the_docstring():
    assert n_params(ViTConditioner()) == 1_647_616
    assert n_params(ViTConditioner(ViTConfig(), 32)) == 1_635_328


def test_tokens_carry_their_position():
    # A uniform image gives every patch the same content; only the position embedding tells the
    # tokens apart, which the DiT's order-blind cross-attention relies on.
    torch.manual_seed(0)
    vit = ViTConditioner(ViTConfig(patch_size=8, **TINY), 32)
    out = vit(torch.full((1, 3, 32, 32), 0.5))
    assert not torch.allclose(out[0, 0], out[0, 1], atol=1e-4)
    with torch.no_grad():
        vit.pos_embed.zero_()
    out = vit(torch.full((1, 3, 32, 32), 0.5))
    assert torch.allclose(out[0, 0], out[0, 1], atol=1e-5)


def test_each_image_gets_its_own_tokens_and_every_weight_learns():
    torch.manual_seed(0)
    vit = ViTConditioner(ViTConfig(patch_size=8, cls_token=True, **TINY), 32)
    images = torch.rand(2, 3, 32, 32)
    out = vit(images)
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(vit(images[1:]), out[1:])  # no mixing across the batch
    out.square().mean().backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in vit.parameters())


def test_wrong_image_size_is_refused():
    vit = ViTConditioner(ViTConfig(patch_size=8, **TINY), 32)
    with pytest.raises(ValueError, match="32, 32"):
        vit(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        ViTConditioner(ViTConfig(patch_size=8, **TINY), 30)


def test_vit_tokens_condition_the_dit():
    torch.manual_seed(0)
    vit = ViTConditioner(ViTConfig(patch_size=8, **TINY), 32)
    dit = DiTVelocity(DiTConfig(hidden=32, depth=1, heads=2, tokens=4, time_embed_dim=16), (16,), cond_dim=vit.embed_dim)
    v = dit(torch.randn(2, 16), torch.rand(2), vit(torch.rand(2, 3, 32, 32)))
    assert v.shape == (2, 16)
