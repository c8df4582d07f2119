"""Image -> latent triplane (3, C_lat, R_lat, R_lat), for flowsdf.models.triplane.TriplaneDecoder.

In the view frame (flowsdf.data.frames) the input camera is always C0: on the +x axis at distance
d = 2.5, looking at the origin, world up +z, OpenCV convention (camera x right, y down, z forward).
From look_at (flowsdf.render.cameras), C0's right is world +y and its down is world -z, so the picture's plane is
parallel to the decoder's YZ plane:

    image column (u, to the right)  ->  world +y  ->  YZ plane column
    image row    (v, downwards)     ->  world -z  ->  YZ plane row, reversed (plane rows grow with z)

A point (0, y, z) of the plane x = 0 appears at pixel u = c + f y / d, v = c - f z / d. So:

1. A small U-Net turns the picture into a feature map at about the latent resolution (64 px -> 16,
   32 px -> 16). Its downsamplings are 4x4 stride-2 convolutions with padding 1, whose output
   pixel k is centred on input coordinate 2k + 1, the centre of the 2 x 2 block it summarises (a
   3x3 stride-2 conv is centred half an input pixel off, and the shifts add up over levels), so the
   feature map stays aligned with the picture.
2. `image_to_yz` resamples that map (bilinear, grid_sample, align_corners=False) at the pixel where
   each YZ-plane texel centre (0, y_j, z_i) appears: the YZ plane is the picture, re-gridded onto
   the decoder's [-bound, bound]^2 texels with z pointing up. A 1x1 conv gives the YZ latent.
   The match is exact on the plane x = 0 only: the camera is perspective and the YZ plane an
   orthographic projection along x, so the point of a pixel's ray at depth x is at (d - x) / d
   times the distance from the x axis of its x = 0 point: 0.64 times at x = 0.9 (nearest the
   camera), 1.36 times at x = -0.9. The U-Net's receptive field and the other two planes have to
   absorb that.
3. The XZ and XY planes contain the axis the picture does not show (depth, x). They are lifted from
   the YZ features by learned maps that keep the shared axis aligned: each XZ row (one height z) is
   an MLP of the whole YZ row at that z (all y), output over x; each XY column (one y) an MLP of the
   whole YZ column at that y (all z), output over x. An image row at height z is exactly what shows
   the object's extent at that height, so a row-wise MLP shared over rows can learn "how deep is
   the object here" from it, while z (resp. y) never gets mixed with other heights. A global code
   (the pooled bottleneck) is added to each lifting MLP's hidden layer, so depth can also depend on
   the whole picture (a shape's kind and pose).

Parameters at the defaults (64 px, channels 32/64/128/128, features 32, lift 256, latent 8 x 16^2):
1,944,712: the U-Net ~1.55 M (GroupNorm after every convolution), the two lifting MLPs 197,248
each. At 32 px 2,090,504 (the output level is one finer, so one more up block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowsdf.schema import all_in, int_range


@dataclass
class TriplaneEncoderConfig:
    """The encoder's own widths. The image size, the latent triplane's shape and bound, and the input
    camera (field of view, distance) are the constructor's: they come from the data and the decoder."""

    channels: tuple[int, ...] = (32, 64, 128, 128)  # U-Net level k runs at image_size / 2^k with channels[k]
    features: int = 32  # F: channels of the YZ feature map the three latent planes are made from
    lift_hidden: int = 256  # hidden width of the MLPs lifting YZ rows / columns to the XZ / XY planes

    RULES = {"channels": all_in(1, 4096), "features": int_range(1, 4096), "lift_hidden": int_range(1, 65_536)}


def yz_texel_grid(latent_resolution: int, bound: float, fov_deg: float, cam_distance: float) -> Tensor:
    """Where C0 sees each YZ-plane texel centre, as a grid_sample grid (1, R, R, 2).

    Entry [0, i, j] = (column, row) in [-1, 1] of the point (0, y_j, z_i), texel centres
    y_j, z_i = bound * ((2 j + 1) / R - 1). With the pixel u = c + f y / d, v = c - f z / d
    (module docstring), c = S / 2 and f = (S / 2) / tan(fov / 2), grid_sample's align_corners=False
    coordinate 2 u / S - 1 is y / (d tan(fov / 2)), and the row's is -z / (d tan(fov / 2)): the
    same for every image size. tests/test_triplane_encoder.py checks this against the rays that
    render.cameras shoots from data.frames' C0.
    """
    c = bound * ((2 * torch.arange(latent_resolution, dtype=torch.float64) + 1) / latent_resolution - 1)  # (R,)
    z, y = torch.meshgrid(c, c, indexing="ij")  # (R, R) row i -> z_i, column j -> y_j
    half = cam_distance * math.tan(math.radians(fov_deg) / 2)  # half-width of the picture at x = 0
    return torch.stack([y / half, -z / half], dim=-1).float()[None]  # (1, R, R, 2)


