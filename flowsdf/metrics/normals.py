"""Normal accuracy: the angle between predicted and analytic surface normals on the visible surface.

For every pixel of a view, the ground truth is the analytic shape's first ray crossing (dense
samples + bisection, as the dataset's images are made: `shading.first_hit`) and its normal, the
normalised gradient of the analytic SDF there. The prediction is the learned field's first
crossing through the Stage-3 renderer (`shading.render_surface`, the training renderer's samples)
and its normalised gradient. Scored pixels: those where both the ground-truth ray and the
predicted ray hit a surface (each normal at its own surface point, the one that pixel shows).

Reported per split/group: `mean_angle_deg` (pooled over all scored pixels), `median_angle_deg`,
`per_shape_mean_angle_deg` and `coverage` = scored pixels / ground-truth surface pixels (a model
that misses most of the surface would otherwise look accurate on the little it keeps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowsdf.data import shapes
from flowsdf.data.dataset import GT_BOUND, ShapeSplit, Views
from flowsdf.fields import BatchField
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.cameras import camera_rays
from flowsdf.render.rays import RenderConfig
from flowsdf.render.shading import field_normals, first_hit, render_surface


def gt_normals(spec: shapes.Spec, K: Tensor, c2w: Tensor, image_size: int, n_samples: int = 128) -> tuple[Tensor, Tensor]:
    """Analytic surface of one view: hit (S*S,) bool and unit normals (S*S, 3) (0 where not hit)."""
    origins, dirs = camera_rays(K.cpu().float(), c2w.cpu().float(), image_size)  # (R, 3)
    field = lambda p, item: shapes.sdf(spec, p)  # noqa: E731
    hit, depth = first_hit(field, origins, dirs, radius=GT_BOUND, n_samples=n_samples)  # (R,)
    normals = torch.zeros_like(origins)
    if hit.any():
        normals[hit] = field_normals(field, origins[hit] + depth[hit, None] * dirs[hit], torch.zeros(0))
    return hit, normals


@torch.no_grad()
def predicted_normals(field: BatchField, K: Tensor, c2w: Tensor, image_size: int, render_cfg: RenderConfig) -> tuple[Tensor, Tensor]:
    """Predicted surface of B views (item b of `field` from camera b): hit (B, R), normals (B, R, 3)."""
    origins, dirs = camera_rays(K, c2w, image_size)  # (B, R, 3)
    surf = render_surface(field, origins, dirs, render_cfg)
    normals = torch.zeros_like(origins)
    normals[surf.hit] = surf.normals
    return surf.hit, normals


def angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between unit vectors a, b (..., 3)."""
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1.0, 1.0)))


def normal_errors(field: BatchField, specs: list[shapes.Spec], views: Views, render_cfg: RenderConfig) -> dict:
    """Normal accuracy of `field` (item i = shape i) over all V views of N shapes (see module docstring)."""
    N, V = views.masks.shape[:2]
    size = views.masks.shape[-1]
    K, c2w = views.K.flatten(0, 1), views.c2w.flatten(0, 1)  # (N*V, ...)
    angles, per_shape, gt_pixels = [], [], 0
    for i in range(N):
        rows = slice(i * V, (i + 1) * V)
        hit_p, n_p = predicted_normals(lambda p, item, i=i: field(p, i), K[rows], c2w[rows], size, render_cfg)
        shape_angles = []
        for v in range(V):
            hit_g, n_g = gt_normals(specs[i], K[i * V + v], c2w[i * V + v], size)
            both = hit_g & hit_p[v].cpu()
            gt_pixels += int(hit_g.sum())
            shape_angles.append(angle_deg(n_p[v].cpu()[both], n_g[both]))
        a = torch.cat(shape_angles)
        angles.append(a)
        per_shape.append(a.mean().item() if a.numel() else None)
    all_a = torch.cat(angles)
    return {
        "views": N * V,
        "mean_angle_deg": all_a.mean().item() if all_a.numel() else None,
        "median_angle_deg": all_a.median().item() if all_a.numel() else None,
        "coverage": all_a.numel() / gt_pixels if gt_pixels else None,
        "per_shape_mean_angle_deg": per_shape,
    }


def decoder_items(decoder: SDFDecoder, codes: Tensor) -> BatchField:
    """The decoder as a field whose item i is code i (N, D); each call gets one int item."""
    terms = decoder.latent_terms(codes)
    return lambda p, item: decoder.forward_points(terms, p, item)


@torch.no_grad()
def evaluate_normals(decoder: SDFDecoder, codes: Tensor, split: ShapeSplit, group: str, render_cfg: RenderConfig) -> dict:
    """Normal accuracy of the codes (N, D), one per shape of `split`, over its `group` views."""
    return normal_errors(decoder_items(decoder, codes), split.shapes, getattr(split, group), render_cfg)
