"""Error of the coarse-to-fine argmin search against the exhaustive one, on a trained model or on
the exact analytic SDFs of a dataset's shapes.

    python benchmarks/search_error.py --run runs/quick-s1 [--images 8] [--samples 48]
    python benchmarks/search_error.py --analytic [--images 8] [--size 64]

For each (coarse stride, refine margin) it prints, over the training views' rays that hit the
bounding sphere: the share of rays whose argmin sample is the exhaustive search's (all rays, and
rays near the surface), the per-ray error of min_sdf in units of tau, the relative BCE difference
and the gradient difference (decoder weights and codes; for analytic shapes, a per-shape scale).
By default the search runs in float32, so the figures isolate the coarse-to-fine error;
--search-dtype bfloat16 measures it together with the bf16 rounding the presets use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1
from flowsdf.data import shapes
from flowsdf.data.dataset import Views
from flowsdf.render import cameras
from flowsdf.render.cameras import camera_rays
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views
from flowsdf.speed.search_error import search_agreement
from flowsdf.train.loop import flatten_views


def model_field(run: Path, n: int):
    cfg = runs.read_config(run)
    data = runs.run_data(cfg, run, None, progress=False)
    encoder, decoder = build_stage1(cfg)
    checkpoint.load(runs.checkpoint_path(run, "stage1"), {"encoder": encoder, "decoder": decoder})
    views = flatten_views(data.train.input)
    with torch.no_grad():
        codes = encoder.eval()(views.images[:n])  # (n, D)
    codes.requires_grad_(True)
    params = [*decoder.parameters(), codes]
    return decoder.field(codes), views, params, cfg.render, cfg.stage1.tau_end


def analytic_field(n: int, size: int):
    """The exact SDFs of n random dataset shapes, seen from random cameras; masks = exact silhouettes."""
    specs = shapes.random_shapes(n, seed=0)
    scale = torch.ones(n, requires_grad=True)  # d loss / d steepness of each shape

    def field(points, item):
        if isinstance(item, int):
            return scale[item] * shapes.sdf(specs[item], points)
        return torch.cat([scale[b] * shapes.sdf(specs[b], points[item == b]) for b in range(n)])

    K = torch.tensor(cameras.intrinsics(size, 40.0)).float().expand(n, 3, 3)
    c2w = torch.stack([torch.tensor(cameras.look_at(x)).float() for x in cameras.random_viewpoints(np.random.default_rng(0), n, 2.5)])
    fine = RenderConfig(n_samples=512, search_dtype="float32")
    with torch.no_grad():
        masks = (render_views(field, K, c2w, size, fine) < 0).float()  # (n, H, W) near-exact silhouettes
    return field, Views(torch.zeros(n, 3, size, size), masks, K, c2w, torch.zeros(n, 3)), [scale], RenderConfig(), 0.01


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a Stage-1 run folder")
    src.add_argument("--analytic", action="store_true", help="exact SDFs of random dataset shapes")
    p.add_argument("--size", type=int, default=64, help="image size with --analytic")
    p.add_argument("--images", type=int, default=8, help="training views to render")
    p.add_argument("--samples", type=int, help="samples per ray (default: the run's / 48)")
    p.add_argument("--strides", default="2,4")
    p.add_argument("--margins", default="0.5,1,2,1000", help="refine margins in coarse spacings (1000 = all rays)")
    p.add_argument("--refine-taus", default="0,8", help="also refine rays with a coarse minimum below this many tau")
    p.add_argument("--search-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the coarse search (the reference is always exhaustive float32)")
    p.add_argument("--tau", type=float, help="default: the run's final tau (0.01 for analytic shapes)")
    p.add_argument("--out", type=Path, help="write the rows as JSON")
    args = p.parse_args()
    torch.manual_seed(0)

    field, views, params, render, tau = model_field(args.run, args.images) if args.run else analytic_field(args.images, args.size)
    tau = args.tau or tau
    render = dataclasses.replace(render, search_dtype=args.search_dtype, n_samples=args.samples or render.n_samples)
    n = min(args.images, views.images.shape[0])
    size = views.masks.shape[-1]
    origins, dirs = camera_rays(views.K[:n], views.c2w[:n], size)  # (n, R, 3)
    masks = views.masks[:n].reshape(n, -1)  # (n, R)
    print(f"{args.run or 'analytic shapes'}: {n} views {size}x{size}, {render.n_samples} samples, tau {tau}")
    print("stride margin k_tau | refined | same argmin (all / near) | err/tau mean p99 max(near) | loss rel | grad rel  cos | s")
    rows = []
    grid = [(int(s), float(m), float(k)) for s in args.strides.split(",") for m in args.margins.split(",")
            for k in args.refine_taus.split(",")]
    for stride, margin, k_tau in grid:
        cfg = dataclasses.replace(render, search="coarse", coarse_stride=stride, fine_margin=margin, fine_tau=k_tau)
        t0 = time.perf_counter()
        r = search_agreement(field, origins, dirs, masks, cfg, tau, params)
        r.update(stride=stride, margin=margin, fine_tau=k_tau, seconds=time.perf_counter() - t0)
        rows.append(r)
        print(f"{stride:6d} {margin:6g} {k_tau:5g} | {r['refined_share']:.3f} | {r['same_argmin']:.4f} / {r['same_argmin_near_surface']:.4f} | "
              f"{r['min_sdf_err_over_tau_mean']:.4f} {r['min_sdf_err_over_tau_p99']:.3f} "
              f"{r['min_sdf_err_over_tau_near_max']:.3f} | {r['loss_rel_diff']:.2e} | "
              f"{r['grad_rel_diff']:.2e} {r['grad_cosine']:.5f} | {r['seconds']:.1f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"source": str(args.run or 'analytic shapes'), "tau": tau, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
