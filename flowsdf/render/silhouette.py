"""Soft silhouettes by ray marching: the fixed, differentiable renderer of the training loss.

    silhouette = sigmoid(-min_k sdf(x_k) / tau)

over the samples x_k of each pixel's ray (flowsdf.render.rays); training uses its logit,
`-min_sdf / tau`, with BCE-with-logits. Rays that miss the bounding sphere see no surface: their
`min_sdf` is MISS_SDF, a constant far above any tau.

The fast path uses one fact: the gradient of a minimum flows only through its argmin. So the
search over all samples runs without autograd (flowsdf.render.search) and only each ray's argmin
point is evaluated again with gradient. In float32 its loss and gradients equal the naive path
(all samples in the autograd graph), which is kept as the reference and tested against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowsdf.fields import BatchField
from flowsdf.render.cameras import camera_rays
from flowsdf.render.rays import (
    MISS_SDF,
    RenderConfig,
    sample_depths,
    sphere_interval,
    sphere_rays,
)
from flowsdf.render.search import search_precision, search_rays, static_argmin


def render_min_sdf(field: BatchField, origins: Tensor, dirs: Tensor, cfg: RenderConfig, tau: float | None = None) -> Tensor:
    """Minimum SDF along each ray.

    origins, dirs (B, R, 3) -> min_sdf (B, R), differentiable w.r.t. whatever `field` depends on.
    `tau` (the silhouette temperature the result is for) only guides the coarse search.
    """
    if cfg.search == "static":
        return _static_min_sdf(field, origins, dirs, cfg)
    rays = sphere_rays(origins, dirs, cfg)
    if cfg.naive:
        S = cfg.n_samples
        points = rays.origins[:, None, :] + rays.depths[..., None] * rays.dirs[:, None, :]  # (H, S, 3)
        values = field(points.reshape(-1, 3), rays.item.repeat_interleave(S))  # (H*S,)
        ray_min = values.view(-1, S).min(dim=1).values  # (H,)
    else:
        with search_precision(cfg):
            best = search_rays(field, rays, cfg, tau).best  # (H,) no grad
        ray_min = field(rays.at(best), rays.item)  # (H,) the only points with grad
    return rays.image(ray_min, MISS_SDF)  # (B, R)


def _static_min_sdf(field: BatchField, origins: Tensor, dirs: Tensor, cfg: RenderConfig) -> Tensor:
    """render_min_sdf with static shapes (RenderConfig.search = "static"): every ray is searched and
    evaluated, and the rays that miss the bounding sphere get MISS_SDF by a mask at the end; no
    tensor's size depends on the data, and nothing is read back to the host."""
    B, R, _ = origins.shape
    hit, t_near, t_far = sphere_interval(origins, dirs, cfg.bound_radius)  # (B, R)
    depths = sample_depths(t_near.reshape(-1), t_far.reshape(-1), cfg.n_samples).view(B, R, -1)  # (B, R, S)
    with search_precision(cfg), torch.autocast(origins.device.type, torch.bfloat16, enabled=cfg.search_dtype == "bfloat16"):
        best = static_argmin(field, origins, dirs, depths, max(1, cfg.chunk_points // cfg.n_samples))  # (B, R)
    item = torch.arange(B, device=origins.device).repeat_interleave(R)  # (B*R,)
    ray_min = field((origins + best[..., None] * dirs).reshape(-1, 3), item).view(B, R)  # (B, R) with grad
    return torch.where(hit, ray_min, torch.full_like(ray_min, MISS_SDF))


def silhouette_logits(min_sdf: Tensor, tau: float) -> Tensor:
    """Logit of the soft silhouette sigmoid(-min_sdf / tau)."""
    return -min_sdf / tau


def render_views(
    field: BatchField, K: Tensor, c2w: Tensor, image_size: int, cfg: RenderConfig, tau: float | None = None
) -> Tensor:
    """Min-SDF images of B views: K (B, 3, 3), c2w (B, 4, 4) -> (B, H, W).

    Item b of the field (its b-th latent code) is rendered from camera b.
    """
    origins, dirs = camera_rays(K, c2w, image_size)  # (B, H*W, 3)
    min_sdf = render_min_sdf(field, origins, dirs, cfg, tau)  # (B, H*W)
    return min_sdf.view(-1, image_size, image_size)


@torch.no_grad()
def silhouettes(field: BatchField, K: Tensor, c2w: Tensor, image_size: int, cfg: RenderConfig, tau: float) -> Tensor:
    """Soft silhouettes (B, H, W) in [0, 1] of B views at temperature tau, without autograd.

    The search is not told tau (its fine pass then goes by distance alone), as every
    evaluation has rendered so far.
    """
    return torch.sigmoid(silhouette_logits(render_views(field, K, c2w, image_size, cfg), tau))
