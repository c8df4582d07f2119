"""`flowsdf view`: the local web viewer of a trained run.

Everything the server writes (uploads, the files it serves, meshes, example pictures) goes into one
private temporary folder, made here before Gradio is imported (GRADIO_TEMP_DIR) and removed when
the server stops, by Ctrl-C or SIGTERM alike (flowsdf.viewer.app.serve).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
import tempfile
from pathlib import Path

from flowsdf.cli.options import add_device, add_sampling, check_sampling
from flowsdf.errors import FlowSDFError


def add_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("view", help="local web viewer: step the flow, reconstruct an uploaded picture",
                       description="Serve a web page for a trained run (a finished Stage-2 flow): step the "
                                   "flow's Euler steps on dataset or uploaded pictures, with noise scaling on "
                                   "or off; reconstruct an uploaded picture as 3-D meshes to turn and download. "
                                   "Served on 127.0.0.1 (this machine only) unless --host and --allow-remote "
                                   "say otherwise.")
    v.add_argument("run", type=Path, help="a run folder with a finished flow (Stage 2)")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only); any other than a loopback "
                        "address needs --allow-remote")
    v.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other machines can reach: the page has no login, and anyone who can "
                        "reach it can upload pictures and use this machine's CPU or GPU")
    v.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    v.add_argument("--data", type=Path, help="dataset folder (default: the run's recorded dataset)")
    add_device(v)
    v.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest upload accepted, in MB of 1,048,576 bytes as the page counts them (default 10)")
    v.add_argument("--uploads-per-minute", type=int, default=30,
                   help="uploads accepted per client address and minute (default 30)")
    v.add_argument("--max-samples", type=int, default=8, help="largest K per reconstruction (default 8)")
    v.add_argument("--max-resolution", type=int, default=128,
                   help="largest marching-cubes grid per axis (default 128)")
    v.add_argument("--guidance", type=float, metavar="W",
                   help="the Reconstruct tab's starting classifier-free guidance, 1 to 7 (1 = none; default: the "
                        "run's flow.guidance); the page's slider changes it per request")
    add_sampling(v)
    v.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise FlowSDFError(f"--port must be from 1 to 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise FlowSDFError("--max-upload-mb must be positive")
    if args.uploads_per_minute < 1:
        raise FlowSDFError("--uploads-per-minute must be at least 1")
    if args.max_samples < 1:
        raise FlowSDFError("--max-samples must be at least 1")
    if args.guidance is not None and not 1 <= args.guidance <= 7:
        raise FlowSDFError(f"--guidance must be from 1 to 7 (the page's range), got {args.guidance:g}")
    check_sampling(args)
    if not is_loopback(args.host):
        if not args.allow_remote:
            raise FlowSDFError(f"--host {args.host} lets other machines reach the viewer, which has no login; "
                               "add --allow-remote if that is what you want, or use --host 127.0.0.1")
        print(f"flowsdf: warning: serving on {args.host}: anyone who can reach this address can use the viewer "
              "(no login); stop it with Ctrl-C", file=sys.stderr)

    from flowsdf.viewer.backend import Limits

    limits = Limits(max_samples=args.max_samples, max_resolution=args.max_resolution,
                    max_upload_mb=args.max_upload_mb, uploads_per_minute=args.uploads_per_minute)
    if limits.max_resolution < limits.min_resolution:
        raise FlowSDFError(f"--max-resolution must be at least {limits.min_resolution}")
    workdir = Path(tempfile.mkdtemp(prefix="flowsdf-view-"))
    stopped = None
    try:
        os.environ["GRADIO_TEMP_DIR"] = str(workdir / "gradio")  # read when gradio is imported, just below
        from flowsdf.viewer.app import Stopped, build_app, serve
        from flowsdf.viewer.backend import Viewer

        viewer = Viewer.load(args.run, args.device, args.data, limits, workdir=workdir, guidance=args.guidance,
                             temperature=args.temperature, consistency=args.consistency)
        try:
            serve(build_app(viewer), limits.max_upload_bytes, limits.uploads_per_minute, args.host, args.port)
        except (KeyboardInterrupt, Stopped) as e:
            stopped = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if stopped:
            print(f"flowsdf view: stopped ({stopped}); its temporary files are removed", file=sys.stderr)
