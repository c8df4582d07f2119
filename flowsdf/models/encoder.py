"""Stage 1's CNN encoder: image -> 128-d latent code (Mini SDF-SRN)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from flowsdf.schema import all_in, int_range


@dataclass
class EncoderConfig:
    """The CNN encoder's widths; the image size and the code's width come from the data and the decoder."""

    channels: tuple[int, ...] = (32, 64, 128, 256)  # 4 stride-2 convs: 64 -> 4 pixels
    fc_hidden: int = 256

    RULES = {"channels": all_in(1, 4096), "fc_hidden": int_range(1, 65_536)}


class CNNEncoder(nn.Module):
    """4 conv layers (3 -> 32 -> 64 -> 128 -> 256, stride 2) then 2 FC layers -> latent."""

    def __init__(self, cfg: EncoderConfig, image_size: int = 64, latent_dim: int = 128):
        super().__init__()
        self.cfg, self.latent_dim = cfg, latent_dim
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        side = image_size // 2 ** len(cfg.channels)
        if side < 1 or image_size % 2 ** len(cfg.channels):
            raise ValueError(f"image_size {image_size} must be a multiple of {2 ** len(cfg.channels)}")
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, cfg.fc_hidden),
            nn.ReLU(),
            nn.Linear(cfg.fc_hidden, latent_dim),
        )

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, H, W) in [0, 1] -> codes (B, latent_dim)."""
        return self.fc(self.convs(images * 2.0 - 1.0))  # (B, D)
