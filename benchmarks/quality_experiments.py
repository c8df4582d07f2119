"""3-D quality experiments: Stage-1 recipes trained and scored on the same held-out shapes.

Each variant is a preset's Stage 1 (encoder + SDF decoder) with `--set` overrides, trained into
OUT/<variant>/ and scored with the code of `flowsdf eval` (evaluate_views, evaluate_shapes):
held-out input / novel-view IoU, 3-D volumetric IoU, Chamfer-L1, F-score at 1 % and 2 % of the
cube's side, the normal consistency of box faces, and the training time; beside them the
retrieval baseline on the same data (flowsdf.metrics.retrieval: the training shape whose input
silhouette is nearest). Variants of one dataset share its held-out shapes. Resumable: a finished
variant is skipped, an unfinished one resumes from its last epoch; results go to OUT/results.json
and a Markdown table OUT/results.md after every variant (several drivers may run at once).

    python benchmarks/quality_experiments.py --out outputs/quality --only views-mlp views-triplane
    python benchmarks/quality_experiments.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from flowsdf import config as config_mod
from flowsdf import overrides, runs
from flowsdf.checkpoint import atomic_write_text
from flowsdf.data import shapes
from flowsdf.device import device_name
from flowsdf.evaluate import refined_predictor
from flowsdf.mesh.extract import extract_mesh
from flowsdf.metrics.retrieval import retrieval_baseline
from flowsdf.metrics.shapes import evaluate_shapes
from flowsdf.metrics.views import evaluate_views, predict_codes
from flowsdf.pipeline import FlowSDF
from flowsdf.train.stage1 import train_stage1

VIEW = ["frame=view"]
TRIPLANE = ["decoder.kind=triplane"]
# name -> (base preset, --set overrides, what it tests)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    # The view frame with three supervising views per shape (the `views` preset's data), global code
    # against triplane; epochs chosen for about equal training time on the 2-core CPU.
    "views-mlp": ("views", [], "view frame, 1000 x 3 views: CNN -> 128-d code -> 5x330 MLP (the views preset's Stage 1)"),
    "views-triplane": ("views", TRIPLANE, "the same data: U-Net -> latent triplane 3x8x16^2 -> 32x64^2 planes + MLP"),
    "views-triplane-long": ("views", TRIPLANE + ["stage1.epochs=16"], "triplane, twice the epochs"),
    # Measured on the 2-core CPU (1 thread, one views Stage-1 step of 8 shapes x 3 views): MLP 2.5 s,
    # triplane 32 x 64^2 planes 3.0 s (grid_sample's backward dominates), 16 x 64^2 planes 1.0 s.
    # At 16 epochs this one trains in about the MLP's 8 epochs' time.
    "views-triplane-c16": ("views", TRIPLANE + ["decoder.triplane.channels=16", "decoder.triplane.upsampler_channels=16",
                                                "stage1.epochs=16"],
                           "triplane with 16-channel 64^2 planes, 16 epochs (about the MLP's time)"),
    "views-triplane-c16-e8": ("views", TRIPLANE + ["decoder.triplane.channels=16", "decoder.triplane.upsampler_channels=16",
                                                   "stage1.epochs=8"],
                              "the same at half the epochs: a point of the time curve"),
    # The quick preset's world frame, for the seed's protocol (one view per shape).
    "world-50": ("quick", [], "quick Stage 1 as it is (world frame)"),
    "world-1000": ("quick", ["data.n_train_shapes=1000", "stage1.epochs=12"], "world frame, 1000 shapes x 12 epochs"),
    "p-view": ("quick", VIEW + ["stage1.epochs=16"], "probe: view frame with one view per shape"),
    "p-view-mv3": ("quick", VIEW + ["data.train_views=3", "stage1.all_views=true", "stage1.epochs=5"],
                   "probe: view frame, 3 supervising views per shape"),
}


def box_normal_consistency(decoder, codes, specs, bound_radius: float, resolution: int = 64) -> float | None:
    """Mean |n_mesh . n_true| over the predicted mesh's vertices, for the box-shaped primitives only:
    1 when the faces are as flat as the box's, lower for a rounded blob. n_true is the analytic
    normal at the vertex (the gradient of the true SDF there). None when no box is among `specs`."""
    from flowsdf.fields import bounded, code_field
    from flowsdf.mesh.export import to_trimesh

    scores = []
    for code, spec in zip(codes, specs):
        if spec.get("kind") != "box":
            continue
        field = bounded(code_field(decoder, code), bound_radius)
        mesh = to_trimesh(*extract_mesh(field, resolution=resolution, device=code.device))
        if len(mesh.faces) == 0:
            scores.append(0.0)
            continue
        p = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32, requires_grad=True)
        (g,) = torch.autograd.grad(shapes.sdf(spec, p).sum(), p)
        true = torch.nn.functional.normalize(g, dim=-1)  # (V, 3)
        pred = torch.tensor(np.asarray(mesh.vertex_normals), dtype=torch.float32)  # (V, 3)
        scores.append((pred * true).sum(-1).abs().mean().item())
    return sum(scores) / len(scores) if scores else None


def light_eval(run_dir: Path, refine: int = 0, device: str = "cpu", model: str = "cnn", finished: bool = True,
               guidance: float | None = None) -> dict:
    """The figures the comparison needs, with the code of `flowsdf eval`: held-out shapes in full
    (2-D and 3-D at mesh resolution 64), training views' IoU on the first 200 training shapes.
    `model`, `finished`: as FlowSDF.from_run (a flow after Phase 1 only: "flow", finished=False);
    a flow's codes are one sample per picture (the seed's noise), at guidance W (None: the run's)."""
    pipe = FlowSDF.from_run(run_dir, model, device=device, finished=finished)
    cfg = pipe.cfg
    data = runs.run_data(cfg, run_dir, None).to(pipe.device)
    predict = pipe.predictor(guidance=guidance)
    if refine > 0:
        predict = refined_predictor(pipe, predict, refine)
    ev = lambda split, group: evaluate_views(predict, pipe.decoder, split, group, cfg.render, pipe.tau, cfg.seed)  # noqa: E731
    out = {"refine_steps": refine, "heldout_input": ev(data.heldout, "input"), "heldout_novel": ev(data.heldout, "novel")}
    codes = predict_codes(predict, data.heldout, cfg.seed)
    out["heldout_3d"] = evaluate_shapes(pipe.decoder, codes, data.heldout.shapes,
                                        bound_radius=cfg.render.bound_radius, resolution=64, progress=False)
    out["box_normal_consistency"] = box_normal_consistency(pipe.decoder, codes, data.heldout.shapes,
                                                           cfg.render.bound_radius)
    if refine == 0:
        from flowsdf.data.dataset import ShapeSplit, Views

        n = min(200, len(data.train))
        pick = lambda v: Views(*(x[:n] for x in (v.images, v.masks, v.K, v.c2w, v.light)))  # noqa: E731
        first = ShapeSplit(data.train.shapes[:n], data.train.albedo[:n], pick(data.train.input), pick(data.train.novel))
        out.update(train_views=ev(first, "input"), novel_views=ev(first, "novel"))
    return out


def retrieval(run_dir: Path, out: Path) -> dict:
    """The retrieval baseline of a variant's dataset (computed once per dataset, then cached)."""
    cfg = runs.read_config(run_dir)
    cache = out / f"retrieval-{cfg.data.hash()}-{cfg.frame}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    data = runs.run_data(cfg, run_dir, None)
    r = retrieval_baseline(data.train, data.heldout, resolution=64, samples=cfg.data.gt_samples)
    atomic_write_text(cache, json.dumps(r, indent=1))
    return r


def summary_row(name: str, ev: dict, base: dict, training_seconds: float, device: str) -> dict:
    h = ev["heldout_3d"]["mean"]
    preset, sets, what = VARIANTS[name]
    return {
        "variant": name, "preset": preset, "overrides": sets, "what": what, "device": device,
        "train_iou": ev["train_views"]["iou"], "novel_iou": ev["novel_views"]["iou"],
        "heldout_input_iou": ev["heldout_input"]["iou"], "heldout_novel_iou": ev["heldout_novel"]["iou"],
        "heldout_3d_iou": h["volumetric_iou"], "heldout_chamfer": h["chamfer_l1"], "fscore_1": h["fscore"],
        "fscore_2": h["fscore_2pct"], "box_normals": ev["box_normal_consistency"], "training_seconds": training_seconds,
        "retrieval": {"heldout_input_iou": base["heldout_input_iou"], "heldout_novel_iou": base["heldout_novel_iou"],
                      "heldout_3d_iou": base["mean"]["volumetric_iou"], "heldout_chamfer": base["mean"]["chamfer_l1"],
                      "fscore_1": base["mean"]["fscore"], "fscore_2": base["mean"]["fscore_2pct"]},
    }


def fmt(value: float | None, spec: str) -> str:
    """A table cell: the number, or a dash where there is none (an empty mesh has no Chamfer distance)."""
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | held-out IoU input / novel | held-out 3-D IoU | Chamfer-L1 | F@1% | F@2% | box normals "
             "| train-view IoU | training time |", "|---|---|---|---|---|---|---|---|---|"]
    bases = {}
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['heldout_input_iou']:.3f} / {r['heldout_novel_iou']:.3f} | {r['heldout_3d_iou']:.3f} | "
            f"{fmt(r['heldout_chamfer'], '.4f')} | {r['fscore_1']:.3f} | {r['fscore_2']:.3f} | {fmt(r['box_normals'], '.3f')} | "
            f"{r['train_iou']:.3f} | {r['training_seconds'] / 60:.1f} min |")
        bases[r["preset"]] = r["retrieval"]
    for preset, b in bases.items():
        lines.append(f"| retrieval ({preset} data) | {b['heldout_input_iou']:.3f} / {b['heldout_novel_iou']:.3f} | "
                     f"{b['heldout_3d_iou']:.3f} | {fmt(b['heldout_chamfer'], '.4f')} | {b['fscore_1']:.3f} | "
                     f"{b['fscore_2']:.3f} | - | - | - |")
    return "\n".join(lines) + "\n"


