"""The `flowsdf` command line. Each subcommand is a function of parsed args; `main(argv)` returns
an exit status so tests can call it directly. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowsdf import config as config_mod
from flowsdf.errors import FlowSDFError
from flowsdf.runs import ensure_writable

STAGES = ("cnn", "flow")


def cmd_data(args: argparse.Namespace) -> int:
    from flowsdf.data import dataset

    cfg = config_mod.preset(args.preset)
    if args.seed is not None:
        cfg.data.seed = args.seed
    root = Path(args.out) if args.out else dataset.default_root(cfg.data)
    if dataset.is_current(cfg.data, root) and not args.force:
        print(f"dataset up to date: {root}")
        return 0
    dataset.check_replaceable(root)
    ensure_writable(root)
    dataset.generate(cfg.data, root, progress=not args.quiet)
    data = dataset.load(root)
    print(f"wrote {root}: {len(data.train)} training shapes x {cfg.data.train_views} view(s), "
          f"{len(data.heldout)} held-out shapes, {cfg.data.novel_views} novel views each, "
          f"{cfg.data.image_size}x{cfg.data.image_size}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from flowsdf import train

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
    if args.stage == "cnn":
        summary = train.train_stage1(cfg, Path(args.out), args.data, args.resume, not args.quiet, args.device, args.until_epoch)
    else:
        if args.init is None:
            raise FlowSDFError("--stage flow needs --init STAGE1_RUN_DIR (a finished `--stage cnn` run)")
        summary = train.train_flow(cfg, Path(args.out), args.init, args.data, args.resume, not args.quiet,
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


def cmd_check_grads(args: argparse.Namespace) -> int:
    from flowsdf.gradcheck import check_grads

    if args.batch is not None and args.batch < 1:
        raise FlowSDFError("--batch must be at least 1")
    r = check_grads(Path(args.run), args.data, args.device, args.batch)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0 if r["all_nonzero"] else 1
    print(f"checkpoint {r['checkpoint']}  batch {r['batch']}  loss {r['loss']:.5f}  device {r['device']}")
    for name, norm in r["grad_norm"].items():
        print(f"  grad norm {name:<12} {norm:12.4f}")
    print(f"  forward {r['forward_ms']:.1f} ms   backward {r['backward_ms']:.1f} ms")
    print("all parts receive gradient" if r["all_nonzero"] else "SOME PART RECEIVES NO GRADIENT")
    return 0 if r["all_nonzero"] else 1


def cmd_eval(args: argparse.Namespace) -> int:
    from flowsdf.eval_run import evaluate_run, markdown_tables, write

    if args.k < 1:
        raise FlowSDFError("--k must be at least 1")
    if args.mesh_resolution < 8:
        raise FlowSDFError("--mesh-resolution must be at least 8")
    out = Path(args.out) if args.out else Path(args.run) / "eval" / "eval.json"
    if out.is_dir():
        raise FlowSDFError(f"--out {out} is a folder; give a file name such as {out / 'eval.json'}")
    ensure_writable(out.parent)
    result = evaluate_run(Path(args.run), args.data, args.device, args.k, args.mesh_resolution, progress=not args.quiet)
    write(result, out)
    print(markdown_tables(result))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from flowsdf.reproduce import reproduce

    out = Path(args.out) if args.out else Path("runs") / f"reproduce-{args.preset}"
    report = reproduce(args.preset, out, args.device, not args.quiet)
    print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowsdf",
        description="Image-to-3-D without 3-D supervision: neural SDFs trained from 2-D silhouettes.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    presets = ", ".join(config_mod.PRESETS)

    d = sub.add_parser("data", help="generate the synthetic dataset (cached by config)",
                       description="Render procedural analytic-SDF shapes into a dataset folder.")
    d.add_argument("--preset", default="quick", help=f"config preset ({presets}); default quick")
    d.add_argument("--out", help="dataset folder (default: data_cache/shapes-<config hash>)")
    d.add_argument("--seed", type=int, help="data seed (default: the preset's)")
    d.add_argument("--force", action="store_true", help="regenerate even if the cached dataset is current")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_data)

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
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("check-grads", help="one backward pass through the whole Flow-SDF chain",
                       description="Report each trainable part's gradient norm and forward/backward times.")
    g.add_argument("run", type=Path, help="a run folder with a Stage-2 checkpoint")
    g.add_argument("--data", type=Path, help="dataset folder (default: the run's cached dataset)")
    g.add_argument("--batch", type=int, help="images in the batch (default: Phase 2's batch size)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda ...")
    g.add_argument("--json", action="store_true", help="print the result as JSON")
    g.set_defaults(func=cmd_check_grads)

    e = sub.add_parser("eval", help="2-D and 3-D metrics and timings of a trained run",
                       description="Evaluate every finished model of a run on training views, novel views and "
                                   "held-out shapes; write JSON (per-shape too) and a Markdown table.")
    e.add_argument("run", type=Path, help="a run folder")
    e.add_argument("--out", type=Path, help="JSON file to write (default: RUN/eval/eval.json; .md beside it)")
    e.add_argument("--data", type=Path, help="dataset folder (default: the run's cached dataset)")
    e.add_argument("--k", type=int, default=4, help="flow samples per image for best-of-K / mean-of-K (default 4)")
    e.add_argument("--mesh-resolution", type=int, default=64, help="marching-cubes grid for 3-D metrics (default 64)")
    e.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda ...")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("reproduce", help="data -> Stage 1 -> Stage 2 -> eval -> report.md (resumable)",
                       description="Regenerate the published table and figures; rerun the same command to continue.")
    r.add_argument("--preset", default="quick", help=f"config preset ({presets}); default quick")
    r.add_argument("--out", type=Path, help="run folder (default: runs/reproduce-PRESET)")
    r.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda ...")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FlowSDFError as e:
        print(f"flowsdf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flowsdf: interrupted; finished epochs are saved: continue with `train ... --resume`, "
              "or rerun the same `reproduce` command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
