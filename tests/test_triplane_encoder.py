import pytest
import torch

from flowsdf.data.frames import canonical_c2w
from flowsdf.models.triplane import TriplaneConfig, TriplaneDecoder, sample_planes
from flowsdf.models.triplane_encoder import (
    TriplaneEncoder,
    TriplaneEncoderConfig,
    image_to_yz,
)
from flowsdf.render.cameras import camera_rays, intrinsics

FOV, DISTANCE, BOUND = 40.0, 2.5, 0.9


def crossings(size: int) -> torch.Tensor:
    """Where the ray of each pixel of C0 (the view frame's input camera) crosses the plane x = 0:
    (size, size, 3), row-major like the picture."""
    K = torch.tensor(intrinsics(size, FOV)).float()
    c2w = torch.tensor(canonical_c2w(DISTANCE)).float()
    o, d = camera_rays(K, c2w, size)  # (S*S, 3)
    t = -o[:, 0] / d[:, 0]  # (S*S,) depth of x = 0
    return (o + t[:, None] * d).view(size, size, 3)


@pytest.mark.parametrize("size", [32, 64])
def test_encoder_output_has_the_decoders_latent_shape(size):
    torch.manual_seed(0)
    enc = TriplaneEncoder(TriplaneEncoderConfig(), image_size=size)
    dec = TriplaneDecoder(TriplaneConfig())
    codes = enc(torch.rand(2, 3, size, size))
    assert codes.shape == (2, *dec.latent_shape) == (2, *enc.latent_shape)
    # The codes decode, and the decoder's loss trains every encoder parameter.
    torch.nn.init.normal_(dec.out.weight, std=0.1)
    dec.field(codes)(torch.rand(100, 3) - 0.5, torch.arange(2).repeat_interleave(50)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


@pytest.mark.parametrize("size", [32, 64])
def test_fresh_encoder_codes_depend_on_the_picture(size):
    """At initialisation the codes of different pictures must differ by a sizeable share of their
    size: the deep U-Net without normalisation let the picture's signal shrink layer by layer to
    1e-5 of the codes (then training moved only biases and every shape became one sphere)."""
    torch.manual_seed(0)
    enc = TriplaneEncoder(TriplaneEncoderConfig(), image_size=size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = [(size * 0.3, size * 0.5), (size * 0.7, size * 0.5), (size * 0.5, size * 0.3), (size * 0.5, size * 0.7)]
    discs = torch.stack([((xx - cx) ** 2 + (yy - cy) ** 2 < (size / 6) ** 2).float() for cx, cy in centres])  # (4, S, S)
    codes = enc(discs[:, None].expand(-1, 3, -1, -1) * 0.8)  # (4, *latent) a lit disc on black, in four places
    assert (codes.std(dim=0).mean() / codes.abs().mean()).item() > 0.05


def test_image_size_must_allow_the_downsamplings():
    with pytest.raises(ValueError, match="multiple of 8"):
        TriplaneEncoder(TriplaneEncoderConfig(), image_size=36)


@pytest.mark.parametrize("size", [16, 64])
def test_a_pixel_feature_lands_where_its_ray_crosses_the_yz_plane(size):
    # Give every pixel of an image-aligned feature map the (y, z) where its own ray crosses x = 0.
    # That is affine in the pixel position, so bilinear resampling reproduces it exactly: each YZ
    # texel must then hold its own centre (y_j, z_i) (rows z upwards, columns y).
    enc = TriplaneEncoder(TriplaneEncoderConfig(), image_size=64)
    hit = crossings(size)  # (S, S, 3)
    assert hit[..., 0].abs().max() < 1e-5
    feats = hit[..., 1:].permute(2, 0, 1)[None]  # (1, 2, S, S) channels y, z
    yz = image_to_yz(feats, enc.yz_grid)[0]  # (2, R, R)
    R = enc.latent_shape[-1]
    c = BOUND * ((2 * torch.arange(R) + 1) / R - 1)  # (R,) texel centres
    assert torch.allclose(yz[0], c[None, :].expand(R, R), atol=1e-5)  # y grows along columns
    assert torch.allclose(yz[1], c[:, None].expand(R, R), atol=1e-5)  # z grows along rows

    # Through the decoder's sampler: a point anywhere on a pixel's ray near x = 0 reads back that
    # pixel's feature from the YZ plane (inside the outer texel centres, where nothing is clamped).
    planes = torch.zeros(1, 3, 2, R, R)
    planes[0, 2] = yz
    pts = hit.reshape(-1, 3)
    pts = pts[(pts[:, 1:].abs() < c[-1]).all(dim=1)]  # (P, 3)
    pts[:, 0] = torch.rand(len(pts)) - 0.5  # x is ignored by the YZ plane
    assert torch.allclose(sample_planes(planes, pts, 0, BOUND)[:, 2], pts[:, 1:], atol=1e-5)


def test_a_single_feature_pixel_lights_the_texel_its_ray_crosses():
    # At 64 px the U-Net's map is 16 x 16: one hot feature pixel, resampled, peaks at the texel
    # nearest to where that feature pixel's ray (through its centre) crosses x = 0.
    enc = TriplaneEncoder(TriplaneEncoderConfig(), image_size=64)
    R = enc.latent_shape[-1]
    c = BOUND * ((2 * torch.arange(R) + 1) / R - 1)
    hit = crossings(16)  # rays of the 16 x 16 grid = centres of the 4 x 4 pixel blocks of the picture
    for row, col in [(2, 3), (12, 7), (8, 14)]:
        feats = torch.zeros(1, 1, 16, 16)
        feats[0, 0, row, col] = 1.0
        yz = image_to_yz(feats, enc.yz_grid)[0, 0]  # (R, R)
        i, j = divmod(int(yz.argmax()), R)
        y, z = hit[row, col, 1], hit[row, col, 2]
        assert abs(float(c[j] - y)) <= BOUND / R and abs(float(c[i] - z)) <= BOUND / R
        assert (z > 0) == (row < 8) and (y > 0) == (col >= 8)  # picture up = +z, picture right = +y


def test_widths_that_are_not_multiples_of_eight_still_build_and_encode():
    """GroupNorm needs a group count that divides the width: any configured width must work."""
    enc = TriplaneEncoder(TriplaneEncoderConfig(channels=(12, 20, 36, 36), features=10), image_size=32)
    codes = enc(torch.rand(2, 3, 32, 32))
    assert codes.shape == (2, *enc.latent_shape) and torch.isfinite(codes).all()
