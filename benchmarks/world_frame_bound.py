"""How well can any single-picture method score in the world frame? An upper bound on held-out
3-D volumetric IoU for this dataset.

The dataset turns every shape by a uniformly random rotation and places the camera at a random
viewpoint (uniform azimuth, elevation in [-20, 60] degrees, looking at the origin with the world's
z up). The picture fixes the shape relative to its camera, but nothing in it tells which of those
viewpoints it was taken from: for every camera C of the prior, the world turned by M = R_C R_in^T
(R the cameras' rotations) shows the same picture from C. So even a predictor that knew the shape
exactly in its camera's frame could only guess the world-frame shape among {M S}, equally likely.

For each held-out shape this script samples K such rotations, forms the occupancy probability
p(x) = mean_k [M_k S](x) < 0, predicts the set {p > t}, and scores its expected IoU against fresh
draws of M (the truth is one of them): the best any world-frame prediction can expect, up to the
choice of set (superlevel sets of p are the natural candidates). The IoU is the evaluation's:
the same Monte Carlo points in [-1, 1]^3 (`flowsdf.metrics.volumetric_iou`'s seed).

    PYTHONPATH=$PWD python benchmarks/world_frame_bound.py [--preset quick] [--k 128]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from flowsdf import config as config_mod
from flowsdf.data import dataset, shapes
from flowsdf.render import cameras

THRESHOLDS = torch.linspace(0.05, 0.95, 19)


def rotations(rng: np.random.Generator, k: int, distance: float) -> torch.Tensor:
    """(k, 3, 3) rotations of k cameras drawn from the dataset's viewpoint prior."""
    return torch.tensor(np.stack([cameras.look_at(p)[:3, :3] for p in cameras.random_viewpoints(rng, k, distance)]),
                        dtype=torch.float32)


def occupancy(spec: shapes.Spec, turns: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(k, P) bool: inside of the shape turned by each M in turns (k, 3, 3), at points (P, 3)."""
    # [M S](x) = S(M^T x); rows of (x @ M) are M^T x.
    return torch.stack([shapes.sdf(spec, points @ m) < 0 for m in turns])


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU along the last axis of two bool tensors (empty union counts as 1)."""
    union = (a | b).sum(-1)
    return torch.where(union > 0, (a & b).sum(-1) / union.clamp(min=1), torch.ones_like(union, dtype=torch.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--k", type=int, default=128, help="rotations that form p(x)")
    p.add_argument("--k-eval", type=int, default=64, help="fresh rotations that score it")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args()
    cfg = config_mod.preset(args.preset).data
    data = dataset.ensure(cfg, dataset.default_root(cfg), progress=False)
    split = data.heldout
    gen = torch.Generator().manual_seed(0)  # the evaluation's volume points
    points = torch.rand(args.points, 3, generator=gen) * 2 - 1  # (P, 3)
    rng = np.random.default_rng(0)
    rows = []
    for i, spec in enumerate(split.shapes):
        r_in = split.input.c2w[i, 0, :3, :3]  # (3, 3) the picture's camera
        turns = rotations(rng, args.k, cfg.cam_distance) @ r_in.T  # (k, 3, 3): M = R_C R_in^T
        fresh = rotations(rng, args.k_eval, cfg.cam_distance) @ r_in.T
        prob = occupancy(spec, turns, points).float().mean(0)  # (P,)
        truths = occupancy(spec, fresh, points)  # (k_eval, P)
        actual = shapes.sdf(spec, points) < 0  # (P,) the shape as it really stands
        expected = torch.stack([iou(prob > t, truths).mean() for t in THRESHOLDS])  # (T,)
        vs_actual = torch.stack([iou(prob > t, actual) for t in THRESHOLDS])  # (T,)
        rows.append({"family": shapes.family(spec), "expected": expected.tolist(), "vs_actual": vs_actual.tolist()})
        best = int(expected.argmax())
        print(f"{i:2d} {shapes.family(spec):14s} best expected IoU {expected[best]:.3f} at t={THRESHOLDS[best]:.2f}", flush=True)
    expected = torch.tensor([r["expected"] for r in rows])  # (N, T)
    vs_actual = torch.tensor([r["vs_actual"] for r in rows])
    t = int(expected.mean(0).argmax())
    summary = {
        "shapes": len(rows), "k": args.k, "k_eval": args.k_eval, "points": args.points,
        "best_threshold": float(THRESHOLDS[t]),
        "expected_iou_one_threshold": float(expected[:, t].mean()),
        "expected_iou_best_threshold_per_shape": float(expected.max(1).values.mean()),
        "iou_vs_actual_shape_one_threshold": float(vs_actual[:, t].mean()),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