def image_to_yz(feats: Tensor, grid: Tensor) -> Tensor:
    """Image-aligned features (B, F, h, w) -> YZ-plane features (B, F, R, R) (rows z up, columns y)."""
    return F.grid_sample(feats, grid.expand(feats.shape[0], -1, -1, -1).to(feats.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)  # (B, F, R, R)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)  # up to 8 groups, always a divisor of the width


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    # GroupNorm after every convolution: without it the picture's signal shrinks by a constant
    # factor per layer at PyTorch's default initialisation, and after the U-Net's ~12 layers the
    # codes of different pictures differed by 1e-5 of their size (measured at 32 px) - training
    # then moved only the biases, the encoder ignored its picture, and the decoder fell back to
    # one hedged sphere for every shape.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), _norm(c_out), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), _norm(c_out), nn.SiLU())


class AxisLift(nn.Module):
    """YZ features along one axis -> one latent plane's line along x: (B, L, F, R) + global (B, G) -> (B, L, C_lat, R).

    For each of the L lines (rows or columns of the YZ plane) an MLP shared by all lines maps the
    line's F x R features, plus the global code, to C_lat features at each of R positions along x.
    """

    def __init__(self, features: int, resolution: int, hidden: int, global_dim: int, latent_channels: int):
        super().__init__()
        self.fc1 = nn.Linear(features * resolution, hidden)
        self.glob = nn.Linear(global_dim, hidden)
        self.fc2 = nn.Linear(hidden, latent_channels * resolution)
        self.latent_channels = latent_channels

    def forward(self, lines: Tensor, glob: Tensor) -> Tensor:
        B, L, Fc, R = lines.shape
        h = F.silu(self.fc1(lines.reshape(B, L, Fc * R)) + self.glob(glob)[:, None])  # (B, L, hidden)
        return self.fc2(h).view(B, L, self.latent_channels, R)  # (B, L, C_lat, R) last axis = x


class TriplaneEncoder(nn.Module):
    """images (B, 3, H, W) in [0, 1], seen by C0 -> latent triplanes (B, 3, C_lat, R_lat, R_lat) (XY, XZ, YZ)."""

    def __init__(self, cfg: TriplaneEncoderConfig | None = None, image_size: int = 64,
                 latent_shape: tuple[int, int, int, int] = (3, 8, 16, 16), bound: float = 0.9, fov_deg: float = 40.0,
                 cam_distance: float = 2.5):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else TriplaneEncoderConfig()
        self.latent_shape = tuple(latent_shape)
        _, C_lat, R, _ = self.latent_shape
        K, S = len(cfg.channels), image_size
        if S % 2 ** (K - 1):
            raise ValueError(f"image_size ({S}) must be a multiple of {2 ** (K - 1)} ({K - 1} downsamplings)")
        # The U-Net's output level: the coarsest whose map is at least the latent resolution.
        self.out_level = min(K - 1, max(0, int(math.log2(S / R))))
        ch = cfg.channels
        self.stem = _conv_block(3, ch[0])
        # 4x4 stride-2 padding-1 downsampling keeps pixel centres aligned (module docstring).
        self.downs = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(ch[k - 1], ch[k], 4, stride=2, padding=1), _norm(ch[k]), nn.SiLU(),
                           _conv_block(ch[k], ch[k]))
             for k in range(1, K)])
        self.ups = nn.ModuleList([_conv_block(ch[k + 1] + ch[k], ch[k]) for k in range(self.out_level, K - 1)])
        self.to_features = nn.Conv2d(ch[self.out_level], cfg.features, 1)
        self.to_yz = nn.Conv2d(cfg.features, C_lat, 1)
        self.lift_xz = AxisLift(cfg.features, R, cfg.lift_hidden, ch[-1], C_lat)
        self.lift_xy = AxisLift(cfg.features, R, cfg.lift_hidden, ch[-1], C_lat)
        grid = yz_texel_grid(R, bound, fov_deg, cam_distance)  # (1, R, R, 2)
        self.register_buffer("yz_grid", grid, persistent=False)

    def yz_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, 3, H, W) -> YZ-plane features (B, F, R, R) and the global code (B, channels[-1])."""
        h = self.stem(images * 2.0 - 1.0)  # (B, c0, H, W)
        skips = [h]
        for down in self.downs:
            h = down(h)  # (B, c_k, H / 2^k, W / 2^k)
            skips.append(h)
        glob = h.mean(dim=(2, 3))  # (B, c_last) the pooled bottleneck
        for k in reversed(range(self.out_level, len(self.cfg.channels) - 1)):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)  # (B, c_{k+1}, 2h, 2w)
            h = self.ups[k - self.out_level](torch.cat([h, skips[k]], dim=1))  # (B, c_k, h_k, w_k)
        feats = self.to_features(h)  # (B, F, h_L, w_L) aligned with the picture
        return image_to_yz(feats, self.yz_grid), glob  # (B, F, R, R), (B, c_last)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> latent triplanes (B, 3, C_lat, R, R): XY, XZ, YZ."""
        yz, glob = self.yz_features(images)  # (B, F, Rz, Ry), (B, G)
        plane_yz = self.to_yz(yz)  # (B, C_lat, Rz, Ry) rows z, columns y
        rows = yz.permute(0, 2, 1, 3)  # (B, Rz, F, Ry) one line per height z
        plane_xz = self.lift_xz(rows, glob).permute(0, 2, 1, 3)  # (B, Rz, C_lat, Rx) -> (B, C_lat, Rz, Rx)
        cols = yz.permute(0, 3, 1, 2)  # (B, Ry, F, Rz) one line per y
        plane_xy = self.lift_xy(cols, glob).permute(0, 2, 1, 3)  # (B, Ry, C_lat, Rx) -> (B, C_lat, Ry, Rx)
        return torch.stack([plane_xy, plane_xz, plane_yz], dim=1)  # (B, 3, C_lat, R, R)
