"""Stage 3: the shaded-RGB loss beside the silhouette BCE, and its checks.

    loss = BCE(silhouette logits, mask) + rgb_weight * RGB error

RGB error: the mean absolute difference (L1) over the three channels and over the pixels that are
inside the ground-truth mask *and* where the predicted surface is hit (a sign change along the
ray), between the differentiable Lambertian rendering (`render.shading.shade_views`) and the
dataset's image. Mask pixels the prediction misses have no surface point, hence no colour to
compare: they get no RGB term, and the silhouette BCE is what pulls the surface there. Pixels hit
outside the mask likewise are left to the BCE. L1 rather than MSE because colours are bounded
and near the silhouette edge a few pixels see the wrong part of the surface: L1 keeps them from
dominating. A batch with no such pixel adds an RGB term of 0.

rgb_weight = 0 is the silhouette-only training exactly: the shaded renderer is not even called.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowsdf.config import TrainConfig
from flowsdf.data.dataset import Dataset, Views
from flowsdf.errors import FlowSDFError
from flowsdf.models.albedo import MODULE, build_albedo
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.rays import RenderConfig
from flowsdf.render.shading import shade_views
from flowsdf.render.silhouette import silhouette_logits


def shaded_loss(
    decoder: SDFDecoder, albedo_head: nn.Module, codes: Tensor, views: Views, render_cfg: RenderConfig, tau: float,
    ambient: float, rgb_weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """BCE + rgb_weight * masked L1 of `codes` (B, D) seen from `views` (B views).

    Returns (loss, {"bce": ..., "rgb_l1": ..., "rgb_pixels": ...}) with the parts as floats.
    """
    size = views.masks.shape[-1]
    shaded = shade_views(decoder.field(codes), albedo_head(codes), views.light, views.K, views.c2w, size, render_cfg,
                         ambient)
    bce = F.binary_cross_entropy_with_logits(silhouette_logits(shaded.min_sdf, tau), views.masks)
    valid = shaded.hit & (views.masks > 0.5)  # (B, H, W)
    err = (shaded.rgb - views.images).abs().mean(dim=1)  # (B, H, W)
    rgb = err[valid].mean() if valid.any() else err.sum() * 0.0
    parts = {"bce": bce.item(), "rgb_l1": rgb.item(), "rgb_pixels": int(valid.sum())}
    return bce + rgb_weight * rgb, parts


def check_rgb(tc: TrainConfig, data: Dataset) -> None:
    """A phase with rgb_weight > 0 needs a dataset whose views carry a light direction."""
    w = tc.rgb_weight
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
        raise FlowSDFError(f"rgb_weight must be a number >= 0, got {w!r}")
    if w == 0:
        return
    light = data.train.input.light  # (N, V, 3)
    norms = torch.linalg.vector_norm(light, dim=-1)
    if light.numel() == 0 or not torch.isfinite(light).all() or not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
        raise FlowSDFError(f"--rgb-weight needs a dataset with a unit light direction per view; {data.root} has none")


def add_albedo(modules: dict[str, nn.Module], tc: TrainConfig, latent_dim: int, seed: int, device) -> dict[str, nn.Module]:
    """The phase's modules plus a fresh albedo head when it trains with RGB (unchanged otherwise)."""
    if tc.rgb_weight == 0:
        return modules
    return {**modules, MODULE: build_albedo(latent_dim, seed).to(device)}
