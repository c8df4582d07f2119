"""The SDF decoder: latent code + xyz -> signed distance (DeepSDF pattern, never sees 3-D data).

Five linear layers; the input [z, xyz] is concatenated back in at layer 3 (DeepSDF's skip).
Like DeepSDF, layer 2 outputs `hidden - in_dim` so that the concatenation is `hidden` wide.

Rendering evaluates the decoder at ~200 k points per image but every point of one image shares
the same z, so the forward pass splits layers 1 and 3 into their z-part (computed once per code)
and their xyz-part (per point). The parameters stay ordinary nn.Linear layers on the
concatenated input, exactly as in DeepSDF; only the arithmetic is regrouped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowsdf.schema import int_range


@dataclass
class DecoderConfig:
    latent_dim: int = 128
    hidden: int = 330  # 5 layers at this width: ~328 k parameters (the published ~330 k)

    RULES = {"latent_dim": int_range(1, 4096), "hidden": int_range(2, 8192)}


class SDFDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        d_in, h = cfg.latent_dim + 3, cfg.hidden
        if h <= d_in:
            raise ValueError(f"hidden ({h}) must exceed the input width ({d_in}) for the skip layer")
        self.l1 = nn.Linear(d_in, h)
        self.l2 = nn.Linear(h, h - d_in)
        self.l3 = nn.Linear(h, h)  # input: [layer-2 output, z, xyz]
        self.l4 = nn.Linear(h, h)
        self.l5 = nn.Linear(h, 1)

    def latent_terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The z-dependent parts of layers 1 and 3, once per code: z (B, D) -> (B, h), (B, h)."""
        D = self.cfg.latent_dim
        skip_w = self.l3.weight[:, -(D + 3) : -3]  # (h, D) columns that multiply z
        t1 = F.linear(z, self.l1.weight[:, :D], self.l1.bias)  # (B, h)
        t3 = F.linear(z, skip_w, self.l3.bias)  # (B, h)
        return t1, t3

    def forward_points(self, terms: tuple[Tensor, Tensor], xyz: Tensor, item: Tensor | int) -> Tensor:
        """SDF at points xyz (P, 3) whose codes are rows `item` of the precomputed terms.

        `item` is a (P,) index tensor, or one int when all points share a code (no gather).
        """
        if isinstance(item, Tensor):
            # index_select, not t[item]: the backward of advanced indexing accumulates with
            # parallel atomic adds on a multi-threaded CPU, whose order (so the float sum) varies
            # from run to run; index_select's backward (index_add) adds in a fixed order.
            t1, t3 = terms[0].index_select(0, item), terms[1].index_select(0, item)  # (P, h)
        else:
            t1, t3 = terms[0][item], terms[1][item]  # (h,)
        if torch.is_autocast_enabled(xyz.device.type):
            # Keep the whole search in the autocast dtype instead of promoting at the adds.
            dtype = torch.get_autocast_dtype(xyz.device.type)
            t1, t3 = t1.to(dtype), t3.to(dtype)
        D, h = self.cfg.latent_dim, self.cfg.hidden
        a = F.relu(F.linear(xyz, self.l1.weight[:, D:]) + t1)  # (P, h)
        b = F.relu(self.l2(a))  # (P, h - D - 3)
        w3 = self.l3.weight
        c = F.linear(b, w3[:, : h - D - 3]) + F.linear(xyz, w3[:, -3:]) + t3  # (P, h)
        c = F.relu(c)
        d = F.relu(self.l4(c))  # (P, h)
        return self.l5(d).squeeze(-1)  # (P,)

    def field(self, z: Tensor):
        """A renderer field `f(points (P, 3), item (P,)) -> (P,)` for the codes z (B, D)."""
        terms = self.latent_terms(z)
        return lambda xyz, item: self.forward_points(terms, xyz, item)

    def forward(self, z: Tensor, xyz: Tensor) -> Tensor:
        """Plain DeepSDF forward: z (B, D), xyz (B, N, 3) -> sdf (B, N). Reference for tests."""
        B, N, _ = xyz.shape
        inp = torch.cat([z[:, None, :].expand(B, N, -1), xyz], dim=-1)  # (B, N, D + 3)
        a = F.relu(self.l1(inp))
        b = F.relu(self.l2(a))
        c = F.relu(self.l3(torch.cat([b, inp], dim=-1)))
        d = F.relu(self.l4(c))
        return self.l5(d).squeeze(-1)  # (B, N)
