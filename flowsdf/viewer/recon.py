"""The "Reconstruct" tab's work: an uploaded picture -> K sampled shapes -> what the page shows and
offers for download, bounded by the viewer's limits (K, the meshing resolution, the seed's range).

Example pictures to click are held-out shapes of the run's dataset (never trained on) put on the
backgrounds and in the framings a user's picture has, so one click shows what preparation does.

One request makes the result mesh (K >= 2: the mean code's, coloured by the samples' spread on the
absolute scale of flowsdf.mesh.uncertainty, with its colour bar), the picture as the model saw it,
the silhouette, the verdict and a gallery of the K samples drawn from preview-resolution meshes. A
sample's full-resolution mesh is made only when it is chosen for the 3-D view or for download.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from flowsdf.data.dataset import Views
from flowsdf.errors import FlowSDFError
from flowsdf.figures.preview import camera_angles, mesh_image
from flowsdf.mesh.export import FORMATS, export_mesh, to_trimesh
from flowsdf.pipeline import FlowSDF
from flowsdf.reconstruct import Reconstruction, reconstruct_image
from flowsdf.viewer import panes

Progress = Callable[[float, str], None]
MEAN = "mean of the samples"  # the 3-D view's first choice with K >= 2
# A mesh without uncertainty colours is shown and exported in this colour (RGBA): a mid slate blue
# that reads on the page's white and in other tools, where an uncoloured mesh comes out pale.
SINGLE_COLOUR = (86, 118, 160, 255)
GALLERY_TILE = 150  # pixels per side of a sample's picture
EXAMPLE_SIDE = 192  # pixels per side of an example picture


@dataclass
class ReconOutput:
    """What the tab shows for one request (or for one choice of what the 3-D view shows)."""

    key: str  # identifies the reconstruction for later choices (Recons)
    files: dict[str, Path]  # format -> the shown mesh's file (glb, obj, ply)
    picture: np.ndarray  # (H, W, 3) uint8: the picture as the model saw it
    silhouette: np.ndarray  # (H, W, 3) uint8: predicted silhouette from the picture's camera
    caption: str  # Markdown
    verdict: str  # Markdown: the verdict, a warning when low
    gallery: list[tuple[np.ndarray, str]]  # one (picture, label) per sample
    choices: list[str]  # what the 3-D view can show: MEAN (K >= 2), "sample 1" ...
    colour_bar: np.ndarray | None  # (H, W, 3) uint8, K >= 2


class MeshFolder:
    """A private temporary folder for the tab's mesh files: one subfolder per request, only the
    latest `keep` kept (the web server copies what it serves into its own cache)."""

    def __init__(self, root: Path, keep: int = 8):
        self._root = Path(root)
        self._root.mkdir(parents=True, exist_ok=True)
        self._keep, self._count, self._lock = keep, 0, threading.Lock()

    @property
    def root(self) -> Path:
        return self._root

    def new(self) -> Path:
        with self._lock:
            self._count += 1
            folder = self._root / f"{self._count:06d}"
            folder.mkdir()
            old = self._root / f"{self._count - self._keep:06d}"
        if old.is_dir():
            shutil.rmtree(old)
        return folder


@dataclass
class Session:
    """One request's reconstruction, kept so that a sample can be shown or downloaded later."""

    rec: Reconstruction
    folder: Path
    stem: str


class Recons:
    """The latest reconstructions (bounded), by key."""

    def __init__(self, keep: int = 8):
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._keep, self._lock, self._count = keep, threading.Lock(), 0

    def add(self, session: Session) -> str:
        with self._lock:
            self._count += 1
            key = f"r{self._count}"
            self._items[key] = session
            while len(self._items) > self._keep:
                self._items.popitem(last=False)
        return key

    def get(self, key: str | None) -> Session:
        with self._lock:
            if key is None or key not in self._items:
                raise FlowSDFError("that reconstruction is no longer kept; reconstruct the picture again")
            return self._items[key]


