"""Scoring half of benchmarks/stage3_experiment.py: evaluate every finished arm, write the table.

Each run folder is scored by `flowsdf eval` (in parallel subprocesses, one torch thread each,
skipped when its eval.json exists), then OUT/results.json and OUT/results.md collect, per arm and
seed: 3-D volumetric IoU and Chamfer-L1 (training and held-out shapes), silhouette IoU (training
views, novel views, held-out), normal error in degrees (training views, novel views, held-out input
and novel), the phase's training time, and a figure of normal maps per arm beside the truth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# arm -> (run folder pattern, model name inside that run's eval, stage folders whose time counts)
ARMS = {
    "cnn-sil": ("sil-s{seed}", "cnn", ["stage1"]),
    "cnn-rgb": ("rgb-cnn-s{seed}", "cnn", ["stage1"]),
    "flow-sil": ("flow-sil-s{seed}", "flow", ["phase2"]),
    "flow-rgb": ("rgb-flow-s{seed}", "flow", ["phase2"]),
}
COLUMNS = [  # (label, path into one model's eval, format)
    ("3-D vol. IoU train", ("shapes_3d", "train", "mean", "volumetric_iou"), ".3f"),
    ("3-D vol. IoU held-out", ("shapes_3d", "heldout", "mean", "volumetric_iou"), ".3f"),
    ("Chamfer-L1 train", ("shapes_3d", "train", "mean", "chamfer_l1"), ".4f"),
    ("Chamfer-L1 held-out", ("shapes_3d", "heldout", "mean", "chamfer_l1"), ".4f"),
    ("sil. IoU train views", ("silhouettes", "train_views", "iou"), ".3f"),
    ("sil. IoU novel views", ("silhouettes", "novel_views", "iou"), ".3f"),
    ("sil. IoU held-out novel", ("silhouettes", "heldout_novel", "iou"), ".3f"),
    ("normal err. train views (deg)", ("normals", "train_views", "mean_angle_deg"), ".1f"),
    ("normal err. novel views (deg)", ("normals", "novel_views", "mean_angle_deg"), ".1f"),
    ("normal err. held-out input (deg)", ("normals", "heldout_input", "mean_angle_deg"), ".1f"),
    ("normal err. held-out novel (deg)", ("normals", "heldout_novel", "mean_angle_deg"), ".1f"),
    ("normal coverage novel", ("normals", "novel_views", "coverage"), ".3f"),
]


def _get(d: dict, path: tuple) -> float | None:
    for k in path:
        d = d[k]
    return d


# What the scoring covers. On the shared 2-core CPU a full `flowsdf eval` of one quick run took
# over 15 min of wall time (about 10 % of a core available), so every arm is scored on the same
# reduced set: all input views, the first NOVEL_VIEWS of each shape's 6 novel views, and
# N_VOLUME points for the volumetric IoU (sampling error ~0.3 % of IoU).
NOVEL_VIEWS = 2
N_VOLUME = 20_000


def _first_novel(split, n: int):
    from flowsdf.data.dataset import ShapeSplit, Views

    novel = Views(*(x[:, :n] for x in (split.novel.images, split.novel.masks, split.novel.K, split.novel.c2w,
                                        split.novel.light)))
    return ShapeSplit(split.shapes, split.albedo, split.input, novel)


def score_run(run: Path, threads: int) -> None:
    """The experiment's metrics of every finished model in `run` (the parts of `flowsdf eval` the
    table uses, on the views above), written to RUN/eval/eval.json."""
    from flowsdf import runs
    from flowsdf.checkpoint import atomic_write_text
    from flowsdf.eval.normals import evaluate_normals
    from flowsdf.eval.run import load_models
    from flowsdf.eval.shapes3d import evaluate_shapes
    from flowsdf.eval.timing import device_name
    from flowsdf.eval.views import evaluate_views, predict_codes

    torch.set_num_threads(threads)
    dev = torch.device("cpu")
    cfg = runs.read_config(run)
    data = runs.run_data(cfg, run, None)
    data.train, data.heldout = _first_novel(data.train, NOVEL_VIEWS), _first_novel(data.heldout, NOVEL_VIEWS)
    result = {"run": str(run), "device": device_name(dev), "mesh_resolution": 32, "novel_views": NOVEL_VIEWS,
              "n_volume": N_VOLUME, "models": {}}
    for name, m in load_models(run, cfg, dev).items():
        splits = (("train", data.train), ("heldout", data.heldout))
        codes = {k: predict_codes(m["predict"], s, cfg.seed) for k, s in splits}
        groups = (("train_views", "train", data.train, "input"), ("novel_views", "train", data.train, "novel"),
                  ("heldout_input", "heldout", data.heldout, "input"), ("heldout_novel", "heldout", data.heldout, "novel"))
        result["models"][name] = {
            "silhouettes": {k: evaluate_views(m["predict"], m["decoder"], s, g, cfg.render, m["tau"], cfg.seed)
                            for k, _, s, g in groups},
            "shapes_3d": {k: evaluate_shapes(m["decoder"], codes[k], s.shapes, bound_radius=cfg.render.bound_radius,
                                             resolution=32, n_volume=N_VOLUME, progress=False) for k, s in splits},
            "normals": {k: evaluate_normals(m["decoder"], codes[c], s, g, cfg.render) for k, c, s, g in groups},
        }
    (run / "eval").mkdir(exist_ok=True)
    atomic_write_text(run / "eval" / "eval.json", json.dumps(result, indent=2))


def score_runs(out: Path, seeds: list[int], threads: int) -> None:
    """Score every finished run folder that has no eval.json yet, in parallel subprocesses."""
    procs = []
    for seed in seeds:
        for pattern in sorted({a[0] for a in ARMS.values()}):
            run = out / pattern.format(seed=seed)
            if (run / "eval" / "eval.json").exists() or not (run / "config.json").exists():
                continue
            log = (out / "logs" / f"eval_{run.name}.log").open("a")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--score", str(run), "--threads", str(threads)]
            procs.append((run, subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)))
    for run, proc in procs:
        if proc.wait() != 0:
            print(f"scoring {run} failed (see {out / 'logs'})", file=sys.stderr)


def _seconds(run: Path, stages: list[str]) -> float:
    total = 0.0
    for stage in stages:
        path = run / stage / "metrics.jsonl"
        if path.exists():
            total += sum(json.loads(ln)["seconds"] for ln in path.read_text().splitlines() if ln.strip())
    return total


def _same_phase1(out: Path, seed: int) -> bool | None:
    """Whether both flow arms started from identical Phase-1 weights."""
    from safetensors.torch import load_file

    a, b = (out / f"{p}-s{seed}" / "phase1" / "last.safetensors" for p in ("flow-sil", "rgb-flow"))
    if not (a.exists() and b.exists()):
        return None
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta if k.startswith("model."))


def collect(out: Path, seeds: list[int], rgb_weight: float) -> dict:
    result: dict = {"rgb_weight": rgb_weight, "seeds": seeds, "arms": {}, "same_phase1": {}}
    for arm, (pattern, model, stages) in ARMS.items():
        per_seed = {}
        for seed in seeds:
            run = out / pattern.format(seed=seed)
            path = run / "eval" / "eval.json"
            if not path.exists():
                continue
            ev = json.loads(path.read_text())
            if model not in ev["models"]:
                continue
            m = ev["models"][model]
            per_seed[seed] = {label: _get(m, p) for label, p, _ in COLUMNS}
            per_seed[seed]["train minutes"] = _seconds(run, stages) / 60
            per_seed[seed]["device"] = ev["device"]
        result["arms"][arm] = per_seed
    for seed in seeds:
        result["same_phase1"][seed] = _same_phase1(out, seed)
    return result


def markdown(result: dict) -> str:
    labels = [c[0] for c in COLUMNS] + ["train minutes"]
    fmts = {c[0]: c[2] for c in COLUMNS} | {"train minutes": ".1f"}
    devices = sorted({r["device"] for arm in result["arms"].values() for r in arm.values()})
    lines = [f"Stage-3 experiment, rgb_weight {result['rgb_weight']:g}; device: {', '.join(devices) or 'n/a'}. "
             "Each cell: mean over seeds [per-seed values]. Normal error: mean angle (degrees) between predicted and "
             "analytic normals where both surfaces are hit; lower is better.", "",
             "| metric | " + " | ".join(result["arms"]) + " |", "|---|" + "---|" * len(result["arms"])]
    for label in labels:
        cells = []
        for arm in result["arms"].values():
            vals = [r[label] for r in arm.values() if r.get(label) is not None]
            if not vals:
                cells.append("n/a")
                continue
            mean = sum(vals) / len(vals)
            per = ", ".join(format(v, fmts[label]) for v in vals)
            cells.append(f"{format(mean, fmts[label])} [{per}]" if len(vals) > 1 else format(mean, fmts[label]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Seeds per arm: " + ", ".join(f"{a} {sorted(r)}" for a, r in result["arms"].items()),
              f"Flow arms from identical Phase-1 weights: {result['same_phase1']}"]
    return "\n".join(lines) + "\n"


def evaluate_all(out: Path, seeds: list[int], rgb_weight: float, threads: int) -> None:
    from flowsdf.checkpoint import atomic_write_text

    score_runs(out, seeds, threads)
    result = collect(out, seeds, rgb_weight)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    atomic_write_text(out / "results.md", markdown(result))
    print(markdown(result))
    try:
        from stage3_figures import normals_figure  # noqa: E402
    except ImportError:
        return
    for seed in seeds:
        normals_figure(out, seed, out / f"normals_s{seed}.png")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="score one run folder of the Stage-3 experiment")
    p.add_argument("--score", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    score_run(a.score, a.threads)
