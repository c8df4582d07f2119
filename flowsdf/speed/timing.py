"""Inference latency benchmarks: figures to report, not unit tests.

Every figure comes with the device that produced it (``device_name``), because a latency means
nothing without the machine. What is timed, per batch size, on random images (no data needed):

- ``encoder``: one forward pass of the Stage-1 CNN encoder, images -> codes.
- ``flow``: the conditioner forward pass plus the inference sampler at each number of steps,
  images -> codes. The noise draw is inside the timed call; it is negligible next to the nets.
- ``mesh``: marching cubes on the decoder's field of one code at ``mesh_resolution`` grid points
  per axis (the R^3 decoder evaluations dominate), timed separately because a mesh is extracted
  per shape, not per batch. The field is clipped to the renderer's bounding sphere, as in
  ``flowsdf.metrics.shapes``, so even a poor code has a surface and marching cubes really runs.

Everything runs under ``torch.no_grad``; pass models in eval mode. On CUDA each call is bracketed
by ``torch.cuda.synchronize`` so the wall time covers the kernels, not just their launch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence

import torch

from flowsdf.device import device_name
from flowsdf.mesh.extract import extract_mesh
from flowsdf.pipeline import FlowSDF


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


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
    pipe: FlowSDF,
    batch_sizes: Sequence[int] = (1, 32),
    steps: Sequence[int] = (1, 2, 4, 8),
    mesh_resolution: int = 64,
    repeats: int = 10,
    warmup: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Latency of each inference stage of a model, for each batch size and number of flow steps.

    Args:
        pipe: the model (a CNN: its encoder is timed; a flow: conditioner + the inference sampler).
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
    device, size = pipe.device, pipe.image_size
    gen = torch.Generator().manual_seed(seed)
    timed = dict(repeats=repeats, warmup=warmup, device=device)

    def codes(images: torch.Tensor, n_steps: int) -> torch.Tensor:
        return pipe.predictor(n_steps)(images, gen)  # (B, *latent)

    per_batch: dict[str, Any] = {}
    for batch in batch_sizes:
        images = torch.rand(batch, 3, size, size, generator=gen).to(device)  # (B, 3, S, S)
        row: dict[str, Any] = {}
        if pipe.is_flow:
            row["flow"] = {str(n): time_call(lambda n=n: codes(images, n), **timed) for n in steps}
        else:
            row["encoder"] = time_call(lambda: codes(images, 0), **timed)
        per_batch[str(batch)] = row

    # The mesh is timed for one code the model itself predicts, as a user's call would be.
    image = torch.rand(1, 3, size, size, generator=gen).to(device)  # (1, 3, S, S)
    field = pipe.field(codes(image, max(steps))[0])
    mesh = lambda: extract_mesh(field, resolution=mesh_resolution, device=device)  # noqa: E731
    return {
        "device": device_name(device),
        "image_size": size,
        "batch": per_batch,
        "mesh": time_call(mesh, **timed),
        "mesh_resolution": mesh_resolution,
        "mesh_faces": int(len(mesh()[1])),
    }
