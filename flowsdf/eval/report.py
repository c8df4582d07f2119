"""`flowsdf reproduce`: data -> Stage 1 -> Stage 2 (Phase 1, Phase 2) -> eval -> report.md.

Every step is skipped when its output is already there and resumed when it was interrupted, so
rerunning the same command after a crash or Ctrl-C continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf import runs
from flowsdf.checkpoint import atomic_write_text
from flowsdf.data import dataset
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.eval.figures import loss_curves, mesh_gallery, sample_grid
from flowsdf.eval.run import (
    evaluate_run,
    load_models,
    markdown_tables,
    write,
)
from flowsdf.eval.shapes3d import gt_field
from flowsdf.eval.views import predict_codes
from flowsdf.mesh.extract import extract_mesh
from flowsdf.pipeline import FlowSDF
from flowsdf.runs import run_data
from flowsdf.train.flow import train_flow
from flowsdf.train.stage1 import train_stage1

# Marching-cubes resolution of the 3-D metrics per preset: 64 where a GPU or time allows;
# 32 keeps the quick report inside its CPU budget (see evaluate3d for what it changes).
EVAL_RESOLUTION = {"seed": 64, "quick": 32, "tiny": 16}


def _stage_state(run: Path, stage: str) -> str:
    """'done' (its summary.json is written last, after the final evaluation), 'partial' (a
    checkpoint exists: resume it, which also redoes an interrupted final evaluation) or 'new'."""
    if (run / stage / "summary.json").exists():
        return "done"
    return "partial" if runs.checkpoint_path(run, stage).exists() else "new"


def reproduce(
    preset: str, out: Path, device: str = "auto", progress: bool = True, set_items: list[str] | None = None
) -> Path:
    """Run (or continue) the whole protocol of `preset` into `out`; returns the report path.

    `set_items` are `--set KEY=VALUE` config overrides (flowsdf.overrides); a continued
    reproduction must have been started with the same values.
    """
    out = Path(out)
    runs.ensure_writable(out)
    cfg = overrides.apply(config_mod.preset(preset), set_items or [])
    if (out / "config.json").exists():
        if runs.read_config(out).preset != preset:
            raise FlowSDFError(f"{out} holds a reproduction of another preset; choose another --out")
        overrides.check_recorded(runs.read_config(out), set_items or [], str(out))
    t0 = time.perf_counter()
    data_root = dataset.default_root(cfg.data)
    dataset.ensure(cfg.data, data_root, progress)

    s1 = _stage_state(out, "stage1")
    if s1 != "done":
        train_stage1(cfg, out, data_root, resume=s1 == "partial", progress=progress, device=device)
    p2 = _stage_state(out, "phase2")
    if p2 != "done":
        resume = p2 == "partial" or runs.checkpoint_path(out, "phase1").exists()
        train_flow(cfg, out, out, data_root, resume=resume, progress=progress, device=device)

    eval_json = out / "eval" / "eval.json"
    if not eval_json.exists():
        result = evaluate_run(out, data_root, device, mesh_resolution=EVAL_RESOLUTION.get(preset, 64), progress=progress)
        write(result, eval_json)
    result = json.loads(eval_json.read_text())
    figures = make_figures(out, data_root, device, EVAL_RESOLUTION.get(preset, 64))
    report = out / "report.md"
    atomic_write_text(report, render_report(cfg, out, result, figures, time.perf_counter() - t0))
    return report


def make_figures(out: Path, data_root: Path, device: str, resolution: int) -> dict[str, str]:
    """Loss curves and a mesh gallery (prediction vs ground truth); paths relative to `out`."""
    figs = out / "report_figures"
    loss_curves({"Stage 1 (CNN)": out / "stage1" / "metrics.jsonl", "Stage 2 Phase 2 (flow)": out / "phase2" / "metrics.jsonl"},
                figs / "loss_curves.png")
    dev = pick_device(device)
    cfg = runs.read_config(out)
    data = run_data(cfg, out, data_root).to(dev)
    models = load_models(out, dev)
    rows = []
    for split_name, split in (("train", data.train), ("held-out", data.heldout)):
        idx = list(range(min(2, len(split))))
        rows += [{"label": f"{split_name} #{i} ground truth", **_mesh(gt_field(split.shapes[i]), resolution, dev)} for i in idx]
        for name, model in models.items():
            codes = predict_codes(model.predictor(), split, cfg.seed)
            rows += [{"label": f"{split_name} #{i} {name}", **_mesh(model.field(codes[i]), resolution, dev)} for i in idx]
    rows.sort(key=lambda r: r["label"])
    mesh_gallery(rows, figs / "meshes.png")
    samples_figure(models["flow"], data, figs / "flow_samples.png")
    return {name: f"report_figures/{name}.png" for name in ("loss_curves", "meshes", "flow_samples")}


@torch.no_grad()
def samples_figure(flow: FlowSDF, data, path: Path, n_images: int = 4, k: int = 4) -> None:
    """Silhouettes of K seeds' samples per image, seen from a novel view (diversity at a glance)."""
    split = data.train
    n = min(n_images, len(split))
    codes = flow(split.input.images[:n, 0], samples=k, seed=0).codes  # (n, k, D)
    views = split.novel
    K, c2w = views.K[:n, 0].repeat_interleave(k, 0), views.c2w[:n, 0].repeat_interleave(k, 0)
    size = views.masks.shape[-1]
    sils = flow.silhouettes(codes.flatten(0, 1), K, c2w, size).view(n, k, size, size).cpu()
    rows = [{"image": split.input.images[i, 0].permute(1, 2, 0).cpu().numpy(), "gt": views.masks[i, 0].cpu().numpy(),
             "samples": [s.numpy() for s in sils[i]]} for i in range(n)]
    sample_grid(rows, path)


