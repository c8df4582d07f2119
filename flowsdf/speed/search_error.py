"""How far an inexact argmin search (e.g. RenderConfig(search="coarse")) is from the exhaustive one.

Compared ray by ray on the same field and rays, and on what training sees: the silhouette BCE
and its gradient with respect to given parameters (the decoder's weights, the codes).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor
from torch.nn import functional as F

from flowsdf.render.rays import RenderConfig, sphere_rays
from flowsdf.render.search import search_rays
from flowsdf.render.silhouette import render_min_sdf, silhouette_logits


def search_agreement(
    field, origins: Tensor, dirs: Tensor, masks: Tensor, cfg: RenderConfig, tau: float, params: list[Tensor],
    reference: RenderConfig | None = None,
) -> dict:
    """Ray-by-ray and loss-level differences between `cfg`'s search and the reference search.

    origins, dirs (B, R, 3); masks (B, R) the target silhouettes; the reference defaults to the
    exhaustive float32 search with cfg's samples. Reported over rays that hit the bounding sphere:
    share of identical argmin depths (all rays, and rays near the surface: reference minimum
    below 3 tau, or inside the target mask), per-ray |min_sdf difference| / tau (mean, p99, max);
    relative BCE difference; gradient difference |g - g_ref| / |g_ref| and cosine over `params`;
    for the coarse search, the share of rays its fine pass searched at full resolution.
    """
    ref = reference or dataclasses.replace(cfg, search="exhaustive", search_dtype="float32", naive=False)
    rays = sphere_rays(origins, dirs, cfg)
    with torch.no_grad():
        best_ref = search_rays(field, rays, ref).best  # (H,)
        found = search_rays(field, rays, cfg, tau)
        best_new = found.best  # (H,)
        min_ref = field(rays.at(best_ref), rays.item)  # (H,)
        min_new = field(rays.at(best_new), rays.item)  # (H,)
        fine = found.fine.float().mean().item()  # the share of rays searched at full resolution: the cost
    same = best_ref == best_new  # (H,)
    near = (min_ref < 3 * tau) | (masks[rays.inside] > 0.5)  # (H,)
    err = (min_new - min_ref).abs() / tau  # (H,) in logits

    def loss_and_grads(rc: RenderConfig) -> tuple[float, Tensor]:
        logits = silhouette_logits(render_min_sdf(field, origins, dirs, rc, tau), tau)  # (B, R)
        loss = F.binary_cross_entropy_with_logits(logits, masks)
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
        return loss.item(), flat

    loss_ref, g_ref = loss_and_grads(ref)
    loss_new, g_new = loss_and_grads(cfg)
    return {
        "rays_hit": int(rays.inside.sum()),
        "rays_near_surface": int(near.sum()),
        "fine_share": fine,
        "same_argmin": same.float().mean().item(),
        "same_argmin_near_surface": same[near].float().mean().item() if near.any() else 1.0,
        "min_sdf_err_over_tau_mean": err.mean().item(),
        "min_sdf_err_over_tau_p99": err.quantile(0.99).item() if err.numel() else 0.0,
        "min_sdf_err_over_tau_max": err.max().item() if err.numel() else 0.0,
        "min_sdf_err_over_tau_near_max": err[near].max().item() if near.any() else 0.0,
        "loss_ref": loss_ref,
        "loss": loss_new,
        "loss_rel_diff": abs(loss_new - loss_ref) / max(abs(loss_ref), 1e-12),
        "grad_rel_diff": ((g_new - g_ref).norm() / g_ref.norm().clamp(min=1e-30)).item(),
        "grad_cosine": F.cosine_similarity(g_new, g_ref, dim=0).item(),
    }
