"""Velocity net: a residual MLP with DiT-style AdaLN-Zero conditioning on time and image.

v = VelocityNet(z_t, t, cond) predicts dz/dt of the rectified flow (convention in flowsdf.flow).
cond is the conditioner's tokens (B, N, C), pooled by `prepare` into one vector (their mean over
the real tokens: the seed's CNN gives one token, so its vector is that token), or that vector.

    c = MLP(sinusoidal(t)) + Linear(cond)                 the conditioning vector
    block: x + gate(c) * MLP(LayerNorm(x) * (1 + scale(c)) + shift(c))
    out:   Linear(LayerNorm(x) * (1 + scale(c)) + shift(c))

Every adaLN modulation layer and the output layer start at zero: each block is then the identity
and the net outputs exactly 0, so training starts from "do nothing" and learns the field from there.

Parameter count at the defaults (latent 128, hidden 256, mlp_ratio 3, depth 6, cond 512):
    per block: MLP 256*768+768 + 768*256+256 = 394,240; adaLN 256*768+768 = 197,376 -> 591,616
    6 blocks                                  3,549,696
    input 128->256                               33,024
    time MLP 256->256->256                      131,584
    cond projection 512->256                    131,328
    final adaLN 256->512 + output 256->128      164,480
    total                                     4,010,112  (published: ~3.9 M, within +2.8 %)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowsdf.schema import Rule, int_range


@dataclass
class VelocityConfig:
    """The MLP velocity net's widths; the code's and the condition's widths are the constructor's."""

    hidden: int = 256
    depth: int = 6
    mlp_ratio: int = 3
    time_embed_dim: int = 256  # width of the sinusoidal features before the time MLP

    RULES = {"hidden": int_range(1, 8192), "depth": int_range(1, 256), "mlp_ratio": int_range(1, 16),
             "time_embed_dim": Rule("an even integer from 2 to 8,192", lambda v: 2 <= v <= 8192 and v % 2 == 0)}


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of t (B,) in [0, 1] -> (B, dim).

    t is multiplied by 1000 first: the classic frequencies were chosen for integer steps 0..1000,
    and on [0, 1] the slow half of them would barely move.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2 * half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb.to(t.dtype) if t.is_floating_point() else emb


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN modulation; scale is a residual around 1 so zero modulation leaves x unchanged."""
    return x * (1.0 + scale) + shift


class AdaLNBlock(nn.Module):
    """LayerNorm (no affine) -> modulate -> MLP -> gated residual, all three from c."""

    def __init__(self, hidden: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * hidden, hidden),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)  # 3 x (B, H)
        h = modulate(self.norm(x), shift, scale)  # (B, H)
        return x + gate * self.mlp(h)  # (B, H)


class FinalLayer(nn.Module):
    """AdaLN then a zero-initialised linear back to the latent size."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # 2 x (B, H)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, D)


class VelocityNet(nn.Module):
    """v(z_t (B, *latent_shape), t (B,), cond (B, N, C) tokens or (B, C) pooled) -> (B, *latent_shape).

    A code of any shape is read as one vector of its D = prod(latent_shape) numbers (the seed's is
    a 128-d vector already).
    """

    def __init__(self, config: VelocityConfig | None = None, latent_shape: int | tuple[int, ...] = 128,
                 cond_dim: int = 512) -> None:
        super().__init__()
        self.config = config = config if config is not None else VelocityConfig()
        self.latent_shape = (latent_shape,) if isinstance(latent_shape, int) else tuple(latent_shape)
        self.cond_dim = cond_dim
        latent_dim = math.prod(self.latent_shape)
        h = config.hidden
        self.input = nn.Linear(latent_dim, h)
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h)
        )
        self.cond_proj = nn.Linear(cond_dim, h)
        self.blocks = nn.ModuleList([AdaLNBlock(h, config.mlp_ratio) for _ in range(config.depth)])
        self.final = FinalLayer(h, latent_dim)

    def prepare(self, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """Condition tokens (B, N, C) -> the one vector (B, C) this net reads: their mean over the
        real tokens (cond_mask (B, N) bool, True = real; a row with none gives zeros). A (B, C)
        vector is returned as it is."""
        if cond.ndim == 2:
            return cond
        if cond_mask is None:
            return cond.mean(dim=1)  # (B, C)
        w = cond_mask.to(cond.dtype)[..., None]  # (B, N, 1)
        return (cond * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, C)

    def forward(self, z_t: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """z_t (B, *latent_shape), t (B,) in [0, 1], cond (B, N, C) or (B, C) -> velocity like z_t."""
        cond = self.prepare(cond, cond_mask)  # (B, C)
        temb = timestep_embedding(t, self.config.time_embed_dim)  # (B, T)
        c = self.time_mlp(temb) + self.cond_proj(cond)  # (B, H)
        x = self.input(z_t.flatten(1))  # (B, H)
        for block in self.blocks:
            x = block(x, c)  # (B, H)
        return self.final(x, c).view(z_t.shape)  # (B, *latent_shape)
