"""Test-time refinement: fit the predicted code to the input picture's silhouette.

The encoder (or flow) gives a code in one pass; SDF-SRN also optimises the latent against the
input image at test time. Here a few Adam steps move each code (decoder frozen) so that its
soft silhouette, rendered from the input camera, matches the picture's foreground mask (BCE,
the training loss). A small pull towards the predicted code keeps the parts the input view does
not see close to what the model predicted.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views, silhouette_logits


def silhouette_bce(decoder: SDFDecoder, codes: Tensor, masks: Tensor, K: Tensor, c2w: Tensor,
                   render_cfg: RenderConfig, tau: float) -> Tensor:
    """Per-picture BCE (N,) of the codes' (N, D) soft silhouettes from cameras K (N, 3, 3),
    c2w (N, 4, 4) against masks (N, S, S). Cameras and masks are moved to the codes' device (a
    dataset's views live on the CPU)."""
    masks, K, c2w = (t.to(codes.device) for t in (masks, K, c2w))
    min_sdf = render_views(decoder.field(codes), K, c2w, masks.shape[-1], render_cfg)  # (N, S, S)
    bce = F.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, tau), masks, reduction="none")
    return bce.flatten(1).mean(1)


def refine_codes(decoder: SDFDecoder, codes: Tensor, masks: Tensor, K: Tensor, c2w: Tensor,
                 render_cfg: RenderConfig, tau: float, steps: int, lr: float = 1e-2,
                 anchor: float = 1e-2) -> Tensor:
    """`steps` Adam steps on codes (N, D) against masks (N, S, S) seen from cameras K, c2w.

    The loss is the mean silhouette BCE plus `anchor` * |z - z_predicted|^2 per code. The
    decoder is not changed (its parameters get no update and keep no gradient). Returns the
    refined codes (N, D), detached.
    """
    if steps <= 0:
        return codes
    start = codes.detach()
    z = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    frozen = [p.requires_grad for p in decoder.parameters()]
    for p in decoder.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                loss = silhouette_bce(decoder, z, masks, K, c2w, render_cfg, tau).sum()
                loss = loss + anchor * ((z - start) ** 2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, flag in zip(decoder.parameters(), frozen):
            p.requires_grad_(flag)
    return z.detach()
