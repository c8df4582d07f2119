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

from typing import Iterator

import torch
from torch import Tensor

# A Field as in flowsdf.render.silhouette: field(points (P, 3), item) -> sdf (P,).


@torch.no_grad()
def chunked_values(
    field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, chunk_points: int, use_bf16: bool
) -> Iterator[tuple[int, int, Tensor]]:
    """The field at the depths t (R, k) of rays o, d (R, 3), in chunks without autograd: yields
    (s, e, values (e - s, k) float32) for rays s..e-1, each chunk about `chunk_points` points.

    Rays arrive grouped by item (row-major over (B, R)), so each item is one contiguous run and a
    chunk never mixes items: the field gets a plain int item and can broadcast its per-code terms
    instead of gathering them per point. With `use_bf16` the field runs under bfloat16 autocast.
    """
    k = t.shape[1]
    rays_per_chunk = max(1, chunk_points // k)
    counts = torch.bincount(item).tolist() if item.numel() else []
    start = 0
    for b, count in enumerate(counts):
        for s in range(start, start + count, rays_per_chunk):
            e = min(s + rays_per_chunk, start + count)
            pts = o[s:e, None, :] + t[s:e, :, None] * d[s:e, None, :]  # (h, k, 3)
            with torch.autocast(device_type=o.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                vals = field(pts.reshape(-1, 3), b)  # (h*k,)
            yield s, e, vals.view(e - s, k).float()
        start += count


@torch.no_grad()
def search_depths(
    field, o: Tensor, d: Tensor, item: Tensor, t: Tensor, chunk_points: int, use_bf16: bool
) -> tuple[Tensor, Tensor]:
    """Smallest field value among the depths t (R, k) of each ray, and its column (R,).

    Rays arrive grouped by item (see chunked_values). Returns (min value (R,) float32, argmin
    column (R,) long).
    """
    best_val = torch.empty(t.shape[0], device=t.device)  # (R,)
    best_col = torch.empty(t.shape[0], dtype=torch.long, device=t.device)  # (R,)
    for s, e, vals in chunked_values(field, o, d, item, t, chunk_points, use_bf16):
        best_val[s:e], best_col[s:e] = vals.min(dim=1)
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
    offset = (stride - 1) // 2  # coarse samples sit mid-way in each group of `stride`
    cols = torch.arange(offset, S, stride, device=t.device)  # (Sc,)
    coarse_val, kc = search_depths(field, o, d, item, t[:, cols], chunk_points, use_bf16)  # (H,), (H,)
    jc = cols[kc]  # (H,) the coarse argmin's full-resolution column
    best = t.gather(1, jc[:, None]).squeeze(1)  # (H,)
    spacing = (t[:, 1] - t[:, 0]) * stride if S > 1 else torch.zeros_like(best)  # (H,) coarse spacing
    refine = coarse_val < (margin * spacing).clamp(min=floor)  # (H,)
    if stride == 1 or not refine.any():
        return best, refine
    # Full resolution between the coarse argmin's neighbours: columns jc - stride + 1 .. jc + stride - 1.
    window = (jc[refine, None] + torch.arange(1 - stride, stride, device=t.device)).clamp(0, S - 1)  # (Hr, 2s-1)
    t_win = t[refine].gather(1, window)  # (Hr, 2s-1)
    _, kw = search_depths(field, o[refine], d[refine], item[refine], t_win, chunk_points, use_bf16)
    best[refine] = t_win.gather(1, kw[:, None]).squeeze(1)
    return best, refine
