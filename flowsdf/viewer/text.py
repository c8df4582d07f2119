"""The "Text to 3-D" tab's work: a prompt -> K sampled shapes (flowsdf.generate) -> what the page
shows and offers for download, bounded by the viewer's limits.

One request makes the result mesh (K >= 2: the mean code's, coloured by the samples' spread, with
its colour bar; K = 1: the sample in the page's single-mesh colour), writes it as glb, obj and ply,
and draws a gallery of the K samples from preview-resolution meshes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowsdf.errors import FlowSDFError
from flowsdf.figures.preview import mesh_image
from flowsdf.generate import mesh_prompt, sample_prompts
from flowsdf.mesh.export import FORMATS, export_mesh, to_trimesh
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import PREVIEW_RESOLUTION, code_meshes
from flowsdf.viewer import panes
from flowsdf.viewer.recon import GALLERY_TILE, SINGLE_COLOUR

Progress = Callable[[float, str], None]
VIEW = (35.0, 20.0)  # azimuth, elevation (degrees) of the gallery's pictures


@dataclass
class TextOutput:
    """What the tab shows for one prompt."""

    files: dict[str, Path]  # format -> the shown mesh's file (glb, obj, ply)
    gallery: list[tuple[np.ndarray, str]]  # one (picture, label) per sample
    caption: str  # Markdown
    colour_bar: np.ndarray | None  # (H, W, 3) uint8, K >= 2


def generate_prompt(pipe: FlowSDF, prompt: str, samples: int, resolution: int, seed: int, guidance: float,
                    folder: Path, progress: Progress) -> TextOutput:
    """K shapes for one prompt, the result mesh written into `folder`. The caller checks the bounds."""
    progress(0.1, f"sampling {samples} code(s) for the prompt")
    sampled = sample_prompts(pipe, [prompt], samples, seed, guidance)  # a bad prompt: one FlowSDFError
    progress(0.3, f"meshing at {resolution}^3")
    gen = mesh_prompt(pipe, sampled, 0, resolution)
    if all(len(m.faces) == 0 for m in gen.meshes):
        raise FlowSDFError("no sample has a surface inside the bounding sphere: there is nothing to show. "
                           "Try another seed or a prompt closer to the training captions")
    if gen.mean_mesh is not None:
        shown = gen.mean_mesh
    else:
        mesh = gen.meshes[0]
        shown = to_trimesh(mesh.vertices, mesh.faces, np.tile(SINGLE_COLOUR, (len(mesh.vertices), 1)))
    if len(shown.faces) == 0:
        raise FlowSDFError("the samples' mean shape is empty (they disagree too much to average); lower K or "
                           "raise the guidance")
    progress(0.7, "drawing the samples")
    colour = np.array(SINGLE_COLOUR[:3]) / 255.0
    previews = code_meshes(pipe, gen.codes, PREVIEW_RESOLUTION)
    gallery = [(mesh_image(m, *VIEW, GALLERY_TILE, colour=colour), f"sample {k + 1} (seed {seed + k})")
               for k, m in enumerate(previews)]
    progress(0.9, "writing glb, obj and ply")
    stem = f"text-seed{seed}-k{samples}"
    files = {fmt: export_mesh(shown, folder / f"{stem}.{fmt}") for fmt in FORMATS}
    what = f"the mean of {samples} samples, coloured by their spread" if samples >= 2 else "the one sample"
    empty = sum(len(m.faces) == 0 for m in gen.meshes)
    caption = "\n\n".join([
        f'**"{prompt}"**: shown is {what} ({len(shown.vertices):,} vertices, mesh at {resolution}^3), guidance '
        f"{gen.guidance:g}, seed {seed}, {gen.steps} Euler steps.",
        *([f"{empty} of the {samples} samples are empty shapes."] if empty else []),
        "Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in gen.timings.items()) + ".",
    ])
    bar = panes.colour_bar(gen.colour_max, gen.vertex_std) if samples >= 2 else None
    return TextOutput(files, gallery, caption, bar)
