"""`flowsdf data`."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.cli.options import WORKERS, check_range
from flowsdf.runs import ensure_writable


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = ", ".join(config_mod.PRESETS)
    d = sub.add_parser("data", help="generate the synthetic dataset (cached by config)",
                       description="Render procedural analytic-SDF shapes into a dataset folder.")
    d.add_argument("--preset", default="quick", help=f"config preset ({presets}); default quick")
    d.add_argument("--out", help="dataset folder (default: data_cache/shapes-<config hash>)")
    d.add_argument("--seed", type=int, help="data seed, an integer >= 0 (default: the preset's); alias of --set data.seed=N")
    d.add_argument("--force", action="store_true", help="regenerate even if the cached dataset is current")
    d.add_argument("--workers", type=int, default=1,
                   help=f"render in this many processes, {WORKERS[0]} to {WORKERS[1]:,} (default 1; the files are the same "
                        "for any number)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    overrides.add_argument(d)
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.data import dataset

    check_range("--workers", args.workers, *WORKERS)
    seed = [] if args.seed is None else [f"data.seed={args.seed}"]  # checked like any config field
    # e.g. --set data.n_train_shapes=5000, as `train` takes it
    cfg = overrides.apply(config_mod.preset(args.preset), seed + args.overrides)
    root = Path(args.out) if args.out else dataset.default_root(cfg.data)
    if dataset.is_current(cfg.data, root) and not args.force:
        print(f"dataset up to date: {root}")
        return 0
    ensure_writable(root)
    dataset.check_replaceable(root)
    dataset.generate(cfg.data, root, progress=not args.quiet, workers=args.workers)
    data = dataset.load(root)
    print(f"wrote {root}: {len(data.train)} training shapes x {cfg.data.train_views} view(s), "
          f"{len(data.heldout)} held-out shapes, {cfg.data.novel_views} novel views each, "
          f"{cfg.data.image_size}x{cfg.data.image_size}")
    return 0
