"""Stage-1 training-step throughput over the GPU path's choices, and a profile of one step.

    python benchmarks/step_throughput.py --device cuda --out outputs/throughput.json [--budget-s 120]
    python benchmarks/step_throughput.py --dry-run --out /tmp/throughput.json   # tiny, CPU, seconds

Images per second of one optimiser step at the seed's settings (64x64, 48 samples per ray: the
encoder, the no-grad search, the gradient pass, BCE, backward, clipping, Adam), for each decoder
(mlp, triplane), search (exhaustive, coarse, static) in each search precision (float32, bfloat16,
and tf32 on CUDA), and batch (8, 64, 256); on CUDA the static search also with the whole step
captured in one CUDA graph (train/graphed.py). Random images, a disc as the silhouette, fresh
weights (the coarse search's worst case: a fresh decoder is near zero everywhere).

The profile: torch.profiler over a few steps of one variant (default the graph-captured static
search at batch 8 on CUDA): the top kernels by device time, kernel launches per step, and the
share of the step's wall time the device is idle (launch and host overhead).

Rows are written to the JSON as they are measured; --budget-s stops the grid (not a row) once
that much time has passed, so a short GPU window keeps whatever it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from flowsdf.build import build_stage1
from flowsdf.checkpoint import write_json
from flowsdf.config import Config, preset
from flowsdf.data.dataset import Views
from flowsdf.device import device_name
from flowsdf.render.silhouette import render_views, silhouette_logits
from flowsdf.speed.bench import _train_inputs
from flowsdf.speed.timing import time_call
from flowsdf.train.graphed import GraphedStep, make_capturable

TAU = 0.01


@dataclasses.dataclass(frozen=True)
class Variant:
    decoder: str  # decoder.kind
    search: str  # render.search
    dtype: str  # render.search_dtype
    graph: bool  # the whole step in one CUDA graph
    batch: int

    @property
    def name(self) -> str:
        return f"{self.decoder}/{self.search}_{self.dtype}{'+graph' if self.graph else ''}/b{self.batch}"


def variants(device: torch.device, batches: list[int], decoders: list[str]) -> list[Variant]:
    cuda = device.type == "cuda"
    searches = [("exhaustive", "float32"), ("exhaustive", "bfloat16"), ("coarse", "float32"), ("coarse", "bfloat16"),
                ("static", "float32"), ("static", "bfloat16")]
    if cuda:  # TF32 is float32 on a CPU
        searches += [("exhaustive", "tf32"), ("static", "tf32")]
    out = []
    for decoder in decoders:
        for batch in batches:
            out += [Variant(decoder, s, d, False, batch) for s, d in searches]
            if cuda:
                out += [Variant(decoder, "static", d, True, batch) for d in ("float32", "tf32", "bfloat16")]
    return out


def variant_config(base: Config, v: Variant) -> Config:
    cfg = dataclasses.replace(base, render=dataclasses.replace(base.render, search=v.search, search_dtype=v.dtype))
    cfg.decoder = dataclasses.replace(cfg.decoder, kind=v.decoder)
    return cfg


def make_step(cfg: Config, v: Variant, device: torch.device):
    """A no-argument function that takes one optimiser step on a fixed random batch."""
    torch.manual_seed(0)
    encoder, decoder = (m.to(device) for m in build_stage1(cfg))
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-6)
    images, K, c2w, masks = _train_inputs(cfg, v.batch, device)
    batch = Views(images, masks, K, c2w, torch.zeros(v.batch, 3, device=device))
    size = images.shape[-1]

    def loss_of(views: Views, tau) -> torch.Tensor:
        min_sdf = render_views(decoder.field(encoder(views.images)), views.K, views.c2w, size, cfg.render, TAU)
        return F.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, tau), views.masks)

    if v.graph:
        make_capturable(optimizer, device)
        graphed = GraphedStep(loss_of, params, optimizer, 1.0, batch)
        return lambda: graphed.step(batch, TAU, [1e-6])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(batch, TAU).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def measure(cfg: Config, v: Variant, device: torch.device, repeats: int) -> dict[str, Any]:
    step = make_step(cfg, v, device)
    t = time_call(step, repeats=repeats, warmup=2, device=device)
    return {**dataclasses.asdict(v), "images_per_s": v.batch / (t["mean_ms"] / 1e3),
            "best_images_per_s": v.batch / (t["min_ms"] / 1e3), **t}


def profile_step(cfg: Config, v: Variant, device: torch.device, steps: int = 5, top: int = 15) -> dict[str, Any]:
    """torch.profiler over `steps` steps after a warm-up: top kernels (or CPU ops) by time, kernel
    launches per step, and how much of a step's wall time the device spends idle."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(cfg, v, device)
    for _ in range(3):
        step()
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        key = "self_device_time_total" if hasattr(kernels[0], "self_device_time_total") else "self_cuda_time_total"
    else:
        kernels = list(events)
        key = "self_cpu_time_total"
    kernels.sort(key=lambda e: getattr(e, key), reverse=True)
    busy = sum(getattr(e, key) for e in kernels) / steps / 1e6 if cuda else None
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    graph_launches = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    return {
        "variant": v.name,
        "steps": steps,
        "step_wall_ms": wall * 1e3,
        "device_busy_ms": busy * 1e3 if busy is not None else None,
        # The share of the step with no kernel running: launch latency and host work.
        "device_idle_share": (1 - busy / wall) if busy is not None else None,
        "kernel_launches_per_step": launches / steps,
        "graph_launches_per_step": graph_launches / steps,
        "top": [{"name": e.key[:120], "ms_per_step": getattr(e, key) / steps / 1e3, "calls_per_step": e.count / steps}
                for e in kernels[:top]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("outputs/step_throughput.json"))
    p.add_argument("--batches", default="8,64,256")
    p.add_argument("--decoders", default="mlp,triplane")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=0, help="stop the grid after this many seconds (0: no limit)")
    p.add_argument("--profile", default="", help="the variant to profile, e.g. mlp/static_tf32+graph/b8 "
                                                 "('' = that one on CUDA, mlp/static_float32/b<first batch> elsewhere)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--dry-run", action="store_true", help="the tiny preset on the CPU, batches 2 and 4, one repeat")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.dry_run else args.device)
    base = preset("tiny" if args.dry_run else "seed")
    batches = [2, 4] if args.dry_run else [int(b) for b in args.batches.split(",")]
    repeats = 1 if args.dry_run else args.repeats
    grid = variants(device, batches, args.decoders.split(","))
    record: dict[str, Any] = {"device": device_name(device), "torch": torch.__version__, "preset": base.preset,
                              "image_size": base.data.image_size, "n_samples": base.render.n_samples,
                              "rows": [], "skipped": []}
    t0 = time.perf_counter()
    for v in grid:
        if args.budget_s and time.perf_counter() - t0 > args.budget_s:
            record["skipped"].append(v.name)
            continue
        row = measure(variant_config(base, v), v, device, repeats)
        record["rows"].append(row)
        print(f"{v.name:40s} {row['images_per_s']:10.1f} images/s  ({row['mean_ms']:.2f} ms/step)", flush=True)
        write_json(args.out, record)
    wanted = args.profile or (f"mlp/static_tf32+graph/b{batches[0]}" if device.type == "cuda"
                              else f"mlp/static_float32/b{batches[0]}")
    target = next((v for v in grid if v.name == wanted), None)
    if target is None:
        raise SystemExit(f"no variant named {wanted!r}; choose one of: {', '.join(v.name for v in grid)}")
    record["profile"] = profile_step(variant_config(base, target), target, device)
    prof = record["profile"]
    print(f"profile of {prof['variant']}: {prof['step_wall_ms']:.2f} ms/step, "
          f"{prof['kernel_launches_per_step']:.0f} kernel launches/step"
          + (f", device idle {100 * prof['device_idle_share']:.0f} %" if prof["device_idle_share"] is not None else ""))
    for k in prof["top"][:8]:
        print(f"  {k['ms_per_step']:8.3f} ms  x{k['calls_per_step']:.0f}  {k['name']}")
    record["seconds"] = time.perf_counter() - t0
    write_json(args.out, record)
    if record["skipped"]:
        print(f"budget reached: {len(record['skipped'])} variants not measured (listed in {args.out})")


if __name__ == "__main__":
    main()
