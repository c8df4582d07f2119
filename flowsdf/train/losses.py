"""Training signals beyond the silhouette BCE, after SDF-SRN (Lin et al. 2020); each off at weight 0.

- Eikonal term: mean (|grad f| - 1)^2 at random points in the bounding sphere. It keeps the
  decoder a distance field; the BCE alone lets the field be steep near the silhouette's edge and
  flat elsewhere, and meshing, sphere tracing and normals all assume unit slope.
- Background lower bound: a ray through a background pixel q misses the shape, and every surface
  point lies on the ray of some silhouette pixel. If the rays of q and of the silhouette pixel
  nearest to q make the angle theta, a point at depth t on q's ray is at least t * sin(theta)
  from every such ray, hence from the surface: sdf >= t * sin(theta). L1 on the violation, at a
  few random depths of a few random background rays per view. Unlike the BCE, which only pulls
  on the field near the silhouette's edge, it pulls on the whole background. The nearest
  silhouette pixel comes from scipy's Euclidean distance transform of the mask; its angle is
  reduced by one pixel's angle, because a silhouette can reach up to a pixel past the pixel
  centres its mask marks.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from flowsdf.config import SDFSRNTerms
from flowsdf.data.dataset import Views
from flowsdf.render.cameras import camera_rays
from flowsdf.render.rays import RenderConfig, sphere_interval


def random_ball_points(n: int, radius: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """`n` points (n, 3) uniform in the ball of `radius` at the origin."""
    direction = torch.randn(n, 3, generator=gen)  # (n, 3)
    direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True).clamp(min=1e-12)
    r = radius * torch.rand(n, 1, generator=gen) ** (1.0 / 3.0)  # (n, 1) uniform in volume
    return (direction * r).to(device)


def eikonal_loss(field, n_items: int, n_points: int, radius: float, gen: torch.Generator, device: torch.device) -> Tensor:
    """Mean (|grad f| - 1)^2 over `n_points` random points in the ball for each of `n_items` codes.

    `field(points (P, 3), item (P,)) -> (P,)` is a decoder field (or any SDF); differentiable
    with respect to the field's parameters (the gradient is taken with create_graph).
    """
    pts = random_ball_points(n_items * n_points, radius, gen, device).requires_grad_(True)  # (B*P, 3)
    item = torch.arange(n_items, device=device).repeat_interleave(n_points)  # (B*P,)
    values = field(pts, item)  # (B*P,)
    (grad,) = torch.autograd.grad(values.sum(), pts, create_graph=True)  # (B*P, 3)
    return ((torch.linalg.vector_norm(grad, dim=-1) - 1.0) ** 2).mean()


def background_sines(masks: Tensor, K: Tensor, c2w: Tensor) -> Tensor:
    """sin(theta) per pixel (B, H, W): theta = the angle between the pixel's ray and the ray of the
    nearest silhouette pixel, less one pixel's angle; 0 on the silhouette and for empty masks."""
    B, H, W = masks.shape
    _, dirs = camera_rays(K, c2w, H)  # (B, H*W, 3)
    fg = masks.detach().cpu().numpy() > 0.5  # (B, H, W)
    nearest = np.zeros((B, H * W), dtype=np.int64)
    for b in range(B):
        if fg[b].any():
            # Indices of the nearest foreground pixel, for every pixel (foreground: itself).
            _, (ii, jj) = ndimage.distance_transform_edt(~fg[b], return_indices=True)
            nearest[b] = (ii * W + jj).reshape(-1)
    idx = torch.from_numpy(nearest).to(dirs.device)  # (B, H*W)
    d_near = dirs.gather(1, idx[..., None].expand(-1, -1, 3))  # (B, H*W, 3)
    cos = (dirs * d_near).sum(-1).clamp(-1.0, 1.0)  # (B, H*W)
    pixel_angle = 1.0 / K[:, 0, 0, None]  # (B, 1) one pixel at the image centre, in radians
    theta = (torch.arccos(cos) - pixel_angle).clamp(min=0.0)  # (B, H*W)
    empty = torch.from_numpy(~fg.reshape(B, -1).any(1)).to(dirs.device)  # (B,)
    sines = torch.sin(theta).masked_fill(empty[:, None], 0.0)
    return sines.view(B, H, W)


