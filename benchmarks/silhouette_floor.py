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
from pathlib import Path

import torch
import torch.nn.functional as F

from flowsdf import config, runs
from flowsdf.data import dataset, shapes
from flowsdf.loading import finished_models
from flowsdf.metrics.views import predict_codes, render_group
from flowsdf.pipeline import FlowSDF
from flowsdf.render.silhouette import render_views, silhouette_logits
from flowsdf.runs import run_data


def print_table(title: str, min_sdf: torch.Tensor, masks: torch.Tensor, steepness: list[float], taus: list[float]) -> None:
    """BCE of min-SDF images (N, H, W) against masks at each steepness factor and tau."""
    wrong = ((min_sdf < 0).float() != masks).float().mean().item()
    print(f"{title}; pixels misclassified: {wrong:.4%}")
    print("steepness | " + " | ".join(f"BCE at tau {t:g}" for t in taus))
    for k in steepness:
        bces = [F.binary_cross_entropy_with_logits(silhouette_logits(k * min_sdf, t), masks).item() for t in taus]
        print(f"{k:9g} | " + " | ".join(f"{b:.5f}" for b in bces))


def trained_min_sdf(run_dir: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Min-SDF images (N, H, W) of each finished model of a run on its training views, and the masks."""
    cfg = runs.read_config(run_dir)
    split = run_data(cfg, run_dir, None).train
    out = {}
    for name, trained in finished_models(run_dir, torch.device("cpu")).items():
        model = FlowSDF(trained)
        codes = predict_codes(model.predictor(), split, seed=cfg.seed)  # (N, *latent)
        logits = render_group(model.decoder, codes, split.input, cfg.render, tau=1.0)  # (N, V, H, W)
        out[name] = -logits[:, 0]  # at tau 1 the logit is -min_sdf
    return out, split.input.masks[:, 0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed", help="dataset and renderer of this preset (default seed)")
    p.add_argument("--tau", type=float, nargs="+", default=[0.01])
    p.add_argument("--steepness", type=float, nargs="+", default=[1, 2, 4, 10, 30])
    p.add_argument("--run", type=Path, help="score this trained run's models instead of the exact SDF")
    args = p.parse_args()

    if args.run is not None:
        fields, masks = trained_min_sdf(args.run)
        for name, min_sdf in fields.items():
            print_table(f"{args.run} {name}, training views", min_sdf, masks, args.steepness, args.tau)
        return

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
    title = f"{len(data.train)} shapes, {size}x{size}, {cfg.render.n_samples} samples/ray, exact SDF"
    print_table(title, min_sdf, masks, args.steepness, args.tau)


if __name__ == "__main__":
    main()
