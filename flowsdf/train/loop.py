"""The epoch loop shared by every phase that renders silhouettes (Stage 1, Flow Phase 2).

Stage 1 (Mini SDF-SRN): image -> CNN encoder -> code -> SDF decoder -> renderer -> BCE against
the silhouette. Stage 2 (Flow-SDF): Phase 1 distils the Stage-1 codes into a rectified flow (no
rendering); Phase 2 reuses `fit_silhouettes` with image -> conditioner -> 8 Euler steps -> code.

Determinism: the model is initialised from `cfg.seed`, and each epoch's shuffle (and any noise
a phase draws) comes from a generator seeded by (seed, epoch). A checkpoint at the end of every
epoch therefore carries everything needed: resuming after epoch k replays epochs k+1.. exactly.

Failures leave the run consistent: a step whose loss or gradient is not finite stops the phase
before the optimiser takes it (one line naming the phase, epoch and step; the last checkpoint,
of the previous epoch, stays as it was); an epoch's files are written checkpoint first, then its
metrics row, then its figures, so nothing is ever ahead of the checkpoint; and room for the
checkpoints is checked before the first step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.config import Config, TrainConfig
from flowsdf.data.dataset import Dataset, Views
from flowsdf.errors import FlowSDFError
from flowsdf.fields import Predictor
from flowsdf.figures.plots import prediction_grid
from flowsdf.figures.shading import shading_figure
from flowsdf.metrics.views import prediction_rows
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views, silhouette_logits
from flowsdf.train import distributed
from flowsdf.train.ema import WeightAverage
from flowsdf.train.graphed import GraphedStep, make_capturable, set_group_lr
from flowsdf.train.losses import all_views_batch, extra_terms
from flowsdf.train.rgb import shaded_loss


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
    min_sdf = render_views(decoder.field(codes), views.K, views.c2w, size, render_cfg, tau)  # (B, H, W)
    logits = silhouette_logits(min_sdf, tau)
    return F.binary_cross_entropy_with_logits(logits, views.masks), logits


def best_of_k_loss(decoder: nn.Module, codes: Tensor, views: Views, render_cfg: RenderConfig, tau: float,
                   k: int) -> tuple[Tensor, dict[str, float]]:
    """The silhouette BCE of the best of K samples per shape: codes (b*K, *latent) (K samples of each
    of b shapes, in order), views (b, V, ...) the shape's supervising views. Each sample is scored on
    all V views and only the best one's loss is kept: the samples are free to differ where the views
    agree with several of them, which is what keeps a generative flow from collapsing to one code."""
    b, V = views.masks.shape[:2]
    rep = Views(*(x.repeat_interleave(k, dim=0).flatten(0, 1) for x in (views.images, views.masks, views.K,
                                                                        views.c2w, views.light)))  # b*K*V views
    size = views.masks.shape[-1]
    min_sdf = render_views(decoder.field(codes.repeat_interleave(V, dim=0)), rep.K, rep.c2w, size, render_cfg, tau)
    bce = F.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, tau), rep.masks, reduction="none")
    per_sample = bce.flatten(1).mean(1).view(b, k, V).mean(2)  # (b, K)
    best = per_sample.min(dim=1).values  # (b,)
    return best.mean(), {"mean_of_k_bce": per_sample.mean().item()}


def step_loss(phase: "Phase", codes: Tensor, batch: Views, cfg: Config, tau: float) -> tuple[Tensor, dict[str, float]]:
    """The training loss of one batch: silhouette BCE, plus the shaded-RGB term when the phase
    has rgb_weight > 0 (Stage 3, train/rgb.py). Returns (loss, parts to log as epoch means)."""
    if phase.train.rgb_weight == 0:
        return silhouette_loss(phase.decoder, codes, batch, cfg.render, tau)[0], {}
    return shaded_loss(phase.decoder, phase.modules["albedo"], codes, batch, cfg.render, tau, cfg.data.ambient,
                       phase.train.rgb_weight)


@torch.no_grad()
def grad_norm(params: list[nn.Parameter]) -> Tensor:
    """The global L2 norm of the parameters' gradients, a 0-d tensor (no device sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def kept_checkpoint(ckpt: Path, finished: int) -> str:
    """What a stopped phase leaves, in words: the checkpoint of its last finished epoch."""
    return f"the checkpoint of epoch {finished} is kept ({ckpt})" if finished else "no checkpoint was written"


