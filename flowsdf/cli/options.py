"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse

DEVICE_HELP = ("auto (the device FLOWSDF_DEVICE names if set, else CUDA if present), cpu, cuda, cuda:1 ... "
               "(default auto)")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, resolved by flowsdf.device.pick_device when the command runs."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
