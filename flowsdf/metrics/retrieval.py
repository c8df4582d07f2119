"""The retrieval baseline: answer a held-out picture with the training shape that looks most like it.

Tatarchenko et al. 2019 ("What do single-view 3D reconstruction networks learn?") found that
reconstruction networks score like recognition: returning the nearest training shape is as good.
A network that does not beat this baseline has learned to recognise, not to reconstruct; every
evaluation therefore scores it beside the models, with the same metrics.

Nearest by silhouette: for each held-out shape, the training shape whose input-view mask has the
highest IoU with the held-out input view's mask (both are pictures from the input camera; in the
view frame that camera is C0 for every shape, so the masks are directly comparable). Silhouettes,
not a model's codes, so the baseline is the same for every model of a dataset and needs no model.
The retrieved shape is scored as it stands in its own frame: in the view frame that is the shape
as its own input camera saw it, which is what a lookup by appearance would return.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from flowsdf.data.dataset import ShapeSplit
from flowsdf.metrics.shapes import mean_metrics, gt_field, shape_metrics
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.render.cameras import camera_rays
from flowsdf.render.shading import first_hit


def nearest_by_silhouette(train: ShapeSplit, heldout: ShapeSplit) -> tuple[Tensor, Tensor]:
    """For each held-out shape, the training shape whose input-view mask is most like its own:
    (index (H,), that mask IoU (H,))."""
    train_masks = train.input.masks[:, 0].cpu() > 0.5  # (N, S, S)
    out_idx, out_iou = [], []
    for mask in heldout.input.masks[:, 0].cpu() > 0.5:  # (S, S)
        ious = silhouette_iou(train_masks, mask[None].expand_as(train_masks))  # (N,)
        best = int(ious.argmax())
        out_idx.append(best)
        out_iou.append(float(ious[best]))
    return torch.tensor(out_idx), torch.tensor(out_iou)


@torch.no_grad()
def retrieved_silhouettes(spec: dict, K: Tensor, c2w: Tensor, size: int, samples: int = 128) -> Tensor:
    """The exact silhouettes (V, S, S) bool of an analytic shape seen by cameras K (V, 3, 3), c2w (V, 4, 4)."""
    origins, dirs = camera_rays(K.cpu(), c2w.cpu(), size)  # (V, S*S, 3)
    field = lambda p, item: gt_field(spec)(p)  # noqa: E731  the analytic shape, any item
    hits = [first_hit(field, o, d, radius=0.9, n_samples=samples)[0] for o, d in zip(origins, dirs)]
    return torch.stack(hits).view(-1, size, size)


def retrieval_baseline(train: ShapeSplit, heldout: ShapeSplit, resolution: int = 64, seed: int = 0,
                       samples: int = 192) -> dict[str, Any]:
    """The baseline's figures on the held-out shapes: the same 2-D (input and novel views, IoU) and
    3-D metrics (volumetric IoU, Chamfer-L1, F-score at 1 % and 2 %) as a model's. `samples`: the
    dataset's own ground-truth samples per ray (DataConfig.gt_samples), so its silhouettes are
    rendered exactly as the dataset's masks are."""
    idx, mask_iou = nearest_by_silhouette(train, heldout)
    size = heldout.input.masks.shape[-1]
    rows, views = [], {"input": [], "novel": []}
    for h, j in enumerate(idx.tolist()):
        spec = train.shapes[j]
        for group in ("input", "novel"):
            v = getattr(heldout, group)
            sil = retrieved_silhouettes(spec, v.K[h], v.c2w[h], size, samples)  # (V, S, S)
            views[group].append(silhouette_iou(sil, v.masks[h].cpu() > 0.5).mean().item())
        row = {"index": h, "retrieved": j, "mask_iou": float(mask_iou[h])}
        row.update(shape_metrics(gt_field(spec), heldout.shapes[h], resolution=resolution, seed=seed))
        rows.append(row)
    return {
        "rule": "nearest training shape by input-view silhouette IoU",
        "heldout_input_iou": sum(views["input"]) / len(views["input"]),
        "heldout_novel_iou": sum(views["novel"]) / len(views["novel"]),
        "per_shape": rows,
        "mean": mean_metrics(rows),
    }
