"""Generate, cache and load the synthetic dataset.

On-disk format (version `FORMAT_VERSION`), one folder:

    manifest.json   {"format": 1, "config": DataConfig, "config_hash": "...",
                     "splits": {"train": {"shapes": [spec, ...], "families": [...]},
                                "heldout": {...}}}
    train.npz       arrays for the training shapes
    heldout.npz     arrays for the held-out shapes (never used by any training)

Each .npz holds, for N shapes, V input views and M novel views (H = W = image_size):

    input_images  (N, V, H, W, 3) uint8   Lambertian-shaded RGB, black background
    input_masks   (N, V, H, W)    uint8   ground-truth silhouette (1 = the pixel's ray hits)
    input_K       (N, V, 3, 3)    float32 intrinsics (pixel units, OpenCV convention)
    input_c2w     (N, V, 4, 4)    float32 camera-to-world
    input_light   (N, V, 3)       float32 unit direction towards the light, world frame
    novel_*       the same for the M novel views (for evaluation only)
    albedo        (N, 3)          float32 per-shape RGB albedo

The folder is regenerated only when the config hash changes; files are written to a temporary
sibling folder (`.NAME.tmp-XXXXXXXX`) and moved into place, so an interrupted generation never
leaves a half dataset. The generating process holds a lock on that folder; the next generation
beside it removes the temporary folders whose lock is free (their process was killed), never a
live one. Free space for the whole dataset (its uncompressed size, an upper bound) is checked
before any rendering.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from flowsdf.checkpoint import ensure_space, strict_json
from flowsdf.data import shapes
from flowsdf.errors import FlowSDFError
from flowsdf.render import cameras
from flowsdf.render.shading import first_hit, lambertian
from flowsdf.schema import COUNT, FRACTION, Rule, build, int_range

FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
VIEW_KEYS = ("images", "masks", "K", "c2w", "light")
# Ground truth searches a sphere just larger than any shape (shapes.MAX_RADIUS = 0.85).
GT_BOUND = 0.9


@dataclass
class DataConfig:
    n_train_shapes: int = 50
    n_heldout_shapes: int = 20
    train_views: int = 1  # input views per training shape (the published protocol: one)
    novel_views: int = 6  # extra views per shape, for evaluation only
    image_size: int = 64
    fov_deg: float = 40.0  # a shape of radius 0.85 (shapes.MAX_RADIUS) just fits the frame
    cam_distance: float = 2.5
    ambient: float = 0.1
    csg_fraction: float = 0.25  # share of shapes that are a union/difference of two primitives
    gt_samples: int = 192  # dense samples per ray for ground truth, then bisection
    seed: int = 0

    RULES = {
        "n_train_shapes": int_range(1, 1_000_000), "n_heldout_shapes": int_range(1, 100_000),
        "train_views": int_range(1, 64), "novel_views": int_range(1, 64), "image_size": int_range(8, 512),
        "fov_deg": Rule("a number in (0, 180)", lambda v: 0 < v < 180),
        # Cameras must see the whole bounding sphere (radius <= 0.9) from outside it.
        "cam_distance": Rule("a number > 1", lambda v: v > 1), "ambient": FRACTION, "csg_fraction": FRACTION,
        "gt_samples": int_range(2, 4096), "seed": COUNT,
    }

    def hash(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Views:
    """A stack of views of N shapes, as float tensors ready for training."""

    images: Tensor  # (N, V, 3, H, W) in [0, 1]
    masks: Tensor  # (N, V, H, W) in {0, 1}
    K: Tensor  # (N, V, 3, 3)
    c2w: Tensor  # (N, V, 4, 4)
    light: Tensor  # (N, V, 3)

    def to(self, device: torch.device | str) -> "Views":
        return Views(*(x.to(device) for x in (self.images, self.masks, self.K, self.c2w, self.light)))


@dataclass
class ShapeSplit:
    shapes: list[shapes.Spec]
    albedo: Tensor  # (N, 3)
    input: Views
    novel: Views

    def __len__(self) -> int:
        return len(self.shapes)

    def to(self, device: torch.device | str) -> "ShapeSplit":
        return ShapeSplit(self.shapes, self.albedo.to(device), self.input.to(device), self.novel.to(device))


@dataclass
class Dataset:
    root: Path
    config: DataConfig
    train: ShapeSplit
    heldout: ShapeSplit

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.root, self.config, self.train.to(device), self.heldout.to(device))


# ---------------------------------------------------------------------------------------------
# generation


def _render_view(spec: shapes.Spec, albedo: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: DataConfig):
    """Ground-truth image, mask and light of one view of one analytic shape."""
    K_t, c2w_t = torch.from_numpy(K).float(), torch.from_numpy(c2w).float()
    origins, dirs = cameras.camera_rays(K_t, c2w_t, cfg.image_size)  # (R, 3)

    def field(p: Tensor, item: Tensor) -> Tensor:
        return shapes.sdf(spec, p)

    hit, depth = first_hit(field, origins, dirs, radius=GT_BOUND, n_samples=cfg.gt_samples)  # (R,)
    # Light from over the camera's upper-left shoulder, so every view sees a lit side.
    to_light_cam = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])
    light = (c2w[:3, :3] @ to_light_cam).astype(np.float32)
    image = torch.zeros(origins.shape[0], 3)
    if hit.any():
        points = origins[hit] + depth[hit, None] * dirs[hit]  # (Hh, 3)
        pts = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(shapes.sdf(spec, pts).sum(), pts)
        normals = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        image[hit] = lambertian(normals, torch.from_numpy(albedo).float(), torch.from_numpy(light), cfg.ambient)
    S = cfg.image_size
    image_u8 = (image.view(S, S, 3).numpy() * 255.0 + 0.5).astype(np.uint8)
    return image_u8, hit.view(S, S).numpy().astype(np.uint8), light


def _render_shape(job: tuple) -> dict[str, list]:
    """Every view of one shape in one group: job = (spec, albedo, K, camera positions, cfg)."""
    spec, albedo, K, positions, cfg = job
    per = {k: [] for k in VIEW_KEYS}
    for position in positions:
        c2w = cameras.look_at(position)
        img, mask, light = _render_view(spec, albedo, K, c2w, cfg)
        for key, val in zip(VIEW_KEYS, (img, mask, K, c2w, light)):
            per[key].append(val)
    return per


def _one_thread() -> None:
    # Each worker renders one small view at a time: threads inside it would only contend.
    torch.set_num_threads(1)


def _render_split(
    specs: list[shapes.Spec], rng: np.random.Generator, cfg: DataConfig, desc: str, progress: bool = True,
    workers: int = 1,
) -> dict:
    K = cameras.intrinsics(cfg.image_size, cfg.fov_deg)
    n, arrays = len(specs), {}
    albedo = rng.uniform(0.35, 1.0, size=(n, 3))
    view_counts = {"input": cfg.train_views if desc == "train" else 1, "novel": cfg.novel_views}
    # Every random draw happens here, before any rendering: the result does not depend on `workers`.
    positions = {
        group: np.stack([cameras.random_viewpoints(rng, v, cfg.cam_distance) for _ in range(n)])
        for group, v in view_counts.items()
    }
    pool = None
    if workers > 1:
        # spawn, not fork: a forked child inherits torch's thread pools mid-state.
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_one_thread)
    try:
        with tqdm(total=n * sum(view_counts.values()), desc=f"rendering {desc}", unit="view", leave=False,
                  disable=not progress) as bar:
            for group, v in view_counts.items():
                jobs = ((specs[i], albedo[i], K, positions[group][i], cfg) for i in range(n))
                per_shape = pool.imap(_render_shape, jobs, chunksize=16) if pool else map(_render_shape, jobs)
                out = {k: [] for k in VIEW_KEYS}
                for per in per_shape:  # in shape order, whatever finished first
                    for key in VIEW_KEYS:
                        out[key].append(np.stack(per[key]))
                    bar.update(v)
                for key in VIEW_KEYS:
                    arr = np.stack(out[key])
                    arrays[f"{group}_{key}"] = arr if arr.dtype == np.uint8 else arr.astype(np.float32)
    finally:
        if pool is not None:
            pool.terminate()
    arrays["albedo"] = albedo.astype(np.float32)
    return arrays


def generate(cfg: DataConfig, root: Path, progress: bool = True, workers: int = 1) -> None:
    """Render the whole dataset into `root` (replacing it atomically); `progress` shows a bar.

    `workers` > 1 renders shapes in that many processes; the files are the same either way."""
    if workers < 1:
        raise FlowSDFError(f"workers must be >= 1, got {workers}")
    streams = np.random.SeedSequence(cfg.seed).spawn(4)
    specs = {
        "train": shapes.random_shapes(cfg.n_train_shapes, int(streams[0].generate_state(1)[0]), cfg.csg_fraction),
        "heldout": shapes.random_shapes(cfg.n_heldout_shapes, int(streams[1].generate_state(1)[0]), cfg.csg_fraction),
    }
    manifest = {
        "format": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "config_hash": cfg.hash(),
        "splits": {s: {"shapes": specs[s], "families": [shapes.family(x) for x in specs[s]]} for s in SPLITS},
    }
    try:  # before any rendering: an unwritable place fails at once
        root.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(root)
        ensure_space(root.parent, dataset_bytes(cfg), f"the dataset {root.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        lock = os.open(tmp, os.O_RDONLY)
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process finishes or dies: see remove_stale_temporaries
    except OSError as e:
        raise FlowSDFError(f"cannot write the dataset to {root}: {e.strerror or e}") from e
    try:
        for split, stream in zip(SPLITS, streams[2:]):
            arrays = _render_split(specs[split], np.random.default_rng(stream), cfg, split, progress, workers)
            np.savez_compressed(tmp / f"{split}.npz", **arrays)
        (tmp / "manifest.json").write_text(strict_json(manifest, indent=1))
        os.chmod(tmp, 0o755)  # mkdtemp makes a private folder; a dataset is meant to be shared
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    except OSError as e:  # a full disk, mid-way: one line, the old dataset (if any) untouched
        raise FlowSDFError(f"cannot write the dataset to {root}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        os.close(lock)


def dataset_bytes(cfg: DataConfig) -> int:
    """An upper bound of a dataset folder's size: its arrays uncompressed (images and masks
    compress well, so the folder is usually several times smaller), plus the manifest."""
    pixels = cfg.image_size**2
    per_view = pixels * 3 + pixels + 4 * (9 + 16 + 3)  # image, mask (uint8), K, c2w, light (float32)
    views = cfg.n_train_shapes * (cfg.train_views + cfg.novel_views) + cfg.n_heldout_shapes * (1 + cfg.novel_views)
    shapes_n = cfg.n_train_shapes + cfg.n_heldout_shapes
    return views * per_view + shapes_n * (12 + 1024) + 65536  # + albedo, + a generous manifest line per shape


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove the temporary folders a killed generation of `root` left beside it; a folder whose
    generating process is alive keeps its lock (generate) and is left alone. Returns what was removed."""
    removed = []
    for tmp in Path(root).parent.glob(f".{Path(root).name}.tmp-*"):
        if not tmp.is_dir():
            continue
        fd = os.open(tmp, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # another process is generating into it now
        finally:
            os.close(fd)
        shutil.rmtree(tmp)
        removed.append(tmp)
    return removed


def is_current(cfg: DataConfig, root: Path) -> bool:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("config_hash") == cfg.hash()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def ensure(cfg: DataConfig, root: Path, progress: bool = True, workers: int = 1) -> Dataset:
    """Load the dataset at `root`, generating it first if missing or made from another config."""
    root = Path(root)
    if not is_current(cfg, root):
        check_replaceable(root)
        generate(cfg, root, progress, workers)
    return load(root)


def check_replaceable(root: Path) -> None:
    """Refuse to regenerate into a non-empty folder that is not a flowsdf dataset."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FlowSDFError(f"{root} exists and is not a folder; refusing to overwrite it")
    if root.exists() and any(root.iterdir()) and not (root / "manifest.json").exists():
        raise FlowSDFError(f"{root} exists and is not a flowsdf dataset; refusing to overwrite it")


# ---------------------------------------------------------------------------------------------
# loading


def _views(arrays, group: str) -> Views:
    images = torch.from_numpy(arrays[f"{group}_images"]).float().div(255.0)  # (N, V, H, W, 3)
    return Views(
        images=images.permute(0, 1, 4, 2, 3).contiguous(),  # (N, V, 3, H, W)
        masks=torch.from_numpy(arrays[f"{group}_masks"]).float(),
        K=torch.from_numpy(arrays[f"{group}_K"]),
        c2w=torch.from_numpy(arrays[f"{group}_c2w"]),
        light=torch.from_numpy(arrays[f"{group}_light"]),
    )


def load(root: Path) -> Dataset:
    """Load a dataset folder; any missing or damaged part is a one-line FlowSDFError."""
    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise FlowSDFError(f"no dataset at {root} (missing manifest.json); create one with `flowsdf data`")
    try:
        manifest = json.loads((root / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise FlowSDFError(f"{root}: dataset format {manifest.get('format')} is not {FORMAT_VERSION}")
        cfg = _checked_config(root, manifest["config"])
        splits = {}
        for split in SPLITS:
            with np.load(root / f"{split}.npz", allow_pickle=False) as arrays:
                n = len(manifest["splits"][split]["shapes"])
                s = ShapeSplit(
                    shapes=manifest["splits"][split]["shapes"],
                    albedo=torch.from_numpy(arrays["albedo"]),
                    input=_views(arrays, "input"),
                    novel=_views(arrays, "novel"),
                )
            if s.input.images.shape[0] != n or s.input.images.shape[-1] != cfg.image_size:
                raise FlowSDFError(f"{root}/{split}.npz does not match its manifest")
            splits[split] = s
    except FlowSDFError:
        raise
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise FlowSDFError(f"dataset at {root} is damaged ({type(e).__name__}: {e}); regenerate it with `flowsdf data`") from e
    return Dataset(root=root, config=cfg, **splits)


def _checked_config(root: Path, value: object) -> DataConfig:
    """The manifest's DataConfig, every field checked like a run's config.json."""
    try:
        return build(DataConfig, value, "data")
    except FlowSDFError as e:
        raise FlowSDFError(f"dataset at {root} is damaged: manifest.json {e}") from e


def default_root(cfg: DataConfig, base: Path = Path("data_cache")) -> Path:
    return base / f"shapes-{cfg.hash()}"
