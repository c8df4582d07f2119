"""What a silhouette BCE means: the score of the exact analytic SDF through our renderer.

Renders every training shape's ground-truth SDF (optionally multiplied by a steepness factor)
through the training renderer and scores it like a trained model: mean BCE of
sigmoid(-min_sdf / tau) against the ground-truth masks, and the share of wrongly classified
pixels. A metric distance field is soft over about a pixel at tau = 0.01, so the exact shape
scores well above zero; a learned field can only go lower by being steeper than a distance.

    python benchmarks/silhouette_floor.py [--preset seed] [--tau 0.01] [--steepness 1 2 4 10 30]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from flowsdf import config
from flowsdf.data import dataset, shapes
from flowsdf.render import render_views, silhouette_logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed", help="dataset and renderer of this preset (default seed)")
    p.add_argument("--tau", type=float, nargs="+", default=[0.01])
    p.add_argument("--steepness", type=float, nargs="+", default=[1, 2, 4, 10, 30])
    args = p.parse_args()

    cfg = config.preset(args.preset)
    data = dataset.ensure(cfg.data, dataset.default_root(cfg.data))
    views, size = data.train.input, cfg.data.image_size
    # One min-SDF image per shape (its first training view) of the unscaled analytic field;
    # scaling the field by k scales min_sdf by k, so the renders are reused for every k.
    min_sdf = []
    for i, spec in enumerate(data.train.shapes):
        field = lambda pts, item, spec=spec: shapes.sdf(spec, pts)  # noqa: E731
        min_sdf.append(render_views(field, views.K[i, :1], views.c2w[i, :1], size, cfg.render)[0])
    min_sdf = torch.stack(min_sdf)  # (N, H, W)
    masks = views.masks[:, 0]  # (N, H, W)
    wrong = ((min_sdf < 0).float() != masks).float().mean().item()

    print(f"{len(data.train)} shapes, {size}x{size}, {cfg.render.n_samples} samples/ray; "
          f"pixels misclassified by the exact SDF: {wrong:.4%}")
    print("steepness | " + " | ".join(f"BCE at tau {t:g}" for t in args.tau))
    for k in args.steepness:
        bces = [F.binary_cross_entropy_with_logits(silhouette_logits(k * min_sdf, t), masks).item() for t in args.tau]
        print(f"{k:9g} | " + " | ".join(f"{b:.5f}" for b in bces))


if __name__ == "__main__":
    main()
