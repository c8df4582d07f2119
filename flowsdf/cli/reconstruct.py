"""`flowsdf reconstruct`: pictures in, meshes, previews and a summary out.

Per picture NAME (the file name without its suffix) the output folder receives
NAME_sample{k}.{format} for every non-empty sample, NAME_uncertainty.{format} (the mean code's mesh
coloured by the samples' spread, K >= 2), NAME_prepared.png (the picture exactly as the model saw
it) and NAME_preview.png; DIR/summary.json lists everything, with each picture's verdict, how it
was read and prepared, the files skipped in folders, and what produced it (flowsdf.provenance).
A name is never one whose outputs would overwrite an input picture or another picture's outputs:
it becomes NAME-2, ... A picture that cannot be used gets one `flowsdf: error:` line, nothing is
written for it, and the others are still processed; the exit status is then 2. A picture whose
result is not to be trusted (flowsdf.reconstruct.Verdict) is written and gets one
`flowsdf: warning:` line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from flowsdf.cli.options import (
    GUIDANCE,
    MESH_RESOLUTION,
    REFINE_STEPS,
    SAMPLES,
    add_device,
    add_sampling,
    check_range,
    check_sampling,
)
from flowsdf.cli.outputs import make_out_folder, mesh_entry, png_bytes
from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import FORMATS
from flowsdf.reconstruct import DEFAULT_RESOLUTION, DEFAULT_SAMPLES

MODELS = ("flow", "cnn")
OUTPUTS = ("_sample{k}.{fmt}", "_uncertainty.{fmt}", "_prepared.png", "_preview.png")


def add_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reconstruct", help="pictures -> 3-D meshes (K samples, uncertainty, preview, verdict)",
                       description="Reconstruct a 3-D mesh from each picture (PNG, JPEG or WebP; folders are "
                                   "searched for them) with a trained run. Each picture is prepared like the "
                                   "training renders first: the object is found on its plain background, centred, "
                                   "scaled and put on black (--no-prepare: used as it is). A picture unlike the "
                                   "training pictures, or a result that does not explain it, gets a warning.")
    r.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|FOLDER", help="pictures or folders of pictures")
    r.add_argument("--run", required=True, type=Path, help="a trained run folder (e.g. runs/reproduce-quick)")
    r.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    r.add_argument("--model", default="flow", choices=MODELS, help="flow (Stage 2, default) or cnn (Stage 1)")
    r.add_argument("--samples", type=int, metavar="K",
                   help=f"flow samples per picture, {SAMPLES[0]}-{SAMPLES[1]} (default {DEFAULT_SAMPLES}, as the "
                        "viewer); K >= 2 adds the uncertainty mesh. The cnn model is deterministic: it makes one "
                        "(and says so if asked for more)")
    r.add_argument("--steps", type=int, metavar="N", help="Euler steps of the flow (default: the run's, 8)")
    r.add_argument("--seed", type=int, default=0, help="sample k uses seed S + k (default 0)")
    r.add_argument("--guidance", type=float, metavar="W",
                   help=f"classifier-free guidance of the flow, {GUIDANCE[0]:g} to {GUIDANCE[1]:g} (1 = none; default: "
                        "the run's flow.guidance)")
    add_sampling(r)
    r.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, metavar="R",
                   help=f"marching-cubes grid R^3, {MESH_RESOLUTION[0]}-{MESH_RESOLUTION[1]} "
                        f"(default {DEFAULT_RESOLUTION}, as the viewer)")
    r.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="fit each code to the picture's silhouette for STEPS Adam steps first (default 0: off). "
                        "Measured to help models of the view frame (known input camera); for world-frame models "
                        "the camera is estimated and it did not help (README)")
    r.add_argument("--no-prepare", dest="prepare", action="store_false",
                   help="give the model the picture as it is (padded to a square), without finding the object, "
                        "re-framing it and putting it on black")
    r.add_argument("--format", default="glb", choices=FORMATS, help="mesh file format (default glb)")
    add_device(r)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    """The numbers, before anything is loaded."""
    check_range("--samples", args.samples, *SAMPLES)  # None: not given
    if args.steps is not None and args.steps < 1:
        raise FlowSDFError(f"--steps must be at least 1, got {args.steps}")
    check_range("--refine", args.refine, *REFINE_STEPS)
    check_range("--resolution", args.resolution, *MESH_RESOLUTION)
    check_range("--guidance", args.guidance, *GUIDANCE)
    check_sampling(args)


def output_names(name: str, samples: int, fmt: str) -> list[str]:
    """Every file a picture called `name` may write."""
    return [name + o.format(k=k, fmt=fmt) for o in OUTPUTS for k in range(1, samples + 1)
            if "{k}" in o or k == 1]


def unique_name(stem: str, taken: set[str], out: Path, inputs: set[Path], samples: int, fmt: str) -> str:
    """NAME, or NAME-2, NAME-3 ...: the first whose outputs in `out` neither belong to a picture
    already written in this call (`taken`) nor are one of the `inputs` (resolved paths)."""
    name, n = stem, 1
    while name in taken or any((out / f).resolve() in inputs for f in output_names(name, samples, fmt)):
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name


def _write(rec, file: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write one reconstruction's meshes, prepared picture and preview; its summary entry."""
    from PIL import Image

    from flowsdf.checkpoint import atomic_write_bytes
    from flowsdf.figures.preview import camera_angles, reconstruction_preview
    from flowsdf.mesh.export import export_mesh

    out, fmt = Path(args.out), args.format
    start = time.perf_counter()
    meshes = []
    for k, mesh in enumerate(rec.sample_meshes()):
        path = None
        if len(mesh.faces):
            path = export_mesh(mesh, out / f"{name}_sample{k + 1}.{fmt}", fmt)
        else:
            print(f"flowsdf: warning: {file}: sample {k + 1} is an empty shape (no surface inside the "
                  f"bounding sphere); no mesh written for it", file=sys.stderr)
        meshes.append(mesh_entry(mesh, path, out))
    uncertainty = None
    if rec.mean_mesh is not None:
        path = export_mesh(rec.mean_mesh, out / f"{name}_uncertainty.{fmt}", fmt) if len(rec.mean_mesh.faces) else None
        std = rec.vertex_std
        uncertainty = {**mesh_entry(rec.mean_mesh, path, out), "std_max": rec.std_max,
                       "std_median": float(_median(std)) if len(std) else None, "colour_scale_max": rec.colour_max}
    prepared = out / f"{name}_prepared.png"
    image = (rec.image.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype("uint8")  # (S, S, 3) as the model saw it
    buffer = png_bytes(Image.fromarray(image))
    atomic_write_bytes(prepared, buffer)
    preview = out / f"{name}_preview.png"
    reconstruction_preview(rec, preview)
    azimuth, elevation = camera_angles(rec.camera[1].numpy())
    timings = {**rec.timings, "write": time.perf_counter() - start}
    return {
        "file": str(file), "name": name, "model": rec.model, "seed": rec.seed, "steps": rec.steps,
        "refine_steps": rec.refine, "guidance": args.guidance, "samples": rec.samples, "samples_requested": rec.samples_requested,
        "resolution": args.resolution, "verdict": rec.verdict.to_json(), "notes": rec.notes,
        "preparation": rec.prepared.summary() if rec.prepared is not None else None,
        "meshes": meshes, "uncertainty": uncertainty, "prepared": prepared.name, "preview": preview.name,
        "camera": {"azimuth_deg": azimuth, "elevation_deg": elevation, "iou": rec.camera_iou},
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }


def _median(values) -> float:
    import numpy as np

    return float(np.median(values))


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from flowsdf.checkpoint import atomic_write_text
    from flowsdf.data.images import list_pictures
    from flowsdf.pipeline import FlowSDF
    from flowsdf.provenance import provenance
    from flowsdf.reconstruct import reconstruct_image

    _check_args(args)
    pipe = FlowSDF.from_run(args.run, args.model, args.device)  # a refused run leaves no output folder
    pipe.set_sampling(temperature=args.temperature, consistency=args.consistency)  # checks the frame
    out = Path(args.out)
    make_out_folder(out)
    found = list_pictures(args.inputs)
    failures = [{"file": None, "error": p} for p in found.problems]
    for p in found.problems:
        print(f"flowsdf: error: {p}", file=sys.stderr)
    if args.guidance is None and pipe.is_flow:  # recorded in summary.json as it was used
        args.guidance = pipe.cfg.flow.guidance
    if args.samples is None:
        args.samples = DEFAULT_SAMPLES if pipe.is_flow else 1
    elif args.samples > 1 and not pipe.is_flow:  # said once for the call, not once per picture
        print(f"flowsdf: warning: the {args.model} model is deterministic: --samples {args.samples} would give "
              f"{args.samples} identical shapes; one mesh per picture is made", file=sys.stderr)
    inputs = {f.resolve() for f in found.files}
    entries, warnings, taken = [], [], set()
    for file in tqdm(found.files, desc="reconstruct", unit="picture", disable=args.quiet):
        try:
            rec = reconstruct_image(pipe, file, samples=args.samples, steps=args.steps, seed=args.seed,
                                    resolution=args.resolution, refine=args.refine, prepare=args.prepare,
                                    guidance=args.guidance)
        except FlowSDFError as e:
            print(f"flowsdf: error: {e}", file=sys.stderr)
            failures.append({"file": str(file), "error": str(e)})
            continue
        entry = _write(rec, file, unique_name(file.stem, taken, out, inputs, rec.samples, args.format), args)
        entries.append(entry)
        if rec.verdict.warning:
            print(f"flowsdf: warning: {file}: {rec.verdict.warning}", file=sys.stderr)
            warnings.append(str(file))
    summary = {"run": str(args.run), "model": args.model, "device": str(pipe.device), "prepare": args.prepare,
               "samples_requested": args.samples, "temperature": pipe.cfg.flow.temperature if pipe.is_flow else None,
               "consistency": pipe.cfg.flow.consistency if pipe.is_flow else None,
               "images": entries, "failed": failures,
               "low_confidence": warnings, "skipped": [str(p) for p in found.skipped],
               "provenance": provenance(pipe.device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        print(f"{len(entries)} picture(s) reconstructed ({len(warnings)} with low confidence), {len(failures)} "
              f"failed, {len(found.skipped)} other file(s) skipped; wrote {out / 'summary.json'}")
    return 2 if failures else 0
