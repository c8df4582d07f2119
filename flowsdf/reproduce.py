"""`flowsdf reproduce`: data -> Stage 1 -> Stage 2 (Phase 1, Phase 2) -> Stage 3 -> eval -> report.md.

Stage 3 (the flow + RGB) is a second Phase 2 with the config's `stage3.rgb_weight`, trained in
OUT/stage3 from the same Stage 1 and the same Phase 1 (copied from OUT/phase1), evaluated like the
others (OUT/eval/stage3.json) and reported as the table's third row.

Every step is skipped when its output is already there and resumed when it was interrupted, so
rerunning the same command after a crash or Ctrl-C continues where it stopped (and removes the
temporary files a kill left in the run folder). The report ends with what produced it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from flowsdf import config as config_mod
from flowsdf import overrides, runs
from flowsdf.checkpoint import atomic_write_text
from flowsdf.data import dataset
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError, warn
from flowsdf.evaluate import _fmt as fmt
from flowsdf.evaluate import evaluate_run, markdown_tables, write
from flowsdf.figures.plots import loss_curves, mesh_gallery, sample_grid
from flowsdf.figures.shading import shading_grid, shading_rows
from flowsdf.loading import finished_models, load_albedo
from flowsdf.mesh.extract import extract_mesh
from flowsdf.metrics.shapes import gt_field
from flowsdf.metrics.views import predict_codes
from flowsdf.pipeline import FlowSDF
from flowsdf.provenance import provenance
from flowsdf.runs import run_data
from flowsdf.train.flow import phase1_begun, train_flow
from flowsdf.train.stage1 import train_stage1


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
    for run in (out, out / "stage3"):  # leftovers of a killed earlier attempt (the stages clean their own when they run)
        runs.clean_temporaries(run, ("stage1", "phase1", "phase2", "eval", "report_figures"))
    data_root = dataset.default_root(cfg.data)
    dataset.ensure(cfg.data, data_root, progress)

    s1 = _stage_state(out, "stage1")
    if s1 != "done":
        train_stage1(cfg, out, data_root, resume=s1 == "partial", progress=progress, device=device)
    p2 = _stage_state(out, "phase2")
    if p2 != "done":
        resume = p2 == "partial" or phase1_begun(out)
        train_flow(cfg, out, out, data_root, resume=resume, progress=progress, device=device)

    s3_dir = train_stage3(cfg, out, data_root, device, progress) if has_stage3(cfg) else None

    eval_json = out / "eval" / "eval.json"
    if not eval_json.exists():
        result = evaluate_run(out, data_root, device, progress=progress)
        write(result, eval_json)
    result = json.loads(eval_json.read_text())
    figures = make_figures(out, data_root, device, cfg.eval.mesh_resolution)
    if s3_dir is not None:
        s3_json = out / "eval" / "stage3.json"
        if not s3_json.exists():
            s3 = evaluate_run(s3_dir, data_root, device, progress=progress)
            write(s3, s3_json)
        result["models"]["flow_rgb"] = json.loads(s3_json.read_text())["models"]["flow"]
        figures.update(stage3_figure(s3_dir, data_root, device, out / "report_figures" / "stage3_shading.png"))
    report = out / "report.md"
    record = provenance(pick_device(device), seconds={"wall": time.perf_counter() - t0,
                                                      **_training_seconds(result)})
    atomic_write_text(report, render_report(cfg, out, result, figures, time.perf_counter() - t0, record))
    return report


def has_stage3(cfg) -> bool:
    """Stage 3 is Phase 2 again with shaded RGB for one sample per shape; a best-of-K Phase 2 (the
    generative recipe) scores its K samples on silhouettes only, so its protocol has no Stage 3."""
    return cfg.phase2.best_of == 1


def train_stage3(cfg, out: Path, data_root: Path, device: str, progress: bool) -> Path:
    """The flow + RGB in OUT/stage3, from OUT's Stage 1 and a copy of OUT's Phase 1; its folder."""
    s3_dir = out / "stage3"
    if _stage_state(s3_dir, "phase2") == "done":
        return s3_dir
    if not runs.checkpoint_path(s3_dir, "phase1").exists():
        s3_dir.mkdir(parents=True, exist_ok=True)
        tmp = s3_dir / ".phase1.tmp"
        try:
            if tmp.exists():  # what a kill mid-copy left
                shutil.rmtree(tmp)
            shutil.copytree(out / "phase1", tmp)
            os.replace(tmp, s3_dir / "phase1")
        except OSError as e:
            raise FlowSDFError(f"cannot copy Phase 1 into {s3_dir}: {e.strerror or e}") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    # The albedo head is the one new part of this phase: it gets a larger share of the lr (Stage3Config).
    phase2 = dataclasses.replace(cfg.phase2, rgb_weight=cfg.stage3.rgb_weight,
                                 lr_scale={**cfg.phase2.lr_scale, "albedo": cfg.stage3.albedo_lr_scale})
    s3_cfg = dataclasses.replace(cfg, phase2=phase2)
    resume = runs.checkpoint_path(s3_dir, "phase2").exists()
    train_flow(s3_cfg, s3_dir, out, data_root, resume=resume, progress=progress, device=device)
    return s3_dir


def stage3_figure(s3_dir: Path, data_root: Path, device: str, path: Path, n_shapes: int = 4) -> dict[str, str]:
    """Input, predicted shading, normal map and ground truth, input view and novel views, of the
    Stage-3 flow on training and held-out shapes."""
    dev = pick_device(device)
    cfg = runs.read_config(s3_dir)
    data = run_data(cfg, s3_dir, data_root).to(dev)
    flow = FlowSDF.from_run(s3_dir, "flow", dev)
    albedo = load_albedo(runs.checkpoint_path(s3_dir, "phase2"), math.prod(cfg.decoder.latent_shape), dev)
    rows = []
    for split in (data.train, data.heldout):
        rows += shading_rows(flow.predictor(), flow.decoder, albedo, split, min(n_shapes // 2, len(split)), cfg, cfg.seed)
    shading_grid(rows, "Stage 3 (flow + RGB): training shapes (top), held-out shapes (bottom)", path)
    return {"stage3_shading": str(path.relative_to(path.parent.parent))}


def make_figures(out: Path, data_root: Path, device: str, resolution: int) -> dict[str, str]:
    """Loss curves and a mesh gallery (prediction vs ground truth); paths relative to `out`."""
    figs = out / "report_figures"
    loss_curves({"Stage 1 (CNN)": runs.read_metrics(out, "stage1"), "Stage 2 Phase 2 (flow)": runs.read_metrics(out, "phase2")},
                figs / "loss_curves.png")
    dev = pick_device(device)
    cfg = runs.read_config(out)
    data = run_data(cfg, out, data_root).to(dev)
    models = {name: FlowSDF(t) for name, t in finished_models(out, dev).items()}
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


def _shading_figures(out: Path) -> list[str]:
    return [str(f.relative_to(out)) for f in sorted((out / "stage3" / "phase2" / "figures").glob("shading_*.png"))]


def _epoch_figures(out: Path, stage: str) -> list[str]:
    return [str(f.relative_to(out)) for f in sorted((out / stage / "figures").glob("epoch_*.png"))]


def phase1_summary(out: Path) -> dict | None:
    """Phase 1's summary.json, or None with a warning: the report goes on without that section."""
    path = out / "phase1" / "summary.json"
    try:
        p1 = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warn(f"{path} is missing or damaged ({type(e).__name__}); the report's noise-scaling section says n/a")
        return None
    return p1


