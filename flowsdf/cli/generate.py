"""`flowsdf generate`: prompts in, meshes, previews and a summary out (text to 3-D).

Per prompt i (1-based) the output folder receives prompt{i}_sample{k}.{format} for every non-empty
sample, prompt{i}_uncertainty.{format} (the mean code's mesh coloured by the samples' spread,
K >= 2) and prompt{i}_preview.png; DIR/summary.json lists the prompts with their files, guidance,
seed and timings, and what produced them (flowsdf.provenance). A bad prompt, a bad number or a run
without a text model is one `flowsdf: error:` line, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowsdf.cli.options import GUIDANCE, MESH_RESOLUTION, SAMPLES, add_device, check_range
from flowsdf.cli.outputs import make_out_folder, mesh_entry
from flowsdf.generate import DEFAULT_RESOLUTION, DEFAULT_SAMPLES
from flowsdf.mesh.export import FORMATS

MAX_PROMPTS = 256  # prompts per call: each is sampled and meshed K times


def add_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="text -> 3-D meshes (K samples per prompt, uncertainty, preview)",
                       description="Generate 3-D shapes from text prompts with a run's text model (`flowsdf train "
                                   "--stage text`). The models know the procedural shapes they were trained on: "
                                   "families (sphere, box, cylinder, cone, torus, capsule, ellipsoid, octahedron), "
                                   "proportions (tall, flat, long, ...), size, colour and simple compositions.")
    g.add_argument("prompts", nargs="+", metavar="PROMPT", help='e.g. "a tall red cylinder" "a flat box"')
    g.add_argument("--run", required=True, type=Path, help="a run folder with a trained text model")
    g.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    g.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="K",
                   help=f"shapes per prompt, {SAMPLES[0]}-{SAMPLES[1]} (default {DEFAULT_SAMPLES}); K >= 2 adds "
                        "the uncertainty mesh")
    g.add_argument("--guidance", type=float, metavar="W",
                   help=f"classifier-free guidance, {GUIDANCE[0]:g} to {GUIDANCE[1]:g} (1 = the plain conditional "
                        "flow; default: the run's text_train.guidance)")
    g.add_argument("--seed", type=int, default=0, help="sample k uses seed S + k (default 0)")
    g.add_argument("--steps", type=int, metavar="N", help="Euler steps of the flow (default: the run's)")
    g.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, metavar="R",
                   help=f"marching-cubes grid R^3, {MESH_RESOLUTION[0]}-{MESH_RESOLUTION[1]} "
                        f"(default {DEFAULT_RESOLUTION})")
    g.add_argument("--format", default="glb", choices=FORMATS, help="mesh file format (default glb)")
    add_device(g)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from flowsdf.errors import FlowSDFError

    check_range("--samples", args.samples, *SAMPLES)
    check_range("--guidance", args.guidance, *GUIDANCE)
    check_range("--resolution", args.resolution, *MESH_RESOLUTION)
    if args.steps is not None and args.steps < 1:
        raise FlowSDFError(f"--steps must be at least 1, got {args.steps}")
    if len(args.prompts) > MAX_PROMPTS:
        raise FlowSDFError(f"at most {MAX_PROMPTS} prompts per call, got {len(args.prompts)}")


def _write(gen, index: int, out: Path, fmt: str) -> dict:
    """One prompt's meshes and preview; its summary entry."""
    from flowsdf.figures.plots import save_figure
    from flowsdf.figures.preview import generation_figure
    from flowsdf.mesh.export import export_mesh

    name = f"prompt{index}"
    meshes = []
    for k, mesh in enumerate(gen.meshes):
        path = export_mesh(mesh, out / f"{name}_sample{k + 1}.{fmt}", fmt) if len(mesh.faces) else None
        if path is None:
            print(f"flowsdf: warning: prompt {index}: sample {k + 1} is an empty shape; no mesh written for it",
                  file=sys.stderr)
        meshes.append(mesh_entry(mesh, path, out))
    uncertainty = None
    if gen.mean_mesh is not None:
        mean = gen.mean_mesh
        path = export_mesh(mean, out / f"{name}_uncertainty.{fmt}", fmt) if len(mean.faces) else None
        uncertainty = {**mesh_entry(mean, path, out), "colour_scale_max": gen.colour_max,
                       "std_max": float(gen.vertex_std.max()) if len(gen.vertex_std) else None}
    preview = out / f"{name}_preview.png"
    subtitle = f"guidance {gen.guidance:g}, seed {gen.seed}, {gen.samples} sample(s)"
    save_figure(generation_figure(gen.prompt, gen.meshes, gen.mean_mesh, gen.colour_max, gen.vertex_std, subtitle),
                preview, dpi=90)
    return {"prompt": gen.prompt, "name": name, "seed": gen.seed, "guidance": gen.guidance, "steps": gen.steps,
            "samples": gen.samples, "resolution": gen.resolution, "meshes": meshes, "uncertainty": uncertainty,
            "preview": preview.name, "timings_s": {k: round(v, 4) for k, v in gen.timings.items()}}


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from flowsdf.checkpoint import atomic_write_text
    from flowsdf.generate import mesh_prompt, sample_prompts
    from flowsdf.pipeline import FlowSDF
    from flowsdf.provenance import provenance
    from flowsdf.text.tokenizer import check_prompts

    _check_args(args)
    prompts = check_prompts(args.prompts)  # an empty prompt is refused before the model is loaded
    pipe = FlowSDF.from_run(args.run, "text", args.device)
    # Every prompt is read and sampled before anything is written: a bad one stops the call cleanly.
    sampled = sample_prompts(pipe, prompts, args.samples, args.seed, args.guidance, args.steps)
    out = Path(args.out)
    make_out_folder(out)
    entries = []
    for i in tqdm(range(len(prompts)), desc="generate", unit="prompt", disable=args.quiet):
        entries.append(_write(mesh_prompt(pipe, sampled, i, args.resolution), i + 1, out, args.format))
    summary = {"run": str(args.run), "model": "text", "device": str(pipe.device),
               "temperature": pipe.cfg.flow.temperature, "prompts": entries, "provenance": provenance(pipe.device)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if not args.quiet:
        print(f"{len(entries)} prompt(s), {sum(len(e['meshes']) for e in entries)} mesh(es) -> {out}")
    return 0
