"""Training: plain functions, one epoch loop shared by every stage that renders silhouettes.

Stage 1 (Mini SDF-SRN): image -> CNN encoder -> code -> SDF decoder -> renderer -> BCE against
the silhouette. Stage 2 (Flow-SDF): Phase 1 distils the Stage-1 codes into a rectified flow (no
rendering); Phase 2 reuses `fit_silhouettes` with image -> conditioner -> 8 Euler steps -> code.

Determinism: the model is initialised from `cfg.seed`, and each epoch's shuffle (and any noise
a phase draws) comes from a generator seeded by (seed, epoch). A checkpoint at the end of every
epoch therefore carries everything needed: resuming after epoch k replays epochs k+1.. exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.checkpoint import atomic_write_text
from flowsdf.config import Config, TrainConfig
from flowsdf.data import dataset as data_mod
from flowsdf.data.dataset import Dataset, Views
from flowsdf.ema import WeightAverage
from flowsdf.errors import FlowSDFError
from flowsdf.evaluate import evaluate_views, flow_trajectories, prediction_rows, sample_diversity
from flowsdf.figures import flow_strip, prediction_grid
from flowsdf.flow import euler_sample, flow_loss, noise_scale, sample_noise
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.encoder import CNNEncoder
from flowsdf.models.sdf import SDFDecoder
from flowsdf.models.velocity import VelocityNet
from flowsdf.render import RenderConfig, render_views, silhouette_logits
from flowsdf.timing import device_name

# image batch (B, 3, H, W) + a generator for any noise -> latent codes (B, D)
Predictor = Callable[[Tensor, torch.Generator], Tensor]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def tau_at(cfg: TrainConfig, epoch: int) -> float:
    """Geometric annealing from tau_start (epoch 0) to tau_end (last epoch)."""
    frac = epoch / max(cfg.epochs - 1, 1)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** frac


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Cosine decay from lr to lr * lr_final_fraction over the epochs."""
    frac = epoch / max(cfg.epochs - 1, 1)
    floor = cfg.lr * cfg.lr_final_fraction
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * frac))


