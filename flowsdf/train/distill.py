"""Flow Phase 1: distil the frozen Stage-1 encoder's codes into a rectified flow (no rendering).

A non-finite loss or gradient stops Phase 1 with one line naming the iteration (checked on the
device every step, fetched with the logged losses: no extra sync per step); nothing non-finite is
ever saved, and the Stage-1 run is never written to.

Phase 1 saves where it stands (weights, Adam's moments, the generator that draws batches and
noise, the loss history) every few minutes to phase1/partial.safetensors, and once done to
phase1/last.safetensors: an interrupted Phase 1 resumes from its last save, and a finished one can
be lengthened (`--set phase1.iterations=N --resume`, before Phase 2 starts) as if it had been
asked for N iterations from the start.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow
from flowsdf.checkpoint import write_json
from flowsdf.config import Config
from flowsdf.errors import FlowSDFError, warn
from flowsdf.flow import (
    FlowConfig,
    draw_objective_noise,
    drop_condition,
    euler_sample,
    flow_loss,
    sample_noise,
)
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.velocity import VelocityNet
from flowsdf.provenance import provenance
from flowsdf.train import distributed
from flowsdf.train.loop import grad_norm


@torch.no_grad()
def code_agreement(
    conditioner: ImageConditioner, velocity: VelocityNet, images: Tensor, targets: Tensor, sigma: float, steps: int, seed: int
) -> dict:
    """How well sampled codes match their targets: mean cosine and norm ratio (and the norms)."""
    gen = torch.Generator().manual_seed(seed)
    z0 = sample_noise(targets.shape, sigma, gen, targets.device)  # (N, D)
    samples = euler_sample(velocity, z0, velocity.prepare(conditioner(images)), steps=steps).flatten(1)  # (N, D)
    targets = targets.flatten(1)  # (N, D) a code of any shape as one vector
    cos = F.cosine_similarity(samples, targets, dim=-1)  # (N,)
    s_norm, t_norm = samples.norm(dim=-1), targets.norm(dim=-1)  # (N,)
    return {
        "cosine": cos.mean().item(),
        "norm_ratio": (s_norm / t_norm).mean().item(),
        "sample_norm": s_norm.mean().item(),
        "target_norm": t_norm.mean().item(),
        "noise_norm": z0.flatten(1).norm(dim=-1).mean().item(),
    }


class DistillObjective(nn.Module):
    """Phase 1's loss (flowsdf.flow.flow_loss) on this process's share of a global batch.

    The noise and times of the whole batch are drawn first (flow.draw_objective_noise), so each
    rank sees what one process would; then only the share runs through the conditioner and the
    flow. The conditioner normalises per image (GroupNorm), so a share's codes do not depend on
    the rest of the batch. The loss is scaled for DDP's gradient average (distributed.loss_scale).
    """

    def __init__(self, conditioner: nn.Module, velocity: nn.Module, flow_cfg: FlowConfig):
        super().__init__()
        self.conditioner, self.velocity, self.flow_cfg = conditioner, velocity, flow_cfg

    def forward(
        self, images: Tensor, z1: Tensor, sigma: float, gen: torch.Generator, part: slice
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """images (B, 3, H, W), target codes z1 (B, *latent) -> (loss to back-propagate, per-term losses)."""
        noise = draw_objective_noise(z1, sigma, gen, self.flow_cfg).rows(part)  # this rank's rows of the batch's draws
        z1 = z1[part]
        tokens = self.conditioner(images[part])  # (b, N, C)
        if noise.keep is not None:  # classifier-free guidance: some rows learn the unconditional velocity
            tokens = drop_condition(tokens, noise.keep)
        cond = self.velocity.prepare(tokens)  # (b, ...) as the net reads it
        total, parts = flow_loss(self.velocity, z1, cond, noise, self.flow_cfg)
        return total * distributed.loss_scale(z1.shape[0], images.shape[0]), parts


LOG_EVERY = 50  # iterations between logged losses (and the finite check they carry)
SAVE_SECONDS = 300.0  # how often a running Phase 1 saves where it stands, at a logged iteration


@dataclass
class DistillState:
    """Where a distillation stands, beside its weights and Adam's moments (checkpoint meta)."""

    iteration: int = 0  # iterations done
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # training time so far, over every session
    generator: str | None = None  # base64 of the generator's state after `iteration` iterations

    def meta(self) -> dict:
        return {"iteration": self.iteration, "history": self.history, "seconds": self.seconds,
                "generator": self.generator}


