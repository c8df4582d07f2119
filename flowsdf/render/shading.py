"""Surfaces and shading: the first surface crossing of a ray, SDF normals, Lambertian colour."""

from __future__ import annotations

import torch
from torch import Tensor

from flowsdf.render.silhouette import Field, sample_depths, sphere_interval


def first_hit(
    field: Field, origins: Tensor, dirs: Tensor, radius: float = 1.0, n_samples: int = 256, refine: int = 20
) -> tuple[Tensor, Tensor]:
    """Exact-as-possible surface hit of each ray, for ground truth (no gradient needed).

    Dense sampling of the chord finds the first sign change, then bisection refines it.
    origins, dirs (R, 3) -> hit (R,) bool, depth (R,) (meaningless where not hit).
    """
    with torch.no_grad():
        in_sphere, t_near, t_far, _ = sphere_interval(origins, dirs, radius)
        hit_all = torch.zeros_like(in_sphere)
        depth_all = torch.zeros_like(t_near)
        # Only rays that cross the bounding sphere can hit anything.
        origins, dirs, t_near, t_far = origins[in_sphere], dirs[in_sphere], t_near[in_sphere], t_far[in_sphere]
        R = origins.shape[0]
        item = torch.zeros(R * n_samples, dtype=torch.long, device=origins.device)
        t = sample_depths(t_near, t_far, n_samples)  # (R, S)
        pts = origins[:, None] + t[..., None] * dirs[:, None]  # (R, S, 3)
        vals = field(pts.reshape(-1, 3), item).view(R, n_samples)  # (R, S)
        inside = vals < 0
        hit = inside.any(dim=1)
        k = inside.float().argmax(dim=1)  # first negative sample
        hi = t.gather(1, k[:, None]).squeeze(1)  # (R,)
        lo = torch.where(k > 0, t.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1), t_near)
        item = item[:R]
        for _ in range(refine):
            mid = 0.5 * (lo + hi)
            neg = field(origins + mid[:, None] * dirs, item) < 0
            hi = torch.where(neg, mid, hi)
            lo = torch.where(neg, lo, mid)
        hit_all[in_sphere] = hit
        depth_all[in_sphere] = hi
        return hit_all, depth_all


def field_normals(field: Field, points: Tensor, item: Tensor, create_graph: bool = False) -> Tensor:
    """Unit normals (P, 3): the normalised gradient of the SDF at `points` (P, 3)."""
    with torch.enable_grad():
        p = points if points.requires_grad else points.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(field(p, item).sum(), p, create_graph=create_graph)
    return g / torch.linalg.vector_norm(g, dim=-1, keepdim=True).clamp(min=1e-8)


def lambertian(normals: Tensor, albedo: Tensor, light_dir: Tensor, ambient: float) -> Tensor:
    """Shaded colour albedo * max(0, n.l) + ambient, clamped to [0, 1].

    normals (P, 3), albedo (P, 3) or (3,), light_dir (P, 3) or (3,) unit vector towards the light.
    """
    diffuse = (normals * light_dir).sum(-1, keepdim=True).clamp(min=0)  # (P, 1)
    return (albedo * diffuse + ambient).clamp(0.0, 1.0)
