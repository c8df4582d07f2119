"""`flowsdf bench`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf.cli.options import BENCH_BATCH, THREADS, add_device, check_range


def add_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="speed figures of this device: training step, flow latency, meshing",
                       description="Time the training step at seed settings (naive graph, exhaustive argmin search "
                                   "in float32 / bfloat16, coarse-to-fine search), conditioner + flow latency at "
                                   "batch 1 and 64 for 1/2/4/8 steps, and mesh extraction at 128^3; print a table "
                                   "and optionally write JSON.")
    add_device(b)
    b.add_argument("--out", type=Path, metavar="FILE.json", help="write the figures as JSON")
    b.add_argument("--run", type=Path, help="time the training step with this Stage-1 run's weights and config")
    b.add_argument("--batch", type=int, help=f"training-step batch, {BENCH_BATCH[0]} to {BENCH_BATCH[1]:,} (default 8, the seed's)")
    b.add_argument("--threads", type=int, help=f"CPU threads for torch, {THREADS[0]} to {THREADS[1]:,} (default: torch's choice)")
    b.add_argument("--quick", action="store_true", help="tiny models and sizes, one repeat: seconds, for tests")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from flowsdf.device import pick_device
    from flowsdf.runs import clean_temporaries_of, ensure_writable
    from flowsdf.speed.bench import BenchSettings, quick_settings, run_bench, table

    check_range("--threads", args.threads, *THREADS)
    check_range("--batch", args.batch, *BENCH_BATCH)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = quick_settings() if args.quick else BenchSettings()
    if args.batch is not None:
        settings.batch = args.batch
    if args.out is not None:
        ensure_writable(args.out.parent)
        clean_temporaries_of([args.out])
    result = run_bench(settings, pick_device(args.device), args.run)
    print(table(result))
    if args.out is not None:
        from flowsdf.checkpoint import write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0
