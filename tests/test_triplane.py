import numpy as np
import pytest
import torch

from flowsdf.mesh.extract import extract_mesh
from flowsdf.models.triplane import (
    TriplaneConfig,
    TriplaneDecoder,
    bilinear_reference,
    grid_sample_planes,
    sample_planes,
)
from flowsdf.render.rays import RenderConfig
from flowsdf.render.shading import field_normals, render_surface

BOUND = 0.9


def texel_centre(i: torch.Tensor, R: int) -> torch.Tensor:
    return BOUND * ((2 * i.double() + 1) / R - 1)


def small_decoder(**kw) -> TriplaneDecoder:
    """A decoder with a non-zero output layer (as after training; the sphere prior starts it at 0)."""
    torch.manual_seed(0)
    cfg = TriplaneConfig(latent_channels=4, latent_resolution=8, channels=8, resolution=16, upsampler_channels=8,
                         mlp_hidden=16, **kw)
    dec = TriplaneDecoder(cfg)
    torch.nn.init.normal_(dec.out.weight, std=0.3)
    return dec


def test_parameter_count_matches_the_docstring():
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(TriplaneDecoder(TriplaneConfig())) == 28_225
    assert n(TriplaneDecoder(TriplaneConfig(combine="concat"))) == 32_321
    assert TriplaneDecoder().latent_shape == (3, 8, 16, 16)


def test_resolution_must_be_the_latent_resolution_times_a_power_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        TriplaneDecoder(TriplaneConfig(latent_resolution=16, resolution=48))
    with pytest.raises(ValueError, match="combine"):
        TriplaneDecoder(TriplaneConfig(combine="mean"))


@pytest.mark.parametrize("item_kind", ["int", "tensor"])
def test_sampling_at_texel_centres_returns_the_stored_features(item_kind):
    torch.manual_seed(0)
    B, C, R = 2, 5, 8
    planes = torch.randn(B, 3, C, R, R)
    idx = torch.randint(0, R, (40, 3))  # (P, 3) texel index along x, y, z
    points = texel_centre(idx, R).float()  # (P, 3)
    b = 1
    item = b if item_kind == "int" else torch.full((40,), b)
    feats = sample_planes(planes, points, item, BOUND)  # (P, 3, C)
    ix, iy, iz = idx.unbind(-1)
    # Plane images are (C, rows, columns): XY rows y, columns x; XZ rows z, columns x; YZ rows z, columns y.
    assert torch.allclose(feats[:, 0], planes[b, 0][:, iy, ix].T, atol=1e-6)
    assert torch.allclose(feats[:, 1], planes[b, 1][:, iz, ix].T, atol=1e-6)
    assert torch.allclose(feats[:, 2], planes[b, 2][:, iz, iy].T, atol=1e-6)
    # Halfway between two texel centres along x: the mean of the two (bilinear).
    p = torch.tensor([[texel_centre(torch.tensor(2), R) + BOUND / R, texel_centre(torch.tensor(5), R), 0.0]]).float()
    mid = sample_planes(planes, p, 0, BOUND)[0, 0]  # XY plane, row 5, columns 2 and 3
    assert torch.allclose(mid, 0.5 * (planes[0, 0][:, 5, 2] + planes[0, 0][:, 5, 3]), atol=1e-6)


@pytest.mark.parametrize("plane, free_axis", [(0, 2), (1, 1), (2, 0)])
def test_each_plane_ignores_exactly_its_missing_axis(plane, free_axis):
    torch.manual_seed(1)
    planes = torch.zeros(1, 3, 4, 16, 16)
    planes[0, plane] = torch.randn(4, 16, 16)  # a texture on this plane only
    p = torch.rand(30, 3) * 1.4 - 0.7  # (P, 3)
    base = sample_planes(planes, p, 0, BOUND)  # (P, 3, C)
    others = [k for k in range(3) if k != plane]
    assert base[:, others].abs().max() == 0
    for axis in range(3):
        q = p.clone()
        q[:, axis] += 0.13
        moved = sample_planes(planes, q, 0, BOUND)[:, plane]
        if axis == free_axis:
            assert torch.allclose(moved, base[:, plane], atol=1e-6)
        else:
            assert (moved - base[:, plane]).abs().max() > 1e-2


