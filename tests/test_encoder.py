import torch

from flowsdf.models.encoder import CNNEncoder, EncoderConfig
from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views, silhouette_logits


def test_encoder_architecture_and_latent_size():
    enc = CNNEncoder(EncoderConfig())
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 32, 2), (32, 64, 2), (64, 128, 2), (128, 256, 2)
    ]
    assert len([m for m in enc.fc if isinstance(m, torch.nn.Linear)]) == 2
    assert enc(torch.rand(2, 3, 64, 64)).shape == (2, 128)
    assert CNNEncoder(EncoderConfig(), 32)(torch.rand(1, 3, 32, 32)).shape == (1, 128)


def test_silhouette_loss_sends_finite_nonzero_gradients_into_the_encoder():
    torch.manual_seed(0)
    enc, dec = CNNEncoder(EncoderConfig(), 16), SDFDecoder(DecoderConfig())
    K = torch.tensor(cameras.intrinsics(16, 40.0)).float()[None]
    c2w = torch.tensor(cameras.look_at(torch.tensor([2.5, 0.0, 0.5]).numpy())).float()[None]
    min_sdf = render_views(dec.field(enc(torch.rand(1, 3, 16, 16))), K, c2w, 16, RenderConfig(n_samples=12))
    target = torch.zeros(1, 16, 16)
    target[:, 4:12, 4:12] = 1
    torch.nn.functional.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, 0.05), target).backward()
    for p in enc.parameters():
        assert torch.isfinite(p.grad).all()
    assert all(p.grad.abs().sum() > 0 for p in enc.parameters())
