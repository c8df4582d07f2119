"""One picture in, 3-D shapes out: the steps `flowsdf reconstruct` and the viewer share.

    pipe = FlowSDF.from_run("runs/reproduce-quick")
    rec = reconstruct_image(pipe, "chair.png", samples=4, seed=0)
    rec.mesh.export("chair.glb")                  # the result: K >= 2 the mean code's, uncertainty colours
    rec.verdict.warning                           # None, or why the result should not be trusted
    rec.sample_meshes()                           # one trimesh per sample, made when asked for

Per picture: the picture prepared like the training renders (flowsdf.data.prepare, through the
pipeline); K codes; one coarse-to-fine marching-cubes mesh, of the mean code (K >= 2, with the
samples' spread at its vertices as colours) or of the one code (K = 1); the input camera
(`FlowSDF.input_camera`: C0 for a view-frame model, searched for a world-frame one); the predicted
silhouette from that camera; and a verdict on how far the picture and the result can be trusted.

What it costs is the decoder's evaluations, so they are spent where they are seen:

- the K samples' own meshes are made only when asked for (`sample_meshes`: a file to save, a
  gallery to show), all K in one batched coarse-to-fine pass (flowsdf.mesh.extract);
- the spread is taken from the K decoders evaluated together on the mean shape's narrow band, a
  few voxels coarse, and interpolated to the vertices (flowsdf.mesh.uncertainty.band_std);
- previews and galleries draw meshes made at PREVIEW_RESOLUTION (their panels are ~150 pixels).

A deterministic model (the CNN encoder) asked for K > 1 samples makes one: its K codes would be
identical. `Reconstruction.notes` says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from flowsdf.data.images import foreground_mask
from flowsdf.data.prepare import Prepared
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import MultiField, mesh_from_grid, sdf_grids_coarse_to_fine
from flowsdf.mesh.uncertainty import BAND_CELL, band_std, std_colors
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF, ImageInput, InputCamera

# The defaults of `flowsdf reconstruct` and `flowsdf view` alike, so one picture gives one result in
# both: K = 4 shows the samples' spread (a deterministic model makes one); 128^3 is the finest the
# viewer allows, and what `flowsdf reconstruct` always wrote.
DEFAULT_SAMPLES = 4
DEFAULT_RESOLUTION = 128
# Meshes drawn in previews and galleries (panels of ~150 pixels): 32^3 costs ~1/15 of 128^3.
PREVIEW_RESOLUTION = 32
# The verdict: a picture's score is its preparation's fit (flowsdf.data.prepare.fit_score: how
# much it looks like the training pictures) times the silhouette IoU of the reconstruction with
# the prepared foreground (whether the shape explains the picture). Below SCORE_LOW the result is
# flagged. Measured on the quick preset's flow (docs/reconstruct.md): prepared pictures on plain
# backgrounds score 0.71-0.80 on average per kind, on a texture 0.56-0.58 (its fit); the same
# pictures given as they are score 0.01-0.10 off black; an object cut off by the border, a speck,
# or a shape that does not explain the picture falls under 0.5.
SCORE_LOW = 0.5
FIT_LOW = 0.5  # a fit under this is named as a reason
IOU_LOW = 0.6  # ... and so is a silhouette IoU under this


@dataclass
class Verdict:
    """How far one picture's reconstruction can be trusted."""

    score: float  # fit x iou, in [0, 1]
    fit: float | None  # the preparation's fit score; None for a tensor given as model input
    iou: float  # silhouette IoU of the reconstruction, from the input camera, with the prepared foreground
    reasons: list[str]  # why the score is low (empty when it is not)

    @property
    def low(self) -> bool:
        return self.score < SCORE_LOW

    @property
    def warning(self) -> str | None:
        """One line for a low score, None otherwise."""
        if not self.low:
            return None
        return (f"low confidence (score {self.score:.2f} < {SCORE_LOW}): " + "; ".join(self.reasons) +
                ". The models know one object, centred, on a plain background, like the training renders")

    def to_json(self) -> dict:
        return {"score": round(self.score, 3), "fit": None if self.fit is None else round(self.fit, 3),
                "silhouette_iou": round(self.iou, 3), "low": self.low, "threshold": SCORE_LOW,
                "warning": self.warning}


