"""Does a generated shape say what its caption said? Family and proportion, judged without 3-D data.

Text-to-3-D is scored with what the package already has, silhouettes and analytic shapes:

- `family_renders`: hard silhouettes (min-SDF < 0, not the soft sigmoid: a decoder's distances
  need not have unit slope, so only the sign is comparable with an exact SDF) of a shape from M = 6
  fixed cameras. The cameras look along the six axes of an icosahedron, the best spread of six
  directions with no two opposite (an opposite camera sees nearly the mirror image: little new).
  The same function renders analytic shapes (`specs_field`) and decoded codes (`decoder.field`),
  with the same renderer, so the classifier sees one kind of input.
- `FamilyClassifier` / `train_family_classifier`: a small CNN over the M renders (one channel per
  camera) that names the family of a shape's main part, trained on freshly drawn random shapes.
  Shapes come randomly rotated, so the classifier learns to name a family in any pose — which is
  what a generated shape needs, whose pose is random too. The label is `family_label`: the family
  captions.describe names (a difference or union reads as its first part, unless that part does
  not show). Measured at the defaults (ClassifierConfig; 7,000 training shapes, ~3 min on one CPU
  thread): 0.88 held-out accuracy over the 9 families, 0.92 counting box and rounded box as one
  (the commonest confusion; at 32x32 a slightly rounded box looks square-edged).
- `elongation_statistic`: long or flat, from the occupied volume: log(l1 / l2) - log(l2 / l3) of
  the eigenvalues l1 >= l2 >= l3 of its covariance. Eigenvalues do not change under a rotation, so
  neither does the statistic (up to the grid's sampling). A cylinder or capsule longer than wide
  gives > 0, a disc or slab < 0, a sphere 0.
- `pair_order_rate`: the share of (a, b) pairs with a > b, e.g. "tall" captions' shapes above
  "flat" captions' shapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from flowsdf.data import shapes
from flowsdf.data.captions import describe
from flowsdf.data.dataset import DataConfig
from flowsdf.errors import FlowSDFError
from flowsdf.fields import BatchField, PointField
from flowsdf.render import cameras
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import render_min_sdf

FAMILIES = tuple(sorted(shapes.PRIMITIVES))  # the classifier's classes, in this order
CLASSIFIER_SEED = 424_242  # random shapes far from any dataset's seed (datasets use small seeds)
_GREY = (0.5, 0.5, 0.5)  # describe() needs an albedo; the family does not depend on it

_PHI = (1.0 + math.sqrt(5.0)) / 2.0
# One direction of each of the icosahedron's six vertex axes: every pair is 63.4 degrees apart.
VIEW_DIRECTIONS = np.array([[0, 1, _PHI], [0, -1, _PHI], [1, _PHI, 0], [-1, _PHI, 0], [_PHI, 0, 1], [-_PHI, 0, 1]],
                           dtype=np.float64) / math.sqrt(1.0 + _PHI * _PHI)


@dataclass(frozen=True)
class FamilyViews:
    """The fixed cameras and renderer of the family renders (the dataset's distance and field of view)."""

    size: int = 32
    distance: float = DataConfig.cam_distance
    fov_deg: float = DataConfig.fov_deg
    # The quick preset's renderer (32 samples, coarse then fine search): what its decoders were
    # trained under, and ~3x cheaper than the exhaustive search on a CPU.
    n_samples: int = 32
    search: str = "coarse"
    bound_radius: float = RenderConfig.bound_radius

    @property
    def count(self) -> int:
        return len(VIEW_DIRECTIONS)

    def render_config(self) -> RenderConfig:
        return RenderConfig(n_samples=self.n_samples, search=self.search, bound_radius=self.bound_radius)

    def rays(self) -> tuple[Tensor, Tensor]:
        """Origins and directions (M * S * S, 3) of every pixel of every camera, camera-major."""
        K = torch.from_numpy(cameras.intrinsics(self.size, self.fov_deg)).float()  # (3, 3)
        c2w = torch.from_numpy(np.stack([cameras.look_at(self.distance * d) for d in VIEW_DIRECTIONS])).float()  # (M, 4, 4)
        origins, dirs = cameras.camera_rays(K.expand(self.count, 3, 3), c2w, self.size)  # (M, S*S, 3)
        return origins.reshape(-1, 3), dirs.reshape(-1, 3)


def specs_field(specs: Sequence[shapes.Spec]) -> BatchField:
    """The analytic SDFs of several shapes as one BatchField: item i is specs[i]."""

    def field(points: Tensor, item: Tensor | int) -> Tensor:
        if isinstance(item, int):
            return shapes.sdf(specs[item], points)  # (P,)
        out = torch.empty(points.shape[0], dtype=points.dtype, device=points.device)  # (P,)
        for i in item.unique().tolist():
            sel = item == i  # (P,)
            out[sel] = shapes.sdf(specs[i], points[sel])
        return out

    return field


@torch.no_grad()
def family_renders(field: BatchField, n: int, views: FamilyViews = FamilyViews(), batch: int = 16,
                   device: torch.device | str = "cpu", progress: bool = False) -> Tensor:
    """Hard silhouettes (n, M, S, S) in {0., 1.} of items 0..n-1 of `field` from the M fixed cameras.

    `field`: `specs_field(specs)` for analytic shapes, `decoder.field(codes)` for decoded codes.
    A pixel is inside when the smallest SDF along its ray (render_min_sdf) is below 0. The rays are
    cast on `device` (the field's); the renders come back on the CPU.
    """
    origins, dirs = (x.to(device) for x in views.rays())  # (R, 3), R = M * S * S
    cfg = views.render_config()
    out = []
    for s in tqdm(range(0, n, batch), desc="renders", unit="batch", leave=False, disable=not progress):
        b = min(batch, n - s)
        o, d = origins.expand(b, -1, -1), dirs.expand(b, -1, -1)  # (b, R, 3)
        min_sdf = render_min_sdf(lambda p, item, s=s: field(p, item + s), o, d, cfg)  # (b, R)
        out.append((min_sdf < 0).float().view(b, views.count, views.size, views.size).cpu())
    if not out:
        return torch.zeros(0, views.count, views.size, views.size)
    return torch.cat(out)  # (n, M, S, S)


def family_label(spec: shapes.Spec) -> str:
    """The family of a shape's main part, as its captions name it (captions.describe)."""
    return describe(spec, _GREY).kind


class FamilyClassifier(nn.Module):
    """Family logits from M silhouettes: three conv-pool stages, then two linear layers.

    ~0.35 M parameters at width 32; one forward of a 32x32 sample is ~11 MFLOP, so thousands of
    samples train in a few CPU minutes.
    """

    def __init__(self, views: int = 6, width: int = 32, classes: int = len(FAMILIES)):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(views, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, renders: Tensor) -> Tensor:
        x = renders * 2.0 - 1.0  # (B, M, S, S) masks centred on 0
        return self.head(self.features(x))  # (B, classes)

    @torch.no_grad()
    def predict(self, renders: Tensor, batch: int = 256) -> Tensor:
        """Class indices (B,) into FAMILIES of renders (B, M, S, S)."""
        self.eval()
        if renders.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([self(renders[s : s + batch]).argmax(-1) for s in range(0, renders.shape[0], batch)])


def accuracy_by_family(pred: Tensor, labels: Tensor) -> dict:
    """Predictions (B,) against labels (B,), both indices into FAMILIES: {"accuracy": share right,
    "merged_boxes": the same with box and rounded box as one family (captions name both "box",
    captions.FAMILY_WORDS; their silhouettes differ only at the edges), "per_family": {family: share right}}."""
    if labels.numel() == 0:
        raise FlowSDFError("no predictions to score")
    right = (pred == labels).float()  # (B,)
    boxes = torch.tensor([FAMILIES.index("box"), FAMILIES.index("rounded_box")])
    both_boxes = torch.isin(pred, boxes) & torch.isin(labels, boxes)  # (B,)
    per = {f: right[labels == i].mean().item() for i, f in enumerate(FAMILIES) if (labels == i).any()}
    return {"accuracy": right.mean().item(), "merged_boxes": (right.bool() | both_boxes).float().mean().item(),
            "per_family": per}


@dataclass(frozen=True)
class ClassifierConfig:
    """How the family classifier is trained; the defaults take ~5 CPU minutes on one thread."""

    n_shapes: int = 8000  # random shapes rendered, training and held-out together
    seed: int = CLASSIFIER_SEED  # the shapes, the initialisation and the batch order
    heldout: float = 0.125  # the last share of the shapes, only for the reported accuracy
    epochs: int = 30
    width: int = 32  # channels of the first convolution (then 2x, 4x)
    batch_size: int = 64
    lr: float = 2e-3  # peak of a one-cycle schedule (AdamW)


def fit_classifier(renders: Tensor, labels: Tensor, cfg: ClassifierConfig = ClassifierConfig(),
                   progress: bool = False) -> FamilyClassifier:
    """A FamilyClassifier trained on renders (N, M, S, S) with labels (N,), deterministic from cfg.seed
    (initialisation and batch order; the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = FamilyClassifier(views=renders.shape[1], width=cfg.width)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = cfg.epochs * math.ceil(len(labels) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    model.train()
    for _ in tqdm(range(cfg.epochs), desc="family classifier", unit="epoch", leave=False, disable=not progress):
        order = torch.randperm(len(labels), generator=gen)  # (N,)
        for s in range(0, len(labels), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = F.cross_entropy(model(renders[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_family_classifier(
    cfg: ClassifierConfig = ClassifierConfig(), views: FamilyViews = FamilyViews(),
    make_shapes: Callable[[int, int], list[shapes.Spec]] = shapes.random_shapes, progress: bool = False,
) -> tuple[FamilyClassifier, dict]:
    """A FamilyClassifier trained on renders of cfg.n_shapes shapes from `make_shapes(n, seed)` (the
    dataset's own random shapes by default), and its report: the accuracy (overall, boxes merged, per
    family) on the last `cfg.heldout` share of them, never trained on, and the seconds spent."""
    n_held = round(cfg.n_shapes * cfg.heldout)
    if n_held < 1 or n_held >= cfg.n_shapes:
        raise FlowSDFError(f"need at least one training and one held-out shape; got {cfg.n_shapes} shapes, "
                           f"heldout {cfg.heldout}")
    t0 = time.perf_counter()
    specs = make_shapes(cfg.n_shapes, cfg.seed)
    labels = torch.tensor([FAMILIES.index(family_label(s)) for s in specs])  # (N,)
    renders = family_renders(specs_field(specs), len(specs), views, progress=progress)  # (N, M, S, S)
    t1 = time.perf_counter()
    n_train = cfg.n_shapes - n_held
    model = fit_classifier(renders[:n_train], labels[:n_train], cfg, progress)
    t2 = time.perf_counter()
    score = accuracy_by_family(model.predict(renders[n_train:]), labels[n_train:])
    report = {"heldout_accuracy": score["accuracy"], "heldout_accuracy_merged_boxes": score["merged_boxes"],
              "heldout_per_family": score["per_family"], "train_shapes": n_train, "heldout_shapes": n_held,
              "config": asdict(cfg), "seconds": {"render": t1 - t0, "train": t2 - t1}}
    return model, report


@torch.no_grad()
def elongation_statistic(field: PointField, radius: float = RenderConfig.bound_radius, resolution: int = 32,
                         chunk: int = 65536) -> float | None:
    """log(l1 / l2) - log(l2 / l3) of the occupied volume's covariance eigenvalues l1 >= l2 >= l3.

    The volume is the cell centres of a `resolution`^3 grid over the ball of `radius` where the field
    is below 0. Each point stands for its cell, so the cell's own variance h^2 / 12 is added to every
    eigenvalue: a one-cell-thin sheet has l3 = h^2 / 12, not 0, and the logs stay finite. An empty
    shape (no cell inside) has no proportions: None, never a number.
    """
    h = 2.0 * radius / resolution
    t = -radius + h * (torch.arange(resolution, dtype=torch.float32) + 0.5)  # (G,) cell centres
    grid = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), -1).reshape(-1, 3)  # (G^3, 3)
    grid = grid[grid.norm(dim=-1) < radius]  # (P, 3)
    inside = torch.cat([field(grid[s : s + chunk]).reshape(-1).cpu() < 0 for s in range(0, len(grid), chunk)])  # (P,)
    x = grid[inside].double()  # (n, 3)
    if x.shape[0] == 0:
        return None
    x = x - x.mean(0)  # (n, 3)
    cov = x.T @ x / x.shape[0] + torch.eye(3, dtype=x.dtype) * h * h / 12.0  # (3, 3)
    l3, l2, l1 = torch.linalg.eigvalsh(cov).tolist()  # ascending
    return math.log(l1 / l2) - math.log(l2 / l3)


def pair_order_rate(a_values: Sequence[float], b_values: Sequence[float]) -> float:
    """The share of all (a, b) pairs, one from each list, with a > b (a tie counts as not above)."""
    a, b = np.asarray(a_values, dtype=np.float64), np.asarray(b_values, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise FlowSDFError(f"pair_order_rate needs values on both sides, got {a.size} and {b.size}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FlowSDFError("pair_order_rate got a non-finite value; leave out empty shapes first")
    return float((a[:, None] > b[None, :]).mean())
