"""Command-line options that several commands share, defined once."""

from __future__ import annotations

import argparse

from flowsdf.errors import FlowSDFError

DEVICE_HELP = ("auto (the device FLOWSDF_DEVICE names if set, else CUDA if present), cpu, cuda, cuda:1 ... "
               "(default auto)")


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, resolved by flowsdf.device.pick_device when the command runs."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def check_range(option: str, value: int | float | None, low: int | float, high: int | float) -> None:
    """A command-line number outside its documented bounds is one clear error, before any work
    (None: the option was not given). Every number a command takes has an upper bound, like every
    config field (flowsdf.schema): no option can ask for an allocation or a run without end."""
    if value is not None and not low <= value <= high:
        raise FlowSDFError(f"{option} must be from {low:,} to {high:,}, got {value}")


# The bounds of the command-line numbers (their --help says them); see check_range.
THREADS = (1, 1024)  # more than any machine we know has cores
WORKERS = (1, 256)  # rendering processes of `flowsdf data`
EPOCHS = (1, 1_000_000)  # as the config's epochs
SAMPLES = (1, 256)  # flow samples per picture (best-of-K)
MESH_RESOLUTION = (8, 512)  # as the config's eval.mesh_resolution
REFINE_STEPS = (0, 100_000)  # test-time fitting steps per picture
BENCH_BATCH = (1, 1024)  # images rendered at once in a timed training step
GRAD_BATCH = (1, 65_536)  # as the config's batch_size (the dataset caps it anyway)
GUIDANCE = (0, 100)  # classifier-free guidance W (1 = the plain conditional flow)
TEMPERATURE = (0.1, 10.0)  # as the config's flow.temperature
CONSISTENCY = (0.0, 1.0)  # as the config's flow.consistency


def add_sampling(parser: argparse.ArgumentParser) -> None:
    """--temperature and --consistency: a flow's sampling settings for this call (FlowSDF.set_sampling)."""
    parser.add_argument("--temperature", type=float, metavar="T",
                        help=f"the flow's source noise x T, {TEMPERATURE[0]:,} to {TEMPERATURE[1]:,}: wider samples above "
                             "1 (default: the run's flow.temperature)")
    parser.add_argument("--consistency", type=float, metavar="C",
                        help="view-frame flows: draw a sample again while its silhouette from the picture's camera "
                             f"reaches less than C x the noiseless sample's IoU with the picture, {CONSISTENCY[0]:,} to "
                             f"{CONSISTENCY[1]:,}; a sample none of whose draws reaches it is the noiseless one (0 = off; "
                             "default: the run's flow.consistency)")


def check_sampling(args: argparse.Namespace) -> None:
    """The bounds of add_sampling's numbers, before any work."""
    check_range("--temperature", args.temperature, *TEMPERATURE)
    check_range("--consistency", args.consistency, *CONSISTENCY)
