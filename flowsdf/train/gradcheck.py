"""Gradient-flow validation: one backward pass through the whole Flow-SDF chain.

image -> conditioner -> Euler steps -> code -> decoder -> renderer -> BCE. Every trainable part
must receive a non-zero gradient; we report each part's gradient norm and the forward and
backward wall times on the device used.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from flowsdf import runs
from flowsdf.device import device_name, pick_device
from flowsdf.flow import flow_predictor
from flowsdf.loading import load_model
from flowsdf.runs import run_data
from flowsdf.train.loop import flatten_views, index_views, silhouette_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_grads(run_dir: Path, data_dir: Path | None = None, device: str = "auto", batch_size: int | None = None) -> dict:
    """Load a Stage-2 run's latest flow (Phase 2 if present, else Phase 1 + Stage-1 decoder); one backward pass."""
    dev = pick_device(device)
    run_dir = Path(run_dir)
    pipe = load_model(run_dir, "flow", dev, finished=False)
    cfg = pipe.cfg
    conditioner, velocity, decoder = pipe.conditioner, pipe.velocity, pipe.decoder
    modules = {"conditioner": conditioner, "velocity": velocity, "decoder": decoder}
    source = runs.checkpoint_path(run_dir, pipe.stages[-1])  # phase2, or phase1 before Phase 2
    data = run_data(cfg, run_dir, data_dir).to(dev)
    views = flatten_views(data.train.input)
    b = batch_size or cfg.phase2.batch_size
    batch = index_views(views, torch.arange(min(b, views.images.shape[0]), device=dev))
    predict = flow_predictor(conditioner, velocity, pipe.sigma, cfg.flow.steps, cfg.decoder.latent_shape)  # differentiable
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