def shown_mesh(rec: Reconstruction, choice: str) -> trimesh.Trimesh:
    """The mesh the 3-D view shows for a choice: MEAN (K >= 2) or "sample k" (its full-resolution
    mesh, made now if it was not yet), in SINGLE_COLOUR when it has no uncertainty colours."""
    if choice == MEAN and rec.samples >= 2:
        return rec.mesh
    try:
        k = int(choice.removeprefix("sample ")) - 1
    except ValueError:
        raise FlowSDFError(f"nothing called {choice!r} to show") from None
    if not 0 <= k < rec.samples:
        raise FlowSDFError(f"there is no {choice}: this reconstruction has {rec.samples} sample(s)")
    mesh = rec.sample_mesh(k)
    return to_trimesh(mesh.vertices, mesh.faces, np.tile(np.array(SINGLE_COLOUR, np.uint8), (len(mesh.vertices), 1)))


def write_shown(session: Session, choice: str) -> dict[str, Path]:
    """The chosen mesh as glb, obj and ply in the session's folder (written once per choice)."""
    mesh = shown_mesh(session.rec, choice)
    if len(mesh.faces) == 0:
        raise FlowSDFError(f"{choice} has no surface inside the bounding sphere: nothing to show; try another seed")
    tag = "mean" if choice == MEAN else choice.replace(" ", "")
    paths = {fmt: session.folder / f"{session.stem}-{tag}.{fmt}" for fmt in FORMATS}
    for path in paths.values():
        if not path.is_file():
            export_mesh(mesh, path)
    return paths


def reconstruct_upload(pipe: FlowSDF, picture: Path, name: str, samples: int, resolution: int, seed: int,
                       folder: Path, recons: Recons, progress: Progress, guidance: float | None = None) -> ReconOutput:
    """Reconstruct one uploaded picture file (prepared like the training renders) and write its
    result mesh as glb/obj/ply into `folder`, named after `name`. The caller checks the bounds."""
    progress(0.1, f"preparing the picture, sampling {samples} code(s), meshing at {resolution}^3")
    rec = reconstruct_image(pipe, picture, samples=samples, seed=seed, resolution=resolution, guidance=guidance)
    if len(rec.mesh.faces) == 0:
        raise FlowSDFError("the decoded shape has no surface inside the bounding sphere: there is nothing to show. "
                           "Try another seed, or a picture more like the training renders")
    session = Session(rec, folder, f"{name or 'shape'}-seed{seed}-k{samples}")
    key = recons.add(session)
    choice = MEAN if rec.samples >= 2 else "sample 1"
    progress(0.7, "drawing the samples")
    gallery = sample_gallery(rec)
    progress(0.9, "writing glb, obj and ply")
    files = write_shown(session, choice)
    return ReconOutput(key, files, panes.rgb_pane(rec.image.permute(1, 2, 0).numpy()),
                       panes.gray_pane(rec.silhouette.numpy()), caption(rec, choice), verdict_text(rec),
                       gallery, choices(rec), panes.colour_bar(rec.colour_max, rec.vertex_std) if rec.samples >= 2 else None)


def choices(rec: Reconstruction) -> list[str]:
    return ([MEAN] if rec.samples >= 2 else []) + [f"sample {k + 1}" for k in range(rec.samples)]


def sample_gallery(rec: Reconstruction) -> list[tuple[np.ndarray, str]]:
    """Each sample drawn from the input camera's direction (preview-resolution meshes, one batched pass)."""
    azimuth, elevation = camera_angles(rec.camera[1].numpy())
    return [(mesh_image(m, azimuth, elevation, GALLERY_TILE, colour=np.array(SINGLE_COLOUR[:3]) / 255.0),
             f"sample {k + 1} (seed {rec.seed + k})") for k, m in enumerate(rec.preview_samples())]


def verdict_text(rec: Reconstruction) -> str:
    """The verdict as Markdown: a warning when low, the score and what it is made of otherwise."""
    v = rec.verdict
    parts = ("" if v.fit is None else f"picture fit {v.fit:.2f} x ") + f"silhouette IoU {v.iou:.2f}"
    if v.low:
        return f"**Warning: {v.warning}** ({parts})."
    return (f"Confidence score {v.score:.2f} ({parts}): the picture is like the training pictures and the shape "
            "explains its outline.")


