"""What the viewer computes, with no web code: loaded once per run, called by the page's handlers.

Everything a request can ask for is bounded (`Limits`): the number of samples, the meshing
resolution, the seed's range, the upload size and rate; pictures are checked by
flowsdf.data.images before decoding and prepared like the training renders (flowsdf.data.prepare)
before the model sees them. Every refusal is a FlowSDFError whose one-line message the page shows.

"Step the flow" caches each computed path (picture, noise scaling, seed) so that moving the step
slider only redraws; the cache is small and bounded.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowsdf import runs
from flowsdf.data.dataset import Dataset, Views
from flowsdf.data.prepare import Prepared, prepare_picture
from flowsdf.device import pick_device
from flowsdf.errors import FlowSDFError
from flowsdf.loading import load_model
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import DEFAULT_RESOLUTION, DEFAULT_SAMPLES, FIT_LOW, code_camera
from flowsdf.viewer import panes
from flowsdf.viewer.latent import LatentFrame, fit_frame
from flowsdf.viewer.recon import (
    MeshFolder,
    Progress,
    ReconOutput,
    Recons,
    caption,
    reconstruct_upload,
    write_examples,
    write_shown,
)
from flowsdf.viewer.text import TextOutput, generate_prompt

SPLITS = ("training", "novel", "held-out")
YOURS = "your picture"  # the step tab's source after an upload
MAX_SEED = 2**31 - 1
GUIDANCE = (1.0, 7.0)  # the page's range of classifier-free guidance W (1 = the plain conditional flow)
MAX_PROMPT_CHARACTERS = 2000  # a prompt box's text (the text encoder reads its first words anyway)
NO_TEXT_MODEL = ("this run has no text model: train one with `flowsdf train --stage text --init RUN --out RUN`, "
                 "then restart the viewer")
_CACHE_SIZE = 64
MB = 1024 * 1024  # the page counts upload sizes in binary megabytes; so do --max-upload-mb and the header


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (time and memory)."""

    max_samples: int = 8  # K flow samples per reconstruction
    min_resolution: int = 32  # marching-cubes grid points per axis
    max_resolution: int = 128
    max_upload_mb: float = 10.0  # MB of 1,048,576 bytes; enforced by the web server before a handler runs
    uploads_per_minute: int = 30  # per client address, enforced by the web server (flowsdf.viewer.app.Guard)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MB)

    @property
    def upload_limit_text(self) -> str:
        """The limit as the page's own refusal prints it (Gradio's front end: powers of 1024, one
        decimal), with the exact number of bytes."""
        return f"{size_text(self.max_upload_bytes)} ({self.max_upload_bytes:,} bytes)"

    @property
    def default_samples(self) -> int:
        """`flowsdf reconstruct`'s default K, within the bounds."""
        return min(DEFAULT_SAMPLES, self.max_samples)

    @property
    def default_resolution(self) -> int:
        """`flowsdf reconstruct`'s default resolution, within the bounds."""
        return max(self.min_resolution, min(DEFAULT_RESOLUTION, self.max_resolution))


def size_text(n: int) -> str:
    """A number of bytes as Gradio's page writes it: divided by 1024 while >= 1024, one decimal."""
    value, units = float(n), ("bytes", "KB", "MB", "GB", "TB")
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{value:.1f} {units[unit]}"


@dataclass
class Picture:
    """One input of "Step the flow": a dataset view (with its camera and ground truth) or an upload."""

    image: Tensor  # (3, S, S) as the model sees it
    label: str
    key: tuple  # identifies the picture in the cache
    mask: Tensor | None = None  # (S, S) ground-truth silhouette, dataset views only
    K: Tensor | None = None  # (3, 3) the view's camera, dataset views only
    c2w: Tensor | None = None  # (4, 4)
    prepared: Prepared | None = None  # how an upload was prepared


