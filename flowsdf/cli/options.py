"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse

from flowsdf.errors import FlowSDFError

DEVICE_HELP = ("auto (the device FLOWSDF_DEVICE names if set, else CUDA if present), cpu, cuda, cuda:1 ... "
               "(default auto)")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, resolved by flowsdf.device.pick_device when the command runs."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def check_range(option: str, value: int | float, low: int | float, high: int | float) -> None:
    """A command-line number outside its documented bounds is one clear error, before any work."""
    if not low <= value <= high:
        raise FlowSDFError(f"{option} must be from {low:,} to {high:,}, got {value}")