def index_views(views: Views, idx: Tensor) -> Views:
    return Views(*(x[idx] for x in (views.images, views.masks, views.K, views.c2w, views.light)))


class SilhouetteObjective(nn.Module):
    """One step's loss on this process's share of a global batch; DDP wraps it for several ranks.

    Every rank maps the whole global batch to codes (a few ms: the renderer is nearly all of a
    step) so that any noise the predictor draws is what one process would draw, then renders
    only its share. The loss (`step_loss`: the silhouette BCE, plus Stage 3's shaded RGB) is
    scaled so that DDP's gradient average is the gradient of the mean over the global batch; in
    one process it is the plain mean.
    """

    def __init__(self, phase: "Phase", cfg: Config):
        super().__init__()
        self.parts = nn.ModuleDict(phase.modules)  # registered, so DDP sees their parameters
        self.phase, self.cfg = phase, cfg

    def forward(self, batch: Views, gen: torch.Generator, tau: float, part: slice) -> tuple[Tensor, Tensor, dict[str, float]]:
        """-> (loss to back-propagate, sum over the share of each image's loss (detached), the
        same sums of the loss's logged parts)."""
        tc, K = self.phase.train, self.phase.train.best_of
        # all_views: a sample is a shape with its V views, its code predicted from the first.
        pictures = batch.images[:, 0] if tc.all_views else batch.images
        codes = self.phase.predict(pictures.repeat_interleave(K, dim=0) if K > 1 else pictures, gen)  # (B*K, *latent)
        codes = codes[part.start * K : part.stop * K]  # (b*K, *latent) this process's shapes' samples
        local = Views(*(x[part] for x in (batch.images, batch.masks, batch.K, batch.c2w, batch.light)))
        b, total = local.images.shape[0], batch.images.shape[0]
        if b == 0:  # every parameter still takes part, with a zero gradient
            zero = 0.0 * sum(p.sum() for p in self.parameters())
            return zero, zero.detach(), {}
        if K > 1:  # the best of K samples against all the shape's views (config check: all_views)
            loss, parts = best_of_k_loss(self.phase.decoder, codes, local, self.cfg.render, tau, K)
        else:
            if tc.all_views:
                codes, local = all_views_batch(codes, local)  # (b*V, *latent), b*V views
            loss, parts = step_loss(self.phase, codes, local, self.cfg, tau)
        extra = extra_terms(self.phase.decoder, codes, local, self.cfg.render, tc.sdfsrn, gen)  # eikonal, background bound
        if tc.code_l2 > 0:  # a prior that keeps the codes compact (DeepSDF's, for a code table)
            extra = (0 if extra is None else extra) + tc.code_l2 * codes.square().mean()
        if extra is not None:
            loss = loss + extra
        return loss * distributed.loss_scale(b, total), loss.detach() * b, {k: v * b for k, v in parts.items()}


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
        if distributed.is_main():
            runs.truncate_metrics(run_dir, stage, start_epoch)
    if cfg.render.compile:
        # An instance attribute shadows the method, so decoder.field() uses the compiled
        # function; the weights and the checkpoint are untouched. Chunk sizes vary: dynamic.
        phase.decoder.forward_points = torch.compile(phase.decoder.forward_points, dynamic=True)
    objective = SilhouetteObjective(phase, cfg)
    step_loss = distributed.wrap(objective)
    graphed = None
    if tc.graph:
        if distributed.active():
            raise FlowSDFError(f"{stage}.graph runs in one process; drop it under torchrun")
        make_capturable(optimizer, params[0].device)
    main = distributed.is_main()
    progress = progress and main
    last = tc.epochs if until_epoch is None else min(until_epoch, tc.epochs)
    check_checkpoint_space(ckpt, stored, optimizer, resume, last - start_epoch)

    # all_views: one sample per shape (its views stay together); else one sample per view.
    train_views = data.train.input if tc.all_views else flatten_views(data.train.input)
    n = train_views.images.shape[0]
    steps_per_epoch = math.ceil(n / tc.batch_size)
    averaged = (lambda: ema.applied(phase.modules)) if ema is not None else contextlib.nullcontext  # noqa: E731
    for epoch in range(start_epoch, last):
        tau, epoch_lr = tau_at(tc, epoch), lr_at(tc, epoch)
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(n, generator=gen).to(train_views.images.device)
        t0, total, seen, part_sums, seen_here = time.perf_counter(), 0.0, 0, {}, 0
        for m in phase.modules.values():
            m.train()
        bar = tqdm(range(0, n, tc.batch_size), desc=f"{stage} {epoch + 1}/{tc.epochs}", leave=False, disable=not progress)
        for i, s in enumerate(bar):
            lr = epoch_lr * warmup_factor(tc, epoch * steps_per_epoch + i)
            lrs = [lr * tc.lr_scale.get(group["name"], 1.0) for group in optimizer.param_groups]
            batch = index_views(train_views, order[s : s + tc.batch_size])
            b = batch.images.shape[0]
            if tc.graph and b == tc.batch_size:  # the whole step in one replay (a last, smaller batch runs eagerly)
                if graphed is None:
                    # No generator: a captured step draws no random numbers (config check).
                    graphed = GraphedStep(lambda views, t, n=b: objective(views, None, t, slice(0, n))[0], params,
                                          optimizer, tc.grad_clip, batch)
                mean, norm = graphed.step(batch, tau, lrs)
                step_sum, norm = (mean * b).item(), norm.item()  # the sum as the eager path forms it
                if not (math.isfinite(step_sum) and math.isfinite(norm)):
                    raise FlowSDFError(
                        f"{stage} diverged at epoch {epoch + 1} of {tc.epochs}, step {i + 1} of {steps_per_epoch}: the "
                        f"loss is {step_sum / b:g} and the gradient norm {norm:g} (a captured step takes its optimiser step "
                        f"before they are read); {kept_checkpoint(ckpt, epoch)}; lower {stage}.lr ({tc.lr:g}) and "
                        f"train again")
                if ema is not None:
                    ema.update(phase.modules)
                total, seen, seen_here = total + step_sum, seen + b, seen_here + b
                bar.set_postfix(loss=f"{total / seen:.4f}", tau=f"{tau:.3f}")
                continue
            for group, value in zip(optimizer.param_groups, lrs):
                set_group_lr(group, value)
            share = distributed.share(b)
            loss, loss_sum, part_sum = step_loss(batch, gen, tau, share)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip) if tc.grad_clip > 0 else grad_norm(params)
            # The loss is fetched every step anyway; the gradient norm comes with it. Both are the
            # same on every rank (a sum over ranks; gradients after DDP's average), so all stop together.
            step_sum, norm = distributed.all_sum(loss_sum.item()), norm.item()
            if not (math.isfinite(step_sum) and math.isfinite(norm)):
                raise FlowSDFError(
                    f"{stage} diverged at epoch {epoch + 1} of {tc.epochs}, step {i + 1} of {steps_per_epoch}: the loss "
                    f"is {step_sum / b:g} and the gradient norm {norm:g}; stopped before the optimiser step, "
                    f"{kept_checkpoint(ckpt, epoch)}; lower {stage}.lr ({tc.lr:g}) and train again")
            optimizer.step()
            if ema is not None:
                ema.update(phase.modules)
            total, seen = total + step_sum, seen + b
            # Loss parts (Stage 3) are logged from this process's shares: rank 0's under torchrun.
            part_sums = {k: part_sums.get(k, 0.0) + v for k, v in part_sum.items()}
            seen_here += len(range(b)[share])
            bar.set_postfix(loss=f"{total / seen:.4f}", tau=f"{tau:.3f}")
        seconds = time.perf_counter() - t0
        # With all_views a sample is a shape and all its views: images rendered = samples x views.
        images = seen * (train_views.masks.shape[1] if tc.all_views else 1)
        row = {"epoch": epoch + 1, "loss": total / seen, "tau": tau, "lr": lr, "seconds": seconds, "images_per_s": images / seconds}
        row.update({k: v / seen_here for k, v in part_sums.items()})
        done = epoch + 1 == tc.epochs
        if not main:  # rank 0 writes the figures, metrics and checkpoint
            continue
        figure = None
        if (epoch + 1) % tc.figure_every == 0 or done:
            # Rendered now (its IoUs go into the metrics row), written after the checkpoint.
            with averaged():
                figure = figure_rows(phase, cfg, data, tau)
            row.update(figure[1])
        meta = {"epoch": epoch + 1, "stage": stage, **(phase.extra_meta or {})}
        try:
            checkpoint.save(ckpt, stored, optimizer, meta)
        except checkpoint.NonFiniteError as e:  # finite steps can still overflow a weight
            raise FlowSDFError(
                f"{stage} diverged in epoch {epoch + 1} of {tc.epochs}, by its last step ({steps_per_epoch} of "
                f"{steps_per_epoch}): {e.tensor} is not finite; {kept_checkpoint(ckpt, epoch)}; lower {stage}.lr "
                f"({tc.lr:g}) and train again") from e
        runs.append_metrics(run_dir, stage, row)
        if figure is not None:
            with averaged():
                epoch_figure(phase, cfg, data, run_dir, epoch + 1, tau, figure[0])
        if progress:
            tqdm.write(f"{stage} epoch {epoch + 1}/{tc.epochs}  loss {row['loss']:.5f}  tau {tau:.4f}  {seconds:.1f}s")
    if ema is not None and last == tc.epochs:
        ema.copy_to(phase.modules)
    return last == tc.epochs


