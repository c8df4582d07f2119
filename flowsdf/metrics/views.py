"""Evaluation of a trained image -> code model through the renderer (2-D silhouette metrics).

For a split (training shapes or held-out shapes) each shape's code is predicted from its first
input view; "input" views are then rendered from the input cameras, "novel" views from the
novel cameras the model never saw. Same BCE definition as the training loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowsdf.data.dataset import ShapeSplit, Views
from flowsdf.fields import Predictor
from flowsdf.metrics.silhouette import silhouette_bce_per_item, silhouette_iou
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views, silhouette_logits


@torch.no_grad()
def predict_codes(predict: Predictor, split: ShapeSplit, seed: int, batch: int = 32) -> Tensor:
    """One code per shape (N, D), predicted from the shape's first input view.

    A flow's noise comes from a fresh generator seeded by `seed`, so every metric computed for
    the same split and seed scores the very same samples.
    """
    gen = torch.Generator().manual_seed(seed)
    images = split.input.images[:, 0]  # (N, 3, H, W)
    return torch.cat([predict(images[s : s + batch], gen) for s in range(0, len(images), batch)])


@torch.no_grad()
def render_group(
    decoder: SDFDecoder, codes: Tensor, views: Views, render_cfg: RenderConfig, tau: float, batch: int = 16
) -> Tensor:
    """Silhouette logits (N, V, H, W) of each shape's code from each of its V cameras."""
    N, V = views.masks.shape[:2]
    size = views.masks.shape[-1]
    flat_codes = codes.repeat_interleave(V, dim=0)  # (N*V, D)
    K, c2w = views.K.flatten(0, 1), views.c2w.flatten(0, 1)
    out = []
    for s in range(0, N * V, batch):
        e = min(s + batch, N * V)
        min_sdf = render_views(decoder.field(flat_codes[s:e]), K[s:e], c2w[s:e], size, render_cfg)
        out.append(silhouette_logits(min_sdf, tau))
    return torch.cat(out).view(N, V, size, size)


@torch.no_grad()
def evaluate_views(
    predict: Predictor,
    decoder: SDFDecoder,
    split: ShapeSplit,
    group: str,
    render_cfg: RenderConfig,
    tau: float,
    seed: int,
) -> dict:
    """BCE and IoU over all `group` ("input" or "novel") views of `split`, with per-shape IoU."""
    views: Views = getattr(split, group)
    codes = predict_codes(predict, split, seed)
    logits = render_group(decoder, codes, views, render_cfg, tau)  # (N, V, H, W)
    N, V = logits.shape[:2]
    bce = silhouette_bce_per_item(logits.flatten(0, 1), views.masks.flatten(0, 1)).view(N, V)
    iou = silhouette_iou(torch.sigmoid(logits.flatten(0, 1)), views.masks.flatten(0, 1)).view(N, V)
    return {
        "views": N * V,
        "bce": bce.mean().item(),
        "iou": iou.mean().item(),
        "per_shape_iou": iou.mean(dim=1).tolist(),
        "per_shape_bce": bce.mean(dim=1).tolist(),
    }


@torch.no_grad()
def prediction_rows(
    predict: Predictor,
    decoder: SDFDecoder,
    split: ShapeSplit,
    k: int,
    render_cfg: RenderConfig,
    tau: float,
    seed: int,
    novel: int = 2,
) -> tuple[list[dict], dict]:
    """Rows for figures.prediction_grid: the first `k` shapes, input view + `novel` novel views."""
    sub = ShapeSplit(
        shapes=split.shapes[:k],
        albedo=split.albedo[:k],
        input=Views(*(x[:k, :1] for x in vars(split.input).values())),
        novel=Views(*(x[:k, :novel] for x in vars(split.novel).values())),
    )
    codes = predict_codes(predict, sub, seed)
    probs = {g: torch.sigmoid(render_group(decoder, codes, getattr(sub, g), render_cfg, tau)) for g in ("input", "novel")}
    rows, ious = [], {"input": [], "novel": []}
    for i in range(k):
        row = {"image": sub.input.images[i, 0].permute(1, 2, 0).cpu().numpy(), "views": []}
        for g in ("input", "novel"):
            gt = getattr(sub, g).masks[i]  # (V, H, W)
            iou = silhouette_iou(probs[g][i], gt)  # (V,)
            ious[g] += iou.tolist()
            gt_np, pred_np = gt.cpu().numpy(), probs[g][i].cpu().numpy()
            for v in range(gt.shape[0]):
                name = "train view" if g == "input" else f"novel {v + 1}"
                row["views"].append((name, gt_np[v], pred_np[v], iou[v].item()))
        rows.append(row)
    return rows, {g: sum(v) / max(len(v), 1) for g, v in ious.items()}
