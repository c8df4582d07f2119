"""Stage 2, Flow-SDF: Phase 1 (distil the Stage-1 codes) then Phase 2 (end to end through the
renderer, the shared epoch loop with image -> conditioner -> Euler steps -> code)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow
from flowsdf.checkpoint import write_json
from flowsdf.config import Config
from flowsdf.data.dataset import Dataset
from flowsdf.data.frames import view_frame_problem
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError, warn
from flowsdf.fast_sampler import make_sampler
from flowsdf.figures.plots import flow_strip
from flowsdf.flow import flow_predictor, noise_scale
from flowsdf.loading import load_model
from flowsdf.metrics.samples import DIVERSITY_SHAPES, flow_trajectory, sample_codes, sample_diversity
from flowsdf.metrics.views import evaluate_views
from flowsdf.runs import run_data
from flowsdf.train import distributed
from flowsdf.train.distill import phase1
from flowsdf.train.loop import Phase, fit_silhouettes, flatten_views, index_views
from flowsdf.train.rgb import add_albedo, check_rgb
from flowsdf.train.stage1 import finish


def check_stage1_run(init_dir: Path, cfg: Config) -> Path:
    """The finished Stage-1 checkpoint that Stage 2 starts from, checked against `cfg`."""
    init_dir = Path(init_dir)
    s1 = runs.read_config(init_dir)
    ckpt = runs.checkpoint_path(init_dir, "stage1")
    epoch = runs.checkpoint_epoch(init_dir, "stage1")
    if epoch is None:
        raise FlowSDFError(f"checkpoint {ckpt} does not exist")
    if epoch != s1.stage1.epochs:
        raise FlowSDFError(f"Stage-1 run {init_dir} is unfinished (epoch {epoch} of {s1.stage1.epochs}); resume it first")
    for part in ("data", "encoder", "decoder"):
        if getattr(s1, part) != getattr(cfg, part):
            raise FlowSDFError(
                f"Stage-1 run {init_dir} was trained with a different {part} config than preset '{cfg.preset}'"
            )
    return ckpt


def check_phase1_init(p1_ckpt: Path, meta: dict, init_ckpt: Path) -> None:
    """Refuse a finished Phase 1 distilled from another Stage-1 checkpoint than `init_ckpt`.

    Compared by content digest, so a run folder copied or moved elsewhere still resumes; Phase-1
    checkpoints from before the digest recorded the absolute path, compared as it was.
    """
    if "init_sha256" in meta:
        if meta["init_sha256"] != checkpoint.digest(init_ckpt):
            raise FlowSDFError(f"{p1_ckpt} was distilled from another Stage-1 checkpoint than {init_ckpt} "
                               f"(recorded as {meta.get('init_relative')} relative to its run; contents differ)")
    elif meta.get("init") != str(init_ckpt.resolve()):
        raise FlowSDFError(f"{p1_ckpt} was distilled from {meta.get('init')}, not {init_ckpt.resolve()}")


def phase1_begun(run_dir: Path) -> bool:
    """Whether a run has a Phase-1 checkpoint to go on from: a finished Phase 1 or a progress save."""
    return runs.checkpoint_path(run_dir, "phase1").exists() or (Path(run_dir) / "phase1" / "partial.safetensors").exists()


def phase1_start(run_dir: Path, iterations: int) -> Path | None:
    """The Phase-1 checkpoint a resumed run goes on from, or None if Phase 1 is done (or not begun).

    phase1/partial.safetensors is an interrupted Phase 1 (its first run or a lengthening);
    phase1/last.safetensors with fewer than `iterations` iterations is a finished one to lengthen.
    """
    partial, done = Path(run_dir) / "phase1" / "partial.safetensors", runs.checkpoint_path(run_dir, "phase1")
    if partial.exists():
        return partial
    if done.exists() and phase1_iterations_done(done) < iterations:
        return done
    return None


def phase1_iterations_done(path: Path) -> int:
    """How many iterations a finished Phase 1 ran (its checkpoint says; older ones, their summary)."""
    meta = checkpoint.read_header(path)["meta"]
    if "iteration" in meta:
        return int(meta["iteration"])
    summary = Path(path).parent / "summary.json"
    if not summary.exists():
        raise FlowSDFError(f"{path} does not say how many Phase-1 iterations it holds (nor does {summary})")
    return int(json.loads(summary.read_text())["iterations"])


def lengthened_phase1(cfg: Config, run_dir: Path, iterations: int, resume: bool) -> Config:
    """The run's config with Phase 1 lengthened to `iterations`, if it still can be."""
    if not resume or not phase1_begun(run_dir):
        raise FlowSDFError("phase1.iterations is lengthened with --resume, in a run that has begun Phase 1")
    if runs.checkpoint_path(run_dir, "phase2").exists():
        raise FlowSDFError(f"{run_dir} has begun Phase 2: its Phase 1 can no longer be lengthened; start a new run "
                           "(another --out) from the same Stage 1")
    if iterations < cfg.phase1.iterations:
        raise FlowSDFError(f"phase1.iterations={iterations}: {run_dir} was made with {cfg.phase1.iterations}; "
                           "Phase 1 can be lengthened, not shortened")
    return dataclasses.replace(cfg, phase1=dataclasses.replace(cfg.phase1, iterations=iterations))


