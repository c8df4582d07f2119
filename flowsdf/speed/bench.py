"""`flowsdf bench`: the speed figures of one device, in one run, as a table and a JSON record.

- train_step: one Stage-1 optimiser step at seed settings (64x64 images, 48 samples per ray,
  encoder + decoder + renderer + BCE + backward + Adam), in images per second, for the renderer
  variants: the naive all-samples graph, the exhaustive argmin fast path (float32 and bfloat16
  search) and the coarse-to-fine search (the presets' default). Random images; the silhouettes
  are a disc. With `run` the weights come from a trained Stage-1 run (how many rays the coarse
  search refines depends on the field: a fresh decoder is near zero everywhere, its worst case).
- flow: conditioner + Euler steps (1/2/4/8) at batch 1 and 64, reference sampler
  (flowsdf.flow.euler_sample under no_grad) and the inference sampler (and a CUDA graph of it on CUDA);
  flow_dit: the same with the DiT velocity net (velocity.kind=dit).
- mesh: extract_mesh of one decoded code at 128^3.
"""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow, build_stage1
from flowsdf.config import Config, preset
from flowsdf.device import device_name
from flowsdf.fast_sampler import CUDAGraphed, make_sampler
from flowsdf.fields import bounded, code_field
from flowsdf.flow import euler_sample
from flowsdf.mesh.extract import extract_mesh
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_views, silhouette_logits
from flowsdf.speed.timing import time_call


@dataclasses.dataclass
class BenchSettings:
    preset: str = "seed"  # model sizes, image size and samples per ray
    batch: int = 8  # training-step batch (the naive graph uses naive_batch)
    naive_batch: int = 1
    repeats: int = 3
    flow_batches: tuple[int, ...] = (1, 64)
    flow_steps: tuple[int, ...] = (1, 2, 4, 8)
    flow_repeats: int = 50
    mesh_resolution: int = 128
    tau: float = 0.01


def quick_settings() -> BenchSettings:
    """Seconds on a CPU (for tests): the tiny preset, small batches, one repeat."""
    return BenchSettings(preset="tiny", batch=2, repeats=1, flow_batches=(1, 4), flow_steps=(1, 8), flow_repeats=2,
                         mesh_resolution=32)


def train_variants(render: RenderConfig) -> dict[str, RenderConfig]:
    base = dataclasses.replace(render, naive=False)
    return {
        "naive": dataclasses.replace(base, naive=True, search="exhaustive", search_dtype="float32"),
        "exhaustive_f32": dataclasses.replace(base, search="exhaustive", search_dtype="float32"),
        "exhaustive_bf16": dataclasses.replace(base, search="exhaustive", search_dtype="bfloat16"),
        "coarse_bf16": dataclasses.replace(base, search="coarse", search_dtype="bfloat16"),
    }


def _train_inputs(cfg: Config, batch: int, device: torch.device):
    size = cfg.data.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=gen).to(device)  # (B, 3, S, S)
    K = torch.tensor(cameras.intrinsics(size, cfg.data.fov_deg)).float().expand(batch, 3, 3).to(device)
    pos = cameras.random_viewpoints(np.random.default_rng(0), batch, cfg.data.cam_distance)
    c2w = torch.stack([torch.tensor(cameras.look_at(p)).float() for p in pos]).to(device)  # (B, 4, 4)
    u = torch.linspace(-1, 1, size, device=device)
    disc = ((u[:, None] ** 2 + u[None, :] ** 2) < 0.3).float().expand(batch, size, size)  # (B, S, S)
    return images, K, c2w, disc


