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
from flowsdf.render.rays import MISS_SDF, RenderConfig, sphere_rays
from flowsdf.render.search import search_rays


def render_min_sdf(field: BatchField, origins: Tensor, dirs: Tensor, cfg: RenderConfig, tau: float | None = None) -> Tensor:
    """Minimum SDF along each ray.

    origins, dirs (B, R, 3) -> min_sdf (B, R), differentiable w.r.t. whatever `field` depends on.
    `tau` (the silhouette temperature the result is for) only guides the coarse search.
    """
    rays = sphere_rays(origins, dirs, cfg)
    if cfg.naive:
        S = cfg.n_samples
        points = rays.origins[:, None, :] + rays.depths[..., None] * rays.dirs[:, None, :]  # (H, S, 3)
        values = field(points.reshape(-1, 3), rays.item.repeat_interleave(S))  # (H*S,)
        ray_min = values.view(-1, S).min(dim=1).values  # (H,)
    else:
        best = search_rays(field, rays, cfg, tau).best  # (H,) no grad
        ray_min = field(rays.at(best), rays.item)  # (H,) the only points with grad
    return rays.image(ray_min, MISS_SDF)  # (B, R)


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