def caption(rec: Reconstruction, choice: str) -> str:
    """What the page says about the shown mesh and the request."""
    mesh = rec.mesh if choice == MEAN else rec.sample_mesh(int(choice.split()[-1]) - 1)
    lines = [(f"**Shown: {choice}** of {rec.samples} sample(s), seed {rec.seed}, {rec.steps} Euler steps, mesh at "
              f"{rec.resolution}^3: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces.")]
    if rec.samples >= 2 and choice == MEAN:
        lines.append(f"Colour: the spread (std) of the {rec.samples} samples' surfaces at each vertex, on a fixed scale "
                     f"0-{rec.colour_max:g} object units (colour bar; dotted: this mesh's median "
                     f"{float(np.median(rec.vertex_std)):.4f}, solid: its largest {rec.std_max:.4f}).")
    elif rec.samples == 1:
        lines.append("One sample: no spread to colour (it needs K >= 2).")
    lines += rec.notes
    if rec.prepared is not None:
        p = rec.prepared
        lines.append(f"Prepared: the object was found on a {p.background.kind} background covering "
                     f"{100 * p.coverage:.0f} % of the picture, then centred and scaled like the training renders."
                     + (" " + " ".join(n[0].upper() + n[1:] + "." for n in p.info.notes + p.notes) if
                        p.info.notes + p.notes else ""))
    how = "searched among dataset-like views" if rec.camera_searched else "the view frame's input camera"
    lines.append(f"Camera: {how} (IoU of the silhouette with the picture's object {rec.camera_iou:.2f}).")
    lines.append("Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in rec.timings.items()) + ".")
    return "\n\n".join(lines)


# --- example pictures ---------------------------------------------------------------------------

# (caption, held-out shape, background RGB top / bottom, object side as a share of SIDE, centre (x, y) as shares)
EXAMPLES = (
    ("on black, centred (like training)", 0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.75, (0.5, 0.5)),
    ("on white", 1, (0.97, 0.97, 0.96), (0.97, 0.97, 0.96), 0.75, (0.5, 0.5)),
    ("small, off-centre, grey gradient", 2, (0.85, 0.86, 0.9), (0.35, 0.34, 0.33), 0.45, (0.33, 0.62)),
    ("large, on warm grey", 3, (0.62, 0.57, 0.5), (0.62, 0.57, 0.5), 1.0, (0.5, 0.5)),
)


def compose(image: np.ndarray, mask: np.ndarray, top: tuple, bottom: tuple, share: float, centre: tuple,
            side: int = EXAMPLE_SIDE) -> np.ndarray:
    """A render image (S, S, 3) in [0, 1] with its mask (S, S) scaled to `share` of a side x side
    picture, centred at `centre` (shares of the side) on a vertical gradient from `top` to
    `bottom`: RGB uint8 (side, side, 3)."""
    size = max(1, round(share * side))
    obj = np.asarray(Image.fromarray((image * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                     dtype=np.float64) / 255.0  # (size, size, 3)
    alpha = np.asarray(Image.fromarray((mask * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR),
                       dtype=np.float64) / 255.0  # (size, size)
    t = np.linspace(0.0, 1.0, side)[:, None, None]  # (side, 1, 1)
    canvas = (np.asarray(top) * (1 - t) + np.asarray(bottom) * t) * np.ones((side, side, 3))  # (side, side, 3)
    left, upper = round(centre[0] * side - size / 2), round(centre[1] * side - size / 2)
    xs, ys = slice(max(left, 0), min(left + size, side)), slice(max(upper, 0), min(upper + size, side))
    sub = (slice(ys.start - upper, ys.stop - upper), slice(xs.start - left, xs.stop - left))
    a = alpha[sub][..., None]
    canvas[ys, xs] = a * obj[sub] + (1 - a) * canvas[ys, xs]
    return (np.clip(canvas, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def write_examples(views: Views, folder: Path) -> list[tuple[Path, str]]:
    """The example pictures as PNG files in `folder`: [(path, caption)]."""
    folder.mkdir(parents=True, exist_ok=True)
    n = views.images.shape[0]
    out = []
    for i, (text, shape, top, bottom, share, centre) in enumerate(EXAMPLES):
        image = views.images[shape % n, 0].permute(1, 2, 0).numpy()  # (S, S, 3)
        mask = views.masks[shape % n, 0].numpy()  # (S, S)
        path = folder / f"example{i + 1}.png"
        Image.fromarray(compose(image, mask, top, bottom, share, centre)).save(path)
        out.append((path, f"held-out shape {shape % n}, {text}"))
    return out
