"""The scaling path's substitutions, one at a time and together, at equal CPU time on one teacher.

    python benchmarks/substitutions.py --teacher runs/views-mlp --out outputs/substitutions --minutes 8
    python benchmarks/substitutions.py --list

Each variant is a config change and nothing else (conditioner.kind cnn|vit|dinov2, velocity.kind
mlp|dit) on the same finished Stage-1 run (the teacher: its codes are what Phase 1 distils). For
each: Phase 1 runs for as many iterations as fit in --minutes on this machine (the rate is timed on
a few iterations first), then the distilled flow is scored with the code of `flowsdf eval` on the
held-out shapes (input / novel-view IoU, 3-D IoU, Chamfer-L1, F@1 %, F@2 %; one sample per
picture, Phase 1 only: Phase 2 would fine-tune every variant the same way), beside the Phase-2
step rate (images/s of one end-to-end training step, timed on a few steps), the batch-1 latency of
conditioner + 8 Euler steps (reference and inference sampler) and the parameters.

DINOv2 needs its weights on disk (--dinov2 PATH); without real weights it measures speed only.
Each variant trains in OUT/<variant>/ (a copy of the teacher's Stage 1); a finished variant is
skipped; results go to OUT/results.json and OUT/results.md after every variant.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from quality_experiments import fmt, light_eval  # noqa: E402  (a sibling benchmark script)

from flowsdf import overrides, runs  # noqa: E402
from flowsdf.checkpoint import atomic_write_text  # noqa: E402
from flowsdf.config import Config  # noqa: E402
from flowsdf.data.dataset import Views  # noqa: E402
from flowsdf.device import device_name  # noqa: E402
from flowsdf.flow import flow_predictor, noise_scale  # noqa: E402
from flowsdf.loading import load_model  # noqa: E402
from flowsdf.pipeline import FlowSDF  # noqa: E402
from flowsdf.speed.bench import BenchSettings, bench_flow  # noqa: E402
from flowsdf.train.distill import distill  # noqa: E402
from flowsdf.train.flow import train_flow  # noqa: E402
from flowsdf.train.loop import Phase, SilhouetteObjective, flatten_views  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "cnn+mlp": [],  # the seed's
    "cnn+dit": ["velocity.kind=dit"],
    "vit+mlp": ["conditioner.kind=vit"],
    "vit+dit": ["conditioner.kind=vit", "velocity.kind=dit"],
    "dinov2+mlp": ["conditioner.kind=dinov2"],  # + conditioner.weights from --dinov2
}


def variant_config(teacher: Config, name: str, dinov2: str | None, iterations: int) -> Config:
    sets = VARIANTS[name] + (["conditioner.weights=" + dinov2] if name.startswith("dinov2") else [])
    return overrides.apply(teacher, sets + ["phase1.ablation=false", f"phase1.iterations={iterations}"])


def teacher_codes(teacher: Path, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The pictures Stage 1 mapped to codes and its codes, as train_flow forms them."""
    stage1 = load_model(teacher, "cnn", "cpu")
    data = runs.run_data(cfg, teacher, None)
    pictures = data.train.input.images[:, 0] if cfg.stage1.all_views else flatten_views(data.train.input).images
    with torch.no_grad():
        return pictures, stage1.encoder.eval()(pictures)


def seconds_per_iteration(cfg: Config, pictures: torch.Tensor, targets: torch.Tensor, probe: int = 12) -> float:
    """Phase 1's time per iteration for this variant, from `probe` iterations after 3 untimed ones."""
    warm = overrides.apply(cfg, ["phase1.iterations=3"])
    distill(warm, pictures, targets, noise_scale(targets), False, "warm-up")
    timed = overrides.apply(cfg, [f"phase1.iterations={probe}"])
    t0 = time.perf_counter()
    distill(timed, pictures, targets, noise_scale(targets), False, "timing")
    return (time.perf_counter() - t0) / probe


def phase2_rate(pipe: FlowSDF, cfg: Config, steps: int = 3) -> float:
    """Images per second of Phase 2's training step (conditioner, Euler steps, renderer, backward,
    Adam) on the first training batch, after one untimed step."""
    data = runs.run_data(cfg, pipe.run_dir, None)
    tc = cfg.phase2
    n = tc.batch_size
    batch = Views(*(x[:n] for x in (data.train.input.images, data.train.input.masks, data.train.input.K,
                                    data.train.input.c2w, data.train.input.light)))
    if not tc.all_views:
        batch = flatten_views(batch)
        batch = Views(*(x[:n] for x in (batch.images, batch.masks, batch.K, batch.c2w, batch.light)))
    modules = {"conditioner": pipe.conditioner, "velocity": pipe.velocity, "decoder": pipe.decoder}
    for m in modules.values():
        m.train()
    # The training predictor (reference Euler steps in the autograd graph), as train_flow builds it.
    predict = flow_predictor(pipe.conditioner, pipe.velocity, pipe.sigma, cfg.flow.steps, cfg.decoder.latent_shape)
    phase = Phase("phase2", modules, predict, pipe.decoder, tc)
    objective = SilhouetteObjective(phase, cfg)
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-9)
    images = batch.masks.shape[0] * (batch.masks.shape[1] if tc.all_views else 1)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = objective(batch, gen, tc.tau_end, slice(0, n))[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - t0)
    return images / min(times)


