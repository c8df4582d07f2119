"""The fixed, differentiable ray-marching renderer.

Every pixel shoots one ray. The scene is bounded by a sphere of radius `bound_radius` around
the origin (all shapes lie inside it), so each ray is sampled only on its chord through that
sphere: `n_samples` depths at the bin midpoints of [t_near, t_far]. The soft silhouette is

    silhouette = sigmoid(-min_k sdf(x_k) / tau)

and training uses its logit, `-min_sdf / tau`, with BCE-with-logits. Rays that miss the bounding
sphere see no surface: their `min_sdf` is MISS_SDF, a constant far above any tau.

The fast path uses one fact: the gradient of a minimum flows only through its argmin. So the
search over all samples runs without autograd (in chunks, optionally in bfloat16) and only each
ray's argmin point is evaluated again with gradient. In float32 its loss and gradients equal the
naive path (all samples in the autograd graph), which is kept as the reference and tested
against it. A field is any callable `field(points (P, 3), item) -> sdf (P,)`, where `item` says which
batch element (which latent code) the points belong to: a (P,) tensor, or one int for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from flowsdf.render.search import chunked_values, coarse_to_fine_depth

Field = Callable[[Tensor, Tensor], Tensor]

# min_sdf reported for rays that miss the bounding sphere: far from every surface.
MISS_SDF = 1.0


@dataclass
class RenderConfig:
    n_samples: int = 48  # depth samples per ray (the published protocol)
    bound_radius: float = 0.9  # a sphere every shape lies in (shapes reach at most 0.85)
    chunk_points: int = 16384  # points per no-grad search chunk (bounded memory; ~fastest on CPU)
    # "float32" keeps the fast path exactly equal to the naive one; "bfloat16" runs the no-grad
    # search under autocast (2-4x faster on CPUs with bf16 units and on GPUs) and may pick a
    # neighbouring sample where two are within bf16 rounding of each other.
    search_dtype: str = "float32"
    naive: bool = False  # reference path: every sample in the autograd graph (slow, for tests)
    # "exhaustive": all n_samples of every ray (the reference); "coarse": every coarse_stride-th
    # sample first, then full resolution around the coarse argmin, only for rays whose coarse
    # minimum is below refine_margin coarse spacings (flowsdf/render/search.py; inexact, measured).
    search: str = "exhaustive"
    coarse_stride: int = 4
    refine_margin: float = 1.0
    # ... and rays whose coarse minimum is below refine_tau * tau, when the caller passes tau
    # (the training loss does): their silhouette is then below sigmoid(-refine_tau) ~ 3e-4.
    refine_tau: float = 8.0
    # torch.compile the decoder's per-point function for training (worth it on GPUs; costs
    # 5-20 s of compilation at the start of every phase). See flowsdf.train.loop.
    compile: bool = False


def sphere_interval(
    origins: Tensor, dirs: Tensor, radius: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where unit-direction rays cross a sphere at the origin.

    origins, dirs (..., 3) -> hit (...) bool, t_near (...), t_far (...), clearance (...):
    the ray's closest approach to the sphere surface (> 0 for missed rays).
    """
    b = (origins * dirs).sum(-1)  # (...)
    o2 = (origins * origins).sum(-1)
    disc = b * b - (o2 - radius * radius)
    root = disc.clamp(min=0).sqrt()
    hit = disc > 0
    t_near = (-b - root).clamp(min=0)
    t_far = (-b + root).clamp(min=0)
    # Closest distance from the origin along the forward ray (t >= 0), minus the radius.
    t_close = (-b).clamp(min=0)
    closest = (o2 - 2 * t_close * (-b) + t_close * t_close).clamp(min=0).sqrt()
    return hit, t_near, t_far, closest - radius


def sample_depths(t_near: Tensor, t_far: Tensor, n: int) -> Tensor:
    """Bin-midpoint depths (R, n) on each ray's chord [t_near, t_far] (R,)."""
    frac = (torch.arange(n, device=t_near.device, dtype=t_near.dtype) + 0.5) / n  # (n,)
    return t_near[:, None] + frac[None, :] * (t_far - t_near)[:, None]  # (R, n)


