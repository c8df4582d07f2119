"""Does the triplane decoder's analytic sphere term (TriplaneConfig.sphere_radius) help fitting?

Each of --shapes random shapes (flowsdf.data.shapes) is fitted from its silhouettes alone, as the
project trains: a latent triplane and a fresh TriplaneDecoder, jointly, by Adam on the silhouette
BCE through the differentiable renderer (tau annealed 0.05 -> 0.01), from --views random views.
Arms differ only in --radii (0 = no sphere term; > 0 = the term on, output layer zero-initialised,
so the fit starts from that sphere). Reported per arm: silhouette IoU on the training views and on
--heldout views, and volumetric IoU (the inside sets' IoU at 100 k points in the ball of radius
0.9), means over shapes, after each of --eval-at steps and at the end (how fast, and how well).
Same seeds, views and initial code for every arm.

    python benchmarks/triplane_sphere_prior.py --threads 1 [--shapes 3] [--steps 150] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flowsdf.data import shapes
from flowsdf.models.triplane import TriplaneConfig, TriplaneDecoder
from flowsdf.render.cameras import camera_rays, intrinsics, look_at, random_viewpoints
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_min_sdf, silhouette_logits


def views(rng: np.random.Generator, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays (n, size^2, 3) of n random cameras at distance 2.5, field of view 40 degrees."""
    K = torch.tensor(intrinsics(size, 40.0)).float().expand(n, 3, 3)
    c2w = torch.stack([torch.tensor(look_at(p)).float() for p in random_viewpoints(rng, n, 2.5)])
    return camera_rays(K, c2w, size)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def evaluate(decoder: TriplaneDecoder, code: torch.Tensor, spec, rays: dict, masks: dict, cfg: RenderConfig) -> dict:
    """Silhouette IoU of each view set in `rays` against `masks`, and volumetric IoU."""
    out = {}
    with torch.no_grad():
        for name, r in rays.items():
            field = decoder.field(code.detach().expand(r[0].shape[0], *decoder.latent_shape))
            out[f"{name}_iou"] = iou(render_min_sdf(field, *r, cfg) < 0, masks[name])
        g = torch.Generator().manual_seed(0)
        d = torch.randn(100_000, 3, generator=g)
        pts = 0.9 * d / d.norm(dim=-1, keepdim=True) * torch.rand(100_000, 1, generator=g) ** (1 / 3)
        out["volume_iou"] = iou(decoder.field(code.detach())(pts, 0) < 0, shapes.sdf(spec, pts) < 0)
    return out


def fit(spec, radius: float, rays_train, rays_test, args) -> dict:
    """Fit one shape with one sphere radius; the metrics at each of args.eval_at steps."""
    torch.manual_seed(args.seed)
    truth = lambda p, item: shapes.sdf(spec, p)
    cfg = RenderConfig(n_samples=args.samples)
    rays = {"train": rays_train, "heldout": rays_test}
    with torch.no_grad():
        masks = {k: render_min_sdf(truth, *r, RenderConfig(n_samples=128)) < 0 for k, r in rays.items()}
    decoder = TriplaneDecoder(TriplaneConfig(sphere_radius=radius))
    code = (0.01 * torch.randn(1, *decoder.latent_shape)).requires_grad_(True)
    opt = torch.optim.Adam([code, *decoder.parameters()], lr=args.lr)
    V = rays_train[0].shape[0]
    target = masks["train"].float()  # (V, S*S)
    seconds, results = 0.0, {}
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        tau = 0.05 * (0.01 / 0.05) ** ((step - 1) / max(1, args.steps - 1))
        field = decoder.field(code.expand(V, *decoder.latent_shape))  # one code seen by V cameras
        logits = silhouette_logits(render_min_sdf(field, *rays_train, cfg, tau), tau)  # (V, S*S)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds += time.perf_counter() - start
        if step in args.eval_at or step == args.steps:
            results[step] = {**evaluate(decoder, code, spec, rays, masks, cfg), "loss": float(loss.detach()),
                             "seconds": seconds}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=int, default=3)
    p.add_argument("--views", type=int, default=8, help="training views per shape")
    p.add_argument("--heldout", type=int, default=4, help="held-out views per shape")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--samples", type=int, default=32, help="samples per ray")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-at", type=int, nargs="+", default=[10, 25, 50, 100], help="also evaluate after these steps")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(args.seed)
    specs = shapes.random_shapes(args.shapes, args.seed)
    cams = [(views(rng, args.views, args.size), views(rng, args.heldout, args.size)) for _ in specs]
    rows: dict[str, list[dict]] = {}
    for radius in args.radii:
        for i, (spec, (tr, te)) in enumerate(zip(specs, cams)):
            r = fit(spec, radius, tr, te, args)
            rows.setdefault(str(radius), []).append({"shape": i, "family": shapes.family(spec), "at_step": r})
            last = r[args.steps]
            print(f"radius {radius}: shape {i} ({shapes.family(spec)}) "
                  + " ".join(f"{k} {v:.3f}" for k, v in last.items()), flush=True)
    print(f"\n{args.shapes} shapes, {args.views} views of {args.size}^2, {args.samples} samples, {args.steps} steps, "
          f"{torch.get_num_threads()} thread(s); means over shapes:")
    print(f"{'sphere_radius':>13s} {'step':>5s} {'train IoU':>10s} {'held-out IoU':>13s} {'volume IoU':>11s} {'s':>7s}")
    means: dict[str, dict] = {}
    for radius, rs in rows.items():
        for step in sorted(rs[0]["at_step"]):
            m = {k: float(np.mean([r["at_step"][step][k] for r in rs]))
                 for k in ("train_iou", "heldout_iou", "volume_iou", "seconds")}
            means.setdefault(radius, {})[step] = m
            print(f"{radius:>13s} {step:5d} {m['train_iou']:10.3f} {m['heldout_iou']:13.3f} "
                  f"{m['volume_iou']:11.3f} {m['seconds']:7.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "out"},
                                        "per_shape": rows, "means": means}, indent=2, default=str) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
