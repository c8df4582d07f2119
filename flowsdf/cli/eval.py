"""`flowsdf eval`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf.cli.options import (
    GUIDANCE,
    MESH_RESOLUTION,
    REFINE_STEPS,
    SAMPLES,
    add_device,
    add_sampling,
    check_range,
    check_sampling,
)
from flowsdf.errors import FlowSDFError
from flowsdf.runs import clean_temporaries_of, ensure_writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="2-D and 3-D metrics and timings of a trained run",
                       description="Evaluate every finished model of a run on training views, novel views and "
                                   "held-out shapes; write JSON (per-shape too) and a Markdown table.")
    e.add_argument("run", type=Path, help="a run folder")
    e.add_argument("--out", type=Path, help="JSON file to write (default: RUN/eval/eval.json; .md beside it)")
    e.add_argument("--data", type=Path, help="dataset folder (default: the run's cached dataset)")
    e.add_argument("--k", type=int, default=4,
                   help=f"flow samples per image for best-of-K / mean-of-K, {SAMPLES[0]} to {SAMPLES[1]:,} (default 4)")
    e.add_argument("--mesh-resolution", type=int,
                   help=f"marching-cubes grid for 3-D metrics, {MESH_RESOLUTION[0]} to {MESH_RESOLUTION[1]:,} "
                        "(default: the run's eval.mesh_resolution)")
    e.add_argument("--guidance", type=float, metavar="W",
                   help=f"classifier-free guidance of the flow's samples, {GUIDANCE[0]} to {GUIDANCE[1]} "
                        "(1 = none; default: the run's flow.guidance)")
    add_sampling(e)
    e.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="fit each predicted code for STEPS steps to the input picture's mask before scoring, "
                        f"{REFINE_STEPS[0]} to {REFINE_STEPS[1]:,} (default 0)")
    add_device(e)
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.evaluate import evaluate_run, markdown_tables, write

    check_range("--k", args.k, *SAMPLES)
    check_range("--mesh-resolution", args.mesh_resolution, *MESH_RESOLUTION)
    check_range("--refine", args.refine, *REFINE_STEPS)
    check_range("--guidance", args.guidance, *GUIDANCE)
    check_sampling(args)
    out = Path(args.out) if args.out else Path(args.run) / "eval" / "eval.json"
    if out.is_dir():
        raise FlowSDFError(f"--out {out} is a folder; give a file name such as {out / 'eval.json'}")
    ensure_writable(out.parent)
    clean_temporaries_of([out, out.with_suffix(".md")])  # what a killed earlier eval left
    result = evaluate_run(Path(args.run), args.data, args.device, args.k, args.mesh_resolution, progress=not args.quiet,
                          refine=args.refine, guidance=args.guidance, temperature=args.temperature,
                          consistency=args.consistency)
    write(result, out)
    print(markdown_tables(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
