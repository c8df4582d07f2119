"""A cheaper argmin search along each ray: coarse samples first, full resolution only where it counts.

The exhaustive search (silhouette.argmin_depth) evaluates the field at all n samples of every ray.
Two facts make most of that unnecessary:

- The gradient flows only through each ray's argmin, and the field is smooth along a ray at the
  sample spacing, so the argmin lies next to the smallest of every `stride`-th sample (the coarse
  pass). Refining means evaluating the 2*stride - 1 full-resolution samples between the coarse
  argmin's two coarse neighbours.
- A ray whose coarse minimum is well above the surface contributes ~nothing to loss or gradient
  once the silhouette is sharp, so refining it is wasted: only rays whose coarse minimum is below
  `margin` coarse spacings (a world distance per ray), or below `floor` (training passes
  refine_tau * tau: early on, when tau is large, a few coarse spacings are only a few tau) are
  refined; the rest keep the coarse argmin.

What it can get wrong: a thin part that the coarse samples step over entirely, when another part
of the same ray holds the coarse minimum; and, for culled rays, a minimum up to about half a
coarse spacing (times the field's steepness) too high. benchmarks/search_error.py measures both
against the exhaustive search on trained models; tests compare them ray by ray.

Cost per ray: n / stride coarse samples + (2 * stride - 1) for a refined ray, e.g. 12 + 7 of 48.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A Field as in flowsdf.render.silhouette: field(points (P, 3), item) -> sdf (P,).


@torch.no_grad()
def search_depths(
    field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, n_items: int, chunk_points: int, use_bf16: bool
) -> tuple[Tensor, Tensor]:
    """Smallest field value among the depths t (R, k) of each ray, and its column (R,).

    Rays arrive grouped by item (row-major over (B, R)); chunks never mix items, so the field
    gets a plain int item. Returns (min value (R,) float32, argmin column (R,) long).
    """
    k = t.shape[1]
    rays_per_chunk = max(1, chunk_points // k)
    best_val = torch.empty(t.shape[0], device=t.device)  # (R,)
    best_col = torch.empty(t.shape[0], dtype=torch.long, device=t.device)  # (R,)
    counts = torch.bincount(item, minlength=n_items).tolist() if item.numel() else []
    start = 0
    for b, count in enumerate(counts):
        for s in range(start, start + count, rays_per_chunk):
            e = min(s + rays_per_chunk, start + count)
            pts = o[s:e, None, :] + t[s:e, :, None] * d[s:e, None, :]  # (h, k, 3)
            with torch.autocast(device_type=o.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                vals = field(pts.reshape(-1, 3), b)  # (h*k,)
            best_val[s:e], best_col[s:e] = vals.view(e - s, k).float().min(dim=1)
        start += count
    return best_val, best_col


@torch.no_grad()
def coarse_to_fine_depth(
    field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, stride: int, margin: float, chunk_points: int,
    use_bf16: bool, floor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Depth (H,) of each ray's (approximately) smallest-SDF sample among t (H, S).

    A ray is refined when its coarse minimum is below max(margin coarse spacings, floor).

    Returns (depth (H,), refined (H,) bool: which rays were searched at full resolution).
    """
    H, S = t.shape
    if stride < 1:
        raise ValueError(f"coarse stride must be >= 1, got {stride}")
    n_items = int(item.max().item()) + 1 if H else 0
    offset = (stride - 1) // 2  # coarse samples sit mid-way in each group of `stride`
    cols = torch.arange(offset, S, stride, device=t.device)  # (Sc,)
    coarse_val, kc = search_depths(field, o, d, item, t[:, cols], n_items, chunk_points, use_bf16)  # (H,), (H,)
    jc = cols[kc]  # (H,) the coarse argmin's full-resolution column
    best = t.gather(1, jc[:, None]).squeeze(1)  # (H,)
    spacing = (t[:, 1] - t[:, 0]) * stride if S > 1 else torch.zeros_like(best)  # (H,) coarse spacing
    refine = coarse_val < (margin * spacing).clamp(min=floor)  # (H,)
    if stride == 1 or not refine.any():
        return best, refine
    # Full resolution between the coarse argmin's neighbours: columns jc - stride + 1 .. jc + stride - 1.
    window = (jc[refine, None] + torch.arange(1 - stride, stride, device=t.device)).clamp(0, S - 1)  # (Hr, 2s-1)
    t_win = t[refine].gather(1, window)  # (Hr, 2s-1)
    _, kw = search_depths(field, o[refine], d[refine], item[refine], t_win, n_items, chunk_points, use_bf16)
    best[refine] = t_win.gather(1, kw[:, None]).squeeze(1)
    return best, refine
