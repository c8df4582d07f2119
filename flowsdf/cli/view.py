"""`flowsdf view`: the local web viewer of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowsdf.cli.options import add_device
from flowsdf.errors import FlowSDFError


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("view", help="local web viewer: step the flow, reconstruct an uploaded picture",
                       description="Serve a web page for a trained run (a finished Stage-2 flow): step the "
                                   "flow's Euler steps on dataset or uploaded pictures, with noise scaling on "
                                   "or off; reconstruct an uploaded picture as 3-D meshes to turn and download. "
                                   "Served on 127.0.0.1 (this machine only) unless --host says otherwise.")
    v.add_argument("run", type=Path, help="a run folder with a finished flow (Stage 2)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    v.add_argument("--data", type=Path, help="dataset folder (default: the run's recorded dataset)")
    add_device(v)
    v.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB (default 10)")
    v.add_argument("--max-samples", type=int, default=8, help="largest K per reconstruction (default 8)")
    v.add_argument("--max-resolution", type=int, default=128,
                   help="largest marching-cubes grid per axis (default 128)")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flowsdf.viewer.backend import Limits, Viewer

    if not 1 <= args.port <= 65535:
        raise FlowSDFError(f"--port must be from 1 to 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise FlowSDFError("--max-upload-mb must be positive")
    if args.max_samples < 1:
        raise FlowSDFError("--max-samples must be at least 1")
    limits = Limits(max_samples=args.max_samples, max_resolution=args.max_resolution,
                    max_upload_mb=args.max_upload_mb)
    if limits.max_resolution < limits.min_resolution:
        raise FlowSDFError(f"--max-resolution must be at least {limits.min_resolution}")
    viewer = Viewer.load(args.run, args.device, args.data, limits)

    from flowsdf.viewer.app import build_app, serve

    serve(build_app(viewer), viewer, args.host, args.port)
    return 0
