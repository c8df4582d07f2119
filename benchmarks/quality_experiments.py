"""3-D quality experiments: frame, training signals, data scale, test-time refinement.

Each variant is the `quick` preset (Stage 1 only: CNN encoder + SDF decoder) with `--set`
overrides, trained into OUT/<variant>/ and evaluated with `evaluate_run` (the same code as
`flowsdf eval`): held-out input / novel-view IoU, 3-D volumetric IoU, Chamfer-L1, F-score, and
the training time. Every variant shares the held-out set (its shapes and renders do not depend
on the number of training shapes). The driver is resumable: a finished variant is skipped, an
unfinished one resumes from its last epoch checkpoint; results go to OUT/results.json and a
Markdown table OUT/results.md after every variant.

    PYTHONPATH=$PWD python benchmarks/quality_experiments.py --out outputs/quality --only view-50 world-50
    PYTHONPATH=$PWD python benchmarks/quality_experiments.py --list
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from flowsdf import overrides, runs
from flowsdf.checkpoint import atomic_write_text
from flowsdf.config import quick_preset
from flowsdf.evaluate import refined_predictor
from flowsdf.metrics.shapes import evaluate_shapes
from flowsdf.metrics.views import evaluate_views, predict_codes
from flowsdf.pipeline import FlowSDF
from flowsdf.train.stage1 import train_stage1

VIEW = ["frame=view"]
# name -> (--set overrides on the quick preset, what it tests)
VARIANTS: dict[str, tuple[list[str], str]] = {
    "world-50": ([], "quick Stage 1 as it is (world frame)"),
    "view-50": (VIEW, "view frame"),
    "view-50-eik": (VIEW + ["stage1.sdfsrn.eikonal_weight=0.1"], "view frame + eikonal term"),
    "view-50-bg": (VIEW + ["stage1.sdfsrn.bg_bound_weight=1.0"], "view frame + background lower bound"),
    "view-50-eik-bg": (VIEW + ["stage1.sdfsrn.eikonal_weight=0.1", "stage1.sdfsrn.bg_bound_weight=1.0"], "view frame + both"),
    # Data scale at (about) the quick image budget per shape count: epochs shrink as shapes grow.
    "view-200": (VIEW + ["data.n_train_shapes=200", "stage1.epochs=30"], "view frame, 200 shapes, 2x quick images"),
    "view-1000": (VIEW + ["data.n_train_shapes=1000", "stage1.epochs=8"], "view frame, 1000 shapes, 2.7x quick images"),
    # The data-scaling curve in the world frame (the view frame fails with one view: README).
    "world-200": (["data.n_train_shapes=200", "stage1.epochs=30"], "world frame, 200 shapes, 2x quick images"),
    "world-1000": (["data.n_train_shapes=1000", "stage1.epochs=12"],
                   "world frame, 1000 shapes x 12 epochs (the `shapes` preset's Stage 1), 4x quick images"),
    "world-5000": (["data.n_train_shapes=5000", "stage1.epochs=10"],
                   "world frame, 5000 shapes x 10 epochs, 17x quick images"),
    "world-mv3": (["data.train_views=3", "stage1.all_views=true", "stage1.epochs=60"],
                  "world frame, 3 supervising views per shape, quick's steps"),
    "world-mv3-200": (["data.n_train_shapes=200", "data.train_views=3", "stage1.all_views=true", "stage1.epochs=20"],
                      "world frame, 200 shapes x 3 supervising views x 20 epochs (12,000 images, the shapes preset's budget)"),
    "view-200-eik-bg": (VIEW + ["data.n_train_shapes=200", "stage1.epochs=30", "stage1.sdfsrn.eikonal_weight=0.1",
                                "stage1.sdfsrn.bg_bound_weight=1.0"], "view frame, 200 shapes, both terms"),
    # Short probes (16 epochs of 50 shapes = 800 image-steps, a quarter of quick's budget) for a
    # loaded 2-core CPU; the same comparisons at equal budget.
    "p-world": (["stage1.epochs=16"], "probe: world frame"),
    "p-view": (VIEW + ["stage1.epochs=16"], "probe: view frame"),
    "p-view-eik": (VIEW + ["stage1.epochs=16", "stage1.sdfsrn.eikonal_weight=0.1"], "probe: view + eikonal"),
    "p-view-bg": (VIEW + ["stage1.epochs=16", "stage1.sdfsrn.bg_bound_weight=1.0"], "probe: view + background bound"),
    "p-view-eik-bg": (VIEW + ["stage1.epochs=16", "stage1.sdfsrn.eikonal_weight=0.1", "stage1.sdfsrn.bg_bound_weight=1.0"],
                      "probe: view + eikonal + background bound"),
    "p-view-200": (VIEW + ["data.n_train_shapes=200", "stage1.epochs=4"], "probe: view, 200 shapes (same 800 images)"),
    # Multi-view supervision: 3 training views per shape, the code from the first one supervised by
    # all three; 5 epochs x 50 shapes x 3 views = 750 rendered images (the probes: 800).
    "p-view-mv3": (VIEW + ["data.train_views=3", "stage1.all_views=true", "stage1.epochs=5"],
                   "probe: view frame, 3 supervising views per shape"),
    "p-world-mv3": (["data.train_views=3", "stage1.all_views=true", "stage1.epochs=5"],
                    "probe: world frame, 3 supervising views per shape"),
    "p-world-mv3-e16": (["data.train_views=3", "stage1.all_views=true", "stage1.epochs=16"],
                        "probe: world frame, 3 supervising views per shape, the probes' 112 steps (2,400 images)"),
    "p-world-eik-bg": (["stage1.epochs=16", "stage1.sdfsrn.eikonal_weight=0.1", "stage1.sdfsrn.bg_bound_weight=1.0"],
                       "probe: world + eikonal + background bound"),
    "p-world-eik": (["stage1.epochs=16", "stage1.sdfsrn.eikonal_weight=0.1"], "probe: world + eikonal"),
    "p-world-bg": (["stage1.epochs=16", "stage1.sdfsrn.bg_bound_weight=1.0"], "probe: world + background bound"),
    "p-world-200": (["data.n_train_shapes=200", "stage1.epochs=4"], "probe: world, 200 shapes (same 800 images)"),
}


def light_eval(run_dir: Path, refine: int = 0, device: str = "cpu") -> dict:
    """The figures the comparison needs, with the same code as `flowsdf eval` (evaluate_views,
    evaluate_shapes at resolution 64) but 3-D metrics on the held-out shapes only and no timing:
    on the shared 2-core CPU the training shapes' 3-D metrics cost more than a probe's training."""
    pipe = FlowSDF.from_run(run_dir, "cnn", device=device)
    cfg = pipe.cfg
    data = runs.run_data(cfg, run_dir, None).to(pipe.device)
    predict = pipe.predictor()
    if refine > 0:
        predict = refined_predictor(pipe, predict, refine)
    ev = lambda split, group: evaluate_views(predict, pipe.decoder, split, group, cfg.render, pipe.tau, cfg.seed)  # noqa: E731
    out = {"refine_steps": refine, "heldout_input": ev(data.heldout, "input"), "heldout_novel": ev(data.heldout, "novel")}
    if refine == 0:  # refinement is scored on held-out shapes only (the training shapes cost 2.5x more)
        out.update(train_views=ev(data.train, "input"), novel_views=ev(data.train, "novel"))
    out["heldout_3d"] = evaluate_shapes(pipe.decoder, predict_codes(predict, data.heldout, cfg.seed), data.heldout.shapes,
                                        bound_radius=cfg.render.bound_radius, resolution=64, progress=False)
    return out


def result_row(name: str, ev: dict, training_seconds: float, images_per_s: float, refined: dict | None, device: str) -> dict:
    h = ev["heldout_3d"]["mean"]
    row = {
        "variant": name, "overrides": VARIANTS[name][0], "what": VARIANTS[name][1],
        "train_iou": ev["train_views"]["iou"], "novel_iou": ev["novel_views"]["iou"],
        "heldout_input_iou": ev["heldout_input"]["iou"], "heldout_novel_iou": ev["heldout_novel"]["iou"],
        "heldout_3d_iou": h["volumetric_iou"], "heldout_chamfer": h["chamfer_l1"], "heldout_fscore": h["fscore"],
        "training_seconds": training_seconds, "images_per_s_median": images_per_s,
        "device": device,
    }
    if refined is not None:
        hr = refined["heldout_3d"]["mean"]
        row["refined"] = {
            "steps": refined["refine_steps"], "heldout_input_iou": refined["heldout_input"]["iou"],
            "heldout_novel_iou": refined["heldout_novel"]["iou"], "heldout_3d_iou": hr["volumetric_iou"],
            "heldout_chamfer": hr["chamfer_l1"], "heldout_fscore": hr["fscore"],
        }
    return row


def device_label(device: str) -> str:
    """What the results table names as the device: the GPU's name, or the CPU's core count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU, {torch.get_num_threads()} threads"