def bench_train_step(cfg: Config, settings: BenchSettings, device: torch.device, run: Path | None) -> dict[str, Any]:
    encoder, decoder = (m.to(device) for m in build_stage1(cfg))
    if run is not None:
        checkpoint.load(runs.checkpoint_path(run, "stage1"), {"encoder": encoder, "decoder": decoder}, map_location=device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-6)
    out = {}
    for name, rc in train_variants(cfg.render).items():
        batch = settings.naive_batch if rc.naive else settings.batch
        images, K, c2w, masks = _train_inputs(cfg, batch, device)

        def step(rc=rc, images=images, K=K, c2w=c2w, masks=masks) -> None:
            codes = encoder(images)  # (B, D)
            min_sdf = render_views(decoder.field(codes), K, c2w, images.shape[-1], rc, settings.tau)  # (B, S, S)
            loss = F.binary_cross_entropy_with_logits(silhouette_logits(min_sdf, settings.tau), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        repeats = 1 if rc.naive and device.type == "cpu" else settings.repeats
        t = time_call(step, repeats=repeats, warmup=1, device=device)
        out[name] = {"batch": batch, "images_per_s": batch / (t["mean_ms"] / 1e3), **t}
    return out


def bench_flow(cfg: Config, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Conditioner + Euler steps: the reference sampler (euler_sample under no_grad) against the
    inference sampler, and on CUDA the inference call recorded as a CUDA graph."""
    conditioner, velocity = (m.to(device).eval() for m in build_flow(cfg))
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero output layers, as after training (zero-init gives v = 0)
        for p in velocity.parameters():
            p.add_(0.02 * torch.randn_like(p))
    size, sigma, latent = cfg.data.image_size, 0.04, cfg.decoder.latent_shape
    out: dict[str, Any] = {}
    for batch in settings.flow_batches:
        images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        z0 = (sigma * torch.randn(batch, *latent, generator=torch.Generator().manual_seed(2))).to(device)
        row: dict[str, Any] = {}
        for steps in settings.flow_steps:
            sampler = make_sampler(velocity, sigma, steps, latent)

            def reference(images=images, z0=z0, steps=steps):
                with torch.no_grad():
                    return euler_sample(velocity, z0, conditioner(images), steps)

            def fast(images=images, z0=z0, sampler=sampler):
                with torch.no_grad():
                    return sampler(conditioner(images), z0)

            timed = {"repeats": settings.flow_repeats, "warmup": 3, "device": device}
            entry = {"reference": time_call(reference, **timed), "fast": time_call(fast, **timed)}
            if device.type == "cuda":
                graphed = CUDAGraphed(lambda i, z, sampler=sampler: sampler(conditioner(i), z), images, z0)
                entry["fast_cuda_graph"] = time_call(lambda graphed=graphed, images=images, z0=z0: graphed(images, z0), **timed)
            row[str(steps)] = entry
        out[str(batch)] = row
    return out


def bench_mesh(cfg: Config, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    _, decoder = (m.to(device).eval() for m in build_stage1(cfg))
    code = 0.05 * torch.randn(cfg.decoder.latent_shape, generator=torch.Generator().manual_seed(3))
    field = bounded(code_field(decoder, code.to(device)), cfg.render.bound_radius)
    run = lambda: extract_mesh(field, resolution=settings.mesh_resolution, device=device)
    return {"resolution": settings.mesh_resolution, **time_call(run, repeats=settings.repeats, warmup=1, device=device)}


def run_bench(settings: BenchSettings, device: torch.device, run: Path | None = None) -> dict[str, Any]:
    """All figures of `flowsdf bench` on one device, as one JSON-ready dict."""
    cfg = runs.read_config(run) if run is not None else preset(settings.preset)
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "settings": {**dataclasses.asdict(settings), "image_size": cfg.data.image_size,
                     "n_samples": cfg.render.n_samples, "run": str(run) if run else None},
        "train_step": bench_train_step(cfg, settings, device, run),
        "flow": bench_flow(cfg, settings, device),
        # The scaling path's velocity net (models/dit.py) at the same sizes otherwise.
        "flow_dit": bench_flow(dataclasses.replace(cfg, velocity=dataclasses.replace(cfg.velocity, kind="dit")),
                               settings, device),
        "mesh": bench_mesh(cfg, settings, device),
    }


def table(result: dict[str, Any]) -> str:
    """The figures as a plain-text table."""
    s = result["settings"]
    lines = [f"device: {result['device']}  torch {result['torch']}  threads {result['threads']}",
             f"training step ({s['image_size']}x{s['image_size']}, {s['n_samples']} samples/ray), images/s:"]
    for name, r in result["train_step"].items():
        lines.append(f"  {name:16s} {r['images_per_s']:10.2f}   (batch {r['batch']}, {r['mean_ms']:.0f} ms/step)")
    for key, name in (("flow", "MLP velocity net"), ("flow_dit", "DiT velocity net")):
        lines.append(f"conditioner + flow ({name}), ms (reference / fast"
                     + (" / CUDA graph)" if "cuda" in str(result[key]) else ")"))
        for batch, row in result[key].items():
            for steps, e in row.items():
                cells = " / ".join(f"{e[k]['mean_ms']:.3f} (min {e[k]['min_ms']:.3f})" for k in e)
                lines.append(f"  batch {batch:>3s} steps {steps}: {cells}")
    m = result["mesh"]
    lines.append(f"mesh extraction {m['resolution']}^3: {m['mean_ms']:.0f} ms (min {m['min_ms']:.0f})")
    return "\n".join(lines)
