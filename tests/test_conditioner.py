"""Image conditioner: published size, shapes at 64 and 32 pixels, gradients."""

import pytest
import torch

from flowsdf.models.conditioner import ConditionerConfig, ImageConditioner


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_matches_published_size():
    net = ImageConditioner(ConditionerConfig(), 64)
    assert n_params(net) == pytest.approx(2.9e6, rel=0.10)


@pytest.mark.parametrize("size", [64, 32])
def test_embedding_shape(size):
    torch.manual_seed(0)
    out = ImageConditioner(ConditionerConfig(), size)(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, ConditionerConfig().embed_dim)  # one condition token
    assert torch.isfinite(out).all()


def test_smaller_images_only_shrink_the_head():
    big = ImageConditioner(ConditionerConfig(), 64)
    small = ImageConditioner(ConditionerConfig(), 32)
    assert n_params(big.convs) == n_params(small.convs)
    assert big.fc.in_features == 4 * small.fc.in_features  # 4x4 vs 2x2 feature map


def test_image_size_must_survive_four_halvings():
    with pytest.raises(ValueError):
        ImageConditioner(ConditionerConfig(), 40)


@pytest.mark.parametrize("group_norm", [True, False])
def test_distinct_images_distinct_embeddings_and_gradients(group_norm):
    torch.manual_seed(0)
    net = ImageConditioner(ConditionerConfig(group_norm=group_norm), 32)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = net(images)
    assert not torch.allclose(out[0], out[1])
    out.square().mean().backward()
    assert images.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
