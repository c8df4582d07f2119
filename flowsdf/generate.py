"""Text to 3-D: prompts in, K sampled shapes per prompt out (what `flowsdf generate` and the viewer's
Text-to-3-D tab call).

A text model (FlowSDF.from_run(run, "text"); flowsdf.train.text) samples K codes per prompt, sample
k from the noise of seed `seed + k` as reconstruction does; each code's mesh is made at the
requested resolution, all K in one batched pass (flowsdf.reconstruct.code_meshes), and with K >= 2
the mean code's mesh is coloured by the samples' spread on its surface — where the prompt leaves
the shape open, the samples differ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh
from torch import Tensor

from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.uncertainty import std_colors
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import code_meshes, spread

DEFAULT_SAMPLES = 4
DEFAULT_RESOLUTION = 128


@dataclass
class Generation:
    """One prompt's K samples."""

    prompt: str
    codes: Tensor  # (K, *latent)
    meshes: list[trimesh.Trimesh]  # one per sample, at `resolution`
    mean_mesh: trimesh.Trimesh | None  # K >= 2: the mean code's mesh, coloured by the samples' spread
    vertex_std: np.ndarray | None  # (V,) that spread at mean_mesh's vertices (K >= 2)
    colour_max: float | None  # the spread at the top of the colour scale (K >= 2)
    seed: int
    guidance: float
    steps: int
    resolution: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    @property
    def samples(self) -> int:
        return int(self.codes.shape[0])


@dataclass
class Sampled:
    """The codes of N prompts, before meshing."""

    prompts: list[str]
    codes: Tensor  # (N, K, *latent)
    seed: int
    guidance: float
    steps: int
    seconds: float  # sampling time per prompt


def sample_prompts(pipe: FlowSDF, prompts: Sequence[str], samples: int = DEFAULT_SAMPLES, seed: int = 0,
                   guidance: float | None = None, steps: int | None = None) -> Sampled:
    """K = `samples` codes for each prompt, all prompts checked and sampled at once. `guidance` W:
    default the run's text_train.guidance (1 = the plain conditional flow). A bad prompt (empty,
    not text, no word the model knows) or a model that is not a text model is one FlowSDFError."""
    if pipe.model != "text":
        raise FlowSDFError(f"{pipe.run_dir} has no text model loaded (got {pipe.model!r}); train one with "
                           "`flowsdf train --stage text --init RUN --out RUN`")
    w = pipe.cfg.text_train.guidance if guidance is None else guidance
    start = time.perf_counter()
    result = pipe.generate(list(prompts), samples=samples, seed=seed, guidance=w, steps=steps)  # codes (N, K, *latent)
    return Sampled(list(prompts), result.codes.cpu(), seed, w, result.steps, (time.perf_counter() - start) / len(prompts))


def mesh_prompt(pipe: FlowSDF, sampled: Sampled, i: int, resolution: int = DEFAULT_RESOLUTION) -> Generation:
    """Prompt i's K meshes at `resolution`^3 and, K >= 2, the mean code's mesh coloured by the spread."""
    codes = sampled.codes[i]  # (K, *latent)
    start = time.perf_counter()
    many = codes.shape[0] >= 2
    batch = torch.cat([codes.mean(0, keepdim=True), codes]) if many else codes  # (K [+ 1], *latent)
    meshes = code_meshes(pipe, batch, resolution)  # the mean's first, in the same batched pass
    mean, meshes = (meshes[0], meshes[1:]) if many else (None, meshes)
    timings = {"codes": sampled.seconds, "meshes": time.perf_counter() - start}
    std = colour_max = None
    if mean is not None:
        start = time.perf_counter()
        std = spread(pipe, codes, mean.vertices, resolution) if len(mean.vertices) else np.zeros(0)
        colours, colour_max = std_colors(std)
        mean = to_trimesh(mean.vertices, mean.faces, colours)
        timings["uncertainty"] = time.perf_counter() - start
    return Generation(sampled.prompts[i], codes, meshes, mean, std, colour_max, sampled.seed, sampled.guidance,
                      sampled.steps, resolution, timings)


def generate(pipe: FlowSDF, prompts: Sequence[str], samples: int = DEFAULT_SAMPLES, seed: int = 0,
             guidance: float | None = None, steps: int | None = None,
             resolution: int = DEFAULT_RESOLUTION) -> list[Generation]:
    """K = `samples` shapes for each prompt: `sample_prompts`, then `mesh_prompt` for each."""
    sampled = sample_prompts(pipe, prompts, samples, seed, guidance, steps)
    return [mesh_prompt(pipe, sampled, i, resolution) for i in range(len(sampled.prompts))]