def train_flow(
    cfg: Config,
    run_dir: Path,
    init_dir: Path,
    data_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    until_epoch: int | None = None,
    phase1_iterations: int | None = None,
) -> dict | None:
    """Stage 2: Phase 1 (distil the Stage-1 codes) then Phase 2 (end to end through the renderer).

    `resume` continues Phase 1 from its last save, or Phase 2 from its last epoch (or starts it,
    reusing a finished Phase 1). `phase1_iterations` with `resume`, before Phase 2 has begun:
    lengthen Phase 1 to that many iterations (recorded in config.json). Returns Phase 2's summary,
    or None if stopped early; under torchrun rank 0 evaluates and returns the summary, the other
    ranks {}.
    """
    dev = distributed.init_from_env(pick_device(device))
    run_dir, init_dir = Path(run_dir), Path(init_dir)
    runs.ensure_writable(run_dir)
    if resume:
        cfg = runs.read_config(run_dir)
    else:
        # Stage 2 continues the Stage-1 run: its config, with the preset's Stage-2 sections.
        base = runs.read_config(run_dir if (run_dir / "config.json").exists() else init_dir)
        if base.preset != cfg.preset:
            raise FlowSDFError(f"{init_dir} was made with preset '{base.preset}', not '{cfg.preset}'")
        cfg = dataclasses.replace(base, **{f: getattr(cfg, f) for f in runs.STAGE2_FIELDS})
    init_ckpt = check_stage1_run(init_dir, cfg)
    p1_ckpt = runs.checkpoint_path(run_dir, "phase1")
    resume_p2 = resume and runs.checkpoint_path(run_dir, "phase2").exists()
    if resume and not (resume_p2 or phase1_begun(run_dir)):
        raise FlowSDFError(f"nothing to resume in {run_dir}: no Stage-2 checkpoint yet")
    if phase1_iterations is not None and phase1_iterations != cfg.phase1.iterations:
        cfg = lengthened_phase1(cfg, run_dir, phase1_iterations, resume)
    p1_start = phase1_start(run_dir, cfg.phase1.iterations) if resume and not resume_p2 else None
    if not resume and p1_ckpt.exists() and (done := phase1_iterations_done(p1_ckpt)) != cfg.phase1.iterations:
        raise FlowSDFError(f"{run_dir} holds a finished Phase 1 of {done} iterations, not phase1.iterations="
                           f"{cfg.phase1.iterations}; `--set phase1.iterations=N --resume` lengthens it, or choose another --out")
    cfg, _ = runs.prepare(run_dir, cfg, "phase2", resume_p2)
    with distributed.main_first():
        data = run_data(cfg, run_dir, data_dir, (init_dir,), progress).to(dev)
    check_rgb(cfg.phase2, data)
    problem = view_frame_problem(cfg.frame, cfg.data.train_views, cfg.phase2.all_views)
    if problem and distributed.is_main():
        warn(problem)
    if distributed.is_main():
        runs.begin(run_dir, cfg, "phase2")
        runs.record_data(run_dir, data.root, cfg.data.hash())
        (run_dir / "phase1").mkdir(exist_ok=True)

    stage1 = load_model(init_dir, "cnn", dev)  # check_stage1_run made sure its models are cfg's
    encoder, decoder = stage1.encoder, stage1.decoder
    # The pictures Stage 1 mapped to codes: with all_views, each shape's first view (its code explains
    # all its views, in that view's frame); else every training view.
    pictures = data.train.input.images[:, 0] if cfg.stage1.all_views else flatten_views(data.train.input).images
    with torch.no_grad():
        targets = encoder.eval()(pictures)  # (M, *latent) the Stage-1 codes
    sigma = noise_scale(targets) if cfg.flow.noise_scaling else 1.0

    if p1_ckpt.exists() and p1_start is None:  # written last by phase1(): its presence means Phase 1 finished
        conditioner, velocity = (m.to(dev) for m in build_flow(cfg))
        meta = checkpoint.load(p1_ckpt, {"conditioner": conditioner, "velocity": velocity}, map_location=dev)
        check_phase1_init(p1_ckpt, meta, init_ckpt)
        sigma = meta["sigma"]
    else:
        if p1_start is not None:
            meta = checkpoint.read_header(p1_start)["meta"]
            check_phase1_init(p1_start, meta, init_ckpt)
            sigma = meta["sigma"]  # the flow was fitted to noise of this scale
        conditioner, velocity = phase1(cfg, run_dir, pictures, targets, sigma, progress, init_ckpt, p1_start)

    phase = Phase(
        name="phase2",
        modules=add_albedo({"conditioner": conditioner, "velocity": velocity, "decoder": decoder}, cfg.phase2,
                           math.prod(cfg.decoder.latent_shape), cfg.seed, dev),
        predict=flow_predictor(conditioner, velocity, sigma, cfg.flow.steps, cfg.decoder.latent_shape),
        decoder=decoder,
        train=cfg.phase2,
        extra_meta={"sigma": sigma},
    )
    start_file = run_dir / "phase2" / "start.json"
    if not resume_p2 and distributed.is_main():
        # Where Phase 2 begins: the distilled flow's codes through the Stage-1 decoder. Epoch 1's
        # mean loss also shows what the first optimiser steps did to it.
        for m in phase.modules.values():
            m.eval()
        start = evaluate_views(phase.predict, decoder, data.train, "input", cfg.render, cfg.phase2.tau_start, cfg.seed)
        (run_dir / "phase2").mkdir(exist_ok=True)
        write_json(start_file, {k: start[k] for k in ("views", "bce", "iou")})
    t0 = time.perf_counter()
    if not fit_silhouettes(phase, cfg, data, run_dir, resume_p2, progress, until_epoch):
        return None
    if not distributed.is_main():
        return {}
    summary = finish(phase, cfg, data, run_dir, time.perf_counter() - t0)
    for m in phase.modules.values():
        m.eval()
    tau = cfg.phase2.tau_end
    summary["sigma"] = sigma
    if start_file.exists():  # runs from before this record have none
        summary["start_train_views"] = json.loads(start_file.read_text())
    sampler = make_sampler(velocity, sigma, cfg.flow.steps, cfg.decoder.latent_shape)
    firsts = data.train.input.images[: min(DIVERSITY_SHAPES, len(data.train)), 0]  # (n, 3, H, W)
    summary["diversity"] = sample_diversity(sample_codes(conditioner, sampler, firsts, 4, cfg.seed), decoder, data.train,
                                            cfg.render, tau)
    summary["flow_strip"] = str(flow_strip_figure(cfg, run_dir, data, init_ckpt))
    write_json(run_dir / "phase2" / "summary.json", summary)
    return summary