def fmt(value: float | None, spec: str) -> str:
    """A table cell: the number, or a dash where there is none (an empty mesh has no Chamfer distance)."""
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    """One row per variant; then, for view-frame variants, the same held-out figures after refinement."""
    lines = [
        "| variant | what | train-view IoU | novel-view IoU (train shapes) | held-out IoU input / novel "
        "| held-out 3-D IoU | Chamfer-L1 | F@0.02 | training time (img/s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['what']} | {r['train_iou']:.3f} | {r['novel_iou']:.3f} | {r['heldout_input_iou']:.3f} / "
            f"{r['heldout_novel_iou']:.3f} | {r['heldout_3d_iou']:.3f} | {fmt(r['heldout_chamfer'], '.4f')} | "
            f"{r['heldout_fscore']:.3f} | {r['training_seconds'] / 60:.1f} min ({r['images_per_s_median']:.2f}) |"
        )
    refined = [r for r in rows if r.get("refined")]
    if refined:
        lines += ["", "| variant | refinement steps | held-out IoU input / novel | held-out 3-D IoU | Chamfer-L1 | F@0.02 |",
                  "|---|---|---|---|---|---|"]
        for r in refined:
            f = r["refined"]
            lines.append(f"| {r['variant']} | {f['steps']} | {f['heldout_input_iou']:.3f} / {f['heldout_novel_iou']:.3f} | "
                         f"{f['heldout_3d_iou']:.3f} | {fmt(f['heldout_chamfer'], '.4f')} | {f['heldout_fscore']:.3f} |")
    return "\n".join(lines) + "\n"


