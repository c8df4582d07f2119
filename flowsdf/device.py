"""Which torch device a command runs on."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from flowsdf.errors import FlowSDFError


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks the device the environment variable FLOWSDF_DEVICE names when it is set (so a
    whole session or test suite can be kept on one device), else CUDA when present, else CPU; an
    explicit name must exist."""
    if name == "auto":
        if os.environ.get("FLOWSDF_DEVICE"):
            return pick_device(os.environ["FLOWSDF_DEVICE"])
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FlowSDFError(f"device {name!r} requested but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise FlowSDFError(f"unknown device {name!r}") from e
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FlowSDFError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


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
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({_cpu_model()}, {torch.get_num_threads()} threads)"