def _training_seconds(result: dict) -> dict[str, float]:
    """The longest training time among the evaluated models (a flow's includes its Stage 1), if known."""
    known = [r["training_seconds"] for r in result["models"].values() if r.get("training_seconds") is not None]
    return {"training": max(known)} if known else {}


def produced_by(record: dict) -> str:
    """flowsdf.provenance's record in one Markdown paragraph."""
    secs = record.get("seconds", {})
    ddp = f" ({record['ddp_backend']})" if record.get("ddp_backend") else ""
    return (f"Produced by flowsdf {record['flowsdf']} (commit {record['git_commit'] or 'unknown'}), torch {record['torch']}, "
            f"Python {record['python']} on {record['device']}, {record['processes']} process(es){ddp}, "
            f"{record['threads']} CPU thread(s); this session {fmt(secs.get('wall', float('nan')) / 60, '.1f')} min, "
            f"training {fmt(secs.get('training', float('nan')) / 60, '.1f')} min.")


def render_report(cfg, out: Path, result: dict, figures: dict[str, str], seconds: float,
                  record: dict | None = None) -> str:
    p1 = phase1_summary(out)
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
    ]
    if p1 is None:
        lines.append("n/a: `phase1/summary.json` is missing or damaged.")
    else:
        w = p1["with_scaling"]
        lines.append(f"sigma = {fmt(p1['sigma'])} (std of the Stage-1 codes). With scaling: cosine(sample, target) "
                     f"{fmt(w['cosine'], '.3f')}, code-norm ratio {fmt(w['norm_ratio'], '.3f')} (sample "
                     f"{fmt(w['sample_norm'], '.3f')} vs target {fmt(w['target_norm'], '.3f')}, noise {fmt(w['noise_norm'], '.3f')}).")
    wo = p1.get("without_scaling") if p1 else None
    if wo:
        lines.append(f"Without scaling (sigma = 1): cosine {fmt(wo['cosine'], '.3f')}, norm ratio {fmt(wo['norm_ratio'], '.3f')} "
                     f"(sample {fmt(wo['sample_norm'], '.3f')}, noise {fmt(wo['noise_norm'], '.3f')}). Published: cosine 0.08 -> 0.95.")
    start_file = out / "phase2" / "start.json"
    if start_file.exists():
        start = json.loads(start_file.read_text())
        lines += ["", f"Phase 2 starts from the distilled flow's codes through the Stage-1 decoder: training-view BCE "
                      f"{fmt(start['bce'])}, IoU {fmt(start['iou'], '.3f')}."]
    lines += ["", "## Figures", "", f"![loss curves]({figures['loss_curves']})", ""]
    for stage, title in (("stage1", "Stage 1 predictions"), ("phase2", "Stage 2 (Phase 2) predictions")):
        lines += [f"### {title} per epoch (training view, two novel views; IoU in orange)", ""]
        lines += [f"![{title} {Path(f).stem}]({f})" for f in _epoch_figures(out, stage)] + [""]
    if has_stage3(cfg):
        s3_cfg = runs.read_config(out / "stage3")
        lines += ["### Stage 3 (flow + RGB): shading and normals", "",
                  f"Phase 2 again from the same Stage 1 and Phase 1, with loss = BCE + {s3_cfg.phase2.rgb_weight:g} x "
                  "RGB L1 inside the mask (train/rgb.py). Per view: ground-truth image, predicted shading, predicted "
                  "normals, analytic normals (camera frame).", "",
                  f"![stage 3 shading]({figures['stage3_shading']})", ""]
        lines += [f"![stage 3 {Path(f).stem}]({f})" for f in _shading_figures(out)] + [""]
    else:
        lines += ["### Stage 3 (flow + RGB)", "",
                  f"Not run: this preset's Phase 2 keeps the best of {cfg.phase2.best_of} samples per shape, scored on "
                  "silhouettes only; Stage 3's RGB loss is defined for one sample per shape.", ""]
    lines += ["### The 8-step flow strip", "", "![flow strip](phase2/figures/flow_strip.png)", "",
              "### Sample diversity", "", f"![flow samples]({figures['flow_samples']})", "",
              "### Extracted meshes (prediction vs ground truth, three angles)", "", f"![meshes]({figures['meshes']})", "",
              f"Per-shape figures: `eval/eval.json`. This report took {seconds / 60:.1f} min in this session.", ""]
    if record is not None:
        lines += [produced_by(record), ""]
    return "\n".join(lines)



