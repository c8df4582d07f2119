"""Figure for the Stage-3 experiment: each arm's normal maps beside the analytic ones.

Rows: held-out shapes, then training shapes. Columns: the input image, then for the input view
and for one novel view: the analytic normals and each arm's predicted normals (camera frame,
(n + 1) / 2; black = no surface), with that view's mean angle error in orange.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from flowsdf import runs  # noqa: E402
from flowsdf.eval.figures import save_figure  # noqa: E402
from flowsdf.eval.normals import angle_deg, gt_normals, predicted_normals  # noqa: E402
from flowsdf.eval.run import load_models  # noqa: E402
from flowsdf.eval.shading_figures import normal_map  # noqa: E402
from flowsdf.eval.views import predict_codes  # noqa: E402

ARMS = {"cnn-sil": ("sil-s{seed}", "cnn"), "cnn-rgb": ("rgb-cnn-s{seed}", "cnn"),
        "flow-sil": ("flow-sil-s{seed}", "flow"), "flow-rgb": ("rgb-flow-s{seed}", "flow")}


@torch.no_grad()
def normals_figure(out: Path, seed: int, path: Path, n_heldout: int = 3, n_train: int = 2) -> None:
    models = {}
    for arm, (pattern, name) in ARMS.items():
        run = out / pattern.format(seed=seed)
        if (run / "eval" / "eval.json").exists():
            cfg = runs.read_config(run)
            found = load_models(run, cfg, torch.device("cpu"))
            if name in found:
                models[arm] = (cfg, found[name])
    if not models:
        return
    cfg = next(iter(models.values()))[0]
    data = runs.run_data(cfg, out / f"sil-s{seed}", None)
    rows = ([("held-out", data.heldout, i) for i in range(min(n_heldout, len(data.heldout)))]
            + [("train", data.train, i) for i in range(min(n_train, len(data.train)))])
    codes = {arm: {s: predict_codes(m["predict"], split, c.seed) for s, split in (("held-out", data.heldout), ("train", data.train))}
             for arm, (c, m) in models.items()}
    n_cols = 1 + 2 * (1 + len(models))
    size = data.config.image_size
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(1.2 * n_cols, 1.3 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for r, (split_name, split, i) in enumerate(rows):
        axes[r, 0].imshow(split.input.images[i, 0].permute(1, 2, 0).numpy())
        axes[r, 0].set_title(f"{split_name} #{i}", fontsize=6)
        for g, (group, label) in enumerate((("input", "input view"), ("novel", "novel view"))):
            views = getattr(split, group)
            K, c2w = views.K[i, :1], views.c2w[i, :1]
            hit_g, n_g = gt_normals(split.shapes[i], K[0], c2w[0], size)
            col = 1 + g * (1 + len(models))
            axes[r, col].imshow(normal_map(n_g.T.reshape(3, size, size), c2w[0]).numpy())
            if r == 0:
                axes[r, col].set_title(f"{label}\nanalytic", fontsize=6)
            for a, (arm, (c, m)) in enumerate(models.items()):
                code = codes[arm][split_name][i : i + 1]
                hit_p, n_p = predicted_normals(m["decoder"].field(code), K, c2w, size, c.render)
                ax = axes[r, col + 1 + a]
                ax.imshow(normal_map(n_p[0].T.reshape(3, size, size), c2w[0]).numpy())
                both = hit_g & hit_p[0]
                if both.any():
                    ax.text(1, 3, f"{angle_deg(n_p[0][both], n_g[both]).mean():.0f}°", color="orange", fontsize=6, va="top")
                if r == 0:
                    ax.set_title(f"{label}\n{arm}", fontsize=6)
    fig.suptitle(f"Stage-3 experiment, seed {seed}: normal maps (camera frame)", fontsize=8)
    save_figure(fig, path)
