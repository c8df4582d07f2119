"""FlowSDF: a trained run as one object — pictures in; codes, silhouettes and meshes out.

    pipe = FlowSDF.from_run("runs/reproduce-quick")            # the Stage-2 flow
    result = pipe(["chair.png"], samples=4, seed=0)            # codes (N, K, D)
    vertices, faces = pipe.mesh(result.codes[0, 0])

This is the only place that turns a run folder into models: evaluation, the gradient check, the
report's figures, Stage 2's start from Stage 1, `flowsdf reconstruct` and the viewer all load
runs through `FlowSDF.from_run`. Three models can be loaded from a run:

- "cnn": the Stage-1 encoder and its decoder (deterministic: all K samples are the same code);
- "flow": the Stage-2 conditioner, velocity net and decoder, with the noise scale sigma;
- "flow-noscale": Phase 1's ablation flow distilled without noise scaling (sigma = 1), decoded by
  the Stage-1 decoder whose codes it was fitted to (it shows the collapse scaling prevents).

Sampling: sample k of every picture starts from the noise of seed `seed + k`, drawn by a CPU
generator per row, so a code depends only on its picture, the seed and k — not on the batch it
came in or the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from flowsdf import checkpoint, runs
from flowsdf.config import Config
from flowsdf.data import cameras
from flowsdf.data.frames import canonical_c2w
from flowsdf.data.images import foreground_mask, load_image
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.eval.shapes3d import bounded, decoder_field
from flowsdf.flow import flow_predictor, sample_latents
from flowsdf.mesh.extract import extract_mesh
from flowsdf.models.build import build_flow, build_stage1
from flowsdf.models.conditioner import ImageConditioner
from flowsdf.models.encoder import CNNEncoder
from flowsdf.models.sdf import SDFDecoder
from flowsdf.models.velocity import VelocityNet
from flowsdf.refine import refine_codes
from flowsdf.render.silhouette import render_views, silhouette_logits

MODELS = ("cnn", "flow", "flow-noscale")
ImageInput = Tensor | Image.Image | str | Path


@dataclass
class Result:
    """What one call of a pipeline returns."""

    images: Tensor  # (N, 3, S, S) the pictures as the model saw them
    codes: Tensor  # (N, K, D) K sampled codes per picture
    seed: int
    steps: int  # Euler steps (0 for the CNN)
    trajectory: Tensor | None = None  # (steps + 1, N, K, D) the Euler states, when asked for


class FlowSDF:
    """A trained model of a run, ready for inference (all modules in eval mode)."""

    def __init__(
        self,
        cfg: Config,
        model: str,
        decoder: SDFDecoder,
        *,
        encoder: CNNEncoder | None = None,
        conditioner: ImageConditioner | None = None,
        velocity: VelocityNet | None = None,
        sigma: float = 1.0,
        tau: float,
        run_dir: Path | None = None,
        stages: tuple[str, ...] = (),
    ):
        if model not in MODELS:
            raise FlowSDFError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
        if (encoder is None) == (velocity is None) or (conditioner is None) != (velocity is None):
            raise ValueError("a pipeline has either an encoder or a conditioner and a velocity net")
        self.cfg, self.model, self.decoder = cfg, model, decoder
        self.encoder, self.conditioner, self.velocity = encoder, conditioner, velocity
        self.sigma, self.tau, self.run_dir, self.stages = sigma, tau, run_dir, stages
        for m in self.modules.values():
            m.eval()

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | Path, model: str = "flow", device: str | torch.device = "auto",
                 finished: bool = True, stage1: str | Path | None = None) -> "FlowSDF":
        """Load `model` from a run folder onto `device` ("auto": CUDA when present).

        With `finished` (the default) only a model whose training ran to its last epoch is
        accepted. `finished=False` takes the latest state instead — for a flow, Phase 2's last
        epoch or, before Phase 2, Phase 1's flow with the Stage-1 decoder (for the gradient check).
        Phase 1's flows decode with the Stage-1 decoder: the run's own, else the checkpoint Phase 1
        recorded, else `stage1` (a checkpoint path) when given — a caller that knows it, such as
        Stage 2's training, passes it. Every refusal (no run, unfinished, damaged, another config)
        is one FlowSDFError.
        """
        if model not in MODELS:
            raise FlowSDFError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
        run_dir = Path(run_dir)
        dev = device if isinstance(device, torch.device) else pick_device(device)
        cfg = runs.read_config(run_dir)
        if model == "cnn":
            ckpt = _stage_checkpoint(run_dir, "stage1", cfg.stage1.epochs, finished)
            encoder, decoder = (m.to(dev) for m in build_stage1(cfg))
            checkpoint.load(ckpt, {"encoder": encoder, "decoder": decoder}, map_location=dev)
            return cls(cfg, model, decoder, encoder=encoder, tau=cfg.stage1.tau_end, run_dir=run_dir, stages=("stage1",))
        conditioner, velocity = (m.to(dev) for m in build_flow(cfg))
        _, decoder = (m.to(dev) for m in build_stage1(cfg))
        flow_modules = {"conditioner": conditioner, "velocity": velocity}
        p2 = runs.checkpoint_path(run_dir, "phase2")
        if model == "flow" and (finished or p2.exists()):
            ckpt = _stage_checkpoint(run_dir, "phase2", cfg.phase2.epochs, finished)
            meta = checkpoint.load(ckpt, {**flow_modules, "decoder": decoder}, map_location=dev)
            return cls(cfg, model, decoder, conditioner=conditioner, velocity=velocity, sigma=float(meta["sigma"]),
                       tau=cfg.phase2.tau_end, run_dir=run_dir, stages=("stage1", "phase1", "phase2"))
        # Phase 1's flows (the main one before Phase 2, or the ablation) decode with Stage 1's decoder.
        name = "last.safetensors" if model == "flow" else "noscale.safetensors"
        p1 = run_dir / "phase1" / name
        if not p1.is_file():
            what = "a Phase-1 flow" if model == "flow" else "Phase 1's no-scaling ablation flow"
            raise FlowSDFError(f"{run_dir} has no {what} ({p1} does not exist)")
        meta = checkpoint.load(p1, flow_modules, map_location=dev)
        s1 = Path(stage1) if stage1 is not None else _stage1_checkpoint_of(run_dir)
        checkpoint.load(s1, {"decoder": decoder, "encoder": build_stage1(cfg)[0].to(dev)}, map_location=dev)
        return cls(cfg, model, decoder, conditioner=conditioner, velocity=velocity, sigma=float(meta["sigma"]),
                   tau=cfg.stage1.tau_end, run_dir=run_dir, stages=("stage1", "phase1"))

    # --- properties ------------------------------------------------------------------------

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        names = ("encoder", "conditioner", "velocity", "decoder")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def image_size(self) -> int:
        return self.cfg.data.image_size

    @property
    def latent_dim(self) -> int:
        return self.cfg.decoder.latent_dim

    @property
    def is_flow(self) -> bool:
        return self.velocity is not None

    def predictor(self, steps: int | None = None):
        """The training code's image -> code function `predict(images, generator)` (differentiable;
        a flow draws its noise for the whole batch from `generator`). Used by evaluation."""
        if self.encoder is not None:
            encoder = self.encoder
            return lambda images, gen: encoder(images)
        return flow_predictor(self.conditioner, self.velocity, self.sigma, steps or self.cfg.flow.steps)

    # --- inference -------------------------------------------------------------------------

    def load_images(self, images: ImageInput | Sequence[ImageInput]) -> Tensor:
        """Pictures as model input (N, 3, S, S) on the model's device.

        A float tensor (N, 3, H, W) or (3, H, W) in [0, 1] (square; resized if H != S), PIL
        images or file paths (any size and aspect, RGBA, greyscale: see flowsdf.data.images).
        """
        S = self.image_size
        if isinstance(images, Tensor):
            batch = images[None] if images.dim() == 3 else images
            if batch.dim() != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
                raise FlowSDFError(f"expected square RGB images (N, 3, H, H), got a tensor of shape {tuple(images.shape)}")
        else:
            items = [images] if isinstance(images, (Image.Image, str, Path)) else list(images)
            if not items:
                raise FlowSDFError("no images given")
            batch = torch.stack([x if isinstance(x, Tensor) else load_image(x, S) for x in items])
        batch = batch.float().to(self.device)
        if batch.shape[-1] != S:
            batch = F.interpolate(batch, size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        return batch.clamp(0.0, 1.0)  # (N, 3, S, S)

    @torch.no_grad()
    def __call__(self, images: ImageInput | Sequence[ImageInput], samples: int = 1, steps: int | None = None,
                 seed: int = 0, trajectory: bool = False, refine: int = 0) -> Result:
        """K = `samples` codes per picture (N, K, D); `trajectory` keeps the flow's Euler states.

        `refine` > 0 fits every code for that many steps to its picture's foreground mask, seen
        from the input camera (flowsdf.refine); the trajectory, if kept, is the unrefined one.
        """
        if samples < 1:
            raise FlowSDFError(f"samples must be at least 1, got {samples}")
        if refine < 0:
            raise FlowSDFError(f"refine must be at least 0 steps, got {refine}")
        result = self._sample(images, samples, steps, seed, trajectory)
        if refine > 0:
            N, K = result.codes.shape[:2]
            codes = self.refine(result.codes.flatten(0, 1), result.images.repeat_interleave(K, dim=0), refine)
            result.codes = codes.view(N, K, -1)  # (N, K, D)
        return result

    def _sample(self, images: ImageInput | Sequence[ImageInput], samples: int, steps: int | None, seed: int,
                trajectory: bool) -> Result:
        steps = self.cfg.flow.steps if steps is None else steps
        if self.is_flow and steps < 1:
            raise FlowSDFError(f"steps must be at least 1, got {steps}")
        batch = self.load_images(images)  # (N, 3, S, S)
        N, K = batch.shape[0], samples
        if not self.is_flow:
            codes = self.encoder(batch)[:, None].expand(N, K, -1).contiguous()  # (N, K, D)
            traj = codes[None] if trajectory else None
            return Result(batch, codes, seed, 0, traj)
        cond = self.conditioner(batch).repeat_interleave(K, dim=0)  # (N*K, C)
        seeds = [seed + k for k in range(K)] * N
        out = sample_latents(self.velocity, cond, self.latent_dim, self.sigma, steps, seed=seeds,
                             return_trajectory=trajectory)
        codes, traj = out if trajectory else (out, None)
        codes = codes.view(N, K, -1)  # (N, K, D)
        if traj is not None:
            traj = traj.view(steps + 1, N, K, -1)  # (steps + 1, N, K, D)
        return Result(batch, codes, seed, steps, traj)

    def refine(self, codes: Tensor, images: Tensor, steps: int) -> Tensor:
        """Codes (M, D) fitted for `steps` steps to the foreground masks of their pictures
        (M, 3, S, S), seen from the input camera: C0 for a view-frame model, else the camera
        `estimate_camera` finds for each code (measured: from an estimated camera refinement
        does not help a world-frame model; from the true camera it does — README)."""
        masks = foreground_mask(images.to(self.device))  # (M, S, S)
        if self.cfg.frame == "view":
            K, c2w = self.input_camera()
            K, c2w = K.expand(len(codes), 3, 3), c2w.expand(len(codes), 4, 4)
        else:
            cams = [self.estimate_camera(code, mask)[:2] for code, mask in zip(codes, masks)]
            K, c2w = torch.stack([c[0] for c in cams]), torch.stack([c[1] for c in cams])
        return refine_codes(self.decoder, codes.to(self.device), masks, K.to(self.device), c2w.to(self.device),
                            self.cfg.render, self.tau, steps)

    @torch.no_grad()
    def silhouettes(self, codes: Tensor, K: Tensor, c2w: Tensor, size: int | None = None) -> Tensor:
        """Soft silhouettes (M, S, S) of codes (M, D) seen from cameras K (M, 3, 3), c2w (M, 4, 4)."""
        size = size or self.image_size
        dev = self.device
        out = []
        for s in range(0, codes.shape[0], 16):  # bounded memory for long lists
            field = self.decoder.field(codes[s : s + 16].to(dev))
            min_sdf = render_views(field, K[s : s + 16].to(dev), c2w[s : s + 16].to(dev), size, self.cfg.render)
            out.append(torch.sigmoid(silhouette_logits(min_sdf, self.tau)))
        return torch.cat(out)  # (M, S, S)

    @torch.no_grad()
    def flow_steps(self, images: ImageInput | Sequence[ImageInput], K: Tensor, c2w: Tensor, seed: int = 0,
                   steps: int | None = None) -> tuple[Tensor, Tensor]:
        """The flow step by step: latents (steps + 1, N, D) after each Euler step (state 0 is the
        noise) and their silhouettes (steps + 1, N, S, S), picture i seen from camera i."""
        r = self(images, samples=1, steps=steps, seed=seed, trajectory=True)
        traj = r.trajectory[:, :, 0]  # (T, N, D)
        T, N = traj.shape[:2]
        sils = self.silhouettes(traj.flatten(0, 1), K.repeat(T, 1, 1), c2w.repeat(T, 1, 1))  # (T*N, S, S)
        return traj, sils.view(T, N, *sils.shape[-2:])

    def field(self, code: Tensor):
        """The decoded SDF of one code (D,) as `f(points (P, 3)) -> (P,)`, closed by the renderer's
        bounding sphere (outside it there is no surface, as in training)."""
        return bounded(decoder_field(self.decoder, code), self.cfg.render.bound_radius)

    def mesh(self, code: Tensor, resolution: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Marching-cubes mesh (vertices (V, 3), faces (F, 3)) of one code (D,), object units."""
        return extract_mesh(self.field(code), resolution=resolution, device=self.device)

    # --- cameras ---------------------------------------------------------------------------

    def camera(self, azimuth_deg: float = 0.0, elevation_deg: float = 20.0) -> tuple[Tensor, Tensor]:
        """Intrinsics (3, 3) and camera-to-world (4, 4) of a dataset-like camera looking at the origin."""
        d = self.cfg.data
        a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
        position = d.cam_distance * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        K = torch.from_numpy(cameras.intrinsics(self.image_size, d.fov_deg)).float()
        return K, torch.from_numpy(cameras.look_at(position)).float()

    def input_camera(self) -> tuple[Tensor, Tensor]:
        """Intrinsics (3, 3) and camera-to-world (4, 4) of the camera a picture is taken from.

        Only a view-frame model has one: its codes live in the frame of their input view, whose
        camera is always C0. A world-frame model's input camera depends on the unknown pose
        (use `estimate_camera`).
        """
        if self.cfg.frame != "view":
            raise FlowSDFError("only a view-frame model (config frame 'view') knows its input camera; "
                               "for a world-frame model use estimate_camera")
        K = torch.from_numpy(cameras.intrinsics(self.image_size, self.cfg.data.fov_deg)).float()
        return K, torch.from_numpy(canonical_c2w(self.cfg.data.cam_distance)).float()

    @torch.no_grad()
    def estimate_camera(self, code: Tensor, mask: Tensor, azimuths: int = 24,
                        elevations: Sequence[float] = (-15.0, 0.0, 15.0, 30.0, 45.0, 60.0)) -> tuple[Tensor, Tensor, float]:
        """The dataset-like camera from which the code's silhouette best matches `mask` (S, S).

        A code lives in the training cameras' world frame, which a picture alone does not reveal;
        this searches a grid of viewpoints on the training cameras' elevation band and returns
        (K (3, 3), c2w (4, 4), IoU of the best one).
        """
        grid = [(360.0 * i / azimuths, e) for e in elevations for i in range(azimuths)]
        cams = [self.camera(a, e) for a, e in grid]
        K = torch.stack([c[0] for c in cams])  # (G, 3, 3)
        c2w = torch.stack([c[1] for c in cams])  # (G, 4, 4)
        sils = self.silhouettes(code[None].expand(len(grid), -1), K, c2w) > 0.5  # (G, S, S)
        target = mask.to(sils.device) > 0.5  # (S, S)
        inter = (sils & target).flatten(1).sum(1).float()
        union = (sils | target).flatten(1).sum(1).float().clamp(min=1)
        iou = inter / union  # (G,)
        best = int(iou.argmax())
        return K[best], c2w[best], float(iou[best])