def flow_strip_figure(cfg: Config, run_dir: Path, data: Dataset, init_ckpt: Path, n_images: int = 3) -> Path:
    """The flow-step strip for a few training images: the finished flow with its noise scaling,
    and (when Phase 1 ran the ablation) the flow distilled without scaling, decoded by the
    Stage-1 decoder whose codes it was fitted to."""
    dev = data.train.input.images.device
    views = index_views(flatten_views(data.train.input), torch.arange(min(n_images, len(data.train)), device=dev))
    flow = load_model(run_dir, "flow", dev)
    models = [(f"noise scaling on (sigma={flow.sigma:.3f})", flow)]
    if (Path(run_dir) / "phase1" / "noscale.safetensors").exists():
        models.append(("noise scaling off (sigma=1, Phase-1 ablation)", load_model(run_dir, "flow-noscale", dev, stage1=init_ckpt)))
    strips = []
    for label, trained in models:
        sampler = make_sampler(trained.velocity, trained.sigma, cfg.flow.steps, cfg.decoder.latent_shape)
        latents, sils = flow_trajectory(trained.conditioner, sampler, trained.decoder, views.images, views.K, views.c2w,
                                        cfg.seed, cfg.render, trained.tau)
        for i in range(views.images.shape[0]):
            strips.append({
                "label": f"image {i}: {label}",
                "latents": latents[:, i].cpu().numpy(),
                "silhouettes": sils[:, i].cpu().numpy(),
                "gt": views.masks[i].cpu().numpy(),
            })
    path = Path(run_dir) / "phase2" / "figures" / "flow_strip.png"
    flow_strip(strips, path)
    return path
