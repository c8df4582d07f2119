"""Renderer throughput: naive all-samples graph vs argmin-exact fast path (float32 / bfloat16 search).

One training step's renderer work (forward + backward of the silhouette BCE) for a batch of
images, with the published decoder size. Prints images per second and the device.

    python benchmarks/render_speed.py [--size 64] [--samples 48] [--batch 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from flowsdf.data import cameras
from flowsdf.eval.timing import device_name
from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.render.silhouette import RenderConfig, render_min_sdf, silhouette_logits


def step(decoder: SDFDecoder, z: torch.Tensor, o, d, target, cfg: RenderConfig) -> None:
    decoder.zero_grad(set_to_none=True)
    logits = silhouette_logits(render_min_sdf(decoder.field(z), o, d, cfg), 0.01)
    F.binary_cross_entropy_with_logits(logits, target).backward()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=48)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    dev = torch.device(args.device)

    torch.manual_seed(0)
    decoder = SDFDecoder(DecoderConfig()).to(dev)
    z = (torch.randn(args.batch, 128) * 0.05).to(dev).requires_grad_(True)
    K = torch.tensor(cameras.intrinsics(args.size, 40.0)).float().expand(args.batch, 3, 3)
    pos = cameras.random_viewpoints(np.random.default_rng(0), args.batch, 2.5)
    c2w = torch.stack([torch.tensor(cameras.look_at(x)).float() for x in pos])
    o, d = (t.to(dev) for t in cameras.camera_rays(K, c2w, args.size))
    target = (torch.rand(o.shape[:2], generator=torch.Generator().manual_seed(1)) > 0.8).float().to(dev)

    print(f"device: {device_name(dev)}  images {args.size}x{args.size}, {args.samples} samples/ray, batch {args.batch}")
    variants = {
        "naive (all samples in the graph)": RenderConfig(n_samples=args.samples, naive=True),
        "fast, float32 search (exact)": RenderConfig(n_samples=args.samples),
        "fast, bfloat16 search": RenderConfig(n_samples=args.samples, search_dtype="bfloat16"),
    }
    for name, cfg in variants.items():
        step(decoder, z, o, d, target, cfg)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            step(decoder, z, o, d, target, cfg)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        per_image = (time.perf_counter() - t0) / (args.repeats * args.batch)
        print(f"  {name:<36} {1.0 / per_image:8.2f} images/s  ({1000 * per_image:.0f} ms/image)")


if __name__ == "__main__":
    main()
