"""`flowsdf check-grads`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf.cli.options import GRAD_BATCH, add_device, check_range


def add_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("check-grads", help="one backward pass through the whole Flow-SDF chain",
                       description="Report each trainable part's gradient norm and forward/backward times.")
    g.add_argument("run", type=Path, help="a run folder with a Stage-2 checkpoint")
    g.add_argument("--data", type=Path, help="dataset folder (default: the run's cached dataset)")
    g.add_argument("--batch", type=int,
                   help=f"images in the batch, {GRAD_BATCH[0]} to {GRAD_BATCH[1]:,} (default: Phase 2's batch size)")
    add_device(g)
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.checkpoint import strict_json
    from flowsdf.train.gradcheck import check_grads

    check_range("--batch", args.batch, *GRAD_BATCH)
    r = check_grads(Path(args.run), args.data, args.device, args.batch)
    if args.json:
        print(strict_json(r))
        return 0 if r["all_nonzero"] else 1
    print(f"checkpoint {r['checkpoint']}  batch {r['batch']}  loss {r['loss']:.5f}  device {r['device']}")
    for name, norm in r["grad_norm"].items():
        print(f"  grad norm {name:<12} {norm:12.4f}")
    print(f"  forward {r['forward_ms']:.1f} ms   backward {r['backward_ms']:.1f} ms")
    print("all parts receive gradient" if r["all_nonzero"] else "SOME PART RECEIVES NO GRADIENT")
    return 0 if r["all_nonzero"] else 1