def check_checkpoint_space(ckpt: Path, stored: dict[str, nn.Module], optimizer: torch.optim.Optimizer, resume: bool,
                           epochs_to_run: int) -> None:
    """Before the first step: room for the checkpoints this run will write. A new checkpoint is
    written beside the old one before it replaces it, so a stage that saves twice or more needs
    two checkpoints' room (a resumed stage: one, beside the one it has). Checked by rank 0 for
    every process, so that all of them stop together."""
    problem = None
    if distributed.is_main() and epochs_to_run > 0:
        copies = 1 if resume or epochs_to_run == 1 else 2
        try:
            checkpoint.ensure_space(ckpt.parent, copies * checkpoint.state_bytes(stored, optimizer),
                                    f"{copies} checkpoint(s) of {ckpt.parent.name}")
        except FlowSDFError as e:
            problem = e
    if distributed.all_sum(float(problem is not None)) > 0:
        raise problem or FlowSDFError("not enough free space for the checkpoints (see process 0's error)")


@torch.no_grad()
def figure_rows(phase: Phase, cfg: Config, data: Dataset, tau: float) -> tuple[list[dict], dict]:
    """The epoch figure's rows (figures.prediction_grid) and the metrics row's figure IoUs."""
    for m in phase.modules.values():
        m.eval()
    k = min(phase.train.figure_shapes, len(data.train))
    rows, ious = prediction_rows(phase.predict, phase.decoder, data.train, k, cfg.render, tau, cfg.seed, novel=2)
    return rows, {"figure_train_iou": ious["input"], "figure_novel_iou": ious["novel"]}


@torch.no_grad()
def epoch_figure(phase: Phase, cfg: Config, data: Dataset, run_dir: Path, epoch: int, tau: float, rows: list[dict]) -> None:
    """Predicted vs ground-truth silhouettes (training view + two novel views) of a few shapes."""
    for m in phase.modules.values():
        m.eval()
    prediction_grid(rows, f"{phase.name} epoch {epoch}", Path(run_dir) / phase.name / "figures" / f"epoch_{epoch:04d}.png")
    if "albedo" in phase.modules:  # Stage 3: predicted shading and normals beside the ground truth
        k = min(phase.train.figure_shapes, len(data.train))
        shading_figure(phase.predict, phase.decoder, phase.modules["albedo"], data.train, k, cfg, cfg.seed,
                       f"{phase.name} epoch {epoch}", Path(run_dir) / phase.name / "figures" / f"shading_{epoch:04d}.png")