def run_variant(name: str, teacher: Path, out: Path, minutes: float, dinov2: str | None) -> dict:
    run_dir = out / name
    teacher_cfg = runs.read_config(teacher)
    probe_cfg = variant_config(teacher_cfg, name, dinov2, 1)
    pictures, targets = teacher_codes(teacher, probe_cfg)
    per_iteration = seconds_per_iteration(probe_cfg, pictures, targets)
    iterations = max(1, int(minutes * 60 / per_iteration))
    cfg = variant_config(teacher_cfg, name, dinov2, iterations)
    if not runs.checkpoint_path(run_dir, "phase1").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        for item in ("config.json", "data.json", "stage1"):  # the teacher's Stage 1, shared by every variant
            src = teacher / item
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, run_dir / item)
        t0 = time.perf_counter()
        train_flow(cfg, run_dir, run_dir, progress=False, device="cpu", until_epoch=0)  # Phase 1 only
        train_seconds = time.perf_counter() - t0
    else:
        train_seconds = json.loads((run_dir / "phase1" / "summary.json").read_text())["seconds"]
    phase1 = json.loads((run_dir / "phase1" / "summary.json").read_text())
    ev = light_eval(run_dir, model="flow", finished=False)
    pipe = FlowSDF.from_run(run_dir, "flow", device="cpu", finished=False)
    latency = bench_flow(cfg, BenchSettings(flow_batches=(1,), flow_steps=(8,), flow_repeats=30), torch.device("cpu"))
    h = ev["heldout_3d"]["mean"]
    return {
        "variant": name, "overrides": VARIANTS[name], "device": device_name(torch.device("cpu")),
        "phase1_iterations": iterations, "phase1_seconds": phase1["seconds"], "wall_seconds": train_seconds,
        "seconds_per_iteration": per_iteration, "code_cosine": phase1["with_scaling"]["cosine"],
        "heldout_input_iou": ev["heldout_input"]["iou"], "heldout_novel_iou": ev["heldout_novel"]["iou"],
        "heldout_3d_iou": h["volumetric_iou"], "heldout_chamfer": h["chamfer_l1"], "fscore_1": h["fscore"],
        "fscore_2": h["fscore_2pct"], "train_iou": ev["train_views"]["iou"],
        "phase2_images_per_s": phase2_rate(pipe, cfg),
        "latency_ms": {k: v["mean_ms"] for k, v in latency["1"]["8"].items()},
        "parameters": {"conditioner": sum(p.numel() for p in pipe.conditioner.parameters()),
                       "velocity": sum(p.numel() for p in pipe.velocity.parameters())},
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| variant | Phase 1 (iterations, min) | code cosine | held-out IoU input / novel | 3-D IoU | Chamfer-L1 "
             "| F@1% | F@2% | Phase-2 images/s | batch-1 ms, 8 steps (reference / fast) | parameters (cond. + velocity) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat = r["latency_ms"]
        p = r["parameters"]
        lines.append(
            f"| {r['variant']} | {r['phase1_iterations']}, {r['phase1_seconds'] / 60:.1f} | {r['code_cosine']:.3f} | "
            f"{r['heldout_input_iou']:.3f} / {r['heldout_novel_iou']:.3f} | {r['heldout_3d_iou']:.3f} | "
            f"{fmt(r['heldout_chamfer'], '.4f')} | {r['fscore_1']:.3f} | {r['fscore_2']:.3f} | "
            f"{r['phase2_images_per_s']:.1f} | {lat['reference']:.1f} / {lat['fast']:.1f} | "
            f"{p['conditioner'] / 1e6:.2f} M + {p['velocity'] / 1e6:.2f} M |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, help="a finished Stage-1 run (its codes are distilled)")
    p.add_argument("--out", type=Path, default=Path("outputs/substitutions"))
    p.add_argument("--minutes", type=float, default=8.0, help="Phase-1 time per variant on this machine (default 8)")
    p.add_argument("--only", nargs="+", help="variants to run, in this order (default: all but dinov2 without --dinov2)")
    p.add_argument("--dinov2", help="DINOv2-Small weights (file or folder) for the dinov2 variant")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args()
    if args.list:
        for name, sets in VARIANTS.items():
            print(f"{name:12s} {' '.join(sets) or '(the seed)'}")
        return 0
    if args.teacher is None:
        p.error("--teacher RUN is required")
    torch.set_num_threads(args.threads)
    names = args.only or [n for n in VARIANTS if args.dinov2 or not n.startswith("dinov2")]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; see --list")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        done = args.out / name / "result.json"
        if done.exists():
            print(f"{name}: done ({done})")
            continue
        print(f"{name}: Phase 1 for {args.minutes:g} min, then scoring ...", flush=True)
        row = run_variant(name, args.teacher, args.out, args.minutes, args.dinov2)
        atomic_write_text(done, json.dumps(row, indent=2))
        rows = [json.loads((args.out / n / "result.json").read_text()) for n in VARIANTS
                if (args.out / n / "result.json").exists()]
        atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2))
        atomic_write_text(args.out / "results.md", markdown(rows))
        print(markdown(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