def generator_state(gen: torch.Generator) -> str:
    return base64.b64encode(gen.get_state().numpy().tobytes()).decode("ascii")


def set_generator_state(gen: torch.Generator, state: str) -> None:
    gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))


@dataclass
class Saving:
    """Where and with what a distillation saves itself (rank 0 writes; None: never saves)."""

    path: Path  # phase1/partial.safetensors
    meta: dict  # sigma, stage, the Stage-1 record


@dataclass
class Distilled:
    """A finished distillation: what its checkpoint holds."""

    conditioner: ImageConditioner
    velocity: VelocityNet
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    state: DistillState

    def save(self, path: Path, meta: dict) -> None:
        save_state(path, meta, self.conditioner, self.velocity, self.optimizer, self.generator, self.state)


def distill(
    cfg: Config, images: Tensor, targets: Tensor, sigma: float, progress: bool, label: str,
    start: Path | None = None, saving: Saving | None = None,
) -> Distilled:
    """Phase 1: fit conditioner + velocity net to the target codes (velocity + sampling loss).

    `start`: a Phase-1 checkpoint to go on from (its weights, Adam and generator state, history);
    `saving`: save there every SAVE_SECONDS and after the last iteration.
    """
    pc, device = cfg.phase1, targets.device
    conditioner, velocity = (m.to(device) for m in build_flow(cfg))
    params = [*conditioner.parameters(), *velocity.parameters()]
    optimizer = torch.optim.Adam(params, lr=pc.lr)
    # On the training device: every draw of an iteration (its batch, noise and times) is made there,
    # so a GPU iteration does no host work but launching kernels (on a CPU: the same draws as ever).
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    state = DistillState()
    if start is not None:
        state = load_state(start, conditioner, velocity, optimizer, gen, cfg.seed, device)
        if state.iteration > pc.iterations:
            raise FlowSDFError(f"{start} holds {state.iteration} Phase-1 iterations, more than phase1.iterations "
                               f"({pc.iterations}); Phase 1 can be lengthened, not shortened")
    step_loss = distributed.wrap(DistillObjective(conditioner, velocity, cfg.flow))
    n_batch = min(pc.batch_size, len(targets))
    if n_batch < distributed.world_size():
        raise FlowSDFError(f"Phase 1's batch ({n_batch}) is smaller than the number of processes ({distributed.world_size()})")
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first non-finite iteration, on the device
    bar = tqdm(range(state.iteration, pc.iterations), desc=label, leave=False, initial=state.iteration,
               total=pc.iterations, disable=not (progress and distributed.is_main()))
    t0 = last_save = time.perf_counter()
    seconds0 = state.seconds
    for it in bar:
        idx = torch.randperm(len(targets), generator=gen, device=device)[: pc.batch_size]
        part = distributed.share(len(idx))
        loss, parts = step_loss(images[idx], targets[idx], sigma, gen, part)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm(params))
        first_bad = torch.where((first_bad < 0) & ~finite, it, first_bad)
        optimizer.step()
        if it % LOG_EVERY == 0 or it == pc.iterations - 1:
            check_finite(first_bad, label, pc.iterations, pc.lr)  # so nothing saved below went wrong
            b = part.stop - part.start  # the terms are means over this rank's share: weight them
            terms = {k: distributed.all_sum(v.item() * b) / len(idx) for k, v in parts.items()}
            total = cfg.flow.velocity_weight * terms["velocity"] + cfg.flow.sampling_weight * terms["sampling"]
            state.history.append({"iteration": it + 1, "loss": total, **terms})
            bar.set_postfix(loss=f"{total:.5f}")
            # Every process decides together (a collective at the same iteration), whatever its clock
            # says; `saving` is the same on every process, so they all ask or none does.
            if saving is not None and it < pc.iterations - 1 and \
                    distributed.all_sum(float(time.perf_counter() - last_save >= SAVE_SECONDS)) > 0:
                state.iteration, state.seconds = it + 1, seconds0 + time.perf_counter() - t0
                save_state(saving.path, saving.meta, conditioner, velocity, optimizer, gen, state)
                last_save = time.perf_counter()
    state.iteration, state.seconds = pc.iterations, seconds0 + time.perf_counter() - t0
    state.generator = generator_state(gen)
    weights = {f"{n}.{k}": v for n, m in (("conditioner", conditioner), ("velocity", velocity)) for k, v in m.state_dict().items()}
    bad = checkpoint.non_finite(weights)  # finite steps can still overflow a weight
    if bad is not None:
        raise FlowSDFError(f"{label} diverged by its last iteration ({pc.iterations} of {pc.iterations}): {bad} is not "
                           f"finite; {KEPT}; lower phase1.lr ({pc.lr:g}) and train again")
    if saving is not None:
        save_state(saving.path, saving.meta, conditioner, velocity, optimizer, gen, state)
    return Distilled(conditioner, velocity, optimizer, gen, state)


