"""Inference latency benchmarks: figures to report, not unit tests.

Every figure comes with the device that produced it (``device_name``), because a latency means
nothing without the machine. What is timed, per batch size, on random images (no data needed):

- ``encoder``: one forward pass of the Stage-1 CNN encoder, images -> codes.
- ``flow``: the conditioner forward pass plus Euler sampling of the flow at each number of steps,
  images -> codes. The noise draw is inside the timed call; it is negligible next to the nets.
- ``mesh``: marching cubes on the decoder's field of one code at ``mesh_resolution`` grid points
  per axis (the R^3 decoder evaluations dominate), timed separately because a mesh is extracted
  per shape, not per batch. The field is clipped to the renderer's bounding sphere, as in
  ``flowsdf.eval.shapes3d``, so even a poor code has a surface and marching cubes really runs.

Everything runs under ``torch.no_grad``; pass models in eval mode. On CUDA each call is bracketed
by ``torch.cuda.synchronize`` so the wall time covers the kernels, not just their launch.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from flowsdf.eval.shapes3d import bounded, decoder_field
from flowsdf.flow import euler_sample, sample_noise
from flowsdf.mesh.extract import extract_mesh
from flowsdf.models.sdf import SDFDecoder


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """A human-readable name of the device that timings ran on.

    The GPU's name on CUDA (e.g. "NVIDIA H100 80GB HBM3"), otherwise
    "CPU (<model or architecture>, <n> threads)" with torch's current intra-op thread count.
    """
    if _is_cuda(device):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({_cpu_model()}, {torch.get_num_threads()} threads)"


def time_call(
    fn: Callable[[], Any],
    repeats: int = 10,
    warmup: int = 2,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Wall time of ``fn()`` in milliseconds over ``repeats`` calls after ``warmup`` untimed ones.

    Warm-up calls absorb one-off costs (CUDA context and kernel selection, allocator growth).
    On a CUDA device the queue is drained before and after each call, so a call's time is the
    time its kernels took.

    Returns:
        dict with ``mean_ms``, ``std_ms`` (sample standard deviation, 0 for one repeat),
        ``min_ms`` and ``repeats``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sync = (lambda: torch.cuda.synchronize(device)) if _is_cuda(device) else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {
        "mean_ms": statistics.fmean(times),
        "std_ms": statistics.stdev(times) if repeats > 1 else 0.0,
        "min_ms": min(times),
        "repeats": repeats,
    }


@torch.no_grad()
def inference_latency(
    encoder: nn.Module | None,
    conditioner: nn.Module | None,
    velocity: nn.Module | None,
    decoder: SDFDecoder,
    sigma: float,
    image_size: int,
    device: torch.device | str,
    batch_sizes: Sequence[int] = (1, 32),
    steps: Sequence[int] = (1, 2, 4, 8),
    mesh_resolution: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of each inference stage of a model, for each batch size and number of flow steps.

    Args:
        encoder: the Stage-1 encoder, or None for a model without one (it is then not timed).
        conditioner, velocity: the flow's image conditioner and velocity net, both or neither.
        decoder: the SDF decoder, for mesh extraction.
        sigma: the flow's source noise scale.
        image_size: side of the random square RGB images.
        device: where the models live and everything runs.
        batch_sizes, steps: the grid of batch sizes and Euler step counts.
        mesh_resolution: marching-cubes grid points per axis.
        repeats, warmup: as in ``time_call``.
        seed: seeds the random images.
    Returns:
        ``{"device": str, "image_size": int, "batch": {"<B>": {"encoder": timing,
        "flow": {"<steps>": timing}}}, "mesh": timing, "mesh_resolution": int, "mesh_faces": int}``
        where a timing is ``time_call``'s dict. Keys are strings so the dict is the same after a
        JSON round trip; "encoder" / "flow" are absent for a model without them.
    """
    if (conditioner is None) != (velocity is None):
        raise ValueError("pass both conditioner and velocity, or neither")
    if encoder is None and velocity is None:
        raise ValueError("nothing to time: pass an encoder or a conditioner and velocity net")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    timed = dict(repeats=repeats, warmup=warmup, device=device)

    def flow_codes(images: torch.Tensor, n_steps: int) -> torch.Tensor:
        cond = conditioner(images)  # (B, C)
        z0 = sample_noise((images.shape[0], velocity.config.latent_dim), sigma, device=device)  # (B, D)
        return euler_sample(velocity, z0, cond, n_steps)  # (B, D)

    per_batch: dict[str, Any] = {}
    for batch in batch_sizes:
        images = torch.rand(batch, 3, image_size, image_size, generator=gen).to(device)  # (B, 3, S, S)
        row: dict[str, Any] = {}
        if encoder is not None:
            row["encoder"] = time_call(lambda: encoder(images), **timed)
        if velocity is not None:
            row["flow"] = {
                str(n): time_call(lambda n=n: flow_codes(images, n), **timed) for n in steps
            }
        per_batch[str(batch)] = row

    # The mesh is timed for one code the model itself predicts, as a user's call would be.
    image = torch.rand(1, 3, image_size, image_size, generator=gen).to(device)  # (1, 3, S, S)
    code = (flow_codes(image, max(steps)) if velocity is not None else encoder(image))[0]  # (D,)
    field = bounded(decoder_field(decoder, code))
    mesh = lambda: extract_mesh(field, resolution=mesh_resolution, device=device)  # noqa: E731
    return {
        "device": device_name(device),
        "image_size": image_size,
        "batch": per_batch,
        "mesh": time_call(mesh, **timed),
        "mesh_resolution": mesh_resolution,
        "mesh_faces": int(len(mesh()[1])),
    }
