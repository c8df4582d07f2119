"""FlowSDF: a trained run as one object — pictures in; codes, silhouettes and meshes out.

    pipe = FlowSDF.from_run("runs/reproduce-quick")            # the Stage-2 flow
    result = pipe(["chair.png"], samples=4, seed=0)            # codes (N, K, *latent)
    vertices, faces = pipe.mesh(result.codes[0, 0])

`flowsdf reconstruct`, the viewer and `flowsdf eval` use a run through this object; its models
come from flowsdf.loading ("cnn", "flow" or "flow-noscale").

Sampling: sample k of every picture starts from the noise of seed `seed + k`, drawn by a CPU
generator per row, so a code depends only on its picture, the seed and k — not on the batch it
came in or the device. Codes are sampled with the inference sampler (flowsdf.fast_sampler). With
flow.consistency > 0 a sample that disagrees with its picture is drawn again from seeds of its own
(flowsdf.consistency), so that still holds.

The input camera: a code says what the shape is in its model's frame; rendering its silhouette
"as the picture saw it", or fitting it to the picture, needs the camera the picture was taken
from. There is one rule for it, `input_camera`: a view-frame model predicts in the frame of its
input view, whose camera is the canonical C0 by construction; a world-frame model's picture does
not reveal its camera, so it is searched among dataset-like viewpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from flowsdf.consistency import check_frame, consistent_draws, retry_seeds
from flowsdf.data.frames import canonical_c2w
from flowsdf.data.images import foreground_mask
from flowsdf.data.prepare import Prepared, prepare_picture
from flowsdf.errors import FlowSDFError
from flowsdf.fast_sampler import ReferenceSampler, make_sampler, sampler_predictor
from flowsdf.flow import sample_noise
from flowsdf.fields import PointField, Predictor, bounded, code_field
from flowsdf.loading import Trained, load_model
from flowsdf.mesh.export import to_trimesh
from flowsdf.mesh.extract import extract_mesh, extract_mesh_coarse_to_fine
from flowsdf.mesh.project import point_silhouettes, surface_samples
from flowsdf.metrics.samples import flow_trajectory
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.refine import refine_codes
from flowsdf.render import cameras
from flowsdf.render.silhouette import silhouettes

ImageInput = Tensor | Image.Image | str | Path

# The viewpoints searched for a world-frame picture's camera: the training cameras' elevation band.
SEARCH_AZIMUTHS = 24
SEARCH_ELEVATIONS = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0)


@dataclass
class Result:
    """What one call of a pipeline returns."""

    images: Tensor  # (N, 3, S, S) the pictures as the model saw them
    codes: Tensor  # (N, K, *latent) K sampled codes per picture
    seed: int
    steps: int  # Euler steps (0 for the CNN)
    trajectory: Tensor | None = None  # (steps + 1, N, K, *latent) the Euler states, when asked for
    # For pictures given as files or PIL images: how each was prepared (flowsdf.data.prepare); None
    # for a tensor (taken to be model input already).
    prepared: list[Prepared] | None = None


@dataclass
class InputCamera:
    """The camera a picture was taken from, as a model sees it."""

    K: Tensor  # (3, 3) intrinsics
    c2w: Tensor  # (4, 4) camera-to-world
    searched: bool  # True: searched (world frame); False: the view frame's C0, known by construction


def view_camera(image_size: int, fov_deg: float, distance: float) -> InputCamera:
    """A view-frame model's input camera: C0, whatever the picture."""
    K = torch.from_numpy(cameras.intrinsics(image_size, fov_deg)).float()
    return InputCamera(K, torch.from_numpy(canonical_c2w(distance)).float(), searched=False)