def _stage_checkpoint(run_dir: Path, stage: str, epochs: int, finished: bool) -> Path:
    """A stage's checkpoint, refused unless it exists and (with `finished`) is at its last epoch."""
    epoch = runs.checkpoint_epoch(run_dir, stage)
    path = runs.checkpoint_path(run_dir, stage)
    if epoch is None:
        raise FlowSDFError(f"{run_dir} has no finished '{stage}' model ({path} does not exist)")
    if finished and epoch != epochs:
        raise FlowSDFError(f"{run_dir}: '{stage}' is unfinished (epoch {epoch} of {epochs}); resume its training first")
    return path


def _stage1_checkpoint_of(run_dir: Path) -> Path:
    """The Stage-1 checkpoint a flow run started from: the run's own, else the one Phase 1
    recorded (by its path relative to the run, checked against its digest; older runs recorded an
    absolute path)."""
    own = runs.checkpoint_path(run_dir, "stage1")
    if own.is_file():
        return own
    meta = checkpoint.read_header(runs.checkpoint_path(run_dir, "phase1"))["meta"]
    if "init_relative" in meta:
        path = Path(run_dir) / meta["init_relative"]
        if not path.is_file() or checkpoint.digest(path) != meta.get("init_sha256"):
            raise FlowSDFError(f"{run_dir}: the Stage-1 checkpoint it started from is not at {path} (moved or replaced)")
        return path
    init = meta.get("init")
    if not init or not Path(init).is_file():
        raise FlowSDFError(f"{run_dir}: the Stage-1 checkpoint it started from is not found ({init})")
    return Path(init)
