"""DiT velocity net: a transformer over latent tokens, time by adaLN-Zero, image by cross-attention.

v = DiTVelocity(z_t, t, cond, cond_mask) predicts dz/dt of the rectified flow (convention in
flowsdf.flow), like VelocityNet, but reads a *sequence* of condition tokens and works on two
kinds of latent:

    vector latent (D,)            split into `tokens` chunks of D / tokens, each one token
    latent triplane (3, C, R, R)  each plane cut into p x p patches: 3 * (R / p)^2 tokens of C*p*p

    x = Linear(token) + pos_embed                       latent tokens (B, T, H)
    c = MLP(sinusoidal(t))                              the time vector (B, H); time ONLY
    block:  x = x + gate1(c) * SelfAttn(modulate(LN(x), shift1(c), scale1(c)))
            x = x + CrossAttn(LN(x), LN(cond), cond_mask)      output projection zero-initialised
            x = x + gate2(c) * MLP(modulate(LN(x), shift2(c), scale2(c)))
    out:    Linear(modulate(LN(x), shift(c), scale(c)))  -> un-tokenise to (B, *latent_shape)

This is the TRELLIS / Hunyuan3D-2.1 pattern: the timestep modulates (adaLN, as in DiT) and the
condition is read by a separate cross-attention sub-block in every block, so a latent token can
look at whichever image tokens it needs instead of one pooled vector. Every adaLN modulation, every
cross-attention output projection and the final layer start at zero: each block is then exactly the
identity and the net outputs exactly 0 (training starts from "do nothing", as in VelocityNet).

The condition tokens are LayerNorm-ed once (shared by all blocks) and the net adds no positional
embedding to them: cross-attention is invariant to their order, so where a token came from is the
conditioner's business (the ViT and DINOv2 add theirs). An all-zero cond, the lead's null
condition for classifier-free guidance, normalises to zeros and gives every block the same
constant keys and values: a well-defined "no image" input. A (B, C) cond is read as one token.
cond_mask (B, N) bool marks real tokens (True) and padding (False): padding is never attended to,
and a row with no real token at all gets no cross-attention (see flowsdf.models.attention).

The condition is the same at every Euler step, so `prepare(cond, cond_mask)` normalises it and
projects each block's keys and values once; its result can be passed as `cond` (flow.euler_sample
passes cond through untouched). For 64 condition tokens of 256 this saves most of the
condition-dependent work of each step; the test suite checks it gives the same numbers.

Latent positions use a *learned* table (T, H), not DiT's fixed 2-D sin-cos: the chunks of a vector
code have no geometry for sin-cos to describe, triplane tokens also need to know which of the three
planes they are on (a 2-D sin-cos would need a plane embedding added anyway), and at these token
counts (8 to a few hundred) the table costs little.

Parameter count at the defaults (latent (128,) as 8 tokens of 16, hidden 192, depth 4, heads 3,
mlp_ratio 4, time_embed_dim 256, cond_dim 512):
    per block: self-attn qkv 192*576+576 + proj 192*192+192     =   148,224
               cross-attn q 37,056 + kv 512*384+384 + proj 37,056 =   271,104
               cross query LayerNorm 2*192                         =       384
               MLP 192*768+768 + 768*192+192                       =   295,872
               adaLN 192*1152+1152                                 =   222,336  -> 937,920
    4 blocks                                                        3,751,680
    token embedding 16->192 + pos_embed 8*192                          4,800
    time MLP 256->192->192                                            86,400
    cond LayerNorm 2*512                                               1,024
    final adaLN 192->384 + output 192->16                             77,200
    total                                                           3,921,104  (VelocityNet: 4,010,112, -2.2 %)
For a (3, 8, 16, 16) triplane with patch 2 (192 tokens of 32) only the embedding, the position
table and the output layer change: 3,962,592 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowsdf.models.attention import CrossAttention, SelfAttention
from flowsdf.models.velocity import FinalLayer, modulate, timestep_embedding
from flowsdf.schema import Rule, int_range


@dataclass
class DiTConfig:
    """Widths of the DiT; the latent shape and the condition width are given to the constructor.

    tokens: how many tokens a vector latent (D,) is split into (D must divide evenly); more tokens
        let attention mix parts of the code, at the cost of time per step.
    patch_size: p x p patches of each plane of a latent triplane (3, C, R, R); R must divide by p.
    """

    hidden: int = 192
    depth: int = 4
    heads: int = 3
    mlp_ratio: int = 4
    tokens: int = 8
    patch_size: int = 2
    time_embed_dim: int = 256  # width of the sinusoidal features before the time MLP

    RULES = {"hidden": int_range(1, 8192), "depth": int_range(1, 256), "heads": int_range(1, 256),
             "mlp_ratio": int_range(1, 16), "tokens": int_range(1, 4096), "patch_size": int_range(1, 256),
             "time_embed_dim": Rule("an even integer from 2 to 8,192", lambda v: 2 <= v <= 8192 and v % 2 == 0)}


@dataclass
class DiTCondition:
    """The condition tokens as every block reads them: per-block keys and values, and the mask.

    Made by DiTVelocity.prepare; pass it as forward's `cond` to skip re-projecting a condition
    that stays the same over many calls (the Euler steps of one sample).
    """

    kv: list[Tensor]  # per block (2, B, h, N, H/h)
    mask: Tensor | None  # (B, N) bool, True = a real token


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention and MLP (time only), with a zero-initialised cross-attention between."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden, heads)
        # No time modulation on the cross path, so its LayerNorm keeps its own learned affine.
        self.norm_cross = nn.LayerNorm(hidden, eps=1e-6)
        self.cross_attn = CrossAttention(hidden, cond_dim, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(mlp_ratio * hidden, hidden),
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        for layer in (self.adaLN_modulation[-1], self.cross_attn.proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, c: Tensor, kv: Tensor, cond_mask: Tensor | None = None) -> Tensor:
        """x (B, T, H) latent tokens, c (B, H) time vector, kv (2, B, h, N, H/h) = cross_attn.context_kv(cond)."""
        mod = self.adaLN_modulation(c)[:, None]  # (B, 1, 6H)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # 6 x (B, 1, H)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, T, H)
        x = x + self.cross_attn(self.norm_cross(x), None, cond_mask, kv=kv)  # (B, T, H)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (B, T, H)


class DiTVelocity(nn.Module):
    """v(z_t (B, *latent_shape), t (B,), cond (B, N, C), cond_mask (B, N) | None) -> (B, *latent_shape)."""

    def __init__(
        self,
        config: DiTConfig | None = None,
        latent_shape: tuple[int, ...] = (128,),
        cond_dim: int = 512,
    ) -> None:
        super().__init__()
        self.config = config = config if config is not None else DiTConfig()
        self.latent_shape = latent_shape = tuple(int(s) for s in latent_shape)
        self.cond_dim = cond_dim
        if len(latent_shape) == 1:
            (dim,) = latent_shape
            if dim % config.tokens:
                raise ValueError(f"a vector latent of {dim} does not split into {config.tokens} equal tokens")
            self.num_tokens, self.token_dim = config.tokens, dim // config.tokens
        elif len(latent_shape) == 4 and latent_shape[0] == 3 and latent_shape[2] == latent_shape[3]:
            _, channels, res, _ = latent_shape
            p = config.patch_size
            if res % p:
                raise ValueError(f"triplane resolution {res} is not divisible by patch_size {p}")
            self.num_tokens, self.token_dim = 3 * (res // p) ** 2, channels * p * p
        else:
            raise ValueError(f"latent_shape must be (D,) or (3, C, R, R), got {latent_shape}")

        h = config.hidden
        self.x_embedder = nn.Linear(self.token_dim, h)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, h))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.t_embedder = nn.Sequential(nn.Linear(config.time_embed_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.cond_norm = nn.LayerNorm(cond_dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            [DiTBlock(h, config.heads, config.mlp_ratio, cond_dim) for _ in range(config.depth)]
        )
        self.final_layer = FinalLayer(h, self.token_dim)

    def tokenize(self, z: Tensor) -> Tensor:
        """(B, *latent_shape) -> (B, T, token_dim); planes in order, patches row-major in each."""
        b = z.shape[0]
        if len(self.latent_shape) == 1:
            return z.reshape(b, self.num_tokens, self.token_dim)  # (B, T, D / T)
        _, ch, res, _ = self.latent_shape
        p, g = self.config.patch_size, res // self.config.patch_size
        z = z.reshape(b, 3, ch, g, p, g, p)  # (B, 3, C, R/p, p, R/p, p)
        z = z.permute(0, 1, 3, 5, 2, 4, 6)  # (B, 3, R/p, R/p, C, p, p)
        return z.reshape(b, self.num_tokens, self.token_dim)  # (B, 3 (R/p)^2, C p p)

    def untokenize(self, x: Tensor) -> Tensor:
        """Inverse of tokenize: (B, T, token_dim) -> (B, *latent_shape)."""
        b = x.shape[0]
        if len(self.latent_shape) == 1:
            return x.reshape(b, *self.latent_shape)  # (B, D)
        _, ch, res, _ = self.latent_shape
        p, g = self.config.patch_size, res // self.config.patch_size
        x = x.reshape(b, 3, g, g, ch, p, p)  # (B, 3, R/p, R/p, C, p, p)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (B, 3, C, R/p, p, R/p, p)
        return x.reshape(b, *self.latent_shape)  # (B, 3, C, R, R)

    def prepare(self, cond: Tensor, cond_mask: Tensor | None = None) -> DiTCondition:
        """LayerNorm the condition tokens (B, N, C) (or (B, C): one token) and project each block's
        keys and values once.

        The condition is fixed during sampling, so an Euler loop can call this once and pass the
        result as `cond` at every step: same numbers as passing the tokens, less work per step
        (for 64 tokens of 256 the projections are about as much work as the rest of a step).
        Differentiable, so training may use it too.
        """
        if cond.ndim == 2:
            cond = cond[:, None]  # (B, 1, C): one condition token
        if cond.ndim != 3 or cond.shape[-1] != self.cond_dim:
            raise ValueError(f"cond must be (B, N, {self.cond_dim}) or (B, {self.cond_dim}), got {tuple(cond.shape)}")
        cond = self.cond_norm(cond)  # (B, N, C)
        kv = [block.cross_attn.context_kv(cond) for block in self.blocks]  # depth x (2, B, h, N, H/h)
        return DiTCondition(kv=kv, mask=cond_mask)

    def forward(
        self, z_t: Tensor, t: Tensor, cond: Tensor | DiTCondition, cond_mask: Tensor | None = None
    ) -> Tensor:
        """z_t (B, *latent_shape), t (B,) in [0, 1], cond (B, N, C), (B, C) or prepare(...) -> like z_t."""
        if tuple(z_t.shape[1:]) != self.latent_shape:
            raise ValueError(f"z_t must be (B, *{self.latent_shape}), got {tuple(z_t.shape)}")
        if isinstance(cond, DiTCondition):
            if cond_mask is not None:
                raise ValueError("a prepared condition carries its own mask; pass cond_mask to prepare()")
        else:
            cond = self.prepare(cond, cond_mask)
        x = self.x_embedder(self.tokenize(z_t)) + self.pos_embed  # (B, T, H)
        c = self.t_embedder(timestep_embedding(t, self.config.time_embed_dim))  # (B, H)
        for block, kv in zip(self.blocks, cond.kv):
            x = block(x, c, kv, cond.mask)  # (B, T, H)
        x = self.final_layer(x, c[:, None])  # (B, T, token_dim)
        return self.untokenize(x)  # (B, *latent_shape)