class FlowSDF:
    """A trained model of a run, ready for inference (all modules in eval mode).

    The inference sampler reads the weights once per step count: build a new pipeline after
    changing them.
    """

    def __init__(self, trained: Trained):
        self.trained = trained
        self.cfg, self.model, self.decoder = trained.cfg, trained.model, trained.decoder
        self.encoder, self.conditioner, self.velocity = trained.encoder, trained.conditioner, trained.velocity
        self.sigma, self.tau, self.run_dir, self.stages = trained.sigma, trained.tau, trained.run_dir, trained.stages
        self._samplers: dict[tuple, ReferenceSampler] = {}  # by (steps, the flow settings they were built from)

    @classmethod
    def from_run(cls, run_dir: str | Path, model: str = "flow", device: str | torch.device = "auto",
                 finished: bool = True, stage1: str | Path | None = None) -> "FlowSDF":
        """Load `model` ("cnn", "flow" or "flow-noscale") of a run folder onto `device` (what
        `finished` and `stage1` mean: flowsdf.loading.load_model)."""
        trained = load_model(run_dir, model, device, finished, stage1)
        if model == "cnn" and trained.cfg.encoder.kind == "table":
            raise FlowSDFError(f"{run_dir}: its Stage 1 is a table of codes fitted to its training shapes, not a "
                               "picture encoder; load its flow (model 'flow')")
        return cls(trained)

    # --- properties ------------------------------------------------------------------------

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return self.trained.modules

    @property
    def device(self) -> torch.device:
        return self.trained.device

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self.cfg.decoder.latent_shape

    @property
    def is_flow(self) -> bool:
        return self.velocity is not None

    def set_sampling(self, temperature: float | None = None, consistency: float | None = None,
                     consistency_tries: int | None = None) -> None:
        """Override the flow's sampling settings (flowsdf.flow.FlowConfig) for this pipeline; None
        keeps the run's. The next samples use them (samplers are keyed by the settings). Consistency
        on a world-frame run is one error line (flowsdf.consistency.check_frame)."""
        check_frame(self.cfg.frame, consistency or 0.0, self.run_dir)
        for key, value in (("temperature", temperature), ("consistency", consistency),
                           ("consistency_tries", consistency_tries)):
            if value is not None:
                setattr(self.cfg.flow, key, value)

    def sampler(self, steps: int | None = None) -> ReferenceSampler:
        """The flow's inference sampler for `steps` Euler steps (default: the run's)."""
        steps = self.cfg.flow.steps if steps is None else steps
        if steps < 1:
            raise FlowSDFError(f"steps must be at least 1, got {steps}")
        f = self.cfg.flow
        key = (steps, f.temperature, f.time_shift, f.guidance_until)  # a changed setting gets a new sampler
        if key not in self._samplers:
            self._samplers[key] = make_sampler(self.velocity, self.sigma * f.temperature, steps, self.latent_shape,
                                               f.time_shift, f.guidance_until)
        return self._samplers[key]

    def predictor(self, steps: int | None = None, guidance: float | None = None) -> Predictor:
        """images, generator -> codes, as evaluation calls a model: the encoder, or the flow with the
        noise of the whole batch drawn from the generator, then the inference sampler (guidance W:
        default the run's flow.guidance)."""
        if self.encoder is not None:
            encoder = self.encoder
            return lambda images, gen: encoder(images)
        sampler, w = self.sampler(steps), self._guidance(guidance)
        if self.cfg.flow.consistency == 0:
            return sampler_predictor(self.conditioner, sampler, w)

        def predict(images: Tensor, gen: torch.Generator) -> Tensor:
            # Draw 0 is the plain predictor's noise; every retry's noise is drawn up front too, so the
            # generator moves on by the same amount whatever is accepted: later batches do not
            # depend on this one's outcome.
            B, L, n = images.shape[0], sampler.latent_shape, self.cfg.flow.consistency_tries
            z0 = torch.cat([sample_noise((1, B, *L), sampler.sigma, gen, images.device),
                            sample_noise((n - 1, B, *L), sampler.sigma, gen, images.device)])  # (n, B, *latent)
            with torch.no_grad():
                cond = self.conditioner(images)
            picture = torch.arange(B, device=images.device)
            return self._agreeing(sampler, cond, foreground_mask(images), picture, lambda j, rows: z0[j, rows], w)

        return predict

    def _guidance(self, guidance: float | None) -> float:
        w = self.cfg.flow.guidance if guidance is None else guidance
        if not 0 <= w <= 100:
            raise FlowSDFError(f"guidance must be from 0 to 100, got {w}")
        return w

    # --- inference -------------------------------------------------------------------------

    def load_images(self, images: ImageInput | Sequence[ImageInput], prepare: bool = True
                    ) -> tuple[Tensor, list[Prepared] | None]:
        """Pictures as model input (N, 3, S, S) on the model's device, and how each was prepared.

        A float tensor (N, 3, H, W) or (3, H, W) in [0, 1] (square; resized if H != S) is taken as
        model input already. PIL images and file paths (any size, aspect and mode: see
        flowsdf.data.images) are prepared like the training renders (flowsdf.data.prepare: the
        object found on its background, re-framed, put on black); `prepare=False` only pads them to
        a square and resizes them.
        """
        S = self.image_size
        prepared = None
        if isinstance(images, Tensor):
            batch = images[None] if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
                raise FlowSDFError(f"expected square RGB images (N, 3, H, H), got a tensor of shape {tuple(images.shape)}")
        else:
            items = [images] if isinstance(images, (Image.Image, str, Path)) else list(images)
            if not items:
                raise FlowSDFError("no images given")
            prepared = [prepare_picture(x, S, prepare) for x in items]
            batch = torch.stack([p.image for p in prepared])
        batch = batch.float().to(self.device)
        if batch.shape[-1] != S:
            batch = F.interpolate(batch, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        return batch.clamp(0.0, 1.0), prepared  # (N, 3, S, S)

    def __call__(self, images: ImageInput | Sequence[ImageInput], samples: int = 1, steps: int | None = None,
                 seed: int = 0, trajectory: bool = False, refine: int = 0, prepare: bool = True,
                 guidance: float | None = None) -> Result:
        """K = `samples` codes per picture (N, K, *latent); `trajectory` keeps the flow's Euler states.
        `guidance` W of classifier-free guidance (default: the run's flow.guidance; 1 = none).

        `refine` > 0 fits every code for that many steps to its picture's foreground mask, seen
        from the input camera (flowsdf.refine); the trajectory, if kept, is the unrefined one.
        `prepare` (files and PIL images): see `load_images`.
        """
        if self.model == "text":
            raise FlowSDFError("a text model takes prompts: use FlowSDF.generate(texts)")
        if samples < 1:
            raise FlowSDFError(f"samples must be at least 1, got {samples}")
        if refine < 0:
            raise FlowSDFError(f"refine must be at least 0 steps, got {refine}")
        result = self._sample(images, samples, steps, seed, trajectory, prepare, self._guidance(guidance))
        if refine > 0:
            N, K = result.codes.shape[:2]
            codes = self.refine(result.codes.flatten(0, 1), result.images.repeat_interleave(K, dim=0), refine)
            result.codes = codes.view(N, K, *self.latent_shape)  # (N, K, *latent)
        return result

    @torch.no_grad()
    def generate(self, texts: str | Sequence[str], samples: int = 1, steps: int | None = None, seed: int = 0,
                 guidance: float | None = None) -> Result:
        """Text to 3-D (a "text" model): K = `samples` codes (N, K, *latent) per prompt. Sample k of
        every prompt starts from the noise of seed `seed + k`; `guidance` W (default: the run's
        text_train.guidance; 1 = the plain conditional flow). Result.images is empty (N, 0)."""
        if self.model != "text":
            raise FlowSDFError(f"generate needs a text model (FlowSDF.from_run(run, 'text')), not {self.model!r}")
        if samples < 1:
            raise FlowSDFError(f"samples must be at least 1, got {samples}")
        prompts = [texts] if isinstance(texts, str) else list(texts)
        w = self._guidance(self.cfg.text_train.guidance if guidance is None else guidance)
        tokens, mask = self.conditioner.encode(prompts)  # (N, L, C), (N, L); one clear error for bad prompts
        N, K = len(prompts), samples
        sampler = self.sampler(steps)
        z0 = sampler.noise([seed + k for k in range(K)] * N, self.device)  # (N*K, *latent)
        codes = sampler(tokens.repeat_interleave(K, dim=0), z0, cond_mask=mask.repeat_interleave(K, dim=0), guidance=w)
        return Result(torch.zeros(N, 0), codes.view(N, K, *self.latent_shape), seed, sampler.steps)

    @torch.no_grad()
    def _sample(self, images: ImageInput | Sequence[ImageInput], samples: int, steps: int | None, seed: int,
                trajectory: bool, prepare: bool, guidance: float) -> Result:
        batch, prepared = self.load_images(images, prepare)  # (N, 3, S, S)
        N, K, L = batch.shape[0], samples, self.latent_shape
        if not self.is_flow:
            codes = self.encoder(batch)[:, None].expand(N, K, *L).contiguous()  # (N, K, *latent)
            return Result(batch, codes, seed, 0, codes[None] if trajectory else None, prepared)
        sampler = self.sampler(steps)
        seeds = [seed + k for k in range(K)] * N
        if self.cfg.flow.consistency > 0:
            if trajectory:
                raise FlowSDFError("the flow's trajectory is not kept with flow.consistency > 0 (a sample may be drawn "
                                   "again); set it to 0 to see the path")
            picture = torch.arange(N, device=self.device).repeat_interleave(K)  # (N*K,) each row's picture
            noise = lambda j, rows: sampler.noise(retry_seeds([seeds[r] for r in rows.tolist()], j), self.device)  # noqa: E731
            codes = self._agreeing(sampler, self.conditioner(batch), foreground_mask(batch), picture, noise, guidance)
            return Result(batch, codes.view(N, K, *L), seed, sampler.steps, None, prepared)
        cond = self.conditioner(batch).repeat_interleave(K, dim=0)  # (N*K, ...)
        z0 = sampler.noise(seeds, self.device)  # (N*K, *latent)
        out = sampler(cond, z0, trajectory, guidance=guidance)
        codes, traj = out if trajectory else (out, None)
        if traj is not None:
            traj = traj.view(sampler.steps + 1, N, K, *L)  # (steps + 1, N, K, *latent)
        return Result(batch, codes.view(N, K, *L), seed, sampler.steps, traj, prepared)

    def _agreeing(self, sampler: ReferenceSampler, cond: Tensor, masks: Tensor, picture: Tensor, noise, guidance: float
                  ) -> Tensor:
        """Codes (B, *latent) drawn under flow.consistency (flowsdf.consistency): conditions cond
        (P, ...) and foreground masks (P, S, S) of P pictures, `picture` (B,) the picture of each
        row, `noise(j, rows)` the source noise (R, *latent) of try j of the rows (R,)."""
        if self.cfg.frame != "view":
            raise FlowSDFError("flow.consistency needs a view-frame model: a world-frame picture does not say where it "
                               "was seen from, so its samples cannot be checked against it; set flow.consistency to 0")
        f = self.cfg.flow
        camera = view_camera(self.image_size, self.cfg.data.fov_deg, self.cfg.data.cam_distance)
        K, c2w = camera.K.to(self.device), camera.c2w.to(self.device)

        def agreement(codes: Tensor, pictures: Tensor) -> Tensor:  # (R, *latent), (R,) -> (R,) input-view IoU
            n = len(pictures)
            sil = self.silhouettes(codes, K.expand(n, 3, 3), c2w.expand(n, 4, 4), masks.shape[-1])  # (R, S, S)
            return silhouette_iou(sil, masks[pictures])

        P = cond.shape[0]
        centre = sampler(cond, torch.zeros(P, *sampler.latent_shape, device=self.device), guidance=guidance)  # (P, *latent)
        reference = agreement(centre, torch.arange(P, device=self.device))[picture]  # (B,)
        draw = lambda j, rows: sampler(cond[picture[rows]], noise(j, rows), guidance=guidance)  # noqa: E731
        codes, _ = consistent_draws(draw, lambda c, rows: agreement(c, picture[rows]), reference, f.consistency,
                                    f.consistency_tries, centre[picture])
        return codes

    def refine(self, codes: Tensor, images: Tensor, steps: int) -> Tensor:
        """Codes (M, *latent) fitted for `steps` steps to the foreground masks of their pictures
        (M, 3, S, S), seen from each picture's `input_camera` (measured: from a searched camera
        refinement does not help a world-frame model; from the true camera it does —
        docs/experiments.md)."""
        masks = foreground_mask(images.to(self.device))  # (M, S, S)
        cams = [self.input_camera(code, mask) for code, mask in zip(codes, masks)]
        K, c2w = torch.stack([c.K for c in cams]), torch.stack([c.c2w for c in cams])
        return refine_codes(self.decoder, codes.to(self.device), masks, K.to(self.device), c2w.to(self.device),
                            self.cfg.render, self.tau, steps)

    def silhouettes(self, codes: Tensor, K: Tensor, c2w: Tensor, size: int | None = None) -> Tensor:
        """Soft silhouettes (M, S, S) of codes (M, *latent) seen from cameras K (M, 3, 3), c2w (M, 4, 4)."""
        size = size or self.image_size
        dev = self.device
        out = []
        for s in range(0, codes.shape[0], 16):  # bounded memory for long lists
            field = self.decoder.field(codes[s : s + 16].to(dev))
            out.append(silhouettes(field, K[s : s + 16].to(dev), c2w[s : s + 16].to(dev), size, self.cfg.render, self.tau))
        return torch.cat(out)  # (M, S, S)

    def flow_steps(self, images: ImageInput | Sequence[ImageInput], K: Tensor, c2w: Tensor, seed: int = 0,
                   steps: int | None = None) -> tuple[Tensor, Tensor]:
        """The flow step by step: latents (steps + 1, N, *latent) after each Euler step (state 0 is
        the noise) and their silhouettes (steps + 1, N, S, S), picture i seen from camera i."""
        dev = self.device
        return flow_trajectory(self.conditioner, self.sampler(steps), self.decoder, self.load_images(images)[0], K.to(dev),
                               c2w.to(dev), seed, self.cfg.render, self.tau)

    def field(self, code: Tensor) -> PointField:
        """The decoded SDF of one code (*latent) as a PointField, closed by the renderer's bounding
        sphere (outside it there is no surface, as in training)."""
        return bounded(code_field(self.decoder, code), self.cfg.render.bound_radius)

    def mesh(self, code: Tensor, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Marching-cubes mesh (vertices (V, 3), faces (F, 3)) of one code (*latent), object units."""
        return extract_mesh(self.field(code), resolution=resolution, device=self.device)

    # --- cameras ---------------------------------------------------------------------------

    def camera(self, azimuth_deg: float = 0.0, elevation_deg: float = 20.0) -> tuple[Tensor, Tensor]:
        """Intrinsics (3, 3) and camera-to-world (4, 4) of a dataset-like camera looking at the origin."""
        d = self.cfg.data
        a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
        position = d.cam_distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        K = torch.from_numpy(cameras.intrinsics(self.image_size, d.fov_deg)).float()
        return K, torch.from_numpy(cameras.look_at(position)).float()

    def input_camera(self, code: Tensor, mask: Tensor, mesh: trimesh.Trimesh | None = None) -> InputCamera:
        """The camera a picture was taken from, given its code (*latent) and foreground mask (S, S).

        A view-frame model's codes live in the frame of their input view, whose camera is always
        C0. A world-frame model's picture does not say where it was seen from: the camera is the
        dataset-like viewpoint (SEARCH_AZIMUTHS x SEARCH_ELEVATIONS) from which the code's
        silhouette best matches the mask. The silhouettes come from points on the code's mesh
        projected through each camera (a closed surface covers exactly its silhouette; ~100x
        cheaper than ray marching every view); `mesh` is the code's mesh if the caller has one
        (else one is made at 64^3). An empty shape gets the default camera.
        """
        if self.cfg.frame == "view":
            return view_camera(self.image_size, self.cfg.data.fov_deg, self.cfg.data.cam_distance)
        if mesh is None:
            mesh = to_trimesh(*extract_mesh_coarse_to_fine(self.field(code), resolution=64, device=self.device))
        if len(mesh.faces) == 0:
            return InputCamera(*self.camera(), searched=True)
        grid = [self.camera(360.0 * i / SEARCH_AZIMUTHS, e) for e in SEARCH_ELEVATIONS for i in range(SEARCH_AZIMUTHS)]
        K = torch.stack([c[0] for c in grid])  # (G, 3, 3)
        c2w = torch.stack([c[1] for c in grid])  # (G, 4, 4)
        pixel = self.cfg.data.cam_distance / float(K[0, 0, 0])  # a pixel's width at the origin
        points = surface_samples(mesh.vertices, mesh.faces, pixel)  # (n, 3)
        sils = point_silhouettes(points, K, c2w, mask.shape[-1])  # (G, S, S)
        target = (mask.cpu() > 0.5)[None].expand_as(sils)  # (G, S, S)
        best = int(silhouette_iou(sils, target).argmax())
        return InputCamera(K[best], c2w[best], searched=True)
