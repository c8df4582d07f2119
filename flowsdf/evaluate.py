"""`flowsdf eval RUN`: every figure of a trained run, in JSON and as a Markdown table.

For each finished model in the run (the Stage-1 CNN, the Stage-2 flow) and each split:

- training views; the 6 novel views of the training shapes; held-out shapes (input view and
  their novel views), never used in training;
- 2-D: silhouette BCE (the training loss, at the model's final tau) and IoU (threshold 0.5);
- 3-D against the analytic SDF: volumetric IoU, Chamfer-L1 and F-score@0.02 (metrics/shapes.py),
  for the code predicted from each shape's input view;
- normal accuracy: mean angle between predicted and analytic normals on the visible surface, on
  the same four view sets (metrics/normals.py), for the code predicted from each shape's input view;
- flows: best-of-K and mean-of-K novel-view IoU over K seeds, and sample diversity;
- timing: encoder, conditioner + flow at 1/2/4/8 steps, mesh extraction, batch 1 and 32.

Per-shape figures are kept so a bad shape can be found. The JSON is strict (a non-finite figure
is null, with the reason beside it: checkpoint.strict_json) and says what produced it
("provenance": flowsdf.provenance); the Markdown shows null as n/a.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from flowsdf import runs
from flowsdf.checkpoint import atomic_write_text, write_json
from flowsdf.consistency import check_frame
from flowsdf.device import device_name, pick_device
from flowsdf.errors import FlowSDFError, warn
from flowsdf.loading import finished_models
from flowsdf.metrics.normals import evaluate_normals
from flowsdf.metrics.retrieval import retrieval_baseline
from flowsdf.metrics.samples import DIVERSITY_SHAPES, heldout_samples_3d, novel_view_samples, sample_diversity
from flowsdf.metrics.shapes import evaluate_shapes
from flowsdf.metrics.views import evaluate_views, predict_codes
from flowsdf.pipeline import FlowSDF
from flowsdf.provenance import provenance
from flowsdf.runs import run_data
from flowsdf.speed.timing import inference_latency


def training_seconds(run_dir: Path, stages: list[str]) -> float | None:
    """Summed epoch (and Phase-1) times of `stages`; None, with a warning, when a stage's record
    is missing or lacks epochs, rather than a total that silently leaves them out."""
    cfg = runs.read_config(run_dir)
    total = 0.0
    for stage in stages:
        if stage == "phase1":
            path = Path(run_dir) / "phase1" / "summary.json"
            try:
                total += float(json.loads(path.read_text())["seconds"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                warn(f"{path} is missing or damaged ({type(e).__name__}); training time not reported")
                return None
        else:
            rows = runs.read_metrics(run_dir, stage)
            epochs = getattr(cfg, stage).epochs
            if {r["epoch"] for r in rows} != set(range(1, epochs + 1)):
                warn(f"{Path(run_dir) / stage / 'metrics.jsonl'} does not hold all {epochs} epochs; training time not reported")
                return None
            total += sum(r["seconds"] for r in rows)
    return total


def last_epoch_loss(run_dir: Path, stage: str) -> float | None:
    """The final epoch's mean training loss from the stage's log, or None (with a warning)."""
    rows = runs.read_metrics(run_dir, stage)
    if not rows:
        warn(f"{Path(run_dir) / stage / 'metrics.jsonl'} is missing or empty; the last epoch's training loss is not reported")
        return None
    return rows[-1]["loss"]


def refined_predictor(model: FlowSDF, predict, steps: int):
    """`predict` followed by `steps` refinement steps against each picture's foreground mask
    (FlowSDF.refine). Refined codes are kept per input batch (the same slice of the same images
    tensor with the same seed gives the same codes), so the metrics of a split refine once."""
    cache: dict[tuple, torch.Tensor] = {}

    def run(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        key = (images.data_ptr(), tuple(images.shape), tuple(images.stride()), gen.initial_seed())
        if key not in cache:
            cache[key] = model.refine(predict(images, gen), images, steps)
        return cache[key]

    return run


def evaluate_run(
    run_dir: Path, data_dir: Path | None = None, device: str = "auto", k: int = 4, mesh_resolution: int | None = None,
    timing_repeats: int = 5, progress: bool = True, refine: int = 0, guidance: float | None = None,
    temperature: float | None = None, consistency: float | None = None,
) -> dict:
    """Every figure for every finished model of `run_dir` (see the module docstring).

    `mesh_resolution` defaults to the run's `eval.mesh_resolution`. `refine` > 0: the silhouette
    and 3-D figures score codes refined for that many steps against the input picture's mask
    (flow sampling figures and timings do not). `guidance`: the flow's classifier-free guidance W
    (default: the run's flow.guidance). `temperature`, `consistency`: the flow's sampling settings
    (default: the run's flow.temperature and flow.consistency).
    """
    t0 = time.perf_counter()
    dev = pick_device(device)
    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    check_frame(cfg.frame, consistency or 0.0, run_dir)  # before any data is read
    mesh_resolution = mesh_resolution or cfg.eval.mesh_resolution
    data = run_data(cfg, run_dir, data_dir).to(dev)
    result: dict[str, Any] = {"run": str(run_dir), "data": str(data.root.resolve()), "preset": cfg.preset,
                              "device": device_name(dev), "mesh_resolution": mesh_resolution, "refine_steps": refine,
                              "frame": cfg.frame, "models": {}}
    for name, trained in finished_models(run_dir, dev).items():
        model = FlowSDF(trained)
        model.set_sampling(temperature=temperature, consistency=consistency)
        tau, predict = model.tau, model.predictor(guidance=guidance)
        if refine > 0:
            predict = refined_predictor(model, predict, refine)
        # Every metric of a split scores the same codes (for a flow: the same samples, seed cfg.seed).
        ev = lambda split, group: evaluate_views(predict, model.decoder, split, group, cfg.render, tau, cfg.seed)  # noqa: E731
        r: dict[str, Any] = {
            "tau": tau,
            "training_seconds": training_seconds(run_dir, list(model.stages)),
            "train_loss_last_epoch": last_epoch_loss(run_dir, model.stages[-1]),
            "silhouettes": {
                "train_views": ev(data.train, "input"),
                "novel_views": ev(data.train, "novel"),
                "heldout_input": ev(data.heldout, "input"),
                "heldout_novel": ev(data.heldout, "novel"),
            },
        }
        codes = {split: predict_codes(predict, s, cfg.seed) for split, s in (("train", data.train), ("heldout", data.heldout))}
        n3d = {"train": cfg.eval.train_shapes or len(data.train), "heldout": len(data.heldout)}
        r["shapes_3d"] = {
            split: evaluate_shapes(model.decoder, codes[split][: n3d[split]], s.shapes[: n3d[split]],
                                   bound_radius=cfg.render.bound_radius, resolution=mesh_resolution, progress=progress)
            for split, s in (("train", data.train), ("heldout", data.heldout))
        }
        r["normals"] = {
            key: evaluate_normals(model.decoder, codes[split], s, group, cfg.render)
            for key, split, s, group in (("train_views", "train", data.train, "input"),
                                         ("novel_views", "train", data.train, "novel"),
                                         ("heldout_input", "heldout", data.heldout, "input"),
                                         ("heldout_novel", "heldout", data.heldout, "novel"))
        }
        if name == "flow":
            r["sampling"] = {
                "novel_views": novel_view_samples(predict, model.decoder, data.train, cfg.render, tau, k),
                "heldout_novel": novel_view_samples(predict, model.decoder, data.heldout, cfg.render, tau, k),
                "diversity": sample_diversity(model(data.train.input.images[: min(DIVERSITY_SHAPES, len(data.train)), 0],
                                                    samples=k, seed=cfg.seed, guidance=guidance).codes,
                                              model.decoder, data.train, cfg.render, tau),
                "heldout_3d": heldout_samples_3d(predict, model.decoder, data.heldout, cfg.render, tau, k),
                "guidance": model._guidance(guidance),
                "temperature": model.cfg.flow.temperature,
                "consistency": model.cfg.flow.consistency,
            }
        r["latency"] = inference_latency(model, mesh_resolution=mesh_resolution, repeats=timing_repeats)
        result["models"][name] = r
    # The baseline a reconstruction must beat: the nearest training shape by its input silhouette.
    result["retrieval"] = retrieval_baseline(data.train, data.heldout, resolution=mesh_resolution, seed=cfg.seed,
                                             samples=cfg.data.gt_samples)
    seconds = {"wall": time.perf_counter() - t0}
    trained = [r["training_seconds"] for r in result["models"].values() if r["training_seconds"] is not None]
    if trained:
        seconds["training"] = max(trained)  # the flow's includes the Stage 1 it started from
    result["provenance"] = provenance(dev, seconds=seconds)
    return result


MODEL_NAMES = {"cnn": "CNN encoder (Stage 1, Mini SDF-SRN)", "flow": "Rectified flow (Stage 2, Flow-SDF)",
               "flow_rgb": "Rectified flow + RGB (Stage 3)"}


def _fmt(x: float | None, spec: str = ".4f") -> str:
    """A figure for the tables; n/a where it is missing or not finite (null in the JSON)."""
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def _minutes(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def markdown_tables(result: dict) -> str:
    """The published table with our values, then the 2-D / 3-D columns, per model."""
    dev = result["device"]
    lines = [
        f"Device: {dev}. Silhouette loss = BCE on the training views at the model's final tau."
        + (f" Codes refined for {result['refine_steps']} steps against the input mask." if result.get("refine_steps") else ""),
        "",
        "| Model | Silhouette loss | Training time | Inference (batch 1) |",
        "|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        lat = r["latency"]["batch"]["1"]
        if "flow" in lat:
            inf = f"{_fmt(lat['flow']['8']['mean_ms'], '.1f')} ms (8 steps, incl. conditioner)"
        else:
            inf = f"{_fmt(lat['encoder']['mean_ms'], '.1f')} ms (one forward pass)"
        lines.append(f"| {MODEL_NAMES[name]} | {_fmt(r['silhouettes']['train_views']['bce'])} | "
                     f"{_minutes(r['training_seconds'])} | {inf} |")
    lines += [
        "",
        f"3-D metrics from marching-cubes meshes at resolution {result['mesh_resolution']} (10 k surface samples "
        "each; Chamfer means skip empty meshes, counted in the last column).",
        "",
        "| Model | train IoU | novel-view IoU | held-out IoU (input / novel) | 3-D vol. IoU (train / held-out) "
        "| Chamfer-L1 (train / held-out) | F@1% (train / held-out) | F@2% held-out | empty meshes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        s, t, h = r["silhouettes"], r["shapes_3d"]["train"]["mean"], r["shapes_3d"]["heldout"]["mean"]
        lines.append(
            f"| {MODEL_NAMES[name]} | {_fmt(s['train_views']['iou'], '.3f')} | {_fmt(s['novel_views']['iou'], '.3f')} | "
            f"{_fmt(s['heldout_input']['iou'], '.3f')} / {_fmt(s['heldout_novel']['iou'], '.3f')} | "
            f"{_fmt(t['volumetric_iou'], '.3f')} / {_fmt(h['volumetric_iou'], '.3f')} | "
            f"{_fmt(t['chamfer_l1'])} / {_fmt(h['chamfer_l1'])} | {_fmt(t['fscore'], '.3f')} / {_fmt(h['fscore'], '.3f')} | "
            f"{_fmt(h.get('fscore_2pct'), '.3f')} | {t['empty_meshes'] + h['empty_meshes']} of {t['shapes'] + h['shapes']} |"
        )
    if "retrieval" in result:  # the nearest training shape by input silhouette (metrics/retrieval.py)
        b, m = result["retrieval"], result["retrieval"]["mean"]
        lines.append(f"| Retrieval baseline (nearest training silhouette) | - | - | {_fmt(b['heldout_input_iou'], '.3f')} / "
                     f"{_fmt(b['heldout_novel_iou'], '.3f')} | - / {_fmt(m['volumetric_iou'], '.3f')} | - / "
                     f"{_fmt(m['chamfer_l1'])} | - / {_fmt(m['fscore'], '.3f')} | {_fmt(m.get('fscore_2pct'), '.3f')} | - |")
    if any("normals" in r for r in result["models"].values()):
        lines += [
            "",
            "Normal accuracy: mean angle (degrees) between predicted and analytic normals on the visible surface "
            "(pixels where both hit; coverage = share of the true surface pixels scored).",
            "",
            "| Model | train views | novel views | held-out input | held-out novel | coverage (novel) |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in result["models"].items():
            if "normals" in r:
                n = r["normals"]
                lines.append(f"| {MODEL_NAMES[name]} | " + " | ".join(
                    _fmt(n[k]["mean_angle_deg"], ".1f") for k in ("train_views", "novel_views", "heldout_input", "heldout_novel"))
                    + f" | {_fmt(n['novel_views']['coverage'], '.3f')} |")
    if "flow" in result["models"]:
        smp = result["models"]["flow"]["sampling"]
        d = smp["diversity"]
        lines += [
            "",
            f"Flow sampling, K = {smp['novel_views']['k']} seeds: novel-view IoU best-of-K "
            f"{_fmt(smp['novel_views']['best_of_k'], '.3f')}, mean-of-K {_fmt(smp['novel_views']['mean_of_k'], '.3f')}; "
            f"held-out best-of-K {_fmt(smp['heldout_novel']['best_of_k'], '.3f')}, mean-of-K "
            f"{_fmt(smp['heldout_novel']['mean_of_k'], '.3f')}. Diversity: mean pairwise code distance "
            f"{_fmt(d['code_pairwise_l2'])} (mean code norm {_fmt(d['code_norm'], '.3f')}), mean pairwise silhouette "
            f"difference {_fmt(d['silhouette_pairwise_l1'])}.",
        ]
        if "heldout_3d" in smp:
            h = smp["heldout_3d"]
            lines += ["", f"Held-out 3-D IoU of K = {h['k']} samples (guidance W = {smp['guidance']:g}): best-of-K "
                          f"{_fmt(h['best_of_k'], '.3f')}, mean-of-K {_fmt(h['mean_of_k'], '.3f')}, the mean code "
                          f"{_fmt(h['mean_code_3d_iou'], '.3f')}; samples within 90 % of the mean code's input-view IoU: "
                          f"{_fmt(h['samples_within_90pct_of_mean_input_iou'], '.2f')}."]
    lines += ["", "Latency (ms, mean):", "", "| Model | batch | encoder | flow 1 / 2 / 4 / 8 steps | mesh extraction |",
              "|---|---|---|---|---|"]
    for name, r in result["models"].items():
        lat = r["latency"]
        for b, row in lat["batch"].items():
            enc = _fmt(row['encoder']['mean_ms'], '.2f') if "encoder" in row else "-"
            flow = " / ".join(_fmt(row['flow'][s]['mean_ms'], '.2f') for s in ("1", "2", "4", "8")) if "flow" in row else "-"
            lines.append(f"| {name} | {b} | {enc} | {flow} | {_fmt(lat['mesh']['mean_ms'], '.0f')} (res {lat['mesh_resolution']}) |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> None:
    """The result as strict JSON at `out` and its tables beside it (.md); the tables are made
    from what the JSON holds, so both say the same."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowSDFError(f"cannot write {out}: {e.strerror or e}") from e
    write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown_tables(json.loads(out.read_text())))
