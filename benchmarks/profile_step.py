"""Where one Stage-1 training step at seed settings spends its time, section by section.

    python benchmarks/profile_step.py [--batch 8] [--threads 1,2] [--search coarse] [--dtype bfloat16]

Sections: encoder forward; the no-grad argmin search; the gradient pass (decoder at each ray's
argmin point + BCE); backward; Adam. Random images, a fresh model, a disc as the silhouette.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from torch.nn import functional as F

from flowsdf.build import build_stage1
from flowsdf.config import preset
from flowsdf.render.cameras import camera_rays
from flowsdf.render.rays import MISS_SDF, sphere_rays
from flowsdf.render.search import search_rays
from flowsdf.render.silhouette import silhouette_logits
from flowsdf.speed.bench import _train_inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--search", default="coarse")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = preset("seed")
    rc = dataclasses.replace(cfg.render, search=args.search, search_dtype=args.dtype)
    encoder, decoder = build_stage1(cfg)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-6)
    images, K, c2w, masks = _train_inputs(cfg, args.batch, torch.device("cpu"))
    o_all, d_all = camera_rays(K, c2w, cfg.data.image_size)  # (B, R, 3)
    B, R, _ = o_all.shape
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        sums: dict[str, list[float]] = {}
        for rep in range(args.repeats + 1):
            t = {}
            t0 = time.perf_counter()
            codes = encoder(images)  # (B, D)
            t["encoder fwd"] = time.perf_counter()
            field = decoder.field(codes)
            rays = sphere_rays(o_all, d_all, rc)
            best = search_rays(field, rays, rc, 0.01).best
            t["search (no grad)"] = time.perf_counter()
            min_sdf = rays.image(field(rays.at(best), rays.item), MISS_SDF)
            loss = F.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, 0.01), masks.reshape(B, -1))
            t["grad pass fwd"] = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t["backward"] = time.perf_counter()
            opt.step()
            t["adam"] = time.perf_counter()
            if rep == 0:
                continue  # warm-up
            prev = t0
            for k, v in t.items():
                sums.setdefault(k, []).append(v - prev)
                prev = v
        total = sum(min(v) for v in sums.values())
        print(f"threads {threads}, batch {B}, {rc.search} search in {rc.search_dtype}: step {total * 1e3:.0f} ms "
              f"({B / total:.2f} images/s, best of {args.repeats} per section)")
        for k, v in sums.items():
            print(f"  {k:18s} {min(v) * 1e3:8.1f} ms  {100 * min(v) / total:5.1f} %")


if __name__ == "__main__":
    main()