def judge(prepared: Prepared | None, iou: float, empty: bool = False) -> Verdict:
    """The verdict for a picture prepared as `prepared` (None: a model-input tensor) whose
    reconstruction's silhouette has IoU `iou` with the prepared foreground."""
    fit = None if prepared is None else prepared.fit
    reasons = []
    if prepared is not None and prepared.fit < FIT_LOW:
        weak = sorted(prepared.factors.items(), key=lambda kv: kv[1])[:2]
        reasons.append(f"the picture is unlike the training pictures (fit {prepared.fit:.2f}; lowest: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in weak) + ")")
        reasons += prepared.notes
    if empty:
        reasons.append("the decoded shape has no surface")
    elif iou < IOU_LOW:
        reasons.append(f"the shape's silhouette matches the picture's object poorly (IoU {iou:.2f})")
    score = (1.0 if fit is None else fit) * iou
    if score < SCORE_LOW and not reasons:  # both factors passable, their product is not
        reasons.append(f"fit {1.0 if fit is None else fit:.2f} x silhouette IoU {iou:.2f}")
    return Verdict(score, fit, iou, reasons)


@dataclass
class Reconstruction:
    """What `reconstruct_image` returns for one picture."""

    image: Tensor  # (3, S, S) the picture as the model saw it (prepared)
    codes: Tensor  # (K, *latent) one code per sample
    mesh: trimesh.Trimesh  # the result, object units: K >= 2 the mean code's (uncertainty colours), K = 1 the code's
    vertex_std: np.ndarray | None  # (V,) spread of the K fields' surfaces at mesh's vertices, object units (K >= 2)
    std_max: float | None  # the largest spread on the mesh (K >= 2)
    colour_max: float | None  # the spread at the top of the colour scale, object units (K >= 2)
    silhouette: Tensor  # (S, S) predicted silhouette of the mesh's code from the input camera
    camera: tuple[Tensor, Tensor]  # intrinsics (3, 3), camera-to-world (4, 4) of the input view
    camera_iou: float  # IoU of that silhouette with the picture's foreground
    camera_searched: bool  # True: searched among dataset-like views (world frame); False: the view frame's C0
    verdict: Verdict
    prepared: Prepared | None  # how the picture was prepared (None: a tensor given as model input)
    seed: int
    steps: int
    model: str
    resolution: int  # the grid of `mesh` and of `sample_meshes()`
    samples_requested: int  # K asked for (more than len(codes) for a deterministic model)
    notes: list[str] = field(default_factory=list)  # what the caller should be told
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    refine: int = 0  # refinement steps each code was fitted for (0: none)
    _pipe: FlowSDF | None = field(default=None, repr=False)
    _samples: dict[tuple[int, int], trimesh.Trimesh] = field(default_factory=dict, repr=False)  # (k, R) -> mesh
    _preview: trimesh.Trimesh | None = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        return int(self.codes.shape[0])

    @property
    def mean_mesh(self) -> trimesh.Trimesh | None:
        """The mean code's mesh with uncertainty colours (K >= 2), else None."""
        return self.mesh if self.samples >= 2 else None

    @property
    def meshes(self) -> list[trimesh.Trimesh]:
        """Every sample's mesh at `resolution` (made on first use)."""
        return self.sample_meshes()

    def sample_meshes(self, resolution: int | None = None) -> list[trimesh.Trimesh]:
        """Every sample's mesh at `resolution`^3 (default: the reconstruction's), made on first use
        (those not made yet, in one batched pass) and kept."""
        resolution = resolution or self.resolution
        missing = [k for k in range(self.samples) if (k, resolution) not in self._samples]
        if missing:
            start = time.perf_counter()
            for k, mesh in zip(missing, code_meshes(self._model(), self.codes[missing], resolution)):
                self._samples[k, resolution] = mesh
            self.timings[f"samples{resolution}"] = time.perf_counter() - start
        return [self._samples[k, resolution] for k in range(self.samples)]

    def sample_mesh(self, k: int, resolution: int | None = None) -> trimesh.Trimesh:
        """Sample k's mesh at `resolution`^3 (default: the reconstruction's), made on first use and kept."""
        resolution = resolution or self.resolution
        if (k, resolution) not in self._samples:
            self._samples[k, resolution] = code_meshes(self._model(), self.codes[k : k + 1], resolution)[0]
        return self._samples[k, resolution]

    def _model(self) -> FlowSDF:
        if self._pipe is None:
            raise RuntimeError("this reconstruction no longer has its model: no more meshes can be made")
        return self._pipe

    def preview_mesh(self) -> trimesh.Trimesh:
        """`mesh` at PREVIEW_RESOLUTION, coloured the same way (for drawing)."""
        if self._preview is None:
            self._make_previews()
        return self._preview

    def preview_samples(self) -> list[trimesh.Trimesh]:
        """Every sample's mesh at PREVIEW_RESOLUTION (for drawing)."""
        if self._preview is None:
            self._make_previews()
        return [self._samples[k, PREVIEW_RESOLUTION] for k in range(self.samples)]

    def _make_previews(self) -> None:
        """The result's code and the K samples' meshed at PREVIEW_RESOLUTION, in one batched pass."""
        start = time.perf_counter()
        many = self.samples >= 2
        codes = torch.cat([self.codes.mean(0, keepdim=True), self.codes]) if many else self.codes  # (K [+ 1], *latent)
        meshes = code_meshes(self._model(), codes, PREVIEW_RESOLUTION)
        main, samples = meshes[0], meshes[1:] if many else meshes
        for k, mesh in enumerate(samples):
            self._samples[k, PREVIEW_RESOLUTION] = mesh
        if many and len(main.vertices):
            std = spread(self._model(), self.codes, main.vertices, PREVIEW_RESOLUTION)
            main = to_trimesh(main.vertices, main.faces, std_colors(std, self.colour_max)[0])
        self._preview = main
        self.timings["preview_meshes"] = time.perf_counter() - start


