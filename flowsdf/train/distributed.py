"""Data-parallel training over several processes (one per GPU, or CPU processes with gloo).

Launch any training command with torchrun, e.g.

    torchrun --nproc-per-node 2 -m flowsdf train --stage cnn --preset quick --out runs/ddp

torchrun starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; the training
functions call `init_from_env`, which joins the process group when WORLD_SIZE > 1 and does
nothing otherwise. Each optimiser step still uses the config's batch (the *global* batch):
every rank takes its contiguous `share` of it, the loss is scaled so that DDP's average of the
ranks' gradients equals the gradient of the mean over the global batch, and every rank then
takes the same optimiser step. Rank 0 alone writes checkpoints, metrics, figures and summaries.

Exit: gloo on CPU aborts at interpreter shutdown in about one run in five ("terminate called
without an active exception") unless the group is destroyed first and the process leaves with
os._exit; `exit_process` does that, and the CLI calls it whenever a group was started.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from flowsdf.errors import FlowSDFError


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that torchrun describes; returns the device this rank uses.

    A single process (no WORLD_SIZE, or 1) is left alone. On CUDA each rank takes the GPU of
    its LOCAL_RANK (backend nccl); on the CPU the backend is gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise FlowSDFError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints progress."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others (e.g. generating a cached dataset once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def share(n: int) -> slice:
    """This rank's contiguous part of a global batch of n items (may be empty when n < world)."""
    r, w = rank(), world_size()
    return slice(n * r // w, n * (r + 1) // w)


def loss_scale(local: int, total: int) -> float:
    """Factor for a loss that is a mean over this rank's `local` items of a `total`-item batch.

    DDP averages gradients over the ranks, so the global mean's gradient needs each rank's mean
    weighted by local / total and multiplied back by the world size. Exactly 1.0 in one process.
    """
    return local * world_size() / total


def all_sum(value: float) -> float:
    """Sum of a float over all ranks (for logged figures; the value itself in one process)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.item()


def wrap(module: nn.Module) -> nn.Module:
    """DDP around `module` when a process group is active; the module itself otherwise.

    The module's parameters are used in every step (ranks with an empty share add a zero term),
    so DDP needs no search for unused parameters.
    """
    if not active():
        return module
    return DistributedDataParallel(module)


def exit_process(status: int) -> NoReturn:
    """Leave the process group, flush, and exit without the interpreter's teardown (see above)."""
    if active():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
