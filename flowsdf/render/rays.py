"""The renderer's rays: its config, where each ray crosses the bounding sphere, its depth samples.

Every pixel shoots one ray. The scene is bounded by a sphere of radius `bound_radius` around the
origin (all shapes lie inside it), so each ray is sampled only on its chord through that sphere:
`n_samples` depths at the bin midpoints of [t_near, t_far]. A ray that misses the sphere sees no
surface. `sphere_rays` does this set-up once for every renderer (silhouettes, shading, the
ground truth of the dataset) so that they all march the very same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowsdf.schema import ANY_BOOL, NON_NEGATIVE, POSITIVE, int_range, one_of

# min_sdf reported for rays that miss the bounding sphere: far from every surface.
MISS_SDF = 1.0


@dataclass
class RenderConfig:
    n_samples: int = 48  # depth samples per ray (the published protocol)
    bound_radius: float = 0.9  # a sphere every shape lies in (shapes reach at most 0.85)
    chunk_points: int = 16384  # points per no-grad search chunk (bounded memory; ~fastest on CPU)
    # "float32" keeps the fast path exactly equal to the naive one; "bfloat16" runs the no-grad
    # search under autocast (2-4x faster on CPUs with bf16 units and on GPUs) and may pick a
    # neighbouring sample where two are within bf16 rounding of each other; "tf32" lets CUDA's
    # matrix products in the search use TensorFloat-32 (float32 range, 10-bit mantissa; the same
    # as float32 on a CPU).
    search_dtype: str = "float32"
    naive: bool = False  # reference path: every sample in the autograd graph (slow, for tests)
    # "exhaustive": all n_samples of every ray (the reference); "coarse": every coarse_stride-th
    # sample first, then the full-resolution samples around the coarse argmin (the fine pass),
    # only for rays whose coarse minimum is below fine_margin coarse spacings
    # (flowsdf/render/search.py; inexact, measured); "static": the exhaustive search with shapes
    # that never depend on the data (every pixel's ray, missed ones masked at the end, fixed
    # chunks), so a whole training step can be captured in a CUDA graph or compiled once.
    search: str = "exhaustive"
    coarse_stride: int = 4
    fine_margin: float = 1.0
    # ... and rays whose coarse minimum is below fine_tau * tau, when the caller passes tau
    # (the training loss does): their silhouette is then below sigmoid(-fine_tau) ~ 3e-4.
    fine_tau: float = 8.0
    # torch.compile the decoder's per-point function for training (worth it on GPUs; costs
    # 5-20 s of compilation at the start of every phase). See flowsdf.train.loop.
    compile: bool = False

    RULES = {
        "n_samples": int_range(1, 512), "bound_radius": POSITIVE, "chunk_points": int_range(1, 1 << 24),
        "search_dtype": one_of("float32", "bfloat16", "tf32"), "naive": ANY_BOOL,
        "search": one_of("exhaustive", "coarse", "static"),
        "coarse_stride": int_range(1, 64), "fine_margin": NON_NEGATIVE, "fine_tau": NON_NEGATIVE, "compile": ANY_BOOL,
    }


def sphere_interval(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """Where unit-direction rays cross a sphere at the origin.

    origins, dirs (..., 3) -> hit (...) bool, t_near (...), t_far (...) (clamped to t >= 0).
    """
    b = (origins * dirs).sum(-1)  # (...)
    o2 = (origins * origins).sum(-1)
    disc = b * b - (o2 - radius * radius)
    root = disc.clamp(min=0).sqrt()
    hit = disc > 0
    t_near = (-b - root).clamp(min=0)
    t_far = (-b + root).clamp(min=0)
    return hit, t_near, t_far


def sample_depths(t_near: Tensor, t_far: Tensor, n: int) -> Tensor:
    """Bin-midpoint depths (R, n) on each ray's chord [t_near, t_far] (R,)."""
    frac = (torch.arange(n, device=t_near.device, dtype=t_near.dtype) + 0.5) / n  # (n,)
    return t_near[:, None] + frac[None, :] * (t_far - t_near)[:, None]  # (R, n)


@dataclass
class Rays:
    """The rays of B images x R pixels that cross the bounding sphere (H of them), with their samples.

    Crossing rays are kept in row-major (image, pixel) order, so the rays of one image (one code,
    `item`) form one contiguous run: the search's chunks never mix codes.
    """

    inside: Tensor  # (B, R) bool: the ray crosses the bounding sphere
    item: Tensor  # (H,) the image (code) each crossing ray belongs to
    origins: Tensor  # (H, 3)
    dirs: Tensor  # (H, 3) unit
    depths: Tensor  # (H, S) sample depths on the chord
    t_near: Tensor  # (H,) where the ray enters the sphere

    def at(self, depth: Tensor) -> Tensor:
        """Points (H, 3) at one depth (H,) per ray."""
        return self.origins + depth[:, None] * self.dirs

    def image(self, values: Tensor, fill: float) -> Tensor:
        """Per-ray values (H,) back on the (B, R) pixel grid, `fill` where a ray misses the sphere."""
        out = torch.full(self.inside.shape, fill, dtype=values.dtype, device=values.device)  # (B, R)
        out[self.inside] = values
        return out


def sphere_rays(origins: Tensor, dirs: Tensor, cfg: RenderConfig) -> Rays:
    """The crossing rays of origins, dirs (B, R, 3) with cfg.n_samples depths each."""
    B, R, _ = origins.shape
    inside, t_near, t_far = sphere_interval(origins, dirs, cfg.bound_radius)  # (B, R)
    item = torch.arange(B, device=origins.device)[:, None].expand(B, R)[inside]  # (H,)
    near = t_near[inside]  # (H,)
    return Rays(inside, item, origins[inside], dirs[inside], sample_depths(near, t_far[inside], cfg.n_samples), near)