def run_variant(name: str, out: Path, device: str) -> dict:
    run_dir = out / name
    preset, sets, _ = VARIANTS[name]
    cfg = overrides.apply(config_mod.preset(preset), sets)
    resume = runs.checkpoint_path(run_dir, "stage1").is_file()
    if not (run_dir / "stage1" / "summary.json").exists():
        train_stage1(cfg, run_dir, resume=resume, progress=False, device=device)
    ev = light_eval(run_dir, device=device)
    (run_dir / "eval").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "eval" / "light.json", json.dumps(ev, indent=2))
    seconds = sum(r["seconds"] for r in runs.read_metrics(run_dir, "stage1"))
    return summary_row(name, ev, retrieval(run_dir, out), seconds, device_name(device))


def collect(out: Path) -> str:
    """Every finished variant's result.json into OUT/results.json and OUT/results.md."""
    rows = [json.loads((out / n / "result.json").read_text()) for n in VARIANTS if (out / n / "result.json").exists()]
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))
    table = markdown(rows)
    atomic_write_text(out / "results.md", table)
    return table


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/quality"), help="results folder (default outputs/quality)")
    p.add_argument("--only", nargs="+", help="variants to run, in this order (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (training and evaluation)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    p.add_argument("--collect", action="store_true", help="only rebuild results.json / results.md")
    args = p.parse_args()
    if args.list:
        for name, (preset, sets, what) in VARIANTS.items():
            print(f"{name:20s} {preset}: {what}; {' '.join(sets) or '(as it is)'}")
        return 0
    if args.collect:
        print(collect(args.out))
        return 0
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(VARIANTS):
        if name not in VARIANTS:
            print(f"unknown variant {name!r}; see --list", file=sys.stderr)
            return 2
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
        atomic_write_text(done, json.dumps(run_variant(name, args.out, args.device), indent=2))
        lock.unlink()
        print(collect(args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