def test_grid_sample_and_the_hand_written_bilinear_agree_outside_the_cube_too():
    torch.manual_seed(2)
    planes = torch.randn(3, 6, 8, 8)
    xyz = torch.rand(200, 3) * 2.4 - 1.2  # reaches past the cube: border texels repeat
    assert torch.allclose(grid_sample_planes(planes, xyz, BOUND), bilinear_reference(planes, xyz, BOUND), atol=1e-5)


@pytest.mark.parametrize("kw", [{"combine": "sum"}, {"combine": "concat", "xyz_input": True}, {"sphere_radius": 0.0}])
def test_fast_field_equals_the_reference_forward(kw):
    dec = small_decoder(**kw)
    codes = torch.randn(3, *dec.latent_shape)
    xyz = torch.rand(3, 50, 3) * 2.0 - 1.0
    plain = dec(codes, xyz)  # (3, 50)
    # Points of all codes shuffled together: the field must group them and put them back.
    item = torch.arange(3).repeat_interleave(50)
    perm = torch.randperm(150)
    fast = dec.field(codes)(xyz.reshape(-1, 3)[perm], item[perm])  # (150,)
    assert torch.allclose(fast, plain.reshape(-1)[perm], atol=1e-5)
    assert torch.allclose(dec.field(codes)(xyz[2], 2), plain[2], atol=1e-5)  # int item: all points of code 2
    assert plain.abs().max() > 0.1  # not a trivially zero field
    # No points at all (a batch whose rays all miss the bounding sphere): an empty result.
    assert dec.field(codes)(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_fast_field_gradients_equal_the_reference():
    dec = small_decoder()
    codes = torch.randn(2, *dec.latent_shape, requires_grad=True)
    xyz = (torch.rand(2, 40, 3) * 1.6 - 0.8).requires_grad_(True)
    grads_ref = torch.autograd.grad(dec(codes, xyz).pow(2).sum(), [codes, xyz])
    item = torch.arange(2).repeat_interleave(40)
    fast = dec.field(codes)(xyz.reshape(-1, 3), item)
    grads_fast = torch.autograd.grad(fast.pow(2).sum(), [codes, xyz])
    for a, b in zip(grads_ref, grads_fast):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_every_code_starts_as_the_sphere():
    dec = TriplaneDecoder(TriplaneConfig(sphere_radius=0.5))
    codes = torch.randn(2, *dec.latent_shape)
    xyz = torch.rand(2, 30, 3) * 2 - 1
    assert torch.allclose(dec(codes, xyz), xyz.norm(dim=-1) - 0.5, atol=1e-6)
    assert torch.allclose(dec(torch.zeros_like(codes), xyz), xyz.norm(dim=-1) - 0.5, atol=1e-6)


def test_bfloat16_autocast_field_is_close_to_float32():
    dec = small_decoder()
    codes = torch.randn(1, *dec.latent_shape)
    field = dec.field(codes)
    xyz = torch.rand(500, 3) * 1.8 - 0.9
    exact = field(xyz, 0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        approx = field(xyz, 0)
    assert torch.isfinite(approx).all()
    assert (approx.float() - exact).abs().max() < 0.02 * exact.abs().max()


def test_regression_to_a_sphere_meshes_within_one_voxel():
    # Fit feature planes (the upsampler bypassed) and the MLP to an off-centre sphere's SDF, with
    # no sphere term: the triplane has to represent the shape on its own.
    torch.manual_seed(0)
    centre, radius = torch.tensor([0.1, -0.05, 0.08]), 0.5
    dec = TriplaneDecoder(TriplaneConfig(latent_resolution=16, resolution=16, sphere_radius=0.0))
    planes = (0.1 * torch.randn(1, 3, dec.cfg.channels, 16, 16)).requires_grad_(True)
    opt = torch.optim.Adam([planes, *dec.hidden.parameters(), *dec.out.parameters()], lr=1e-2)
    for _ in range(250):
        pts = torch.rand(2048, 3) * 1.8 - 0.9
        target = (pts - centre).norm(dim=-1) - radius
        loss = (dec.field_from_planes(planes)(pts, 0) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    field = dec.field_from_planes(planes.detach())
    resolution, bound = 40, 0.9
    vertices, faces = extract_mesh(lambda p: field(p, 0), resolution=resolution, bound=bound)
    voxel = 2 * bound / (resolution - 1)
    assert len(faces) > 100
    radii = np.linalg.norm(vertices - centre.numpy(), axis=1)
    assert np.abs(radii - radius).max() < voxel


def test_shading_loss_on_normals_reaches_the_latent():
    dec = small_decoder(sphere_radius=0.5)
    codes = (0.5 * torch.randn(1, *dec.latent_shape)).requires_grad_(True)
    S = 12  # a small camera on the +x axis looking at the origin
    v, u = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    dirs = torch.stack([-torch.ones(S * S), (u.reshape(-1) - S / 2) / 20, -(v.reshape(-1) - S / 2) / 20], dim=-1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = torch.tensor([2.5, 0.0, 0.0]).expand(S * S, 3)
    surf = render_surface(dec.field(codes), origins[None], dirs[None], RenderConfig(n_samples=32))
    assert surf.hit.sum() > 20
    light = torch.tensor([0.6, 0.0, 0.8])
    loss = (surf.normals * light).sum(-1).clamp(min=0).mean()  # a Lambertian-shading loss
    (g,) = torch.autograd.grad(loss, codes)
    assert torch.isfinite(g).all() and g.abs().max() > 1e-6


def test_normal_derivative_wrt_the_latent_matches_finite_differences():
    # The double backward (normals by autograd, then d normal / d code) through grid_sample and
    # the Softplus MLP, against central differences, in float64.
    dec = small_decoder().double()
    codes = torch.randn(1, *dec.latent_shape, dtype=torch.float64, requires_grad=True)
    pts = torch.rand(20, 3, dtype=torch.float64) * 1.2 - 0.6
    direction = torch.randn_like(codes)

    def normals_loss(c):
        n = field_normals(dec.field(c), pts, torch.zeros(20, dtype=torch.long), create_graph=True)
        return (n * torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)).sum()

    (g,) = torch.autograd.grad(normals_loss(codes), codes)
    eps = 1e-5
    with torch.no_grad():
        fd = (normals_loss(codes + eps * direction) - normals_loss(codes - eps * direction)) / (2 * eps)
    analytic = (g * direction).sum()
    assert abs(float(fd)) > 1e-3
    assert float(analytic) == pytest.approx(float(fd), rel=1e-4, abs=1e-7)


def test_the_all_zero_latent_decodes_to_a_centred_sphere_after_training_too():
    # With a non-zero output layer (a trained decoder) the zero latent gives constant features, so
    # the field is |x| - r + k for one constant k: a sphere about the origin.
    dec = small_decoder(sphere_radius=0.5)
    torch.nn.init.normal_(dec.out.bias, std=0.1)
    xyz = torch.rand(1, 200, 3) * 2.4 - 1.2
    offset = dec(torch.zeros(1, *dec.latent_shape), xyz) - (xyz.norm(dim=-1) - 0.5)  # (1, 200)
    assert offset.abs().max() > 1e-3  # the MLP does contribute ...
    assert torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5)  # ... the same everywhere
    assert not torch.allclose(dec(torch.randn(1, *dec.latent_shape), xyz), dec(torch.zeros(1, *dec.latent_shape), xyz))


def test_config_rules_accept_the_defaults_and_refuse_a_bad_combine():
    from flowsdf.errors import FlowSDFError
    from flowsdf.models.triplane_encoder import TriplaneEncoderConfig
    from flowsdf.schema import check

    check(TriplaneConfig())
    check(TriplaneEncoderConfig())
    with pytest.raises(FlowSDFError, match="combine"):
        check(TriplaneConfig(combine="mean"))
