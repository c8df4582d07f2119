"""`flowsdf reconstruct`: pictures in, meshes, previews and a summary out.

Per picture NAME (the file name without its suffix; a second picture of the same name gets
NAME-2, ...) the output folder receives NAME_sample{k}.{format} for every non-empty sample,
NAME_uncertainty.{format} (the mean code's mesh coloured by the samples' spread, K >= 2) and
NAME_preview.png; DIR/summary.json lists everything. A picture that cannot be used gets one
`flowsdf: error:` line, nothing is written for it, and the others are still processed; the exit
status is then 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from flowsdf.cli.options import add_device
from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import FORMATS

MODELS = ("flow", "cnn")


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reconstruct", help="pictures -> 3-D meshes (K samples, uncertainty, preview)",
                       description="Reconstruct a 3-D mesh from each picture (PNG, JPEG or WebP; folders are "
                                   "searched for them) with a trained run. Works best on pictures like the training "
                                   "renders: one object, centred, on a black background.")
    r.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|FOLDER", help="pictures or folders of pictures")
    r.add_argument("--run", required=True, type=Path, help="a trained run folder (e.g. runs/reproduce-quick)")
    r.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    r.add_argument("--model", default="flow", choices=MODELS, help="flow (Stage 2, default) or cnn (Stage 1)")
    r.add_argument("--samples", type=int, default=1, metavar="K",
                   help="flow samples per picture (default 1); K >= 2 adds the uncertainty mesh")
    r.add_argument("--steps", type=int, metavar="N", help="Euler steps of the flow (default: the run's, 8)")
    r.add_argument("--seed", type=int, default=0, help="sample k uses seed S + k (default 0)")
    r.add_argument("--resolution", type=int, default=128, metavar="R", help="marching-cubes grid R^3 (default 128)")
    r.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="fit each code to the picture's silhouette for STEPS Adam steps first (default 0: off). "
                        "Measured to help models of the view frame (known input camera); for world-frame models "
                        "the camera is estimated and it did not help (README)")
    r.add_argument("--format", default="glb", choices=FORMATS, help="mesh file format (default glb)")
    add_device(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """The numbers, before anything is loaded."""
    if args.samples < 1:
        raise FlowSDFError(f"--samples must be at least 1, got {args.samples}")
    if args.steps is not None and args.steps < 1:
        raise FlowSDFError(f"--steps must be at least 1, got {args.steps}")
    if args.refine < 0:
        raise FlowSDFError(f"--refine must be at least 0 steps, got {args.refine}")
    if not 8 <= args.resolution <= 512:
        raise FlowSDFError(f"--resolution must be between 8 and 512, got {args.resolution}")


def _make_out(out: Path) -> None:
    """Create the output folder and prove it writable, before any picture is processed."""
    if out.exists() and not out.is_dir():
        raise FlowSDFError(f"--out {out} is a file, not a folder")
    try:  # os.access says yes to root everywhere, so the folder is made rather than predicted
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FlowSDFError(f"cannot create --out {out}: {e.strerror or e}") from e
    probe = out / ".flowsdf-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise FlowSDFError(f"cannot write to --out {out}: {e.strerror or e}") from e


def _unique_name(stem: str, taken: set[str]) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _mesh_entry(mesh, path: Path | None, out: Path) -> dict[str, Any]:
    from flowsdf.mesh.export import is_watertight

    return {"path": str(path.relative_to(out)) if path else None, "vertices": len(mesh.vertices),
            "faces": len(mesh.faces), "watertight": is_watertight(mesh), "empty": len(mesh.faces) == 0}


def _write(rec, file: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write one reconstruction's meshes and preview; its summary entry."""
    from flowsdf.figures.preview import camera_angles, reconstruction_preview
    from flowsdf.mesh.export import export_mesh

    out, fmt = Path(args.out), args.format
    start = time.perf_counter()
    meshes = []
    for k, mesh in enumerate(rec.meshes):
        path = None
        if len(mesh.faces):
            path = export_mesh(mesh, out / f"{name}_sample{k + 1}.{fmt}", fmt)
        else:
            print(f"flowsdf: warning: {file}: sample {k + 1} is an empty shape (no surface inside the "
                  f"bounding sphere); no mesh written for it", file=sys.stderr)
        meshes.append(_mesh_entry(mesh, path, out))
    uncertainty = None
    if rec.mean_mesh is not None:
        path = export_mesh(rec.mean_mesh, out / f"{name}_uncertainty.{fmt}", fmt) if len(rec.mean_mesh.faces) else None
        std = rec.vertex_std
        uncertainty = {**_mesh_entry(rec.mean_mesh, path, out), "std_max": rec.std_max,
                       "std_mean": float(std.mean()) if len(std) else None}
    preview = out / f"{name}_preview.png"
    reconstruction_preview(rec, preview)
    azimuth, elevation = camera_angles(rec.camera[1].numpy())
    timings = {**rec.timings, "write": time.perf_counter() - start}
    return {
        "file": str(file), "model": rec.model, "seed": rec.seed, "steps": rec.steps, "refine_steps": rec.refine,
        "samples": len(rec.meshes),
        "resolution": args.resolution, "meshes": meshes, "uncertainty": uncertainty,
        "preview": preview.name, "camera": {"azimuth_deg": azimuth, "elevation_deg": elevation, "iou": rec.camera_iou},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from flowsdf.checkpoint import atomic_write_text
    from flowsdf.data.images import find_images
    from flowsdf.pipeline import FlowSDF
    from flowsdf.reconstruct import reconstruct_image

    _check_args(args)
    pipe = FlowSDF.from_run(args.run, args.model, args.device)  # a refused run leaves no output folder
    _make_out(Path(args.out))
    files, problems = find_images(args.inputs)
    failures = [{"file": None, "error": p} for p in problems]
    for p in problems:
        print(f"flowsdf: error: {p}", file=sys.stderr)
    entries, taken = [], set()
    for file in tqdm(files, desc="reconstruct", unit="picture", disable=args.quiet):
        try:
            rec = reconstruct_image(pipe, file, samples=args.samples, steps=args.steps, seed=args.seed,
                                    resolution=args.resolution, refine=args.refine)
        except FlowSDFError as e:
            print(f"flowsdf: error: {e}", file=sys.stderr)
            failures.append({"file": str(file), "error": str(e)})
            continue
        entries.append(_write(rec, file, _unique_name(file.stem, taken), args))
    out = Path(args.out)
    summary = {"run": str(args.run), "model": args.model, "device": str(pipe.device), "images": entries,
               "failed": failures}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        print(f"{len(entries)} picture(s) reconstructed, {len(failures)} failed; wrote {out / 'summary.json'}")
    return 2 if failures else 0
