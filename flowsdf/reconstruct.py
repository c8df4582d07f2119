"""One picture in, 3-D shapes out: the steps `flowsdf reconstruct` and the viewer share.

    pipe = FlowSDF.from_run("runs/reproduce-quick")
    rec = reconstruct_image(pipe, "chair.png", samples=4, seed=0)
    rec.meshes[0].export("chair.glb")            # one trimesh per sample
    rec.mean_mesh                                 # the mean code's mesh, coloured by uncertainty

Per picture: K codes from the pipeline; one coarse-to-fine marching-cubes mesh per code; the
input camera (`FlowSDF.input_camera`: C0 for a view-frame model, searched for a world-frame one);
the predicted silhouette from that camera; and with K >= 2 the mean code's mesh with per-vertex
uncertainty (the std of the K decoded fields at its vertices, flowsdf.mesh.uncertainty) as vertex
colours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from torch import Tensor

from flowsdf.data.images import foreground_mask
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.uncertainty import std_colors, vertex_std
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF, InputCamera


@dataclass
class Reconstruction:
    """What `reconstruct_image` returns for one picture."""

    image: Tensor  # (3, S, S) the picture as the model saw it
    codes: Tensor  # (K, D) one code per sample
    meshes: list[trimesh.Trimesh]  # one per sample, object units
    mean_mesh: trimesh.Trimesh | None  # the mean code's mesh, uncertainty colours (K >= 2 only)
    vertex_std: np.ndarray | None  # (V,) std of the K fields at mean_mesh's vertices (K >= 2)
    std_max: float | None  # the std at the top of the colour scale
    silhouette: Tensor  # (S, S) predicted silhouette (mean code) from the input camera
    camera: tuple[Tensor, Tensor]  # intrinsics (3, 3), camera-to-world (4, 4) of the input view
    camera_iou: float  # IoU of that silhouette with the picture's foreground
    seed: int
    steps: int
    model: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    refine: int = 0  # refinement steps each code was fitted for (0: none)


def code_camera(pipe: FlowSDF, image: Tensor, code: Tensor, mesh: trimesh.Trimesh | None = None
                ) -> tuple[InputCamera, Tensor, float]:
    """A picture's (3, S, S) input camera for its code (*latent), the code's silhouette (S, S) from
    it and that silhouette's IoU with the picture's foreground: (camera, silhouette, iou)."""
    mask = foreground_mask(image[None])[0].cpu()  # (S, S)
    camera = pipe.input_camera(code, mask, mesh)
    silhouette = pipe.silhouettes(code[None], camera.K[None], camera.c2w[None])[0].cpu()  # (S, S)
    return camera, silhouette, float(silhouette_iou(silhouette[None], mask[None])[0])


def reconstruct_image(
    pipe: FlowSDF,
    image: Tensor | Image.Image | str | Path,
    samples: int = 1,
    steps: int | None = None,
    seed: int = 0,
    resolution: int = 128,
    refine: int = 0,
) -> Reconstruction:
    """Reconstruct one picture (path, PIL image or (3, H, W) tensor): K = `samples` meshes at
    `resolution`^3, the input-view silhouette and, for K >= 2, the uncertainty on the mean mesh.
    `refine` > 0 fits each code to the picture's foreground for that many steps first
    (FlowSDF.__call__; flowsdf.refine).

    Raises FlowSDFError for a picture that cannot be read (flowsdf.data.images).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        timings[name] = now - start
        start = now

    if isinstance(image, Tensor) and image.dim() == 4 and image.shape[0] != 1:
        raise ValueError(f"reconstruct_image takes one picture, got a batch of {image.shape[0]}")
    result = pipe(image if isinstance(image, Tensor) else [image], samples=samples, steps=steps, seed=seed, refine=refine)
    codes = result.codes[0]  # (K, D)
    lap("codes")
    meshes = []
    for code in codes:
        vertices, faces = extract_mesh_coarse_to_fine(pipe.field(code), resolution=resolution, device=pipe.device)
        meshes.append(to_trimesh(vertices, faces))
    lap("meshes")
    mean_code = codes.mean(dim=0)  # (D,)
    mean_mesh, std, std_max = None, None, None
    if samples >= 2:
        vertices, faces = extract_mesh_coarse_to_fine(pipe.field(mean_code), resolution=resolution, device=pipe.device)
        std = vertex_std([pipe.field(c) for c in codes], vertices)  # (V,)
        colors, std_max = std_colors(std)
        mean_mesh = to_trimesh(vertices, faces, colors)
        lap("uncertainty")
    camera, silhouette, iou = code_camera(pipe, result.images[0], mean_code,
                                          mean_mesh if mean_mesh is not None else meshes[0])
    lap("camera")
    timings["total"] = sum(timings.values())
    return Reconstruction(
        image=result.images[0].cpu(), codes=codes.cpu(), meshes=meshes, mean_mesh=mean_mesh, vertex_std=std,
        std_max=std_max, silhouette=silhouette, camera=(camera.K.cpu(), camera.c2w.cpu()), camera_iou=iou,
        seed=seed, steps=result.steps, model=pipe.model, timings=timings, refine=refine,
    )
