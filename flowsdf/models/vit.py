"""A small ViT conditioner trained from scratch: images -> a sequence of condition tokens.

    x = Conv(p x p, stride p)(2 * image - 1)            patches (B, (S/p)^2, C)
    x = [CLS;] x + pos_embed                            learned positions (and an optional CLS token)
    block: x = x + SelfAttn(LN(x)); x = x + MLP(LN(x))   pre-norm transformer blocks
    out:   LN(x)                                        (B, N, C), N = (S/p)^2 (+ 1 with CLS)

Where ImageConditioner pools the whole image into one vector, this keeps one token per patch, so
the DiT's cross-attention can read each part of the image. Positions are learned, and they are in
the tokens themselves, which the DiT needs: its cross-attention ignores token order.

Parameter count at the defaults (64x64 input, patch 8 -> 64 tokens, width 256, depth 3, heads 4,
mlp_ratio 2, no CLS token):
    patch embedding 3*8*8*256 + 256                     49,408
    pos_embed 64*256                                    16,384
    per block: 2 LayerNorms 1,024; qkv 256*768+768 = 197,376; proj 65,792;
               MLP 256*512+512 + 512*256+256 = 262,912                          -> 527,104
    3 blocks                                         1,581,312
    final LayerNorm                                        512
    total                                            1,647,616  (ImageConditioner: 2,838,592)
At 32x32 with patch 8 there are 16 tokens and pos_embed shrinks to 4,096 (1,635,328 in all);
patch 4 at 32x32 gives 64 tokens again.
Sized for speed: at batch 1 on our 2-core CPU (one thread) it takes about 2.5 ms, which with the
default DiT's 8 Euler steps on its 64 tokens keeps image -> code within about 15 ms
(benchmarks/dit_latency.py); depth 4 with mlp_ratio 4 (3.2 M) took about 5 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowsdf.models.attention import SelfAttention
from flowsdf.schema import ANY_BOOL, int_range


@dataclass
class ViTConfig:
    """image_size must be divisible by patch_size; the tokens are `hidden` wide (the DiT's cond_dim)."""

    patch_size: int = 8
    hidden: int = 256
    depth: int = 3
    heads: int = 4
    mlp_ratio: int = 2
    cls_token: bool = False  # prepend a learned CLS token (a global summary the DiT may attend to)

    RULES = {"patch_size": int_range(1, 512), "hidden": int_range(1, 8192),
             "depth": int_range(1, 256), "heads": int_range(1, 256), "mlp_ratio": int_range(1, 16),
             "cls_token": ANY_BOOL}


class ViTBlock(nn.Module):
    """Pre-norm transformer block: self-attention then MLP, each around a residual."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attn = SelfAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden, hidden),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))  # (B, N, C)
        return x + self.mlp(self.norm2(x))  # (B, N, C)


class ViTConditioner(nn.Module):
    """(B, 3, S, S) images in [0, 1] -> (B, N, hidden) condition tokens."""

    def __init__(self, config: ViTConfig | None = None, image_size: int = 64) -> None:
        super().__init__()
        self.config = config = config if config is not None else ViTConfig()
        if image_size % config.patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {config.patch_size}")
        self.image_size = image_size
        grid = image_size // config.patch_size
        self.num_patches = grid * grid
        self.num_tokens = self.num_patches + int(config.cls_token)
        self.embed_dim = config.hidden
        self.patch_embed = nn.Conv2d(3, config.hidden, kernel_size=config.patch_size, stride=config.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, config.hidden))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if config.cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        else:
            self.cls_token = None
        self.blocks = nn.ModuleList(
            [ViTBlock(config.hidden, config.heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.hidden, eps=1e-6)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, 3, S, S) in [0, 1] -> tokens (B, N, hidden), N = (S/p)^2 (+ 1 with CLS first)."""
        s = self.image_size
        if images.shape[1:] != (3, s, s):
            raise ValueError(f"images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")
        x = self.patch_embed(images * 2.0 - 1.0)  # (B, C, S/p, S/p), centred like ImageConditioner
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, (S/p)^2, C)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + (S/p)^2, C)
        for block in self.blocks:
            x = block(x)  # (B, N, C)
        return self.norm(x)  # (B, N, C)
