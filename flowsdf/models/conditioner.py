"""Image conditioner (Stage 2, the seed's): a small CNN that turns an RGB image into one condition token.

Four 3x3 stride-2 convolutions (each followed by GroupNorm and SiLU) halve the image four times,
then one linear layer maps the flattened feature map to the embedding the velocity net reads.
Every conditioner gives condition tokens (B, N, C); this one gives one token, N = 1 (the ViT and
DINOv2 give one per image patch).

Parameter count at the defaults (64x64 input, channels 3 -> 64 -> 128 -> 192 -> 256, embed 512):
    conv 3->64      3*64*9 + 64      =     1,792
    conv 64->128    64*128*9 + 128   =    73,856
    conv 128->192   128*192*9 + 192  =   221,376
    conv 192->256   192*256*9 + 256  =   442,624
    GroupNorm       2*(64+128+192+256) =   1,280
    fc 4096->512    (256*4*4)*512 + 512 = 2,097,664
    total                               2,838,592  (published: ~2.9 M, within -2.2 %)
At 32x32 the feature map is 2x2, so only the FC shrinks (flatten size follows image_size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowsdf.schema import ANY_BOOL, all_in, int_range


@dataclass
class ConditionerConfig:
    """The CNN conditioner's widths; the image size (divisible by 2^len(channels)) comes from the data."""

    channels: tuple[int, ...] = (64, 128, 192, 256)
    embed_dim: int = 512
    group_norm: bool = True
    norm_groups: int = 8

    RULES = {"channels": all_in(1, 4096), "embed_dim": int_range(1, 8192), "group_norm": ANY_BOOL,
             "norm_groups": int_range(1, 4096)}


class ImageConditioner(nn.Module):
    """(B, 3, H, W) images in [0, 1] -> (B, 1, embed_dim): one condition token."""

    def __init__(self, config: ConditionerConfig | None = None, image_size: int = 64) -> None:
        super().__init__()
        self.config = config = config if config is not None else ConditionerConfig()
        self.embed_dim = config.embed_dim
        downsample = 2 ** len(config.channels)
        if image_size % downsample != 0:
            raise ValueError(f"image_size {image_size} must be divisible by {downsample}")

        layers: list[nn.Module] = []
        c_in = 3
        for c_out in config.channels:
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            if config.group_norm:
                layers.append(nn.GroupNorm(min(config.norm_groups, c_out), c_out))
            layers.append(nn.SiLU())
            c_in = c_out
        self.convs = nn.Sequential(*layers)

        side = image_size // downsample
        self.fc = nn.Linear(c_in * side * side, config.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> one condition token (B, 1, embed_dim)."""
        x = images * 2.0 - 1.0  # (B, 3, H, W), centred so the first conv sees zero-mean input
        x = self.convs(x)  # (B, C_last, H/16, W/16)
        x = torch.flatten(x, 1)  # (B, C_last * H/16 * W/16)
        return self.fc(x)[:, None]  # (B, 1, embed_dim)
