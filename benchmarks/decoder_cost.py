"""Cost per point of the 5 x 330 DeepSDF decoder against the triplane decoder, on the CPU.

Both decoders are evaluated through their renderer fast path, `decoder.field(codes)(points, 0)`:
one code, all points sharing it (int item), as the renderer's search calls them. The default
batch is one 64 x 64 image x 32 samples per ray = 131,072 points, uniform in [-0.9, 0.9]^3.

    forward           the field built and evaluated under torch.no_grad (the renderer's search)
    forward+backward  the same with autograd, then .backward() of the sum into the parameters
                      and the code (one training step's decoder work for these points)
    setup             building the field alone (the triplane's per-code upsampler; ~0 for the MLP)

Times are medians of --repeats after one warm-up, in wall seconds, and with --threads 1 also in the
process's CPU seconds, which stay close to the unloaded time when other jobs share the machine.
Prints a table; --out writes the figures as JSON.

    python benchmarks/decoder_cost.py --threads 1 [--points 131072] [--repeats 3] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flowsdf.models.sdf import DecoderConfig, SDFDecoder
from flowsdf.models.triplane import TriplaneConfig, TriplaneDecoder


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `repeats` calls of fn, after one untimed call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def measure(decoder: torch.nn.Module, code: torch.Tensor, points: torch.Tensor, repeats: int) -> dict[str, float]:
    """Wall and CPU seconds of setup, forward and forward+backward for one code (1, *shape) and points (P, 3)."""

    def setup() -> None:
        with torch.no_grad():
            decoder.field(code)

    def forward() -> None:
        with torch.no_grad():
            decoder.field(code)(points, 0)

    def forward_backward() -> None:
        decoder.zero_grad(set_to_none=True)
        code.grad = None
        decoder.field(code)(points, 0).sum().backward()

    out = {}
    for name, fn in (("setup", setup), ("forward", forward), ("forward_backward", forward_backward)):
        out[f"{name}_s"], out[f"{name}_cpu_s"] = timed(fn, repeats)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=64 * 64 * 32, help="points per evaluation (default 131072)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--combine", choices=("sum", "concat"), default="sum", help="triplane feature combination")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    points = torch.rand(args.points, 3) * 1.8 - 0.9  # (P, 3)
    mlp = SDFDecoder(DecoderConfig())
    tri = TriplaneDecoder(TriplaneConfig(combine=args.combine))
    decoders = {
        "SDFDecoder 5x330": (mlp, (torch.randn(1, mlp.cfg.latent_dim) * 0.05).requires_grad_(True)),
        f"TriplaneDecoder ({args.combine})": (tri, (torch.randn(1, *tri.latent_shape) * 0.05).requires_grad_(True)),
    }
    results = {}
    for name, (decoder, code) in decoders.items():
        r = measure(decoder, code, points, args.repeats)
        r["parameters"] = sum(q.numel() for q in decoder.parameters())
        r["latent_numbers"] = code[0].numel()
        results[name] = r

    print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.points:,} points, "
          f"median of {args.repeats}; wall s (CPU s); per point in us")
    print(f"{'decoder':26s} {'params':>8s} {'setup':>15s} {'forward':>15s} {'fwd+bwd':>15s} {'fwd/pt':>7s} {'f+b/pt':>7s}")
    def cell(r: dict, k: str) -> str:
        return f"{r[k + '_s']:.3f} ({r[k + '_cpu_s']:.3f})"

    def per(r: dict, k: str) -> str:
        return f"{1e6 * r[k + '_s'] / args.points:.2f}"

    for name, r in results.items():
        print(f"{name:26s} {r['parameters']:8,d} {cell(r, 'setup'):>15s} {cell(r, 'forward'):>15s} "
              f"{cell(r, 'forward_backward'):>15s} {per(r, 'forward'):>7s} {per(r, 'forward_backward'):>7s}")
    (a, ra), (b, rb) = results.items()
    ratios = {f"{k}{t}": ra[f"{k}{t}"] / rb[f"{k}{t}"] for k in ("forward", "forward_backward") for t in ("_s", "_cpu_s")}
    print(f"{a} / {b}: forward {ratios['forward_s']:.1f}x (CPU {ratios['forward_cpu_s']:.1f}x), "
          f"forward+backward {ratios['forward_backward_s']:.1f}x (CPU {ratios['forward_backward_cpu_s']:.1f}x)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"points": args.points, "threads": torch.get_num_threads(), "repeats": args.repeats,
                "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
        args.out.write_text(json.dumps({"config": meta, "results": results, "ratios": ratios}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
