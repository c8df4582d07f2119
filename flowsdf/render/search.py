"""The one search along the renderer's rays: each ray's smallest-SDF sample, without autograd.

The soft silhouette needs min_k sdf(x_k) along a ray, and the gradient of a minimum flows only
through its argmin: so the search over the samples runs without autograd (in chunks, optionally
in bfloat16) and the renderers evaluate only the argmin point again with gradient. Every
renderer (silhouettes, Lambertian shading, the dataset's ground truth) searches here.

Two searches (RenderConfig.search):

- "exhaustive" evaluates all n samples of every ray: the reference. It can also report each
  ray's first sample inside the shape (sdf < 0), which the shading needs for the surface crossing.
- "coarse" evaluates every `coarse_stride`-th sample first (the coarse pass), then, only for the
  rays whose coarse minimum is below `fine_margin` coarse spacings (a world distance per ray) or
  below `fine_tau * tau`, the 2 * stride - 1 full-resolution samples between the coarse argmin's
  two coarse neighbours (the fine pass); other rays keep the coarse argmin. Why this is enough:
  the field is smooth along a ray at the sample spacing, so the argmin lies next to the smallest
  coarse sample; and a ray whose coarse minimum is well above the surface has a silhouette of
  ~0 once tau is small, so it carries ~no loss or gradient. What it can get wrong: a thin part
  that every coarse sample steps over while another part of the ray holds the coarse minimum; and
  for rays left at the coarse argmin, a minimum up to about half a coarse spacing (times the
  field's steepness) too high. benchmarks/search_error.py measures both against the exhaustive
  search on trained models; tests compare them ray by ray. Cost per ray: n / stride coarse
  samples + (2 * stride - 1) for a ray that gets the fine pass, e.g. 12 + 7 of 48.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from flowsdf.fields import BatchField
from flowsdf.render.rays import Rays, RenderConfig


@dataclass
class Search:
    """What the search found along H rays."""

    best: Tensor  # (H,) depth of each ray's smallest-SDF sample
    fine: Tensor  # (H,) bool: the ray was searched at full resolution (every ray, exhaustively)
    first_inside: Tensor | None = None  # (H,) index of the first sample with sdf < 0, -1 if none


@torch.no_grad()
def chunked_values(
    field: BatchField, o: Tensor, d: Tensor, item: Tensor, t: Tensor, chunk_points: int, use_bf16: bool
) -> Iterator[tuple[int, int, Tensor]]:
    """The field at the depths t (R, k) of rays o, d (R, 3), in chunks without autograd: yields
    (s, e, values (e - s, k) float32) for rays s..e-1, each chunk about `chunk_points` points.

    Rays arrive grouped by item (Rays' order), so each item is one contiguous run and a chunk
    never mixes items: the field gets a plain int item and can broadcast its per-code terms
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


@contextlib.contextmanager
def search_precision(cfg: RenderConfig) -> Iterator[None]:
    """TensorFloat-32 matrix products on CUDA for the length of a search when cfg asks for them."""
    if cfg.search_dtype != "tf32":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@torch.no_grad()
def static_argmin(field: BatchField, origins: Tensor, dirs: Tensor, depths: Tensor, chunk_rays: int) -> Tensor:
    """Depth (B, R) of the smallest-SDF sample among depths (B, R, S) of every ray of every image,
    with shapes that depend only on B, R and S (no selection of rays, a fixed number of chunks of
    `chunk_rays` rays): what a CUDA graph or a compiled step needs. Rays that miss the bounding
    sphere are searched too (their result is masked by the caller)."""
    B, R, S = depths.shape
    images = torch.arange(B, device=depths.device)  # (B,)
    best = torch.empty(B, R, device=depths.device, dtype=depths.dtype)  # (B, R)
    for s in range(0, R, chunk_rays):
        e = min(s + chunk_rays, R)
        t = depths[:, s:e]  # (B, c, S)
        pts = origins[:, s:e, None] + t[..., None] * dirs[:, s:e, None]  # (B, c, S, 3)
        item = images.repeat_interleave((e - s) * S)  # (B*c*S,) points are image-major
        vals = field(pts.reshape(-1, 3), item).view(B, e - s, S).float()  # (B, c, S)
        best[:, s:e] = t.gather(-1, vals.argmin(-1, keepdim=True)).squeeze(-1)
    return best


@torch.no_grad()
def search_rays(field: BatchField, rays: Rays, cfg: RenderConfig, tau: float | None = None,
                first_inside: bool = False) -> Search:
    """Each ray's smallest-SDF sample by the search cfg names (see the module docstring).

    `tau` (the silhouette temperature the result is for) sets the coarse search's floor.
    `first_inside` also finds each ray's first sample with sdf < 0, which takes every sample: the
    search is then exhaustive whatever cfg says.
    """
    if cfg.search_dtype not in ("float32", "bfloat16", "tf32"):
        raise ValueError(f"search_dtype must be float32, bfloat16 or tf32, got {cfg.search_dtype!r}")
    use_bf16 = cfg.search_dtype == "bfloat16"
    o, d, item, t = rays.origins, rays.dirs, rays.item, rays.depths
    if first_inside or cfg.search == "exhaustive":
        best = torch.empty_like(t[:, 0])  # (H,)
        first = torch.empty(t.shape[0], dtype=torch.long, device=t.device) if first_inside else None  # (H,)
        for s, e, vals in chunked_values(field, o, d, item, t, cfg.chunk_points, use_bf16):
            best[s:e] = t[s:e].gather(1, vals.argmin(dim=1)[:, None]).squeeze(1)  # vals (h, S)
            if first is not None:
                neg = vals < 0  # (h, S)
                first[s:e] = torch.where(neg.any(dim=1), neg.float().argmax(dim=1), -1)
        return Search(best, torch.ones_like(best, dtype=torch.bool), first)
    if cfg.search == "coarse":
        floor = cfg.fine_tau * tau if tau else 0.0
        best, fine = coarse_to_fine(field, o, d, item, t, cfg.coarse_stride, cfg.fine_margin, cfg.chunk_points,
                                    use_bf16, floor)
        return Search(best, fine)
    raise ValueError(f"search must be exhaustive or coarse, got {cfg.search!r}")


@torch.no_grad()
def _argmin(field: BatchField, o: Tensor, d: Tensor, item: Tensor, t: Tensor, chunk_points: int,
            use_bf16: bool) -> tuple[Tensor, Tensor]:
    """Smallest field value among the depths t (R, k) of each ray, and its column: (R,), (R,) long."""
    best_val = torch.empty(t.shape[0], device=t.device)  # (R,)
    best_col = torch.empty(t.shape[0], dtype=torch.long, device=t.device)  # (R,)
    for s, e, vals in chunked_values(field, o, d, item, t, chunk_points, use_bf16):
        best_val[s:e], best_col[s:e] = vals.min(dim=1)
    return best_val, best_col


@torch.no_grad()
def coarse_to_fine(
    field: BatchField, o: Tensor, d: Tensor, item: Tensor, t: Tensor, stride: int, margin: float, chunk_points: int,
    use_bf16: bool, floor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The coarse search on rays o, d (H, 3) with depths t (H, S): (depth (H,), fine (H,) bool).

    A ray gets the fine pass when its coarse minimum is below max(margin coarse spacings, floor).
    """
    H, S = t.shape
    if stride < 1:
        raise ValueError(f"coarse stride must be >= 1, got {stride}")
    offset = (stride - 1) // 2  # coarse samples sit mid-way in each group of `stride`
    cols = torch.arange(offset, S, stride, device=t.device)  # (Sc,)
    coarse_val, kc = _argmin(field, o, d, item, t[:, cols], chunk_points, use_bf16)  # (H,), (H,)
    jc = cols[kc]  # (H,) the coarse argmin's full-resolution column
    best = t.gather(1, jc[:, None]).squeeze(1)  # (H,)
    spacing = (t[:, 1] - t[:, 0]) * stride if S > 1 else torch.zeros_like(best)  # (H,) coarse spacing
    fine = coarse_val < (margin * spacing).clamp(min=floor)  # (H,)
    if stride == 1 or not fine.any():
        return best, fine
    # Full resolution between the coarse argmin's neighbours: columns jc - stride + 1 .. jc + stride - 1.
    window = (jc[fine, None] + torch.arange(1 - stride, stride, device=t.device)).clamp(0, S - 1)  # (Hf, 2s-1)
    t_win = t[fine].gather(1, window)  # (Hf, 2s-1)
    _, kw = _argmin(field, o[fine], d[fine], item[fine], t_win, chunk_points, use_bf16)
    best[fine] = t_win.gather(1, kw[:, None]).squeeze(1)
    return best, fine
