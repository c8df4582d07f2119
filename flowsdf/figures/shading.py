"""Stage-3 figures: predicted shading and normal maps beside the ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from flowsdf.data.dataset import ShapeSplit  # noqa: E402
from flowsdf.fields import Predictor
from flowsdf.figures.plots import save_figure  # noqa: E402
from flowsdf.metrics.normals import gt_normals  # noqa: E402
from flowsdf.models.sdf import SDFDecoder  # noqa: E402
from flowsdf.render.shading import shade_views  # noqa: E402


def normal_map(normals: Tensor, c2w: Tensor) -> Tensor:
    """World normals (3, H, W) -> an RGB picture (H, W, 3) of the camera-frame normal, (n + 1) / 2.

    Background (zero normals) stays black.
    """
    cam = torch.einsum("ji,jhw->ihw", c2w[:3, :3].to(normals), normals)  # (3, H, W) world -> camera
    hit = normals.abs().sum(0) > 0  # (H, W)
    return ((cam + 1) / 2 * hit).permute(1, 2, 0).clamp(0, 1)  # (H, W, 3)


@torch.no_grad()
def shading_rows(predict: Predictor, decoder: SDFDecoder, albedo: nn.Module, split: ShapeSplit, k: int, cfg, seed: int,
                 novel: int = 2) -> list[dict]:
    """For the first k shapes, each view's pictures: ground-truth image, predicted shading,
    predicted normals, analytic normals (input view, then `novel` novel views)."""
    gen = torch.Generator().manual_seed(seed)
    codes = predict(split.input.images[:k, 0], gen)  # (k, D)
    size = split.input.masks.shape[-1]
    rows = []
    for i in range(k):
        views = []
        for group, n in (("input", 1), ("novel", novel)):
            v = getattr(split, group)
            n = min(n, v.masks.shape[1])
            code = codes[i : i + 1].expand(n, -1)  # (n, D)
            shaded = shade_views(decoder.field(code), albedo(code), v.light[i, :n], v.K[i, :n], v.c2w[i, :n], size,
                                 cfg.render, cfg.data.ambient)
            for j in range(n):
                _, n_gt = gt_normals(split.shapes[i], v.K[i, j], v.c2w[i, j], size)
                c2w = v.c2w[i, j].cpu()
                views.append({
                    "name": "input view" if group == "input" else f"novel {j + 1}",
                    "gt": v.images[i, j].permute(1, 2, 0).cpu(),
                    "shading": shaded.rgb[j].permute(1, 2, 0).cpu().clamp(0, 1),
                    "normals": normal_map(shaded.normals[j].cpu(), c2w),
                    "gt_normals": normal_map(n_gt.T.reshape(3, size, size), c2w),
                })
        rows.append({"views": views})
    return rows


def shading_grid(rows: list[dict], title: str, path: Path) -> None:
    """One row per shape; per view four panels: ground truth, predicted shading, predicted normals,
    analytic normals."""
    panels = (("gt", "GT image"), ("shading", "pred shading"), ("normals", "pred normals"), ("gt_normals", "GT normals"))
    n_cols = len(panels) * max(len(r["views"]) for r in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.2 * n_cols, 1.3 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, row in enumerate(rows):
        for j, view in enumerate(row["views"]):
            for p, (key, label) in enumerate(panels):
                ax = axes[i, len(panels) * j + p]
                ax.imshow(view[key].numpy())
                if i == 0:
                    ax.set_title(f"{view['name']}\n{label}", fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def shading_figure(predict: Predictor, decoder: SDFDecoder, albedo: nn.Module, split: ShapeSplit, k: int, cfg, seed: int,
                   title: str, path: Path, novel: int = 2) -> None:
    """`shading_rows` drawn by `shading_grid` into `path`."""
    shading_grid(shading_rows(predict, decoder, albedo, split, k, cfg, seed, novel), title, path)
