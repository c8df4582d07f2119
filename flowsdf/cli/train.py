"""`flowsdf train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.errors import FlowSDFError

STAGES = ("cnn", "flow")


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = ", ".join(config_mod.PRESETS)
    t = sub.add_parser("train", help="train a stage", description="Train one stage into a run folder (resumable).")
    t.add_argument("--stage", required=True, choices=STAGES,
                   help="cnn = Stage 1, Mini SDF-SRN; flow = Stage 2, Flow-SDF (Phase 1 distillation, then Phase 2)")
    t.add_argument("--init", type=Path, metavar="STAGE1_RUN_DIR",
                   help="with --stage flow: the finished Stage-1 run to start from (may equal --out)")
    t.add_argument("--preset", default="quick", help=f"config preset ({presets}); default quick; ignored with --resume")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--data", type=Path, help="dataset folder (default: the preset's cached dataset, made if missing)")
    t.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    t.add_argument("--epochs", type=int, help="override the preset's epochs (Stage 1, or Phase 2 with --stage flow); ignored with --resume")
    t.add_argument("--seed", type=int, help="override the training seed; ignored with --resume")
    t.add_argument("--until-epoch", type=int, metavar="N",
                   help="stop after epoch N (schedules unchanged); continue later with --resume")
    t.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
    t.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    overrides.add_argument(t)
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.train.flow import train_flow
    from flowsdf.train.stage1 import train_stage1

    if args.threads is not None:
        if args.threads < 1:
            raise FlowSDFError("--threads must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    cfg = config_mod.preset(args.preset)
    if args.seed is not None:
        cfg.seed = args.seed
    if args.until_epoch is not None and args.until_epoch < 1:
        raise FlowSDFError("--until-epoch must be at least 1")
    if args.epochs is not None:
        if args.epochs < 1:
            raise FlowSDFError("--epochs must be at least 1")
        if args.stage == "cnn":
            cfg.stage1.epochs = args.epochs
        else:
            cfg.phase2.epochs = args.epochs
    cfg = set_overrides(cfg, args)
    if args.stage == "cnn":
        summary = train_stage1(cfg, Path(args.out), args.data, args.resume, not args.quiet, args.device, args.until_epoch)
    else:
        if args.init is None:
            raise FlowSDFError("--stage flow needs --init STAGE1_RUN_DIR (a finished `--stage cnn` run)")
        summary = train_flow(cfg, Path(args.out), args.init, args.data, args.resume, not args.quiet,
                                   args.device, args.until_epoch)
    if summary is None:
        init = f" --init {args.init}" if args.stage == "flow" else ""
        print(f"stopped after epoch {args.until_epoch}; continue with: "
              f"flowsdf train --stage {args.stage}{init} --out {args.out} --resume")
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k in ("stage", "epochs", "train_loss_last_epoch", "device")}))
    print(f"train views: BCE {summary['train_views']['bce']:.5f}  IoU {summary['train_views']['iou']:.3f} | "
          f"novel views: BCE {summary['novel_views']['bce']:.5f}  IoU {summary['novel_views']['iou']:.3f}")
    return 0


def set_overrides(cfg: config_mod.Config, args: argparse.Namespace) -> config_mod.Config:
    """Apply `--set`; a resumed run must already have those values, and Stage 2 takes every
    section but its own from the Stage-1 run."""
    from flowsdf import runs

    cfg = overrides.apply(cfg, args.overrides)
    if args.overrides and args.resume:
        overrides.check_recorded(runs.read_config(Path(args.out)), args.overrides, args.out)
    elif args.stage == "flow":
        fixed = [k for k in overrides.keys(args.overrides) if k.split(".")[0] not in runs.STAGE2_FIELDS]
        if fixed:
            raise FlowSDFError(f"--set {fixed[0]}: Stage 2 takes this from its Stage-1 run; with --stage flow only "
                               f"{', '.join(runs.STAGE2_FIELDS)} can be set")
    return cfg