def code_fields(pipe: FlowSDF, codes: Tensor) -> MultiField:
    """The decoded SDFs of codes (K, *latent) as one MultiField, points (P, 3) -> (K, P), each
    closed by the renderer's bounding sphere like `FlowSDF.field` (outside it: |p| - radius,
    never evaluated). The decoder's per-code terms are computed once for all K codes
    (`decoder.field(codes)`), and every call evaluates all K at the same points."""
    radius = pipe.cfg.render.bound_radius
    K = codes.shape[0]
    with torch.no_grad():
        batch = pipe.decoder.field(codes.to(pipe.device))

    @torch.no_grad()
    def fields(points: Tensor) -> Tensor:
        points = points.to(pipe.device)
        out = (torch.linalg.vector_norm(points, dim=-1) - radius).expand(K, -1).contiguous()  # (K, P)
        inside = out[0] < 0  # (P,)
        if inside.any():
            p = points[inside]  # (n, 3)
            # Code by code with an int item: the decoder broadcasts each code's terms instead of
            # gathering them per point (20 % faster on a CPU than one (K*n)-row call, same values).
            values = torch.stack([batch(p, k).reshape(-1) for k in range(K)]).to(out.dtype)  # (K, n)
            out[:, inside] = torch.maximum(values, out[:, inside])
        return out

    return fields


def code_meshes(pipe: FlowSDF, codes: Tensor, resolution: int) -> list[trimesh.Trimesh]:
    """Coarse-to-fine marching-cubes meshes of codes (K, *latent) at resolution^3, in one batched pass."""
    grids, _ = sdf_grids_coarse_to_fine(code_fields(pipe, codes), codes.shape[0], resolution, device=pipe.device)
    return [to_trimesh(*mesh_from_grid(g)) for g in grids]