def warmup_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the lr at optimiser step `step` (0-based): linear up to 1 over warmup_steps."""
    if cfg.warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / cfg.warmup_steps)


def flatten_views(views: Views) -> Views:
    """(N, V, ...) -> (N*V, ...): every view is one training sample."""
    return Views(*(x.flatten(0, 1) for x in (views.images, views.masks, views.K, views.c2w, views.light)))


def silhouette_loss(
    decoder: SDFDecoder, codes: Tensor, views: Views, render_cfg: RenderConfig, tau: float
) -> tuple[Tensor, Tensor]:
    """Mean BCE of the soft silhouettes of `codes` (B, D) seen from `views` (B views).

    Returns (loss, logits (B, H, W)).
    """
    size = views.masks.shape[-1]
    min_sdf = render_views(decoder.field(codes), views.K, views.c2w, size, render_cfg)  # (B, H, W)
    logits = silhouette_logits(min_sdf, tau)
    return F.binary_cross_entropy_with_logits(logits, views.masks), logits


def index_views(views: Views, idx: Tensor) -> Views:
    return Views(*(x[idx] for x in (views.images, views.masks, views.K, views.c2w, views.light)))


@dataclass
class Phase:
    """What `fit_silhouettes` trains: named modules, an image -> code function, its config."""

    name: str  # folder inside the run: "stage1", "phase2"
    modules: dict[str, nn.Module]
    predict: Predictor
    decoder: SDFDecoder
    train: TrainConfig
    extra_meta: dict | None = None  # stored in every checkpoint (e.g. the flow's noise scale)


def fit_silhouettes(
    phase: Phase,
    cfg: Config,
    data: Dataset,
    run_dir: Path,
    resume: bool,
    progress: bool = True,
    until_epoch: int | None = None,
) -> bool:
    """The epoch loop: lr and tau schedules, steps, metrics, figures, checkpoints; resumable.

    `until_epoch` stops early (after that epoch's checkpoint) without changing any schedule, so
    a long run can be done in pieces. Returns True when the phase has run all its epochs; with
    `ema_decay` the modules then hold the averaged weights, the phase's final model.
    """
    tc, stage = phase.train, phase.name
    unknown = set(tc.lr_scale) - set(phase.modules)
    if unknown:
        raise FlowSDFError(f"lr_scale names {sorted(unknown)}, not modules of {stage} ({', '.join(phase.modules)})")
    if not 0.0 <= tc.ema_decay < 1.0:
        raise FlowSDFError(f"ema_decay must be in [0, 1), got {tc.ema_decay}")
    # One parameter group per module, so each can have its own share of the scheduled lr.
    groups = [{"params": list(m.parameters()), "name": name} for name, m in phase.modules.items()]
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.Adam(groups, lr=tc.lr)
    ema = WeightAverage(phase.modules, tc.ema_decay) if tc.ema_decay > 0 else None
    # With an average, the checkpoint's modules are the averaged weights (what every reader of a
    # run loads) and the live training weights are stored beside them, for resume.
    stored = phase.modules if ema is None else {**ema.averages, **{f"live_{n}": m for n, m in phase.modules.items()}}
    ckpt = runs.checkpoint_path(run_dir, stage)
    start_epoch = 0
    if resume:
        meta = checkpoint.load(ckpt, stored, optimizer, map_location=params[0].device)
        start_epoch = int(meta["epoch"])
        runs.truncate_metrics(run_dir, stage, start_epoch)

    train_views = flatten_views(data.train.input)
    n = train_views.images.shape[0]
    steps_per_epoch = math.ceil(n / tc.batch_size)
    last = tc.epochs if until_epoch is None else min(until_epoch, tc.epochs)
    for epoch in range(start_epoch, last):
        tau, epoch_lr = tau_at(tc, epoch), lr_at(tc, epoch)
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(n, generator=gen).to(train_views.images.device)
        t0, total, seen = time.perf_counter(), 0.0, 0
        for m in phase.modules.values():
            m.train()
        bar = tqdm(range(0, n, tc.batch_size), desc=f"{stage} {epoch + 1}/{tc.epochs}", leave=False, disable=not progress)
        for i, s in enumerate(bar):
            lr = epoch_lr * warmup_factor(tc, epoch * steps_per_epoch + i)
            for group in optimizer.param_groups:
                group["lr"] = lr * tc.lr_scale.get(group["name"], 1.0)
            batch = index_views(train_views, order[s : s + tc.batch_size])
            codes = phase.predict(batch.images, gen)  # (B, D)
            loss, _ = silhouette_loss(phase.decoder, codes, batch, cfg.render, tau)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(phase.modules)
            b = batch.images.shape[0]
            total, seen = total + loss.item() * b, seen + b
            bar.set_postfix(loss=f"{total / seen:.4f}", tau=f"{tau:.3f}")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": total / seen, "tau": tau, "lr": lr, "seconds": seconds, "images_per_s": seen / seconds}
        done = epoch + 1 == tc.epochs
        if (epoch + 1) % tc.figure_every == 0 or done:
            with ema.applied(phase.modules) if ema is not None else contextlib.nullcontext():
                row.update(epoch_figure(phase, cfg, data, run_dir, epoch + 1, tau))
        runs.append_metrics(run_dir, stage, row)
        meta = {"epoch": epoch + 1, "stage": stage, **(phase.extra_meta or {})}
        checkpoint.save(ckpt, stored, optimizer, meta)
        if progress:
            tqdm.write(f"{stage} epoch {epoch + 1}/{tc.epochs}  loss {row['loss']:.5f}  tau {tau:.4f}  {seconds:.1f}s")
    if ema is not None and last == tc.epochs:
        ema.copy_to(phase.modules)
    return last == tc.epochs


@torch.no_grad()
def epoch_figure(phase: Phase, cfg: Config, data: Dataset, run_dir: Path, epoch: int, tau: float) -> dict:
    """Predicted vs ground-truth silhouettes (training view + two novel views) of a few shapes."""
    for m in phase.modules.values():
        m.eval()
    k = min(phase.train.figure_shapes, len(data.train))
    rows, ious = prediction_rows(phase.predict, phase.decoder, data.train, k, cfg.render, tau, cfg.seed, novel=2)
    prediction_grid(rows, f"{phase.name} epoch {epoch}", Path(run_dir) / phase.name / "figures" / f"epoch_{epoch:04d}.png")
    return {"figure_train_iou": ious["input"], "figure_novel_iou": ious["novel"]}


def build_stage1(cfg: Config) -> tuple[CNNEncoder, SDFDecoder]:
    """Stage-1 models initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return CNNEncoder(cfg.encoder), SDFDecoder(cfg.decoder)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit name must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlowSDFError(f"device {name!r} requested but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FlowSDFError(f"unknown device {name!r}") from e
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FlowSDFError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def load_data(
    cfg: Config, data_dir: Path | None, run_dirs: tuple[Path, ...] = (), progress: bool = True
) -> Dataset:
    """The dataset a command works on, checked against `cfg`.

    `data_dir` (--data) must exist. Otherwise the folder recorded by the first of `run_dirs`
    that has one, else the preset's cached dataset (generated, deterministically, if missing).
    """
    if data_dir is not None:
        data = data_mod.load(Path(data_dir))
    else:
        recorded = next((r for r in (runs.recorded_data(d, cfg.data.hash()) for d in run_dirs) if r), None)
        data = data_mod.load(recorded) if recorded else data_mod.ensure(cfg.data, data_mod.default_root(cfg.data), progress)
    if data.config.image_size != cfg.encoder.image_size:
        raise FlowSDFError(
            f"dataset images are {data.config.image_size}px but the config expects {cfg.encoder.image_size}px"
        )
    return data


def run_data(
    cfg: Config, run_dir: Path, data_dir: Path | None, search: tuple[Path, ...] = (), progress: bool = True
) -> Dataset:
    """The dataset of an existing run: the one it recorded, or --data if it is the same data."""
    data = load_data(cfg, data_dir, (Path(run_dir), *search), progress)
    if data.config != cfg.data:
        raise FlowSDFError(f"the dataset at {data.root} is not the one {run_dir} was trained on (different config)")
    return data


def train_stage1(
    cfg: Config,
    run_dir: Path,
    data_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    until_epoch: int | None = None,
) -> dict | None:
    """Mini SDF-SRN: train the CNN encoder and SDF decoder from silhouettes.

    Returns the final summary, or None when `until_epoch` stopped the run before its end.
    """
    dev = pick_device(device)
    if resume:
        cfg = runs.read_config(run_dir)
        data = run_data(cfg, run_dir, data_dir, progress=progress)
    else:
        data = load_data(cfg, data_dir, progress=progress)
        cfg = dataclasses.replace(cfg, data=data.config)  # the run records the data it really used
    cfg, resume = runs.prepare(run_dir, cfg, "stage1", resume)
    data = data.to(dev)
    runs.begin(run_dir, cfg, "stage1")
    runs.record_data(run_dir, data.root, cfg.data.hash())
    encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
    phase = Phase(
        name="stage1",
        modules={"encoder": encoder, "decoder": decoder},
        predict=lambda images, gen: encoder(images),
        decoder=decoder,
        train=cfg.stage1,
    )
    t0 = time.perf_counter()
    if not fit_silhouettes(phase, cfg, data, run_dir, resume, progress, until_epoch):
        return None
    return finish(phase, cfg, data, run_dir, time.perf_counter() - t0)


def finish(phase: Phase, cfg: Config, data: Dataset, run_dir: Path, wall_seconds: float) -> dict:
    """Evaluate the final model on training and novel views; write summary.json."""
    for m in phase.modules.values():
        m.eval()
    metrics = runs.read_metrics(run_dir, phase.name)
    tau = phase.train.tau_end
    summary = {
        "stage": phase.name,
        "epochs": phase.train.epochs,
        "train_loss_last_epoch": metrics[-1]["loss"] if metrics else None,
        "train_seconds_total": sum(r["seconds"] for r in metrics),
        "wall_seconds_this_session": wall_seconds,
        "device": device_name(next(phase.decoder.parameters()).device),
        "train_views": evaluate_views(phase.predict, phase.decoder, data.train, "input", cfg.render, tau, cfg.seed),
        "novel_views": evaluate_views(phase.predict, phase.decoder, data.train, "novel", cfg.render, tau, cfg.seed),
    }
    atomic_write_text(Path(run_dir) / phase.name / "summary.json", json.dumps(summary, indent=2))
    return summary


# --- Stage 2: Flow-SDF ------------------------------------------------------------------------


def build_flow(cfg: Config) -> tuple[ImageConditioner, VelocityNet]:
    """Stage-2 models initialised from cfg.seed (the caller's global RNG state is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        return ImageConditioner(cfg.conditioner), VelocityNet(cfg.velocity)


def flow_predictor(conditioner: ImageConditioner, velocity: VelocityNet, sigma: float, steps: int) -> Predictor:
    """image -> conditioner -> `steps` Euler steps from sigma-scaled noise -> code (differentiable)."""

    def predict(images: Tensor, gen: torch.Generator) -> Tensor:
        cond = conditioner(images)  # (B, C)
        z0 = sample_noise((images.shape[0], velocity.config.latent_dim), sigma, gen, images.device)  # (B, D)
        return euler_sample(velocity, z0, cond, steps=steps)  # (B, D)

    return predict


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


@torch.no_grad()
def code_agreement(
    conditioner: ImageConditioner, velocity: VelocityNet, images: Tensor, targets: Tensor, sigma: float, steps: int, seed: int
) -> dict:
    """How well sampled codes match their targets: mean cosine and norm ratio (and the norms)."""
    gen = torch.Generator().manual_seed(seed)
    z0 = sample_noise(targets.shape, sigma, gen, targets.device)  # (N, D)
    samples = euler_sample(velocity, z0, conditioner(images), steps=steps)  # (N, D)
    cos = F.cosine_similarity(samples, targets, dim=-1)  # (N,)
    s_norm, t_norm = samples.norm(dim=-1), targets.norm(dim=-1)  # (N,)
    return {
        "cosine": cos.mean().item(),
        "norm_ratio": (s_norm / t_norm).mean().item(),
        "sample_norm": s_norm.mean().item(),
        "target_norm": t_norm.mean().item(),
        "noise_norm": z0.norm(dim=-1).mean().item(),
    }


def distill(
    cfg: Config, images: Tensor, targets: Tensor, sigma: float, progress: bool, label: str
) -> tuple[ImageConditioner, VelocityNet, list[dict]]:
    """Phase 1: fit conditioner + velocity net to the target codes (velocity + sampling loss)."""
    pc, device = cfg.phase1, targets.device
    conditioner, velocity = (m.to(device) for m in build_flow(cfg))
    params = [*conditioner.parameters(), *velocity.parameters()]
    optimizer = torch.optim.Adam(params, lr=pc.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    history = []
    bar = tqdm(range(pc.iterations), desc=label, leave=False, disable=not progress)
    for it in bar:
        idx = torch.randperm(len(targets), generator=gen)[: pc.batch_size].to(device)
        loss, parts = flow_loss(velocity, targets[idx], conditioner(images[idx]), sigma, cfg.flow, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if it % 50 == 0 or it == pc.iterations - 1:
            history.append({"iteration": it + 1, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
            bar.set_postfix(loss=f"{loss.item():.5f}")
    return conditioner, velocity, history


def train_flow(
    cfg: Config,
    run_dir: Path,
    init_dir: Path,
    data_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
    device: str = "auto",
    until_epoch: int | None = None,
) -> dict | None:
    """Stage 2: Phase 1 (distil the Stage-1 codes) then Phase 2 (end to end through the renderer).

    Phase 1 is short and saved once done; `resume` continues Phase 2 from its last epoch (or starts
    it, reusing a finished Phase 1). Returns Phase 2's summary, or None if stopped early.
    """
    dev = pick_device(device)
    run_dir, init_dir = Path(run_dir), Path(init_dir)
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
    if resume and not (resume_p2 or p1_ckpt.exists()):
        raise FlowSDFError(f"nothing to resume in {run_dir}: no Stage-2 checkpoint yet")
    cfg, _ = runs.prepare(run_dir, cfg, "phase2", resume_p2)
    data = run_data(cfg, run_dir, data_dir, (init_dir,), progress).to(dev)
    runs.begin(run_dir, cfg, "phase2")
    runs.record_data(run_dir, data.root, cfg.data.hash())
    (run_dir / "phase1").mkdir(exist_ok=True)

    encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
    checkpoint.load(init_ckpt, {"encoder": encoder, "decoder": decoder}, map_location=dev)
    train_views = flatten_views(data.train.input)
    with torch.no_grad():
        targets = encoder.eval()(train_views.images)  # (M, D) the Stage-1 codes
    sigma = noise_scale(targets) if cfg.flow.noise_scaling else 1.0

    if p1_ckpt.exists():  # written last by phase1(): its presence means Phase 1 finished
        conditioner, velocity = (m.to(dev) for m in build_flow(cfg))
        meta = checkpoint.load(p1_ckpt, {"conditioner": conditioner, "velocity": velocity}, map_location=dev)
        if meta.get("init") != str(init_ckpt.resolve()):
            raise FlowSDFError(f"{p1_ckpt} was distilled from {meta.get('init')}, not {init_ckpt.resolve()}")
        sigma = meta["sigma"]
    else:
        conditioner, velocity = phase1(cfg, run_dir, train_views.images, targets, sigma, progress, init_ckpt)

    phase = Phase(
        name="phase2",
        modules={"conditioner": conditioner, "velocity": velocity, "decoder": decoder},
        predict=flow_predictor(conditioner, velocity, sigma, cfg.flow.steps),
        decoder=decoder,
        train=cfg.phase2,
        extra_meta={"sigma": sigma},
    )
    start_file = run_dir / "phase2" / "start.json"
    if not resume_p2:
        # Where Phase 2 begins: the distilled flow's codes through the Stage-1 decoder. Epoch 1's
        # mean loss also shows what the first optimiser steps did to it.
        for m in phase.modules.values():
            m.eval()
        start = evaluate_views(phase.predict, decoder, data.train, "input", cfg.render, cfg.phase2.tau_start, cfg.seed)
        (run_dir / "phase2").mkdir(exist_ok=True)
        atomic_write_text(start_file, json.dumps({k: start[k] for k in ("views", "bce", "iou")}, indent=2))
    t0 = time.perf_counter()
    if not fit_silhouettes(phase, cfg, data, run_dir, resume_p2, progress, until_epoch):
        return None
    summary = finish(phase, cfg, data, run_dir, time.perf_counter() - t0)
    for m in phase.modules.values():
        m.eval()
    tau = cfg.phase2.tau_end
    summary["sigma"] = sigma
    if start_file.exists():  # runs from before this record have none
        summary["start_train_views"] = json.loads(start_file.read_text())
    summary["diversity"] = sample_diversity(
        conditioner, velocity, decoder, data.train, sigma, cfg.flow.steps, cfg.render, tau, seed=cfg.seed
    )
    summary["flow_strip"] = str(flow_strip_figure(cfg, run_dir, data, conditioner, velocity, decoder, sigma, init_ckpt))
    atomic_write_text(run_dir / "phase2" / "summary.json", json.dumps(summary, indent=2))
    return summary


def flow_strip_figure(
    cfg: Config, run_dir: Path, data: Dataset, conditioner, velocity, decoder: SDFDecoder, sigma: float, init_ckpt: Path,
    n_images: int = 3,
) -> Path:
    """The flow-step strip for a few training images: the trained model with its noise scaling,
    and (when Phase 1 ran the ablation) the flow distilled without scaling, decoded by the
    Stage-1 decoder whose codes it was fitted to."""
    dev = next(decoder.parameters()).device
    views = index_views(flatten_views(data.train.input), torch.arange(min(n_images, len(data.train)), device=dev))
    tau, steps = cfg.phase2.tau_end, cfg.flow.steps
    models = [(f"noise scaling on (sigma={sigma:.3f})", conditioner, velocity, decoder, sigma)]
    ablation = Path(run_dir) / "phase1" / "noscale.safetensors"
    if ablation.exists():
        c_off, v_off = (m.to(dev).eval() for m in build_flow(cfg))
        checkpoint.load(ablation, {"conditioner": c_off, "velocity": v_off}, map_location=dev)
        enc1, dec1 = (m.to(dev).eval() for m in build_stage1(cfg))
        checkpoint.load(init_ckpt, {"encoder": enc1, "decoder": dec1}, map_location=dev)
        models.append(("noise scaling off (sigma=1, Phase-1 ablation)", c_off, v_off, dec1, 1.0))
    strips = []
    for label, c, v, d, s in models:
        latents, sils = flow_trajectories(c, v, d, views, s, steps, cfg.render, tau, cfg.seed)
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


def phase1(
    cfg: Config, run_dir: Path, images: Tensor, targets: Tensor, sigma: float, progress: bool, init_ckpt: Path
) -> tuple[ImageConditioner, VelocityNet]:
    """Distil with noise scaling (and, for the ablation, without); save and report both.

    The main checkpoint is written last, so its presence means all of Phase 1 is done; an
    interruption anywhere before simply reruns Phase 1 (about a minute on the quick preset).
    """
    t0 = time.perf_counter()
    conditioner, velocity, history = distill(cfg, images, targets, sigma, progress, "phase1 distil")
    seconds = time.perf_counter() - t0
    steps = cfg.flow.steps
    report = {
        "sigma": sigma,
        "seconds": seconds,
        "iterations": cfg.phase1.iterations,
        "history": history,
        "with_scaling": code_agreement(conditioner, velocity, images, targets, sigma, steps, cfg.seed),
    }
    if cfg.phase1.ablation:
        c_off, v_off, hist_off = distill(cfg, images, targets, 1.0, progress, "phase1 ablation (no scaling)")
        report["without_scaling"] = code_agreement(c_off, v_off, images, targets, 1.0, steps, cfg.seed)
        report["history_without_scaling"] = hist_off
        checkpoint.save(Path(run_dir) / "phase1" / "noscale.safetensors", {"conditioner": c_off, "velocity": v_off},
                        meta={"sigma": 1.0, "stage": "phase1-ablation"})
    atomic_write_text(Path(run_dir) / "phase1" / "summary.json", json.dumps(report, indent=2))
    checkpoint.save(runs.checkpoint_path(run_dir, "phase1"), {"conditioner": conditioner, "velocity": velocity},
                    meta={"sigma": sigma, "stage": "phase1", "init": str(Path(init_ckpt).resolve())})
    if progress:
        w = report["with_scaling"]
        line = f"phase1: sigma {sigma:.4f}  cosine {w['cosine']:.3f}  norm ratio {w['norm_ratio']:.3f}"
        if "without_scaling" in report:
            wo = report["without_scaling"]
            line += f"  | no scaling: cosine {wo['cosine']:.3f}  norm ratio {wo['norm_ratio']:.3f}"
        tqdm.write(line)
    return conditioner, velocity
