"""Multi-head self- and cross-attention on token sequences, shared by the DiT and the ViT.

Both call torch's fused ``scaled_dot_product_attention``: one kernel, no (N, M) weight matrix kept
in Python, and the same code path on CPU and GPU.

Cross-attention takes an optional key mask (B, M) bool, True = a real token, False = padding.
A row whose mask is all False has nothing to attend to; softmax over an empty set is undefined
(SDPA would return NaN), so such a row attends to its padding harmlessly and its output is then
multiplied by 0: an empty condition contributes nothing. Doing it this way needs no
data-dependent branch, so it costs no device sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    """Multi-head self-attention (B, N, D) -> (B, N, D) with a fused qkv projection (timm's names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, h, d/h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class CrossAttention(nn.Module):
    """Queries from x (B, N, D), keys and values from context (B, M, C) -> (B, N, D).

    Permutation-invariant over the context tokens: nothing here knows their order, so any
    position information must already be in the context tokens themselves.
    """

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible into {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context_kv(self, context: Tensor) -> Tensor:
        """Keys and values of the context (B, M, C) -> (2, B, h, M, d/h).

        Split out of forward so a caller whose context stays fixed over many calls (the Euler
        steps of one sample) can project it once.
        """
        b, m, _ = context.shape
        d = self.proj.out_features
        kv = self.kv(context).view(b, m, 2, self.heads, d // self.heads)  # (B, M, 2, h, d/h)
        return kv.permute(2, 0, 3, 1, 4)  # (2, B, h, M, d/h)

    def forward(
        self, x: Tensor, context: Tensor | None, mask: Tensor | None = None, kv: Tensor | None = None
    ) -> Tensor:
        """x (B, N, D), context (B, M, C) -> (B, N, D).

        mask (B, M) bool: True = attend to that context token, False = ignore it (padding).
        kv: context_kv(context) computed earlier; when given, context is not read.
        """
        b, n, d = x.shape
        k, v = (self.context_kv(context) if kv is None else kv).unbind(0)  # 2 x (B, h, M, d/h)
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, h, N, d/h)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
            return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)
        m = k.shape[2]
        if mask.dtype != torch.bool or mask.shape != (b, m):
            raise ValueError(f"cond_mask must be a bool tensor of shape {(b, m)}, got {mask.dtype} {tuple(mask.shape)}")
        has_token = mask.any(dim=-1)  # (B,)
        attn_mask = (mask | ~has_token[:, None])[:, None, None, :]  # (B, 1, 1, M)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d/h)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)
        return out * has_token[:, None, None].to(out.dtype)  # (B, N, D), 0 where no real token