@dataclass
class FlowPath:
    """The flow's Euler states for one picture, noise setting and seed, ready to draw."""

    latents: np.ndarray  # (T, D) state after each step; state 0 is the noise
    plane: np.ndarray  # (T, 2) on the training codes' principal plane
    norms: np.ndarray  # (T,)
    silhouettes: np.ndarray  # (T, S, S) decoded soft silhouettes from the picture's camera
    picture: np.ndarray  # (S, S, 3) the input as the model sees it
    ground_truth: np.ndarray | None  # (S, S), None for an upload
    title: str
    camera_note: str
    prepared_note: str | None = None  # an upload: how it was prepared

    @property
    def steps(self) -> int:
        return self.latents.shape[0] - 1


class Viewer:
    """A run's flows, dataset and latent frame, loaded once; the page's computations."""

    def __init__(self, run_dir: Path, flow: FlowSDF, noscale: FlowSDF | None, data: Dataset, frame: LatentFrame,
                 limits: Limits = Limits(), workdir: Path | None = None, text: FlowSDF | None = None,
                 text_note: str = NO_TEXT_MODEL):
        """`workdir`: where mesh files and example pictures go (the caller removes it); None: a
        temporary folder this object owns. `text`: the run's text model, if it has a finished one;
        `text_note` says why not, on the Text-to-3-D tab."""
        self.run_dir, self.flow, self.noscale, self.data = Path(run_dir), flow, noscale, data
        self.text, self.text_note = text, text_note
        self.start_guidance: float | None = None  # the Reconstruct tab's starting W (None: the run's)
        self.frame, self.limits = frame, limits
        self._splits = {"training": data.train.input, "novel": data.train.novel, "held-out": data.heldout.input}
        self._cache: OrderedDict[tuple, FlowPath] = OrderedDict()
        self._cameras: dict[tuple, tuple[Tensor, Tensor, bool, float]] = {}
        self._lock = threading.Lock()
        if workdir is None:
            self._own = tempfile.TemporaryDirectory(prefix="flowsdf-view-")
            workdir = Path(self._own.name)
        self.workdir = Path(workdir)
        self._meshes = MeshFolder(self.workdir / "meshes")
        self._recons = Recons()
        self._examples: list[tuple[Path, str]] | None = None

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", data_dir: Path | None = None,
             limits: Limits = Limits(), progress: bool = True, workdir: Path | None = None,
             guidance: float | None = None, temperature: float | None = None,
             consistency: float | None = None) -> Viewer:
        """Load everything the page needs; any problem is one FlowSDFError, before serving.
        `guidance`: the Reconstruct tab's starting W (None: the run's flow.guidance); `temperature`,
        `consistency`: the flow's sampling settings (FlowSDF.set_sampling; None: the run's)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FlowSDFError(f"{run_dir} is not a folder")
        dev = pick_device(device)
        flow = FlowSDF.from_run(run_dir, "flow", dev)
        flow.set_sampling(temperature=temperature, consistency=consistency)
        has_noscale = (run_dir / "phase1" / "noscale.safetensors").is_file()
        noscale = FlowSDF.from_run(run_dir, "flow-noscale", dev) if has_noscale else None
        data = runs.run_data(flow.cfg, run_dir, data_dir, progress=progress)
        text, note = None, NO_TEXT_MODEL
        if runs.checkpoint_path(run_dir, "text").is_file():
            try:  # an unfinished text model leaves the other tabs working; its tab says why it is off
                text = FlowSDF.from_run(run_dir, "text", dev)
            except FlowSDFError as e:
                note = str(e)
        viewer = cls(run_dir, flow, noscale, data, training_frame(run_dir, flow, data), limits, workdir, text, note)
        viewer.start_guidance = guidance
        return viewer

    @property
    def default_text_guidance(self) -> float:
        """The text model's W (text_train.guidance), within the page's range (1 without a text model)."""
        w = self.text.cfg.text_train.guidance if self.text is not None else 1.0
        return min(max(w, GUIDANCE[0]), GUIDANCE[1])

    @property
    def default_guidance(self) -> float:
        """The Reconstruct tab's starting W: `flowsdf view --guidance`, else the run's flow.guidance,
        within the page's range."""
        w = self.flow.cfg.flow.guidance if self.start_guidance is None else self.start_guidance
        return min(max(w, GUIDANCE[0]), GUIDANCE[1])

    # --- pictures ------------------------------------------------------------------------------

    def split_size(self, split: str) -> int:
        views = self._views(split)
        return views.images.shape[0] * views.images.shape[1]

    def split_thumbnails(self, split: str) -> list[np.ndarray]:
        """Every view of a split as RGB uint8 (H, W, 3), in index order."""
        images = self._views(split).images.flatten(0, 1)  # (M, 3, H, W)
        return [(x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8) for x in images]

    def dataset_picture(self, split: str, index: int) -> Picture:
        views = self._views(split)
        n, v = views.images.shape[:2]
        if not 0 <= index < n * v:
            raise FlowSDFError(f"the {split} split has pictures 0..{n * v - 1}; {index} is not one of them")
        shape, view = divmod(int(index), v)
        label = f"{split} picture {index} (shape {shape}, view {view})"
        return Picture(views.images[shape, view], label, ("dataset", split, int(index)),
                       views.masks[shape, view], views.K[shape, view], views.c2w[shape, view])

    def upload_picture(self, path: str | Path) -> Picture:
        """A user's picture file, checked (empty, not an image, damaged, too many pixels) and
        prepared like the training renders (the object found, centred, scaled, put on black)."""
        path = Path(path)
        prepared = read_upload(path, self.flow.image_size)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return Picture(prepared.image, f"your picture {path.name}", ("upload", digest), prepared=prepared)

    def examples(self) -> list[tuple[Path, str]]:
        """Example pictures to click (files and captions): held-out shapes of the run's dataset,
        as a user might have them (made once, in the work folder)."""
        if self._examples is None:
            self._examples = write_examples(self._splits["held-out"], self.workdir / "examples")
        return self._examples

    # --- step the flow -------------------------------------------------------------------------

    def step_flow(self, picture: Picture, scaling: bool, seed: int) -> FlowPath:
        """The flow's path for a picture: states, silhouettes from the picture's camera (estimated
        for an upload, with the noise-scaled flow, and then used for both settings)."""
        seed = check_seed(seed)
        pipe = self.pipe(scaling)
        key = (picture.key, scaling, seed)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        if picture.K is not None:
            K, c2w = picture.K, picture.c2w
            camera_note = "the dataset view's own camera"
        else:
            K, c2w, searched, iou = self.upload_camera(picture, seed)
            camera_note = (f"searched: a picture does not reveal its camera, so the silhouettes are drawn from the "
                           f"dataset-like viewpoint where the final code's silhouette best matches the picture's "
                           f"mask (IoU {iou:.2f})" if searched else
                           f"the view frame's input camera C0, known by construction (IoU {iou:.2f})")
        latents, sils = pipe.flow_steps(picture.image[None], K[None], c2w[None], seed=seed)  # (T, 1, *latent), (T, 1, S, S)
        latents = latents[:, 0].flatten(1).cpu().double().numpy()  # (T, D)
        setting = f"noise scaling on (sigma = {pipe.sigma:.3f})" if scaling else "noise scaling off (sigma = 1)"
        path = FlowPath(
            latents=latents,
            plane=self.frame.project(latents),
            norms=np.linalg.norm(latents, axis=1),
            silhouettes=sils[:, 0].cpu().numpy(),
            picture=picture.image.permute(1, 2, 0).cpu().numpy(),
            ground_truth=None if picture.mask is None else picture.mask.cpu().numpy(),
            title=f"{picture.label}, {setting}, seed {seed}",
            camera_note=camera_note,
            prepared_note=None if picture.prepared is None else prepared_note(picture.prepared),
        )
        with self._lock:
            self._cache[key] = path
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return path

    def upload_camera(self, picture: Picture, seed: int) -> tuple[Tensor, Tensor, bool, float]:
        """The camera of an uploaded picture (FlowSDF.input_camera, with the noise-scaled flow's final
        code): (K, c2w, whether it was searched, IoU of the code's silhouette with the picture's mask)."""
        key = (picture.key, seed)
        with self._lock:
            if key in self._cameras:
                return self._cameras[key]
        code = self.flow(picture.image[None], samples=1, seed=seed).codes[0, 0]  # (*latent)
        cam, _, iou = code_camera(self.flow, picture.image, code)  # the same rule as Reconstruct's
        camera = (cam.K, cam.c2w, cam.searched, iou)
        with self._lock:
            if len(self._cameras) >= _CACHE_SIZE:
                self._cameras.pop(next(iter(self._cameras)))
            self._cameras[key] = camera
        return camera

    def pipe(self, scaling: bool) -> FlowSDF:
        if scaling:
            return self.flow
        if self.noscale is None:
            raise FlowSDFError(f"{self.run_dir} has no flow distilled without noise scaling "
                               "(phase1/noscale.safetensors); Phase 1 writes it when its ablation is on")
        return self.noscale

    def step_panes(self, path: FlowPath, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """The three panes at one step (latent plot, silhouette, ground truth or the upload) and a
        Markdown caption."""
        step = int(min(max(step, 0), path.steps))
        plot = panes.latent_figure(self.frame, path.plane, path.norms, step, path.steps)
        sil = path.silhouettes[step]  # (S, S)
        lines = [f"**Step {step} of {path.steps}** (t = {step / path.steps:.3f}): {path.title}."]
        if not (sil >= 0.5).any():  # never a silent black pane
            lines.append("**The decoded shape is empty at this step**: no surface is in view from this camera, "
                         "so the silhouette pane is black." + (" That is the sampled shape: try another seed."
                                                              if step == path.steps else ""))
        lines.append(f"Camera: {path.camera_note}.")
        if path.ground_truth is not None:
            third = panes.gray_pane(path.ground_truth)
            iou = float(silhouette_iou(torch.from_numpy(sil)[None], torch.from_numpy(path.ground_truth)[None])[0])
            lines.append(f"Silhouette IoU with the ground truth at this step: {iou:.3f}.")
        else:
            third = panes.rgb_pane(path.picture)
            lines.append("Your picture has no ground truth: the right pane shows it as the model sees it.")
            if path.prepared_note:
                lines.append(path.prepared_note)
        return plot, panes.gray_pane(sil), third, "\n\n".join(lines)

    # --- reconstruct ---------------------------------------------------------------------------

    def reconstruct(self, path: str | Path, samples: int, resolution: int, seed: float | None,
                    progress: Progress, guidance: float | None = None) -> ReconOutput:
        """The Reconstruct tab: K samples of an uploaded picture (guidance W; None: the run's); the
        result mesh written as glb/obj/ply."""
        lim = self.limits
        if guidance is not None and not GUIDANCE[0] <= guidance <= GUIDANCE[1]:
            raise FlowSDFError(f"guidance must be from {GUIDANCE[0]:g} to {GUIDANCE[1]:g}, got {guidance:g}")
        if not 1 <= samples <= lim.max_samples:
            raise FlowSDFError(f"samples must be from 1 to {lim.max_samples}, got {samples}")
        if not lim.min_resolution <= resolution <= lim.max_resolution:
            raise FlowSDFError(f"the mesh resolution must be from {lim.min_resolution} to {lim.max_resolution}, "
                               f"got {resolution}")
        seed = check_seed(seed)
        progress(0.0, "reading the picture")
        path = Path(path)
        try:
            return reconstruct_upload(self.flow, path, path.stem, samples, resolution, seed, self._meshes.new(),
                                      self._recons, progress, guidance)
        except FlowSDFError as e:  # the web server's temporary path means nothing to the user
            raise FlowSDFError(str(e).replace(str(path), path.name)) from e


    def generate(self, prompt: str, samples: int, resolution: int, seed: float | None, guidance: float,
                 progress: Progress) -> TextOutput:
        """The Text-to-3-D tab: K shapes for a prompt; the result mesh written as glb/obj/ply."""
        if self.text is None:
            raise FlowSDFError(self.text_note)
        lim = self.limits
        if not 1 <= samples <= lim.max_samples:
            raise FlowSDFError(f"samples must be from 1 to {lim.max_samples}, got {samples}")
        if not lim.min_resolution <= resolution <= lim.max_resolution:
            raise FlowSDFError(f"the mesh resolution must be from {lim.min_resolution} to {lim.max_resolution}, "
                               f"got {resolution}")
        if not GUIDANCE[0] <= guidance <= GUIDANCE[1]:
            raise FlowSDFError(f"guidance must be from {GUIDANCE[0]:g} to {GUIDANCE[1]:g}, got {guidance:g}")
        if len(prompt) > MAX_PROMPT_CHARACTERS:
            raise FlowSDFError(f"the prompt is {len(prompt):,} characters long; at most {MAX_PROMPT_CHARACTERS:,}")
        return generate_prompt(self.text, prompt, samples, resolution, check_seed(seed), guidance, self._meshes.new(),
                               progress)
    def show(self, key: str | None, choice: str) -> tuple[dict[str, Path], str]:
        """What the 3-D view shows for one reconstruction: the mean (K >= 2) or one sample, whose
        full-resolution mesh is made now if it was not yet. Returns the files and the caption."""
        session = self._recons.get(key)
        files = write_shown(session, choice)
        return files, caption(session.rec, choice)

    def _views(self, split: str) -> Views:
        if split not in self._splits:
            raise FlowSDFError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        return self._splits[split]


def training_frame(run_dir: Path, flow: FlowSDF, data: Dataset) -> LatentFrame:
    """The latent plot's frame: the principal axes of the Stage-1 codes of the training shapes (the
    codes the flows learnt): the encoder's codes of the training pictures, or, for the generative
    recipe, the table's fitted codes. A flow run whose Stage-1 model lives in another folder uses
    the flow's own codes of the training pictures instead; the page says so."""
    images = data.train.input.images.flatten(0, 1)  # (M, 3, S, S)
    if not runs.checkpoint_path(run_dir, "stage1").is_file():
        codes = flow(images, seed=0).codes[:, 0]  # (M, *latent)
        source = "the flow's own codes of the training pictures (seed 0; the run holds no Stage-1 model)"
    elif flow.cfg.encoder.kind == "table":  # no picture encoder: its rows are the training shapes' codes
        codes = load_model(run_dir, "cnn", flow.device).encoder.codes.detach()  # (N, *latent)
        source = "the Stage-1 table's codes of the training shapes, each fitted to all of its views"
    else:
        codes = FlowSDF.from_run(run_dir, "cnn", flow.device)(images).codes[:, 0]  # (M, *latent)
        source = "the Stage-1 encoder's codes of the training pictures"
    return fit_frame(codes.flatten(1).cpu().double().numpy(), source)


def read_upload(path: Path, size: int) -> Prepared:
    """An uploaded picture file prepared as model input (flowsdf.data.prepare), checked before decoding.

    The web server keeps uploads under its own temporary folder; a refusal names only the file.
    """
    try:
        return prepare_picture(path, size)
    except FlowSDFError as e:
        raise FlowSDFError(str(e).replace(str(path), path.name)) from e


def prepared_note(p: Prepared) -> str:
    """How an upload was prepared, and its fit, in one Markdown paragraph."""
    notes = [n[0].upper() + n[1:] + "." for n in p.info.notes + p.notes]
    text = (f"Prepared: the object was found on a {p.background.kind} background covering {100 * p.coverage:.0f} % "
            f"of the picture, centred and scaled like the training renders (fit {p.fit:.2f}).")
    if p.fit < FIT_LOW:
        text = "**Warning: the picture is unlike the training pictures.** " + text
    return " ".join([text] + notes)


def check_seed(seed: float | None) -> int:
    if seed is None or float(seed) != int(seed) or not 0 <= int(seed) <= MAX_SEED:
        raise FlowSDFError(f"the seed must be a whole number from 0 to {MAX_SEED}, got {seed}")
    return int(seed)