def run_variant(name: str, out: Path, refine: int, device: str) -> dict:
    run_dir = out / name
    cfg = overrides.apply(quick_preset(), VARIANTS[name][0])
    resume = runs.checkpoint_path(run_dir, "stage1").is_file()
    if not (run_dir / "stage1" / "summary.json").exists():
        train_stage1(cfg, run_dir, resume=resume, progress=False, device=device)
    (run_dir / "eval").mkdir(exist_ok=True)
    ev = light_eval(run_dir, device=device)
    atomic_write_text(run_dir / "eval" / "light.json", json.dumps(ev, indent=2))
    refined = None
    if refine > 0:
        refined = light_eval(run_dir, refine, device)
        atomic_write_text(run_dir / "eval" / f"light_refine{refine}.json", json.dumps(refined, indent=2))
    metrics = runs.read_metrics(run_dir, "stage1")
    speeds = sorted(r["images_per_s"] for r in metrics)
    return result_row(name, ev, sum(r["seconds"] for r in metrics), speeds[len(speeds) // 2], refined, device_label(device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/quality"))
    p.add_argument("--only", nargs="+", help="variants to run, in this order (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refine", type=int, default=20, help="refinement steps also scored (world frame: from the searched camera, FlowSDF.input_camera; 0: off)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training and evaluation)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--collect", action="store_true", help="only rebuild results.json / results.md")
    args = p.parse_args()
    if args.collect:
        print(collect(args.out))
        return
    if args.list:
        for name, (sets, what) in VARIANTS.items():
            print(f"{name:18s} {what}: {' '.join(sets) or '(none)'}")
        return
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(VARIANTS):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; see --list")
        done = args.out / name / "result.json"
        if done.exists():
            print(f"{name}: done ({done})")
            continue
        lock = args.out / name / "driver.pid"
        if lock.exists() and Path(f"/proc/{lock.read_text().strip()}").exists():
            print(f"{name}: another driver is running it (pid {lock.read_text().strip()}); skipped")
            continue
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
        print(f"{name}: training + evaluating ...", flush=True)
        atomic_write_text(done, json.dumps(run_variant(name, args.out, args.refine, args.device), indent=2))
        lock.unlink()
        print(collect(args.out), flush=True)


def collect(out: Path) -> str:
    """Gather every finished variant's result.json into OUT/results.json and OUT/results.md (several
    drivers may run at once: each writes only its own variants' files)."""
    rows = [json.loads((out / n / "result.json").read_text()) for n in VARIANTS if (out / n / "result.json").exists()]
    for r in rows:
        r.setdefault("what", VARIANTS[r["variant"]][1])
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    table = markdown(rows)
    atomic_write_text(out / "results.md", table)
    return table

if __name__ == "__main__":
    main()
