"""`flowsdf train`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from flowsdf import config as config_mod
from flowsdf import overrides, runs
from flowsdf.cli.options import EPOCHS, THREADS, add_device, check_range
from flowsdf.errors import FlowSDFError

STAGES = ("cnn", "flow", "text")


def add_parser(sub: argparse._SubParsersAction) -> None:
    presets = ", ".join(config_mod.PRESETS)
    t = sub.add_parser("train", help="train a stage", description="Train one stage into a run folder (resumable).")
    t.add_argument("--stage", required=True, choices=STAGES,
                   help="cnn = Stage 1, Mini SDF-SRN; flow = Stage 2, Flow-SDF (Phase 1 distillation, then Phase 2); "
                        "text = a text-conditioned flow over the Stage-1 codes (text to 3-D, `flowsdf generate`)")
    t.add_argument("--init", type=Path, metavar="STAGE1_RUN_DIR",
                   help="with --stage flow or text: the finished Stage-1 run to start from (may equal --out)")
    t.add_argument("--preset", help=f"config preset ({presets}); default quick, and with --stage flow or text the "
                                    "Stage-1 run's own settings; ignored with --resume")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--data", type=Path, help="dataset folder (default: the preset's cached dataset, made if missing)")
    t.add_argument("--resume", action="store_true",
                   help="continue from the run's last checkpoint (with --stage flow, before Phase 2 begins, "
                        "--set phase1.iterations=N lengthens Phase 1)")
    # Shortcuts for the most common --set items, nothing more: each is recorded in config.json
    # as the --set it stands for (the trained phase is stage1 for --stage cnn, phase2 for flow).
    t.add_argument("--epochs", type=int, metavar="N", help="alias of --set PHASE.epochs=N (PHASE: stage1, or phase2 "
                                                           "with --stage flow)")
    t.add_argument("--batch-size", type=int, metavar="N",
                   help="alias of --set PHASE.batch_size=N; under torchrun the global batch, split over the processes")
    t.add_argument("--rgb-weight", metavar="LAMBDA",
                   help="alias of --set PHASE.rgb_weight=LAMBDA (Stage 3: LAMBDA x shaded-RGB L1 inside the mask "
                        "beside the silhouette BCE; 0 = silhouette only)")
    t.add_argument("--compile", action="store_true",
                   help="alias of --set render.compile=true, with --stage cnn (torch.compile the decoder for the "
                        "renderer in this run's Stage 1 and the Stage 2 that continues it; GPUs; adds compile time)")
    t.add_argument("--seed", type=int, help="alias of --set seed=N")
    t.add_argument("--until-epoch", type=int, metavar="N",
                   help=f"stop after epoch N, {EPOCHS[0]} to {EPOCHS[1]:,} (schedules unchanged); continue later with --resume")
    add_device(t)
    t.add_argument("--threads", type=int, help=f"CPU threads for torch, {THREADS[0]} to {THREADS[1]:,} (default: torch's choice)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    overrides.add_argument(t)
    t.set_defaults(func=run)


def parse_rgb_weight(text: str) -> float:
    """--rgb-weight: a finite number >= 0, else one clear error."""
    try:
        weight = float(text)
    except ValueError:
        raise FlowSDFError(f"--rgb-weight must be a number >= 0, got {text!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise FlowSDFError(f"--rgb-weight must be a number >= 0, got {text!r}")
    return weight


def alias_overrides(args: argparse.Namespace) -> list[str]:
    """The --set items the shortcut flags stand for (before the user's own --set, which wins)."""
    phase = "stage1" if args.stage == "cnn" else "phase2"
    if args.stage == "text" and any(getattr(args, a) not in (None, False) for a in
                                    ("epochs", "batch_size", "rgb_weight", "compile", "seed")):
        raise FlowSDFError("--stage text takes its settings with --set text_train.KEY=VALUE (iterations, batch_size, lr ...)")
    items = []
    if args.epochs is not None:
        items.append(f"{phase}.epochs={args.epochs}")
    if args.batch_size is not None:
        items.append(f"{phase}.batch_size={args.batch_size}")
    if args.rgb_weight is not None:
        items.append(f"{phase}.rgb_weight={json.dumps(parse_rgb_weight(args.rgb_weight))}")
    if args.compile:
        if args.stage != "cnn":
            raise FlowSDFError("--compile is a Stage-1 option: Stage 2 keeps the renderer settings of its Stage-1 run")
        items.append("render.compile=true")
    if args.seed is not None:
        items.append(f"seed={args.seed}")
    return items


def run(args: argparse.Namespace) -> int:
    from flowsdf.train.flow import train_flow
    from flowsdf.train.stage1 import train_stage1
    from flowsdf.train.text import train_text

    check_range("--threads", args.threads, *THREADS)
    check_range("--until-epoch", args.until_epoch, *EPOCHS)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    args.overrides = alias_overrides(args) + args.overrides
    cfg = set_overrides(base_config(args), args)  # checked like a config file
    stage = "stage1" if args.stage == "cnn" else "phase2"
    before = runs.checkpoint_epoch(Path(args.out), stage) if args.resume else None
    if args.stage == "text":
        if args.init is None:
            raise FlowSDFError("--stage text needs --init STAGE1_RUN_DIR (a finished `--stage cnn` run)")
        summary = train_text(cfg, Path(args.out), args.init, args.data, args.resume, not args.quiet, args.device)
        print(f"text flow: {summary['iterations']} iterations on {summary['captions']} captions of {summary['shapes']} "
              f"shapes; last velocity loss {summary['last_velocity_loss']:.5f}")
        return 0
    if args.stage == "cnn":
        summary = train_stage1(cfg, Path(args.out), args.data, args.resume, not args.quiet, args.device, args.until_epoch)
    else:
        if args.init is None:
            raise FlowSDFError("--stage flow needs --init STAGE1_RUN_DIR (a finished `--stage cnn` run)")
        longer = cfg.phase1.iterations if args.resume and "phase1.iterations" in overrides.keys(args.overrides) else None
        summary = train_flow(cfg, Path(args.out), args.init, args.data, args.resume, not args.quiet,
                             args.device, args.until_epoch, phase1_iterations=longer)
    from flowsdf.train import distributed

    if not distributed.is_main():  # rank 0 reports for all processes
        return 0
    if summary is None:
        init = f" --init {args.init}" if args.stage == "flow" else ""
        after = runs.checkpoint_epoch(Path(args.out), stage)
        total = getattr(runs.read_config(Path(args.out)), stage).epochs
        done = (f"nothing to train: {stage} is already at epoch {after} of {total}, not before --until-epoch "
                f"{args.until_epoch}" if after == before else f"stopped after epoch {after} of {total}")
        print(f"{done}; continue with: flowsdf train --stage {args.stage}{init} --out {args.out} --resume")
        return 0
    print(json.dumps({k: v for k, v in summary.items() if k in ("stage", "epochs", "train_loss_last_epoch", "device")}))
    print(f"train views: BCE {summary['train_views']['bce']:.5f}  IoU {summary['train_views']['iou']:.3f} | "
          f"novel views: BCE {summary['novel_views']['bce']:.5f}  IoU {summary['novel_views']['iou']:.3f}")
    return 0


def base_config(args: argparse.Namespace) -> config_mod.Config:
    """What `--set` applies to: the named preset; without one, Stage 2 and the text flow continue
    the Stage-1 run with the settings it recorded (its preset's Phase 2, e.g. all_views for
    `views`), and Stage 1 starts from `quick`."""
    if args.preset is not None:
        return config_mod.preset(args.preset)
    if args.stage in ("flow", "text") and args.init is not None and not args.resume:
        return runs.read_config(Path(args.init))
    return config_mod.preset("quick")


def lengthening(args: argparse.Namespace) -> tuple[str, ...]:
    """The --set keys a resumed run may change: Phase 1's length, until Phase 2 begins (train_flow checks)."""
    return ("phase1.iterations",) if args.stage == "flow" else ()


def set_overrides(cfg: config_mod.Config, args: argparse.Namespace) -> config_mod.Config:
    """Apply `--set`; a resumed run must already have those values, and Stage 2 takes every
    section but its own from the Stage-1 run."""
    cfg = overrides.apply(cfg, args.overrides)
    if args.overrides and args.resume:
        fixed = [item for item, key in zip(args.overrides, overrides.keys(args.overrides)) if key not in lengthening(args)]
        overrides.check_recorded(runs.read_config(Path(args.out)), fixed, args.out)
    elif args.stage in ("flow", "text"):
        own = runs.STAGE2_FIELDS if args.stage == "flow" else runs.TEXT_FIELDS
        fixed = [k for k in overrides.keys(args.overrides) if k.split(".")[0] not in own]
        if fixed:
            raise FlowSDFError(f"--set {fixed[0]}: this stage takes it from its Stage-1 run; with --stage {args.stage} "
                               f"only {', '.join(own)} can be set")
    return cfg