def _mesh(field, resolution: int, dev) -> dict:
    v, f = extract_mesh(field, resolution=resolution, device=dev)
    return {"vertices": v, "faces": f}


def _epoch_figures(out: Path, stage: str) -> list[str]:
    return [str(f.relative_to(out)) for f in sorted((out / stage / "figures").glob("epoch_*.png"))]


def render_report(cfg, out: Path, result: dict, figures: dict[str, str], seconds: float) -> str:
    p1 = json.loads((out / "phase1" / "summary.json").read_text())
    w, wo = p1["with_scaling"], p1.get("without_scaling")
    lines = [
        f"# Flow-SDF reproduction: preset `{cfg.preset}`",
        "",
        f"Device: **{result['device']}**. Data: {cfg.data.n_train_shapes} training shapes x {cfg.data.train_views} view(s), "
        f"{cfg.data.image_size}x{cfg.data.image_size}, {cfg.render.n_samples} samples per ray; "
        f"{cfg.data.n_heldout_shapes} held-out shapes; {cfg.data.novel_views} novel views per shape. "
        f"Stage 1: {cfg.stage1.epochs} epochs; Phase 1: {cfg.phase1.iterations} iterations; Phase 2: {cfg.phase2.epochs} epochs.",
        "",
        "Published (seed write-up, Apple M4): CNN encoder 0.0050 / ~70 min / ~2 ms; rectified flow 0.0053 / ~90 min / ~20 ms.",
        "",
        "## Results",
        "",
        markdown_tables(result),
        "## Noise scaling (Phase 1)",
        "",
        f"sigma = {p1['sigma']:.4f} (std of the Stage-1 codes). With scaling: cosine(sample, target) {w['cosine']:.3f}, "
        f"code-norm ratio {w['norm_ratio']:.3f} (sample {w['sample_norm']:.3f} vs target {w['target_norm']:.3f}, noise {w['noise_norm']:.3f}).",
    ]
    if wo:
        lines.append(f"Without scaling (sigma = 1): cosine {wo['cosine']:.3f}, norm ratio {wo['norm_ratio']:.3f} "
                     f"(sample {wo['sample_norm']:.3f}, noise {wo['noise_norm']:.3f}). Published: cosine 0.08 -> 0.95.")
    start_file = out / "phase2" / "start.json"
    if start_file.exists():
        start = json.loads(start_file.read_text())
        lines += ["", f"Phase 2 starts from the distilled flow's codes through the Stage-1 decoder: training-view BCE "
                      f"{start['bce']:.4f}, IoU {start['iou']:.3f}."]
    lines += ["", "## Figures", "", f"![loss curves]({figures['loss_curves']})", ""]
    for stage, title in (("stage1", "Stage 1 predictions"), ("phase2", "Stage 2 (Phase 2) predictions")):
        lines += [f"### {title} per epoch (training view, two novel views; IoU in orange)", ""]
        lines += [f"![{title} {Path(f).stem}]({f})" for f in _epoch_figures(out, stage)] + [""]
    lines += ["### The 8-step flow strip", "", "![flow strip](phase2/figures/flow_strip.png)", "",
              "### Sample diversity", "", f"![flow samples]({figures['flow_samples']})", "",
              "### Extracted meshes (prediction vs ground truth, three angles)", "", f"![meshes]({figures['meshes']})", "",
              f"Per-shape figures: `eval/eval.json`. This report took {seconds / 60:.1f} min in this session.", ""]
    return "\n".join(lines)



