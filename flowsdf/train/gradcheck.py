"""Gradient-flow validation: one backward pass through the whole Flow-SDF chain.

image -> conditioner -> Euler steps -> code -> decoder -> renderer -> BCE. Every trainable part
must receive a non-zero gradient; we report each part's gradient norm and the forward and
backward wall times on the device used.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from flowsdf import checkpoint, runs
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.eval.timing import device_name
from flowsdf.flow import flow_predictor
from flowsdf.models.build import build_flow, build_stage1
from flowsdf.runs import run_data
from flowsdf.train.loop import flatten_views, index_views, silhouette_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_grads(run_dir: Path, data_dir: Path | None = None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Load a Stage-2 run (Phase 2 if present, else Phase 1 + Stage-1 decoder); one backward pass."""
    dev = pick_device(device)
    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    conditioner, velocity = (m.to(dev) for m in build_flow(cfg))
    _, decoder = (m.to(dev) for m in build_stage1(cfg))
    p2, p1, s1 = (runs.checkpoint_path(run_dir, s) for s in ("phase2", "phase1", "stage1"))
    modules = {"conditioner": conditioner, "velocity": velocity, "decoder": decoder}
    if p2.exists():
        source = p2
        sigma = checkpoint.load(p2, modules, map_location=dev)["sigma"]
    elif p1.exists() and s1.exists():
        source = p1
        sigma = checkpoint.load(p1, {"conditioner": conditioner, "velocity": velocity}, map_location=dev)["sigma"]
        checkpoint.load(s1, {"decoder": decoder, "encoder": build_stage1(cfg)[0]}, map_location=dev)
    else:
        raise FlowSDFError(f"{run_dir} has no Stage-2 checkpoint (phase2/ or phase1/ + stage1/)")
    data = run_data(cfg, run_dir, data_dir).to(dev)
    views = flatten_views(data.train.input)
    b = batch_size or cfg.phase2.batch_size
    batch = index_views(views, torch.arange(min(b, views.images.shape[0]), device=dev))
    predict = flow_predictor(conditioner, velocity, sigma, cfg.flow.steps)
    for m in modules.values():
        m.train()

    def forward_loss() -> torch.Tensor:
        codes = predict(batch.images, torch.Generator().manual_seed(cfg.seed))  # (B, D)
        return silhouette_loss(decoder, codes, batch, cfg.render, cfg.phase2.tau_end)[0]

    # One untimed pass first: the timed one should not pay for allocator or kernel warm-up.
    forward_loss().backward()
    for m in modules.values():
        m.zero_grad(set_to_none=True)

    _sync(dev)
    t0 = time.perf_counter()
    loss = forward_loss()
    _sync(dev)
    t1 = time.perf_counter()
    loss.backward()
    _sync(dev)
    t2 = time.perf_counter()

    norms = {}
    for name, m in modules.items():
        grads = [p.grad for p in m.parameters() if p.grad is not None]
        norms[name] = torch.sqrt(sum((g.float() ** 2).sum() for g in grads)).item() if grads else 0.0
    return {
        "checkpoint": str(source),
        "batch": batch.images.shape[0],
        "loss": loss.item(),
        "grad_norm": norms,
        "all_nonzero": all(v > 0 for v in norms.values()),
        "forward_ms": 1000 * (t1 - t0),
        "backward_ms": 1000 * (t2 - t1),
        "device": device_name(dev),
    }