def save_state(path: Path, meta: dict, conditioner: nn.Module, velocity: nn.Module, optimizer: torch.optim.Optimizer,
               gen: torch.Generator, state: DistillState) -> None:
    """Save a distillation as it stands (rank 0; the others hold the same weights and draws)."""
    if not distributed.is_main():
        return
    state.generator = generator_state(gen)
    checkpoint.save(path, {"conditioner": conditioner, "velocity": velocity}, optimizer, {**meta, **state.meta()})


def load_state(path: Path, conditioner: nn.Module, velocity: nn.Module, optimizer: torch.optim.Optimizer,
               gen: torch.Generator, seed: int, device: torch.device) -> DistillState:
    """Load a Phase-1 checkpoint to go on from; returns where it stood.

    A checkpoint from before Phase 1 saved its progress has neither Adam's moments nor the
    generator's state: it goes on with fresh moments and a generator seeded by its iteration
    count, said in a warning (the result is then not the run an uninterrupted Phase 1 makes).
    """
    header = checkpoint.read_header(path)
    has_optimizer = "optimizer_groups" in header
    meta = checkpoint.load(path, {"conditioner": conditioner, "velocity": velocity},
                           optimizer if has_optimizer else None, map_location=device)
    if "iteration" in meta:
        state = DistillState(int(meta["iteration"]), list(meta["history"]), float(meta["seconds"]), meta.get("generator"))
    else:  # a finished Phase 1 from before: its summary says how far it went
        old = json.loads((Path(path).parent / "summary.json").read_text())
        state = DistillState(int(old["iterations"]), list(old.get("history", [])), float(old.get("seconds", 0.0)))
    if state.generator is not None and has_optimizer:
        set_generator_state(gen, state.generator)
    else:
        gen.manual_seed(seed + 2 + state.iteration)
        warn(f"{path} predates Phase-1 progress saving: Adam's moments and the batch draws start afresh at "
             f"iteration {state.iteration}")
    return state


KEPT = "nothing of Phase 1 is saved after its last good save"


def check_finite(first_bad: Tensor, label: str, iterations: int, lr: float) -> None:
    """Stop Phase 1 (every process together) if any iteration so far had a non-finite loss or gradient."""
    bad = int(first_bad.item())
    if distributed.all_sum(float(bad >= 0)) > 0:
        where = f"iteration {bad + 1} of {iterations}" if bad >= 0 else "an iteration of another process"
        raise FlowSDFError(f"{label} diverged at {where} (Phase 1 counts iterations, not epochs): the loss or its gradient "
                           f"is not finite; {KEPT}; lower phase1.lr ({lr:g}) and train again")


