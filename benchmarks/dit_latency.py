"""Batch-1 latency of image -> condition tokens -> 8 Euler steps of the DiT velocity, on the CPU.

Cases (default sizes, random weights, every zero-initialised layer moved off zero so the numbers
are those of a trained net):
    dit 1x512 / dit 64x256      8 velocity calls alone, the condition re-projected at every step
    ... prepared                the same with DiTVelocity.prepare once before the loop
    cnn + dit 1x512             ImageConditioner (64 px, one token of 512) + prepare + 8 steps
    vit + dit 64x256            ViTConditioner (64 px, 64 tokens of 256) + prepare + 8 steps
    cnn + mlp velocity          today's pipeline (VelocityNet), for comparison
    dinov2-s 224                a DINOv2-Small forward at 224 px (random weights, transformers)
For each thread count: median and minimum wall milliseconds over --repeats runs after --warmup,
and the median CPU milliseconds of the process (with one thread it stays near the unloaded time
when other jobs share the machine; with two it adds both threads up).

    python benchmarks/dit_latency.py [--threads 1 2] [--repeats 200] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from flowsdf.flow import euler_sample
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.dit import DiTVelocity
from flowsdf.models.velocity import VelocityNet
from flowsdf.models.vit import ViTConditioner

STEPS = 8


def trained_looking(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, 0.02)
    return module.eval()


def measure(fn, warmup: int, repeats: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"median_ms": 1e3 * statistics.median(wall), "min_ms": 1e3 * min(wall),
            "cpu_median_ms": 1e3 * statistics.median(cpu)}


def cases() -> dict[str, object]:
    torch.manual_seed(0)
    z0 = torch.randn(1, 128)
    image = torch.rand(1, 3, 64, 64)
    dit512 = trained_looking(DiTVelocity(latent_shape=(128,), cond_dim=512))
    dit256 = trained_looking(DiTVelocity(latent_shape=(128,), cond_dim=256))
    cnn, vit, mlp = trained_looking(ImageConditioner()), trained_looking(ViTConditioner()), trained_looking(VelocityNet())
    c512, c256 = torch.randn(1, 1, 512), torch.randn(1, 64, 256)
    out = {
        "dit 1x512": lambda: euler_sample(dit512, z0, c512, STEPS),
        "dit 1x512 prepared": lambda: euler_sample(dit512, z0, dit512.prepare(c512), STEPS),
        "dit 64x256": lambda: euler_sample(dit256, z0, c256, STEPS),
        "dit 64x256 prepared": lambda: euler_sample(dit256, z0, dit256.prepare(c256), STEPS),
        "cnn + dit 1x512": lambda: euler_sample(dit512, z0, dit512.prepare(cnn(image)), STEPS),
        "vit + dit 64x256": lambda: euler_sample(dit256, z0, dit256.prepare(vit(image)), STEPS),
        "cnn + mlp velocity": lambda: euler_sample(mlp, z0, cnn(image), STEPS),
    }
    try:
        from transformers import Dinov2Config, Dinov2Model
    except ImportError:
        return out
    dino = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    patch_size=14, image_size=518)).eval()
    pixels = torch.randn(1, 3, 224, 224)
    out["dinov2-s 224"] = lambda: dino(pixel_values=pixels).last_hidden_state
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    fns = cases()
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, fn in fns.items():
                repeats = max(10, args.repeats // 10) if name.startswith("dinov2") else args.repeats
                r = measure(fn, min(args.warmup, repeats), repeats)
                results.setdefault(name, {})[str(threads)] = r
                print(f"{threads} thread(s)  {name:22s} median {r['median_ms']:7.2f} ms  min {r['min_ms']:7.2f} ms  "
                      f"cpu {r['cpu_median_ms']:7.2f} ms", flush=True)
    print(f"load average {os.getloadavg()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "load_average": os.getloadavg(), "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
