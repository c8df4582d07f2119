import math

import pytest
import torch

from flowsdf.models.sdf import DecoderConfig, SDFDecoder, fourier_features


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_decoder_size_matches_the_published_330k():
    assert abs(n_params(SDFDecoder(DecoderConfig())) - 330_000) <= 0.10 * 330_000


def test_decoder_is_five_layers_with_the_input_reinjected_at_layer_3():
    dec = SDFDecoder(DecoderConfig())
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5
    assert linears[2].in_features == linears[1].out_features + 128 + 3


@pytest.mark.parametrize("octaves", [0, 5])
def test_factored_forward_equals_the_plain_deepsdf_forward(octaves):
    torch.manual_seed(0)
    dec = SDFDecoder(DecoderConfig(xyz_frequencies=octaves))
    z, xyz = torch.randn(3, 128), torch.rand(3, 50, 3) * 2 - 1
    plain = dec(z, xyz)  # (3, 50)
    item = torch.arange(3).repeat_interleave(50)
    factored = dec.field(z)(xyz.reshape(-1, 3), item).view(3, 50)
    assert torch.allclose(plain, factored, atol=1e-5)
    # one int item = all points share that code
    assert torch.allclose(dec.field(z)(xyz[1], 1), plain[1], atol=1e-5)


def test_fourier_features_keep_the_size_and_the_skip_layout():
    dec = SDFDecoder(DecoderConfig(xyz_frequencies=5))
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].in_features == 128 + 3 + 30
    assert linears[2].in_features == linears[1].out_features + 128 + 3 + 30 == 330
    assert abs(n_params(dec) - n_params(SDFDecoder(DecoderConfig()))) <= 0.01 * 330_000


def test_fourier_features_by_hand():
    xyz = torch.tensor([[0.25, -0.5, 0.125]])
    feats = fourier_features(xyz, 2)  # [xyz, sin(pi xyz), sin(2 pi xyz), cos(pi xyz), cos(2 pi xyz)]
    assert feats.shape == (1, 15)
    assert torch.equal(feats[0, :3], xyz[0])
    x = 0.25
    assert feats[0, 3].item() == pytest.approx(math.sin(math.pi * x), abs=1e-6)
    assert feats[0, 6].item() == pytest.approx(math.sin(2 * math.pi * x), abs=1e-6)
    assert feats[0, 9].item() == pytest.approx(math.cos(math.pi * x), abs=1e-6)
    assert feats[0, 13].item() == pytest.approx(math.cos(2 * math.pi * -0.5), abs=1e-6)
    assert torch.equal(fourier_features(xyz, 0), xyz)
