"""`flowsdf reproduce`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.cli.options import add_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = ", ".join(config_mod.PRESETS)
    r = sub.add_parser("reproduce", help="data -> Stage 1 -> Stage 2 -> eval -> report.md (resumable)",
                       description="Regenerate the published table and figures; rerun the same command to continue.")
    r.add_argument("--preset", default="quick", help=f"config preset ({presets}); default quick")
    r.add_argument("--out", type=Path, help="run folder (default: runs/reproduce-PRESET)")
    add_device(r)
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    overrides.add_argument(r)
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.reproduce import reproduce

    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{args.preset}"
    report = reproduce(args.preset, out, args.device, not args.quiet, args.overrides)
    print(f"report: {report}")
    return 0
