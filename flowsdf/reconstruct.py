"""One picture in, 3-D shapes out: the steps `flowsdf reconstruct` and the viewer share.

    pipe = FlowSDF.from_run("runs/reproduce-quick")
    rec = reconstruct_image(pipe, "chair.png", samples=4, seed=0)
    rec.meshes[0].export("chair.glb")            # one trimesh per sample
    rec.mean_mesh                                 # the mean code's mesh, coloured by uncertainty

Per picture: K codes from the pipeline; one coarse-to-fine marching-cubes mesh per code; the
input camera (a code lives in the training cameras' world frame and a picture does not say from
where it was seen, so the camera is searched: `input_camera`); the predicted silhouette from that
camera; and with K >= 2 the mean code's mesh with per-vertex uncertainty (the std of the K
decoded fields at its vertices, flowsdf.mesh.uncertainty) as vertex colours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from flowsdf.data.images import foreground_mask
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh_coarse_to_fine
from flowsdf.mesh.uncertainty import std_colors, vertex_std
from flowsdf.pipeline import FlowSDF
from flowsdf.render.project import point_silhouettes, surface_samples

UNCERTAINTY_CMAP = "viridis"


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


# The viewpoints searched for a picture's camera: the grid FlowSDF.estimate_camera searches, on
# the training cameras' elevation band.
AZIMUTHS = 24
ELEVATIONS = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0)


def input_camera(pipe: FlowSDF, image: Tensor, mesh: trimesh.Trimesh) -> tuple[Tensor, Tensor]:
    """The camera the picture (3, S, S) was taken from, given the predicted mesh: (K (3, 3), c2w (4, 4)).

    The models of this package predict codes in the training cameras' world frame, so the view is
    searched, as FlowSDF.estimate_camera does: the dataset-like camera whose silhouette of the
    code best matches the picture's foreground. Silhouettes for the search come from projecting
    points on the code's mesh (flowsdf.render.project; ~100x cheaper than ray marching 144 views),
    so the choice can differ from the ray-marched search where two views score within a few
    boundary pixels of each other. An empty shape gets the default camera. A model that predicts
    in the camera's own frame would return its fixed camera here instead; this is the one place
    that choice is made.
    """
    mask = foreground_mask(image[None])[0].cpu() > 0.5  # (S, S)
    S = mask.shape[-1]
    if len(mesh.faces) == 0:
        return pipe.camera()
    grid = [pipe.camera(360.0 * i / AZIMUTHS, e) for e in ELEVATIONS for i in range(AZIMUTHS)]
    K = torch.stack([c[0] for c in grid])  # (G, 3, 3)
    c2w = torch.stack([c[1] for c in grid])  # (G, 4, 4)
    pixel = pipe.cfg.data.cam_distance / float(K[0, 0, 0])  # a pixel's width at the origin
    points = surface_samples(mesh.vertices, mesh.faces, pixel)  # (n, 3)
    sils = point_silhouettes(points, K, c2w, S)  # (G, S, S)
    inter = (sils & mask).flatten(1).sum(1).float()
    union = (sils | mask).flatten(1).sum(1).float().clamp(min=1)
    best = int((inter / union).argmax())
    return K[best], c2w[best]


def code_camera(pipe: FlowSDF, image: Tensor, code: Tensor, mesh: trimesh.Trimesh | None = None,
                resolution: int = 64) -> tuple[Tensor, Tensor, Tensor, float]:
    """A picture's (3, S, S) input camera for its code (D,) (searched with the code's mesh, made at
    `resolution` unless given), the code's silhouette (S, S) from it and that silhouette's IoU with
    the picture's foreground: (K, c2w, silhouette, iou)."""
    if mesh is None:
        mesh = to_trimesh(*extract_mesh_coarse_to_fine(pipe.field(code), resolution=resolution, device=pipe.device))
    K, c2w = input_camera(pipe, image, mesh)
    silhouette = pipe.silhouettes(code[None], K[None], c2w[None])[0].cpu()  # (S, S)
    mask = foreground_mask(image[None])[0].cpu() > 0.5  # (S, S)
    iou = float(((silhouette > 0.5) & mask).sum()) / max(1, int(((silhouette > 0.5) | mask).sum()))
    return K, c2w, silhouette, iou


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
        colors, std_max = std_colors(std, cmap=UNCERTAINTY_CMAP)
        mean_mesh = to_trimesh(vertices, faces, colors)
        lap("uncertainty")
    K, c2w, silhouette, iou = code_camera(pipe, result.images[0], mean_code,
                                          mean_mesh if mean_mesh is not None else meshes[0])
    lap("camera")
    timings["total"] = sum(timings.values())
    return Reconstruction(
        image=result.images[0].cpu(), codes=codes.cpu(), meshes=meshes, mean_mesh=mean_mesh, vertex_std=std,
        std_max=std_max, silhouette=silhouette.cpu(), camera=(K.cpu(), c2w.cpu()), camera_iou=iou,
        seed=seed, steps=result.steps, model=pipe.model, timings=timings, refine=refine,
    )
