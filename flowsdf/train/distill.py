"""Flow Phase 1: distil the frozen Stage-1 encoder's codes into a rectified flow (no rendering).

A non-finite loss or gradient stops Phase 1 with one line naming the iteration (checked on the
device every step, fetched with the logged losses: no extra sync per step); Phase 1 writes its
files only once it is done, so nothing of it is left, and the Stage-1 run is never written to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow
from flowsdf.checkpoint import write_json
from flowsdf.config import Config
from flowsdf.errors import FlowSDFError
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


def distill(
    cfg: Config, images: Tensor, targets: Tensor, sigma: float, progress: bool, label: str
) -> tuple[ImageConditioner, VelocityNet, list[dict]]:
    """Phase 1: fit conditioner + velocity net to the target codes (velocity + sampling loss)."""
    pc, device = cfg.phase1, targets.device
    conditioner, velocity = (m.to(device) for m in build_flow(cfg))
    params = [*conditioner.parameters(), *velocity.parameters()]
    optimizer = torch.optim.Adam(params, lr=pc.lr)
    # On the training device: every draw of an iteration (its batch, noise and times) is made there,
    # so a GPU iteration does no host work but launching kernels (on a CPU: the same draws as ever).
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    step_loss = distributed.wrap(DistillObjective(conditioner, velocity, cfg.flow))
    n_batch = min(pc.batch_size, len(targets))
    if n_batch < distributed.world_size():
        raise FlowSDFError(f"Phase 1's batch ({n_batch}) is smaller than the number of processes ({distributed.world_size()})")
    history = []
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first non-finite iteration, on the device
    bar = tqdm(range(pc.iterations), desc=label, leave=False, disable=not (progress and distributed.is_main()))
    for it in bar:
        idx = torch.randperm(len(targets), generator=gen, device=device)[: pc.batch_size]
        part = distributed.share(len(idx))
        loss, parts = step_loss(images[idx], targets[idx], sigma, gen, part)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm(params))
        first_bad = torch.where((first_bad < 0) & ~finite, it, first_bad)
        optimizer.step()
        if it % 50 == 0 or it == pc.iterations - 1:
            check_finite(first_bad, label, pc.iterations, pc.lr)
            b = part.stop - part.start  # the terms are means over this rank's share: weight them
            terms = {k: distributed.all_sum(v.item() * b) / len(idx) for k, v in parts.items()}
            total = cfg.flow.velocity_weight * terms["velocity"] + cfg.flow.sampling_weight * terms["sampling"]
            history.append({"iteration": it + 1, "loss": total, **terms})
            bar.set_postfix(loss=f"{total:.5f}")
    weights = {f"{n}.{k}": v for n, m in (("conditioner", conditioner), ("velocity", velocity)) for k, v in m.state_dict().items()}
    bad = checkpoint.non_finite(weights)  # finite steps can still overflow a weight
    if bad is not None:
        raise FlowSDFError(f"{label} diverged by its last iteration ({pc.iterations} of {pc.iterations}): {bad} is not "
                           f"finite; nothing of Phase 1 is saved; lower phase1.lr ({pc.lr:g}) and train again")
    return conditioner, velocity, history


def check_finite(first_bad: Tensor, label: str, iterations: int, lr: float) -> None:
    """Stop Phase 1 (every process together) if any iteration so far had a non-finite loss or gradient."""
    bad = int(first_bad.item())
    if distributed.all_sum(float(bad >= 0)) > 0:
        where = f"iteration {bad + 1} of {iterations}" if bad >= 0 else "an iteration of another process"
        raise FlowSDFError(f"{label} diverged at {where} (Phase 1 counts iterations, not epochs): the loss or its gradient "
                           f"is not finite; nothing of Phase 1 is saved; lower phase1.lr ({lr:g}) and train again")


def phase1(
    cfg: Config, run_dir: Path, images: Tensor, targets: Tensor, sigma: float, progress: bool, init_ckpt: Path
) -> tuple[ImageConditioner, VelocityNet]:
    """Distil with noise scaling (and, for the ablation, without); save and report both.

    The main checkpoint is written last, so its presence means all of Phase 1 is done; an
    interruption anywhere before simply reruns Phase 1 (about a minute on the quick preset).
    """
    # Sizes from the models as they are built (on the CPU: a pretrained conditioner loads its file,
    # which a meta device cannot hold), before any training.
    sizes = checkpoint.state_bytes(dict(zip(("conditioner", "velocity"), build_flow(cfg))))
    checkpoint.ensure_space(Path(run_dir) / "phase1", sizes * (2 if cfg.phase1.ablation else 1), "Phase 1's checkpoints")
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
    if not distributed.is_main():  # rank 0 writes Phase 1's files
        return conditioner, velocity
    if cfg.phase1.ablation:
        checkpoint.save(Path(run_dir) / "phase1" / "noscale.safetensors", {"conditioner": c_off, "velocity": v_off},
                        meta={"sigma": 1.0, "stage": "phase1-ablation"})
    report["provenance"] = provenance(targets.device, seconds={"wall": time.perf_counter() - t0, "training": seconds})
    write_json(Path(run_dir) / "phase1" / "summary.json", report)
    checkpoint.save(runs.checkpoint_path(run_dir, "phase1"), {"conditioner": conditioner, "velocity": velocity},
                    meta={"sigma": sigma, "stage": "phase1", **init_record(run_dir, init_ckpt)})
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