def spread(pipe: FlowSDF, codes: Tensor, vertices: np.ndarray, resolution: int) -> np.ndarray:
    """Per-vertex std (V,) of the K >= 2 codes' fields at a mesh of `resolution`^3, from their values
    on the cells of the mesh's own grid, a whole number of voxels about BAND_CELL wide, that the
    mesh passes through (the mean shape's narrow band at that level; flowsdf.mesh.uncertainty.band_std)."""
    voxel = 2.0 / (resolution - 1)
    cell = voxel * max(1, round(BAND_CELL / voxel))
    return band_std(code_fields(pipe, codes), codes.shape[0], vertices, cell, origin=-1.0)


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
    image: ImageInput,
    samples: int = 1,
    steps: int | None = None,
    seed: int = 0,
    resolution: int = DEFAULT_RESOLUTION,
    refine: int = 0,
    prepare: bool = True,
    guidance: float | None = None,
) -> Reconstruction:
    """Reconstruct one picture (path, PIL image or (3, H, W) model-input tensor): the result mesh at
    `resolution`^3 (K = `samples` >= 2: the mean code's, coloured by the samples' spread), the
    input-view silhouette and the verdict. `prepare` (files and PIL images): find the object and
    frame it like the training renders first (flowsdf.data.prepare); False keeps the picture as it
    is (padded to a square). `refine` > 0 fits each code to the picture's foreground for that many
    steps first (FlowSDF.__call__; flowsdf.refine). `guidance`: W of classifier-free guidance
    (default: the run's flow.guidance; 1 = the plain conditional flow).

    Raises FlowSDFError for a picture that cannot be read, or (prepare=True) where no object is found.
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
    if isinstance(image, (str, Image.Image)) or not isinstance(image, Tensor):
        image = [image]  # one picture, not a list of paths
    notes = []
    requested = samples
    if samples > 1 and not pipe.is_flow:
        samples = 1
        notes.append(f"the {pipe.model} model is deterministic: its {requested} samples would be one shape, "
                     "so one is made")
    result = pipe(image, samples=samples, steps=steps, seed=seed, refine=refine, prepare=prepare, guidance=guidance)
    codes = result.codes[0]  # (K, *latent)
    prepared = result.prepared[0] if result.prepared else None
    lap("codes")
    code = codes.mean(0) if samples >= 2 else codes[0]  # (*latent) the code of the result mesh
    mesh = code_meshes(pipe, code[None], resolution)[0]
    lap("mesh")
    std = std_max = colour_max = None
    if samples >= 2:
        std = spread(pipe, codes, mesh.vertices, resolution) if len(mesh.vertices) else np.zeros(0)
        colours, colour_max = std_colors(std)
        std_max = float(std.max()) if len(std) else 0.0
        mesh = to_trimesh(mesh.vertices, mesh.faces, colours)
        lap("uncertainty")
    camera, silhouette, iou = code_camera(pipe, result.images[0], code, mesh)
    lap("camera")
    timings["total"] = sum(timings.values())
    rec = Reconstruction(
        image=result.images[0].cpu(), codes=codes.cpu(), mesh=mesh, vertex_std=std, std_max=std_max,
        colour_max=colour_max, silhouette=silhouette, camera=(camera.K.cpu(), camera.c2w.cpu()), camera_iou=iou,
        camera_searched=camera.searched,
        verdict=judge(prepared, iou, empty=len(mesh.faces) == 0), prepared=prepared, seed=seed, steps=result.steps,
        model=pipe.model, resolution=resolution, samples_requested=requested, notes=notes, timings=timings,
        refine=refine, _pipe=pipe,
    )
    if samples == 1:  # the one sample's mesh is the result
        rec._samples[0, resolution] = mesh
    return rec