def phase1(
    cfg: Config, run_dir: Path, images: Tensor, targets: Tensor, sigma: float, progress: bool, init_ckpt: Path,
    start: Path | None = None,
) -> tuple[ImageConditioner, VelocityNet]:
    """Distil with noise scaling (and, for the ablation, without); save and report both.

    `start`: phase1/partial.safetensors (an interrupted Phase 1) or phase1/last.safetensors (a
    finished one, lengthened), to go on from. The main checkpoint is written last, so its
    presence means all of Phase 1 is done.
    """
    # Sizes from the models as they are built (on the CPU: a pretrained conditioner loads its file,
    # which a meta device cannot hold), before any training.
    flow_modules = dict(zip(("conditioner", "velocity"), build_flow(cfg)))
    weights = checkpoint.state_bytes(flow_modules)
    with_adam = checkpoint.state_bytes(flow_modules, torch.optim.Adam([p for m in flow_modules.values() for p in m.parameters()]))
    # partial.safetensors and last.safetensors side by side for a moment, and the ablation's weights
    checkpoint.ensure_space(Path(run_dir) / "phase1", 2 * with_adam + (weights if cfg.phase1.ablation else 0),
                            "Phase 1's checkpoints")
    t0 = time.perf_counter()
    meta = {"sigma": sigma, "stage": "phase1", **init_record(run_dir, init_ckpt)}
    partial = Path(run_dir) / "phase1" / "partial.safetensors"
    main = distill(cfg, images, targets, sigma, progress, "phase1 distil", start, Saving(partial, meta))
    conditioner, velocity, seconds = main.conditioner, main.velocity, main.state.seconds
    steps = cfg.flow.steps
    report = {
        "sigma": sigma,
        "seconds": seconds,
        "iterations": cfg.phase1.iterations,
        "history": main.state.history,
        "with_scaling": code_agreement(conditioner, velocity, images, targets, sigma, steps, cfg.seed),
    }
    if start is not None:
        report["resumed_from"] = start.name
    if cfg.phase1.ablation:
        ablation = distill(cfg, images, targets, 1.0, progress, "phase1 ablation (no scaling)")
        report["without_scaling"] = code_agreement(ablation.conditioner, ablation.velocity, images, targets, 1.0, steps, cfg.seed)
        report["history_without_scaling"] = ablation.state.history
    if not distributed.is_main():  # rank 0 writes Phase 1's files
        return conditioner, velocity
    if cfg.phase1.ablation:
        checkpoint.save(Path(run_dir) / "phase1" / "noscale.safetensors",
                        {"conditioner": ablation.conditioner, "velocity": ablation.velocity},
                        meta={"sigma": 1.0, "stage": "phase1-ablation"})
    report["provenance"] = provenance(targets.device, seconds={"wall": time.perf_counter() - t0, "training": seconds})
    write_json(Path(run_dir) / "phase1" / "summary.json", report)
    main.save(runs.checkpoint_path(run_dir, "phase1"), meta)
    partial.unlink(missing_ok=True)  # last.safetensors holds all of it now
    if progress:
        w = report["with_scaling"]
        line = f"phase1: sigma {sigma:.4f}  cosine {w['cosine']:.3f}  norm ratio {w['norm_ratio']:.3f}"
        if "without_scaling" in report:
            wo = report["without_scaling"]
            line += f"  | no scaling: cosine {wo['cosine']:.3f}  norm ratio {wo['norm_ratio']:.3f}"
        tqdm.write(line)
    return conditioner, velocity


def init_record(run_dir: Path, init_ckpt: Path) -> dict:
    """What identifies the Stage-1 checkpoint Phase 1 was distilled from: its content digest
    (what a resume checks, so a copied or moved run still matches and another Stage 1 does not)
    and, for people reading the header, its path relative to the run."""
    return {"init_sha256": checkpoint.digest(init_ckpt),
            "init_relative": os.path.relpath(Path(init_ckpt).resolve(), Path(run_dir).resolve())}
