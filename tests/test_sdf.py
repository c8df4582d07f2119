import torch

from flowsdf.models.sdf import DecoderConfig, SDFDecoder


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_decoder_size_matches_the_published_330k():
    assert abs(n_params(SDFDecoder(DecoderConfig())) - 330_000) <= 0.10 * 330_000


def test_decoder_is_five_layers_with_the_input_reinjected_at_layer_3():
    dec = SDFDecoder(DecoderConfig())
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5
    assert linears[2].in_features == linears[1].out_features + 128 + 3


def test_factored_forward_equals_the_plain_deepsdf_forward():
    torch.manual_seed(0)
    dec = SDFDecoder(DecoderConfig())
    z, xyz = torch.randn(3, 128), torch.rand(3, 50, 3) * 2 - 1
    plain = dec(z, xyz)  # (3, 50)
    item = torch.arange(3).repeat_interleave(50)
    factored = dec.field(z)(xyz.reshape(-1, 3), item).view(3, 50)
    assert torch.allclose(plain, factored, atol=1e-5)
    # one int item = all points share that code
    assert torch.allclose(dec.field(z)(xyz[1], 1), plain[1], atol=1e-5)