def background_bound_points(
    views: Views, render_cfg: RenderConfig, n_rays: int, n_depths: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Random points on background rays and their SDF lower bounds.

    Returns points (P, 3), item (P,) (which view / code), bound (P,): for each view up to `n_rays`
    background rays that cross the bounding sphere, `n_depths` uniform depths on the chord each.
    """
    masks = views.masks  # (B, H, W)
    B, H, W = masks.shape
    sines = background_sines(masks, views.K, views.c2w).view(B, -1)  # (B, H*W)
    origins, dirs = camera_rays(views.K, views.c2w, H)  # (B, H*W, 3)
    hit, t_near, t_far = sphere_interval(origins, dirs, render_cfg.bound_radius)  # (B, H*W)
    usable = hit & (masks.view(B, -1) < 0.5) & (sines > 0)  # (B, H*W)
    # Random scores pick a random subset of the usable rays of each view.
    score = torch.rand(B, H * W, generator=gen).to(masks.device).masked_fill(~usable, -1.0)  # (B, H*W)
    k = min(n_rays, H * W)
    top, ray = score.topk(k, dim=1)  # (B, k)
    keep = (top >= 0).reshape(-1)  # (B*k,)
    item = torch.arange(B, device=masks.device).repeat_interleave(k)[keep]  # (R,)
    ray = ray.reshape(-1)[keep]
    o, d = origins[item, ray], dirs[item, ray]  # (R, 3)
    near, far, sin = t_near[item, ray], t_far[item, ray], sines[item, ray]  # (R,)
    u = torch.rand(len(ray), n_depths, generator=gen).to(masks.device)  # (R, S)
    t = near[:, None] + u * (far - near)[:, None]  # (R, S)
    points = o[:, None] + t[..., None] * d[:, None]  # (R, S, 3)
    bound = t * sin[:, None]  # (R, S)
    return points.reshape(-1, 3), item.repeat_interleave(n_depths), bound.reshape(-1)


def background_bound_loss(
    field, views: Views, render_cfg: RenderConfig, n_rays: int, n_depths: int, gen: torch.Generator
) -> Tensor:
    """Mean L1 violation of the background lower bound, max(0, bound - sdf), over the sampled points."""
    points, item, bound = background_bound_points(views, render_cfg, n_rays, n_depths, gen)
    if len(points) == 0:
        return torch.zeros((), device=views.masks.device)
    return (bound - field(points, item)).clamp(min=0.0).mean()


def all_views_batch(codes: Tensor, views: Views) -> tuple[Tensor, Views]:
    """Multi-view supervision: each code (B, D), predicted from its shape's first view, paired
    with every view of that shape (B, V, ...) -> codes (B*V, D) and the flattened views (B*V)."""
    V = views.masks.shape[1]
    flat = Views(*(x.flatten(0, 1) for x in (views.images, views.masks, views.K, views.c2w, views.light)))
    return codes.repeat_interleave(V, dim=0), flat


def extra_terms(decoder: nn.Module, codes: Tensor, views: Views, render_cfg: RenderConfig, terms: SDFSRNTerms,
                gen: torch.Generator) -> Tensor | None:
    """The weighted sum of the enabled terms for a batch (codes (B, *latent), views (B)), or None
    when every weight is 0 (then nothing is computed and no random numbers are drawn)."""
    if terms.eikonal_weight <= 0 and terms.bg_bound_weight <= 0:
        return None
    field = decoder.field(codes)
    total = torch.zeros((), device=codes.device)
    if terms.eikonal_weight > 0:
        eik = eikonal_loss(field, codes.shape[0], terms.eikonal_points, render_cfg.bound_radius, gen, codes.device)
        total = total + terms.eikonal_weight * eik
    if terms.bg_bound_weight > 0:
        bg = background_bound_loss(field, views, render_cfg, terms.bg_bound_rays, terms.bg_bound_depths, gen)
        total = total + terms.bg_bound_weight * bg
    return total
