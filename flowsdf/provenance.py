"""What produced a result: written into every summary.json, eval JSON and report.

A figure without its machine, build and code version cannot be compared with another; this is
the one place that gathers them: the package version and git commit (when the code is a git
checkout), torch and Python, the device, the threads, and the processes of a torchrun run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

from flowsdf.device import device_name

SOURCE = Path(__file__).resolve().parent.parent


def git_commit() -> str | None:
    """The commit of the checkout the package runs from (with "+dirty" for uncommitted changes), or None."""
    if not (SOURCE / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(SOURCE), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(SOURCE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def package_version() -> str:
    try:
        return importlib.metadata.version("flowsdf")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def provenance(device: torch.device | str, seconds: dict[str, float] | None = None) -> dict:
    """The record of what is producing a result now, JSON-ready. `seconds`: wall / training times."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    record = {
        "flowsdf": package_version(), "git_commit": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "device": device_name(device), "threads": torch.get_num_threads(),
        "processes": world,
        "ddp_backend": ("nccl" if torch.device(device).type == "cuda" else "gloo") if world > 1 else None,
    }
    if seconds:
        record["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return record
