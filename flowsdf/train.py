"""Training: plain functions, one epoch loop shared by every stage that renders silhouettes.

Stage 1 (Mini SDF-SRN): image -> CNN encoder -> code -> SDF decoder -> renderer -> BCE against
the silhouette. Flow Phase 2 reuses `fit_silhouettes` with a different image -> code function.

Determinism: the model is initialised from `cfg.seed`, and each epoch's shuffle (and any noise
a phase draws) comes from a generator seeded by (seed, epoch). A checkpoint at the end of every
epoch therefore carries everything needed: resuming after epoch k replays epochs k+1.. exactly.
"""

from __future__ import annotations

import json
import math
import platform
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
from flowsdf.errors import FlowSDFError
from flowsdf.evaluate import evaluate_views, prediction_rows
from flowsdf.figures import prediction_grid
from flowsdf.models.encoder import CNNEncoder
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render import RenderConfig, render_views, silhouette_logits

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
    a long run can be done in pieces. Returns True when the phase has run all its epochs.
    """
    tc, stage = phase.train, phase.name
    params = [p for m in phase.modules.values() for p in m.parameters()]
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    ckpt = runs.checkpoint_path(run_dir, stage)
    start_epoch = 0
    if resume:
        meta = checkpoint.load(ckpt, phase.modules, optimizer, map_location=params[0].device)
        start_epoch = int(meta["epoch"])
        runs.truncate_metrics(run_dir, stage, start_epoch)

    train_views = flatten_views(data.train.input)
    n = train_views.images.shape[0]
    last = tc.epochs if until_epoch is None else min(until_epoch, tc.epochs)
    for epoch in range(start_epoch, last):
        tau, lr = tau_at(tc, epoch), lr_at(tc, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(n, generator=gen).to(train_views.images.device)
        t0, total, seen = time.perf_counter(), 0.0, 0
        for m in phase.modules.values():
            m.train()
        bar = tqdm(range(0, n, tc.batch_size), desc=f"{stage} {epoch + 1}/{tc.epochs}", leave=False, disable=not progress)
        for s in bar:
            batch = index_views(train_views, order[s : s + tc.batch_size])
            codes = phase.predict(batch.images, gen)  # (B, D)
            loss, _ = silhouette_loss(phase.decoder, codes, batch, cfg.render, tau)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            b = batch.images.shape[0]
            total, seen = total + loss.item() * b, seen + b
            bar.set_postfix(loss=f"{total / seen:.4f}", tau=f"{tau:.3f}")
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": total / seen, "tau": tau, "lr": lr, "seconds": seconds, "images_per_s": seen / seconds}
        done = epoch + 1 == tc.epochs
        if (epoch + 1) % tc.figure_every == 0 or done:
            row.update(epoch_figure(phase, cfg, data, run_dir, epoch + 1, tau))
        runs.append_metrics(run_dir, stage, row)
        meta = {"epoch": epoch + 1, "stage": stage, **(phase.extra_meta or {})}
        checkpoint.save(ckpt, phase.modules, optimizer, meta)
        if progress:
            tqdm.write(f"{stage} epoch {epoch + 1}/{tc.epochs}  loss {row['loss']:.5f}  tau {tau:.4f}  {seconds:.1f}s")
    return last == tc.epochs


@torch.no_grad()
def epoch_figure(phase: Phase, cfg: Config, data: Dataset, run_dir: Path, epoch: int, tau: float) -> dict:
    """Predicted vs ground-truth silhouettes (training view + two novel views) of a few shapes."""
    for m in phase.modules.values():
        m.eval()
    k = min(phase.train.figure_shapes, len(data.train))
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, ious = prediction_rows(phase.predict, phase.decoder, data.train, k, cfg.render, tau, gen, novel=2)
    prediction_grid(rows, f"{phase.name} epoch {epoch}", Path(run_dir) / phase.name / "figures" / f"epoch_{epoch:04d}.png")
    return {"figure_train_iou": ious["input"], "figure_novel_iou": ious["novel"]}


def build_stage1(cfg: Config) -> tuple[CNNEncoder, SDFDecoder]:
    torch.manual_seed(cfg.seed)
    return CNNEncoder(cfg.encoder), SDFDecoder(cfg.decoder)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit name must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlowSDFError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise FlowSDFError(f"unknown device {name!r}") from e


def load_data(cfg: Config, data_dir: Path | None) -> Dataset:
    """The dataset given by --data (must exist), or the preset's cached one (made if missing)."""
    if data_dir is not None:
        data = data_mod.load(Path(data_dir))
    else:
        data = data_mod.ensure(cfg.data, data_mod.default_root(cfg.data))
    if data.config.image_size != cfg.encoder.image_size:
        raise FlowSDFError(
            f"dataset images are {data.config.image_size}px but the config expects {cfg.encoder.image_size}px"
        )
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
    cfg, resume = runs.prepare(run_dir, cfg, "stage1", resume)
    data = load_data(cfg, data_dir).to(dev)
    runs.begin(run_dir, cfg, "stage1")
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
    gen = torch.Generator().manual_seed(cfg.seed)
    summary = {
        "stage": phase.name,
        "epochs": phase.train.epochs,
        "train_loss_last_epoch": metrics[-1]["loss"] if metrics else None,
        "train_seconds_total": sum(r["seconds"] for r in metrics),
        "wall_seconds_this_session": wall_seconds,
        "device": describe_device(next(phase.decoder.parameters()).device),
        "train_views": evaluate_views(phase.predict, phase.decoder, data.train, "input", cfg.render, tau, gen),
        "novel_views": evaluate_views(phase.predict, phase.decoder, data.train, "novel", cfg.render, tau, gen),
    }
    atomic_write_text(Path(run_dir) / phase.name / "summary.json", json.dumps(summary, indent=2))
    return summary


def describe_device(device: torch.device) -> str:
    """A human-readable name for timings: the GPU model, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
