"""A triplane SDF decoder: a small latent triplane -> feature planes -> signed distance.

The latent of one shape is a small "latent triplane" (3, C_lat, R_lat, R_lat) (what an encoder or
a rectified flow produces, so it stays small: 3 x 8 x 16^2 = 6,144 numbers by default). Once per
code a small convolutional upsampler, shared by the three planes, turns it into feature planes
(3, C, R, R). A point's feature is the bilinear sample of each plane at the point's projection,
summed (ConvONet, GET3D) or concatenated (OpenLRM, SSDNeRF), and a small MLP with Softplus(beta)
maps it to a signed distance.

Planes and axes. The planes are XY, XZ and YZ, in this order (index 0, 1, 2), each stored as an
image (C, rows, columns):

    plane 0  XY   columns = x, rows = y
    plane 1  XZ   columns = x, rows = z
    plane 2  YZ   columns = y, rows = z

(EG3D's reference code uses XY, XZ and ZX, so one axis pair appears twice and y-z structure is not
represented; we use the three distinct pairs.) Row and column indices grow with the coordinate.
The planes span the cube [-bound, bound]^3 (default bound 0.9, the renderer's bounding-sphere
radius, so no texel is spent outside the region the renderer samples) with align_corners=False
semantics: the R texels tile [-bound, bound] evenly and texel i's centre is at
bound * ((2 i + 1) / R - 1). Outside the cube the border texels are repeated (grid_sample's
padding_mode="border"), so the field stays defined and smooth for meshing over [-1, 1]^3.

Two sampling paths. `sample_planes` (the fast path, used by `field`) calls F.grid_sample once
per code: with an int item (the renderer's search: all points share a code) on that code's planes
directly, with a per-point item tensor on each code's group of points. grid_sample is twice
differentiable w.r.t. the grid, which the shading's normals need (normals by autograd, then a loss
on them). `forward` (the reference) interpolates by hand, one code at a time, with the layers
spelled out; tests compare the two. (A hand-written gather of the 4 texels in the fast path was
measured 4-5x slower than grid_sample on the CPU, and F.embedding_bag, as fast, has no double
backward for its weights.)

The analytic term. With `sphere_radius` r > 0 the output is MLP(features) + (|x| - r) and the
MLP's output layer starts at zero, so at initialisation every code, the all-zero one included,
decodes to the sphere of radius r: the renderer starts from a surface that every view sees, whose
normals are defined and whose silhouette overlaps the target's, instead of from a random level
set. Outside the cube, where the features are clamped, the term keeps the field growing with
distance, so no spurious surface appears there. And after training too, an all-zero latent decodes
to a centred sphere (without xyz_input): the upsampler of a constant image is a constant image
(replicate padding, biases only), so every point gets the same features, the MLP the same value k,
and the field is |x| - (r - k).

Measured (benchmarks/triplane_sphere_prior.py: 3 random shapes, each fitted from 8 silhouettes of
32 px alone, 150 Adam steps, 1 CPU thread): the term helps only at the start. After 10 steps the
fits without it are still empty (IoU 0.00; with r = 0.5: train 0.75, held-out views 0.75, volume
0.66); from 25 steps on the arms are level (volume IoU 0.74 / 0.75 at 25, 0.917 / 0.917 at 150,
held-out silhouettes 0.971 / 0.958, within the spread of 3 shapes). It stays on by default for the
quick start and the defined field outside the cube; whether it matters for an encoder trained on
many shapes is not measured.

Parameter count at the defaults (C_lat 8, R_lat 16, C 32, R 64, upsampler 32, sum, MLP 2 x 64):
    upsampler  conv3x3 8->32: 2,336; two (upsample x2, conv3x3 32->32): 2 x 9,248;
               conv1x1 32->32: 1,056                                      21,888
    MLP        32->64: 2,112; 64->64: 4,160; 64->1: 65                     6,337
    total                                                                 28,225
    (combine="concat": first layer 96->64, total 32,321.)
Per code, once: the upsampler, ~52 M multiply-adds per plane at R = 64, ~156 M per code.
Per point: 3 planes x 4 texels x 32 channels gathered and weighted (384 multiply-adds) and the MLP
(32 x 64 + 64 x 64 + 64 = 6,208 multiply-adds): ~6.6 k, against ~243 k for the 5 x 330
SDFDecoder's factored forward (benchmarks/decoder_cost.py measures the times).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowsdf.schema import ANY_BOOL, NON_NEGATIVE, POSITIVE, int_range, one_of

# (column axis, row axis) of the planes XY, XZ, YZ: the coordinate each image axis of a plane indexes.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


@dataclass
class TriplaneConfig:
    # The latent (what an encoder or a flow outputs): 3 planes x latent_channels x latent_resolution^2.
    latent_channels: int = 8
    latent_resolution: int = 16
    # The feature planes the decoder samples; resolution / latent_resolution must be a power of 2
    # (one bilinear x2 upsampling and 3x3 conv per factor of 2).
    channels: int = 32
    resolution: int = 64
    upsampler_channels: int = 32  # width of the shared upsampler's hidden convs
    combine: str = "sum"  # "sum" (MLP input C) or "concat" (MLP input 3C) of the three planes' features
    xyz_input: bool = False  # also feed xyz to the MLP (the planes already locate a point)
    mlp_hidden: int = 64
    mlp_layers: int = 2  # hidden layers of width mlp_hidden, each followed by Softplus
    # Softplus, not ReLU: a ReLU MLP's gradient w.r.t. its input is piecewise constant, so the
    # normals it yields barely depend on the latent and shading losses send it little gradient.
    # A large beta keeps Softplus close to ReLU away from 0 while making it smooth.
    softplus_beta: float = 100.0
    sphere_radius: float = 0.5  # the analytic |x| - r added to the output (module docstring); 0 = off
    bound: float = 0.9  # the planes span [-bound, bound]^3 (the renderer's bound_radius)

    RULES = {"latent_channels": int_range(1, 1024), "latent_resolution": int_range(1, 1024),
             "channels": int_range(1, 1024), "resolution": int_range(2, 4096), "upsampler_channels": int_range(1, 1024),
             "combine": one_of("sum", "concat"), "xyz_input": ANY_BOOL, "mlp_hidden": int_range(1, 4096),
             "mlp_layers": int_range(0, 16), "softplus_beta": POSITIVE, "sphere_radius": NON_NEGATIVE, "bound": POSITIVE}

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (3, self.latent_channels, self.latent_resolution, self.latent_resolution)


def grid_sample_planes(planes: Tensor, xyz: Tensor, bound: float) -> Tensor:
    """Bilinear features (N, 3, C) of one code's planes (3, C, R, R) at points xyz (N, 3).

    F.grid_sample's grid is (x = column, y = row) in [-1, 1]; align_corners=False (texels tile
    the cube), padding_mode="border" (outside the cube the edge texels repeat). Under autocast
    grid_sample runs in float32 (the CPU and CUDA autocast lists say so), which keeps the texel
    positions exact; the MLP after it runs in the autocast dtype.
    """
    g = xyz / bound  # (N, 3) in [-1, 1] inside the cube
    grid = torch.stack([g[:, [c, r]] for c, r in PLANE_AXES])[:, None]  # (3, 1, N, 2)
    feats = F.grid_sample(planes, grid.to(planes.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return feats[:, :, 0].permute(2, 0, 1)  # (3, C, 1, N) -> (N, 3, C)


def sample_planes(planes: Tensor, points: Tensor, item: Tensor | int, bound: float = 0.9) -> Tensor:
    """Bilinear features (P, 3, C) of the planes (B, 3, C, R, R) (XY, XZ, YZ) at points (P, 3).

    `item` is one int (all points read that code: one grid_sample, no per-point gather) or a (P,)
    long tensor (the points are grouped by code, each group sampled from its code's planes, and
    put back in order). Twice differentiable w.r.t. the points (normals, then a loss on them).
    """
    if not isinstance(item, Tensor):
        return grid_sample_planes(planes[item], points, bound)  # (P, 3, C)
    order = torch.argsort(item, stable=True)  # (P,) points grouped by code
    counts = torch.bincount(item, minlength=planes.shape[0]).tolist()
    groups = points.index_select(0, order).split(counts)  # B x (n_b, 3)
    feats = torch.cat([grid_sample_planes(planes[b], g, bound) for b, g in enumerate(groups)])  # (P, 3, C)
    # index_select, not feats[inverse]: its backward (index_add) sums in a fixed order (see SDFDecoder).
    return feats.index_select(0, torch.argsort(order))  # (P, 3, C) back in the points' order


def bilinear_reference(planes: Tensor, xyz: Tensor, bound: float) -> Tensor:
    """The same features as `grid_sample_planes`, by hand: planes (3, C, R, R), xyz (N, 3) -> (N, 3, C).

    The reference for tests: texel i's centre is at bound * ((2 i + 1) / R - 1); coordinates are
    clamped to the outer texel centres (border padding).
    """
    R = planes.shape[-1]
    u = (((xyz / bound + 1.0) * R - 1.0) / 2.0).clamp(0.0, R - 1.0)  # (N, 3) continuous texel index
    i0 = u.detach().floor().clamp(max=R - 2).long()  # (N, 3) lower texel (R - 1 is reached with weight 1)
    w = u - i0  # (N, 3)
    out = []
    for k, (a, b) in enumerate(PLANE_AXES):
        c, r, wc, wr = i0[:, a], i0[:, b], w[:, a], w[:, b]  # column = axis a, row = axis b
        p = planes[k]  # (C, R, R) indexed [channel, row, column]
        f = ((1 - wr) * (1 - wc) * p[:, r, c] + (1 - wr) * wc * p[:, r, c + 1]
             + wr * (1 - wc) * p[:, r + 1, c] + wr * wc * p[:, r + 1, c + 1])  # (C, N)
        out.append(f.T)  # (N, C)
    return torch.stack(out, dim=1)  # (N, 3, C)


class Upsampler(nn.Module):
    """Latent planes (N, C_lat, R_lat, R_lat) -> feature planes (N, C, R, R), shared by the three planes."""

    def __init__(self, cfg: TriplaneConfig):
        super().__init__()
        factor = cfg.resolution // cfg.latent_resolution
        if factor < 1 or cfg.resolution % cfg.latent_resolution or factor & (factor - 1):
            raise ValueError(f"resolution ({cfg.resolution}) must be latent_resolution ({cfg.latent_resolution}) "
                             "times a power of 2")
        U = cfg.upsampler_channels
        # Replicate padding: a plane's edge is the cube's face, where nothing special happens; zero
        # padding would show the border texels a dark frame (and break "zero latent -> sphere").
        conv = lambda a, b: nn.Conv2d(a, b, 3, padding=1, padding_mode="replicate")
        self.conv_in = conv(cfg.latent_channels, U)
        self.ups = nn.ModuleList([conv(U, U) for _ in range(factor.bit_length() - 1)])
        self.conv_out = nn.Conv2d(U, cfg.channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(self.conv_in(x))  # (N, U, R_lat, R_lat)
        for conv in self.ups:
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)  # (N, U, 2r, 2r)
            h = F.silu(conv(h))  # (N, U, 2r, 2r)
        return self.conv_out(h)  # (N, C, R, R)


class TriplaneDecoder(nn.Module):
    """Latent triplanes (B, 3, C_lat, R_lat, R_lat) and points -> signed distances; SDFDecoder's interface."""

    def __init__(self, cfg: TriplaneConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else TriplaneConfig()
        if cfg.combine not in ("sum", "concat"):
            raise ValueError(f"combine must be sum or concat, got {cfg.combine!r}")
        self.upsampler = Upsampler(cfg)
        d_in = cfg.channels * (3 if cfg.combine == "concat" else 1) + (3 if cfg.xyz_input else 0)
        widths = [d_in] + [cfg.mlp_hidden] * cfg.mlp_layers
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in pairwise(widths)])
        self.out = nn.Linear(widths[-1], 1)
        if cfg.sphere_radius > 0:
            nn.init.zeros_(self.out.weight)  # every code starts as the sphere (module docstring)
            nn.init.zeros_(self.out.bias)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.cfg.latent_shape

    def planes(self, codes: Tensor) -> Tensor:
        """Latent triplanes (B, 3, C_lat, R_lat, R_lat) -> feature planes (B, 3, C, R, R)."""
        B = codes.shape[0]
        if tuple(codes.shape[1:]) != self.latent_shape:
            raise ValueError(f"codes must be (B, *{self.latent_shape}), got {tuple(codes.shape)}")
        feats = self.upsampler(codes.reshape(B * 3, *codes.shape[2:]))  # (3B, C, R, R)
        return feats.view(B, 3, *feats.shape[1:])  # (B, 3, C, R, R)

    def head(self, feats: Tensor, xyz: Tensor) -> Tensor:
        """Per-plane features (P, 3, C) at points xyz (P, 3) -> sdf (P,): combine, MLP, analytic term."""
        h = feats.sum(1) if self.cfg.combine == "sum" else feats.flatten(1)  # (P, C) or (P, 3C)
        if self.cfg.xyz_input:
            h = torch.cat([h, xyz.to(h.dtype)], dim=-1)  # (P, d_in)
        for layer in self.hidden:
            h = F.softplus(layer(h), beta=self.cfg.softplus_beta)  # (P, hidden)
        sdf = self.out(h).squeeze(-1)  # (P,)
        if self.cfg.sphere_radius > 0:
            sdf = sdf + (torch.linalg.vector_norm(xyz, dim=-1) - self.cfg.sphere_radius)  # (P,)
        return sdf

    def field_from_planes(self, planes: Tensor):
        """A renderer field `f(points (P, 3), item) -> (P,)` reading the feature planes (B, 3, C, R, R)."""
        return lambda xyz, item: self.head(sample_planes(planes, xyz, item, self.cfg.bound), xyz)

    def field(self, codes: Tensor):
        """A renderer field `f(points (P, 3), item) -> (P,)` for the latent triplanes (B, *latent_shape).

        `item` is a (P,) long tensor (which code each point belongs to) or one int for all points.
        The upsampler runs here, once per code; the field is differentiable w.r.t. the codes, the
        parameters and the points (twice: normals by autograd, then a loss on them).
        """
        return self.field_from_planes(self.planes(codes))

    def forward(self, codes: Tensor, xyz: Tensor) -> Tensor:
        """Reference path: codes (B, *latent_shape), xyz (B, N, 3) -> sdf (B, N), one code at a time,
        bilinear interpolation and the layers spelled out. Tests compare `field` against it."""
        planes = self.planes(codes)  # (B, 3, C, R, R)
        out = []
        for b in range(codes.shape[0]):
            feats = bilinear_reference(planes[b], xyz[b], self.cfg.bound)  # (N, 3, C)
            h = feats[:, 0] + feats[:, 1] + feats[:, 2] if self.cfg.combine == "sum" else torch.cat(
                [feats[:, 0], feats[:, 1], feats[:, 2]], dim=-1)  # (N, C) or (N, 3C)
            if self.cfg.xyz_input:
                h = torch.cat([h, xyz[b]], dim=-1)
            for layer in self.hidden:
                h = F.softplus(h @ layer.weight.T + layer.bias, beta=self.cfg.softplus_beta)  # (N, hidden)
            sdf = (h @ self.out.weight.T + self.out.bias)[:, 0]  # (N,)
            if self.cfg.sphere_radius > 0:
                sdf = sdf + xyz[b].norm(dim=-1) - self.cfg.sphere_radius
            out.append(sdf)
        return torch.stack(out)  # (B, N)