def render_min_sdf(field: Field, origins: Tensor, dirs: Tensor, cfg: RenderConfig, tau: float | None = None) -> Tensor:
    """Minimum SDF along each ray.

    origins, dirs (B, R, 3) -> min_sdf (B, R), differentiable w.r.t. whatever `field` depends on.
    `tau` (the silhouette temperature the result is for) only guides the coarse search.
    """
    B, R, _ = origins.shape
    hit, t_near, t_far, _ = sphere_interval(origins, dirs, cfg.bound_radius)  # (B, R)
    item = torch.arange(B, device=origins.device)[:, None].expand(B, R)[hit]  # (H,)
    o, d = origins[hit], dirs[hit]  # (H, 3)
    t = sample_depths(t_near[hit], t_far[hit], cfg.n_samples)  # (H, S)

    if cfg.naive:
        points = o[:, None, :] + t[..., None] * d[:, None, :]  # (H, S, 3)
        values = field(points.reshape(-1, 3), item.repeat_interleave(cfg.n_samples))
        ray_min = values.view(-1, cfg.n_samples).min(dim=1).values  # (H,)
    else:
        best = best_depths(field, o, d, item, t, cfg, tau)  # (H,) no grad
        ray_min = field(o + best[:, None] * d, item)  # (H,) the only points with grad

    out = torch.full((B, R), MISS_SDF, dtype=ray_min.dtype, device=origins.device)  # (B, R)
    out[hit] = ray_min
    return out


def best_depths(
    field: Field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, cfg: RenderConfig, tau: float | None = None
) -> Tensor:
    """Depth (H,) of each ray's smallest-SDF sample among t (H, S), by the search cfg names."""
    if cfg.search == "exhaustive":
        return argmin_depth(field, o, d, item, t, cfg)
    if cfg.search == "coarse":
        if cfg.search_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"search_dtype must be float32 or bfloat16, got {cfg.search_dtype!r}")
        best, _ = coarse_to_fine_depth(field, o, d, item, t, cfg.coarse_stride, cfg.refine_margin, cfg.chunk_points,
                                       cfg.search_dtype == "bfloat16", cfg.refine_tau * tau if tau else 0.0)
        return best
    raise ValueError(f"search must be exhaustive or coarse, got {cfg.search!r}")


@torch.no_grad()
def argmin_depth(
    field: Field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, cfg: RenderConfig
) -> Tensor:
    """Depth (H,) of each ray's smallest-SDF sample, searched in chunks without autograd.

    Chunks never mix batch items, so the field receives a plain int `item` and can broadcast
    its per-code terms instead of gathering them per point.
    """
    if cfg.search_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"search_dtype must be float32 or bfloat16, got {cfg.search_dtype!r}")
    best = torch.empty_like(t[:, 0])  # (H,)
    for s, e, vals in chunked_values(field, o, d, item, t, cfg.chunk_points, cfg.search_dtype == "bfloat16"):
        best[s:e] = t[s:e].gather(1, vals.argmin(dim=1)[:, None]).squeeze(1)  # vals (h, S)
    return best


def silhouette_logits(min_sdf: Tensor, tau: float) -> Tensor:
    """Logit of the soft silhouette sigmoid(-min_sdf / tau)."""
    return -min_sdf / tau








def render_views(
    field: Field, K: Tensor, c2w: Tensor, image_size: int, cfg: RenderConfig, tau: float | None = None
) -> Tensor:
    """Min-SDF images of B views: K (B, 3, 3), c2w (B, 4, 4) -> (B, H, W).

    Item b of the field (its b-th latent code) is rendered from camera b.
    """
    from flowsdf.data.cameras import (
        camera_rays,  # local: the data package imports this module
    )

    origins, dirs = camera_rays(K, c2w, image_size)  # (B, H*W, 3)
    min_sdf = render_min_sdf(field, origins, dirs, cfg, tau)  # (B, H*W)
    return min_sdf.view(-1, image_size, image_size)
