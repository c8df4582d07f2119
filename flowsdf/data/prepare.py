"""Picture preparation: find the object on its background and frame it like the training renders.

The models only ever saw one object, centred, at the training camera's scale, on black, with hard
edges and no pixel darker than the renders' ambient light. A photo breaks each of those. This module
brings a picture to that form, and says how far it had to go:

1. Foreground (`find_foreground`). An alpha channel with any transparency is the mask. Otherwise the
   background is modelled from the picture's border: each channel is fitted by a quadratic in the
   pixel coordinates (least squares, starting from the border's median colour and refitted 4 times
   to the border pixels within 3 spreads of the fit, so an object touching the border or a shadow
   does not bend it while it covers under half the border), which covers plain white, grey and
   black, smooth gradients and vignetting. The border's residual spread (robust sigma, per channel)
   is the noise level; a fine texture or noise (spread above TEXTURE_SPREAD) is first median-filtered,
   which removes grain but keeps the object's edges where they are. A pixel is foreground when its
   distance to the background, in units of that spread, is large: hysteresis between T_LOW and
   T_HIGH, like Canny's. The mask is then cleaned with scipy.ndimage: the largest component is kept
   (and any other at least KEEP_FRACTION of it: a CSG difference can cut an object in two), and
   holes are filled when they are small (under HOLE_FRACTION of the object) and do not look like
   the background. Renders have real holes (a torus seen from above, a CSG difference: 4 of the 404
   framing renders, 1 to 27 pixels at 64 x 64); their pixels are the background and stay open.
2. Framing. An object framed like the training renders - clear of the border, its box centred
   within CENTRE_TOLERANCE, its extent (the longer box side / the frame side) inside [EXTENT_LOW,
   EXTENT_HIGH] - stays where it is: on black the picture is given to the model exactly as the
   plain path reads it (`images.load_image`), on another background only the background is
   replaced. Preparation changes nothing the model already knows. Any other object is re-framed:
   its bounding box centred and scaled to EXTENT_MEDIAN, the training renders' median extent (a
   picture's apparent size says nothing of the object's size without its camera). `reframe` puts
   it on black with soft edges - the object's own colours area-averaged with its mask, as a
   picture on black gives when resized - lifted to at least the renders' ambient light.
3. A fit score in [0, 1] (`fit_score`) from the preparation alone, with the factors that make it.

Pictures are analysed at most WORK_SIDE pixels on their longer side (area-averaged down); the
prepared image is made from that copy, which is several times the model's size.

`prepare_picture(source, size, prepare=False)` gives exactly `images.load_image`'s input (the
picture padded to a square, nothing removed) and still reports the analysis, so a caller can choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor

from flowsdf.data.dataset import DataConfig
from flowsdf.data.images import (
    PictureInfo,
    foreground_mask,
    load_picture,
    picture_array,
    read_picture,
)
from flowsdf.errors import FlowSDFError

# ---------------------------------------------------------------------------------------------
# The training framing, measured on real renders with
#   python benchmarks/picture_backgrounds.py --measure-framing
# (DataConfig(n_train_shapes=200, n_heldout_shapes=2, novel_views=1, image_size=64), seed 0: all
# 404 views of the 202 shapes). Extent = max(box width, box height) / image side: median 0.531,
# 2nd-98th percentile 0.344-0.766, min 0.281, max 0.906. A centred object inside [p2, p98] is framed
# like the training renders and keeps its place and size (in training one camera distance makes a
# bigger object look bigger, and a training render must reach the model unchanged).
EXTENT_LOW = 22 / 64  # 2nd percentile of the extent (22 of 64 pixels: 0.344)
EXTENT_HIGH = 49 / 64  # 98th percentile (49 of 64 pixels: 0.766)
# Where any other object's size goes: the median. Measured on 119 pictures
# (benchmarks/picture_accuracy.py, docs/reconstruct.md): keeping an in-range size when re-framing
# left pictures of one object 0.01-0.10 of IoU apart (the model's shape moves with a few pixels of
# size); the median for every re-framed object brought 105 of 112 within 0.05 of their black
# centred picture against 95 (soft edges both), 108 with the in-place rule above.
EXTENT_MEDIAN = 0.531
# Where the object goes: its bounding-box centre at the frame centre. The training renders' box
# centres average (-0.0013, +0.0005) of the side from it (centroids: (-0.0020, +0.0003)), i.e. the
# centre, and the box centre's offset is tighter than the centroid's in the tail (95th percentile
# 0.095 against 0.113 of the side; median 0.020 against 0.017) - and it is the box the extent is
# measured on, so one box sets both size and place.
CENTRE_OFFSET = (0.0, 0.0)
# An object whose box centre is this close to the frame's centre (fraction of the side: the 95th
# percentile of the training renders') counts as centred like them.
CENTRE_TOLERANCE = 0.095

# Renders add this to every lit or unlit surface pixel; prepared objects are never darker.
AMBIENT = DataConfig().ambient

# ---------------------------------------------------------------------------------------------
# Finding the foreground
WORK_SIDE = 512  # analysis resolution (longer side); a 5x5 median filter over it takes ~1.5 s
BORDER_FRACTION = 0.03  # the border band the background is fitted to: this share of the shorter side
# The spread of a flat background is never taken below this: 8-bit steps and JPEG's ringing next
# to an edge (at quality 85, 0.02 took the found masks of 128-pixel renders on flat backgrounds
# from IoU 0.88-0.92 to 0.96-0.98 against the true mask; lossless pictures are found exactly).
SIGMA_FLOOR = 0.02
# A PNG has no ringing, only 8-bit steps (0.004), so its floor is half that: an object face whose
# colour is 0.05-0.1 from the background (a teal face 0.096 from mid grey, 4.8 lossy floors: under
# T_LOW, a whole face lost) still stands out. JPEG, WebP (possibly lossy) and pictures passed in
# memory keep SIGMA_FLOOR.
SIGMA_FLOOR_LOSSLESS = 0.01
LOSSLESS_FORMATS = ("PNG",)
TEXTURE_SPREAD = 0.025  # border spread above which the background counts as textured and is median-filtered
MEDIAN_SIZE = 5
# Distances (in spreads) that start an object region and that it grows through. Over pure noise a
# distance (chi with 3 degrees of freedom) exceeds 5 on 2e-5 of the pixels and 6 on 1e-7; the
# darkest render pixel (the ambient 0.1 in every channel) is 8.7 floor-spreads from black.
T_HIGH = 6.0
T_LOW = 5.0
KEEP_FRACTION = 0.25
HOLE_FRACTION = 0.05
HOLE_MATCH = 2.0
GRADIENT_RANGE = 0.06  # a fitted background varying more than this across the picture is a gradient

# ---------------------------------------------------------------------------------------------
# The fit score: a product of factors, each 1 when that aspect is like the training pictures.
COVERAGE_OK = (0.01, 0.6)  # share of the picture the object covers: fine inside this range ...
COVERAGE_ZERO = (0.0005, 0.9)  # ... falling linearly to 0 at these (a speck; or no background left)
SPREAD_OK, SPREAD_ZERO = 0.02, 0.15  # border spread: a plain background ... noise hiding the object
BORDER_TOUCH = 0.5  # factor for an object touching the picture's border (it may be cut off) ...
BORDER_TOUCH_FLOOR = 0.2  # ... down to this when a quarter or more of the border is object
UPSCALE_OK, UPSCALE_ZERO = 1.0, 4.0  # how much the object is enlarged to its framed size
INLIERS_OK, INLIERS_ZERO = 0.6, 0.2  # share of the border the background fit explains
STRONG_OK, STRONG_ZERO = 0.8, 0.3  # share of the object farther than T_HIGH from the background
RAW_BACKGROUND = 0.3  # prepare=False on a background other than black: the model never saw one


@dataclass
class Background:
    kind: str  # "alpha", "black", "white", "grey", "coloured", "gradient" or "textured"
    colour: tuple[float, float, float]  # mean colour of the border's background pixels (RGB in [0, 1])
    spread: float  # robust sigma of the border's residual from the fit, largest channel
    inliers: float  # share of the border pixels the fit explains (1 for alpha)


@dataclass
class Foreground:
    mask: np.ndarray  # (H, W) bool, at the analysed resolution
    background: Background
    strong: float  # share of mask pixels farther than T_HIGH from the background (1 for alpha)


@dataclass
class Prepared:
    """One picture brought to the model's input, with what was done to it and how well it fits."""

    image: Tensor  # (3, S, S) float in [0, 1], black background: what the model is given
    mask: Tensor  # (S, S) in {0, 1}: the object in `image`
    picture_mask: np.ndarray | None  # (H, W) bool at the picture's own (upright) size; None if not found
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) in picture pixels; may pass its edges
    scale: float  # model pixels per picture pixel
    background: Background
    coverage: float  # share of the picture the object covers
    fit: float  # in [0, 1]: how well the picture fits what the model knows (see fit_score)
    factors: dict[str, float]  # the factors `fit` is the product of
    notes: list[str]  # what the preparation found (reading's own notes are in info.notes)
    info: PictureInfo
    prepared: bool  # False: `image` is the picture as it is (images.load_image)

    def summary(self) -> dict:
        """What a summary.json needs, JSON-ready."""
        bg = self.background
        return {
            "prepared": self.prepared, "fit": round(self.fit, 3),
            "factors": {k: round(v, 3) for k, v in self.factors.items()},
            "background": {"kind": bg.kind, "colour": [round(c, 3) for c in bg.colour],
                           "spread": round(bg.spread, 4), "inliers": round(bg.inliers, 3)},
            "coverage": round(self.coverage, 4), "crop_box": [round(c, 2) for c in self.crop_box],
            "scale": round(self.scale, 5), "notes": self.info.notes + self.notes, "picture": self.info.to_json(),
        }


# ---------------------------------------------------------------------------------------------
# foreground


def _design(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Quadratic terms of normalised coordinates: (N,) x2 -> (N, 6)."""
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)


def _robust_sigma(r: np.ndarray) -> np.ndarray:
    """Per-column robust standard deviation (1.4826 MAD) of r (N, C) -> (C,)."""
    return 1.4826 * np.median(np.abs(r - np.median(r, axis=0)), axis=0)


def _border(h: int, w: int) -> np.ndarray:
    """(H, W) bool: the band of BORDER_FRACTION of the shorter side (at least 1 pixel) along the edges."""
    b = max(1, round(BORDER_FRACTION * min(h, w)))
    band = np.zeros((h, w), bool)
    band[:b], band[-b:], band[:, :b], band[:, -b:] = True, True, True, True
    return band


def fit_background(rgb: np.ndarray) -> tuple[np.ndarray, Background, np.ndarray]:
    """The smooth background under a picture rgb (H, W, 3), fitted to its border.

    Returns the background (H, W, 3), its summary, and the border pixels it explains (H, W) bool.
    """
    h, w, _ = rgb.shape
    ys, xs = np.nonzero(_border(h, w))
    # Pixel centres in [-1, 1] on both axes: a gradient's coefficients do not depend on the size.
    A = _design((xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1)  # (N, 6)
    values = rgb[ys, xs].astype(np.float64)  # (N, 3)
    # Start from the border's median colour (right while under half the border is object), then
    # fit the quadratic to what lies within 3 spreads of the current fit, and refit.
    coef = np.zeros((6, 3))
    coef[0] = np.median(values, axis=0)
    keep = np.ones(len(values), bool)
    for _ in range(4):
        resid = values - A @ coef  # (N, 3)
        sigma = np.maximum(_robust_sigma(resid[keep]), SIGMA_FLOOR)  # (3,)
        keep = (np.abs(resid) <= 3.0 * sigma).all(axis=1)
        if keep.sum() < 6 * 3:  # nothing plain on the border: fit it all
            keep[:] = True
        coef, *_ = np.linalg.lstsq(A[keep], values[keep], rcond=None)  # (6, 3)
    resid = values - A @ coef
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    fitted = (_design(xx.ravel(), yy.ravel()) @ coef).reshape(h, w, 3).astype(np.float32)  # (H, W, 3)
    spread = float(_robust_sigma(resid[keep]).max())
    colour = values[keep].mean(axis=0)
    inliers = np.zeros((h, w), bool)
    inliers[ys[keep], xs[keep]] = True
    kind = _kind(colour, spread, float((fitted.max(axis=(0, 1)) - fitted.min(axis=(0, 1))).max()))
    return fitted, Background(kind, tuple(float(c) for c in colour), spread, float(keep.mean())), inliers


def _kind(colour: np.ndarray, spread: float, gradient: float) -> str:
    if spread > TEXTURE_SPREAD:
        return "textured"
    if gradient > GRADIENT_RANGE:
        return "gradient"
    level, saturation = colour.mean(), colour.max() - colour.min()
    if saturation > 0.08:
        return "coloured"
    return "black" if level < 0.08 else "white" if level > 0.92 else "grey"


def clean_mask(mask: np.ndarray, dist: np.ndarray | None = None, level: float = 0.0) -> np.ndarray:
    """The largest component (8-connected) and any at least KEEP_FRACTION of it, with holes filled.

    A hole is filled when it is smaller than HOLE_FRACTION of the object and, given `dist` (H, W),
    the distance to the background, when it does not look like background: its median distance is
    above max(1, HOLE_MATCH x `level`), the border's median. Renders have real holes (a torus, a CSG
    difference) whose pixels are exactly the background, and they must stay open.
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]  # (n,)
    out = np.isin(labels, 1 + np.nonzero(sizes >= KEEP_FRACTION * sizes.max())[0])
    holes, n_holes = ndimage.label(ndimage.binary_fill_holes(out) & ~out)  # 4-connected background
    if n_holes:
        index = np.arange(1, n_holes + 1)
        fill = ndimage.sum_labels(np.ones_like(holes), holes, index) < HOLE_FRACTION * out.sum()
        if dist is not None:
            fill &= ndimage.median(dist, holes, index) > max(1.0, HOLE_MATCH * level)
        out |= np.isin(holes, index[fill])
    return out


def find_foreground(rgb: np.ndarray, alpha: np.ndarray | None = None, lossless: bool = False) -> Foreground:
    """The object's mask in a picture rgb (H, W, 3) in [0, 1], with alpha (H, W) if it has one.

    lossless: the picture came from a lossless file (no compression ringing), so the background's
    spread is floored at SIGMA_FLOOR_LOSSLESS instead of SIGMA_FLOOR.
    """
    if alpha is not None and alpha.min() < 0.5:  # an alpha channel that says something
        return Foreground(alpha >= 0.5, Background("alpha", (0.0, 0.0, 0.0), 0.0, 1.0), 1.0)
    fitted, background, inliers = fit_background(rgb)
    resid = rgb - fitted  # (H, W, 3)
    if background.spread > TEXTURE_SPREAD:
        # Grain is a pixel-scale outlier; a median keeps straight edges where they are.
        resid = np.stack([ndimage.median_filter(resid[..., c], size=MEDIAN_SIZE) for c in range(3)], axis=-1)
    sigma = np.maximum(_robust_sigma(resid[inliers]), SIGMA_FLOOR_LOSSLESS if lossless else SIGMA_FLOOR)  # (3,)
    dist = np.sqrt(((resid / sigma) ** 2).sum(axis=-1))  # (H, W) in spreads
    weak, strong = dist > T_LOW, dist > T_HIGH
    labels, n = ndimage.label(weak, structure=np.ones((3, 3)))
    seeded = np.zeros(n + 1, bool)  # the weak regions holding a strong pixel
    seeded[np.unique(labels[strong])] = True
    seeded[0] = False
    mask = clean_mask(seeded[labels], dist, float(np.median(dist[inliers])))
    share_strong = float(strong[mask].mean()) if mask.any() else 0.0
    return Foreground(mask, background, share_strong)


# ---------------------------------------------------------------------------------------------
# framing


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a non-empty mask (H, W), right and bottom exclusive."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass
class Framing:
    extent: float  # max(box width, box height) / the frame's longer side
    box_offset: tuple[float, float]  # box centre - frame centre, (x, y) / longer side
    centroid_offset: tuple[float, float]  # the mask's centroid - frame centre, (x, y) / longer side
    coverage: float  # share of the frame's pixels


def framing_of(mask: np.ndarray) -> Framing:
    """How an object (mask (H, W), non-empty) sits in its frame, in fractions of the longer side."""
    h, w = mask.shape
    side = max(h, w)
    x0, y0, x1, y1 = bounding_box(mask)
    ys, xs = np.nonzero(mask)
    return Framing(
        extent=max(x1 - x0, y1 - y0) / side,
        box_offset=((x0 + x1 - w) / 2 / side, (y0 + y1 - h) / 2 / side),
        centroid_offset=((xs.mean() + 0.5 - w / 2) / side, (ys.mean() + 0.5 - h / 2) / side),
        coverage=float(mask.mean()),
    )


def measure_framing(masks: np.ndarray) -> dict:
    """Statistics of the framing of renders' masks (N, S, S): the numbers the constants above came from."""
    frames = [framing_of(m.astype(bool)) for m in masks if m.any()]
    extent = np.array([f.extent for f in frames])
    box = np.array([f.box_offset for f in frames])  # (N, 2)
    centroid = np.array([f.centroid_offset for f in frames])  # (N, 2)
    coverage = np.array([f.coverage for f in frames])

    def stats(v: np.ndarray) -> dict:
        return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max()),
                **{f"p{p}": float(np.percentile(v, p)) for p in (1, 2, 5, 25, 50, 75, 95, 98, 99)}}

    return {
        "n": len(frames), "extent": stats(extent), "coverage": stats(coverage),
        "box_offset_mean": box.mean(axis=0).tolist(), "centroid_offset_mean": centroid.mean(axis=0).tolist(),
        "box_offset_length": stats(np.linalg.norm(box, axis=1)),
        "centroid_offset_length": stats(np.linalg.norm(centroid, axis=1)),
    }


def in_training_framing(framing: Framing, border_share: float) -> bool:
    """Whether an object is framed like a training render: clear of the border, centred within
    CENTRE_TOLERANCE and sized inside [EXTENT_LOW, EXTENT_HIGH]."""
    return (border_share == 0.0 and EXTENT_LOW <= framing.extent <= EXTENT_HIGH
            and math.hypot(*framing.box_offset) <= CENTRE_TOLERANCE)


def crop_square(mask: np.ndarray) -> tuple[float, float, float]:
    """The square (left, top, side), in pixels of mask (H, W), that frames the object like the renders:
    its box centre at the frame centre (+ CENTRE_OFFSET), its extent EXTENT_MEDIAN of the side."""
    x0, y0, x1, y1 = bounding_box(mask)
    side = max(x1 - x0, y1 - y0) / EXTENT_MEDIAN
    left = (x0 + x1) / 2 - side * (0.5 + CENTRE_OFFSET[0])
    top = (y0 + y1) / 2 - side * (0.5 + CENTRE_OFFSET[1])
    return left, top, side


def _resampled(planes: np.ndarray, left: float, top: float, side: float, size: int) -> np.ndarray:
    """The square [left, left + side) x [top, top + side) of planes (C, H, W), zero outside, at size x size.

    Area average when shrinking, bilinear when enlarging (Pillow, per float plane); a whole-pixel
    square at the same size is a plain copy.
    """
    c, h, w = planes.shape
    if side == size and float(left).is_integer() and float(top).is_integer():
        out = np.zeros((c, size, size), np.float32)
        l, t = int(left), int(top)
        xs, ys = slice(max(l, 0), min(l + size, w)), slice(max(t, 0), min(t + size, h))
        if xs.start < xs.stop and ys.start < ys.stop:
            out[:, ys.start - t : ys.stop - t, xs.start - l : xs.stop - l] = planes[:, ys, xs]
        return out
    # A canvas holding the square with a pixel to spare, the picture pasted in, zero elsewhere.
    cl, ct = math.floor(left) - 1, math.floor(top) - 1
    cw = ch = math.ceil(side) + 3
    canvas = np.zeros((c, ch, cw), np.float32)
    xs, ys = slice(max(cl, 0), min(cl + cw, w)), slice(max(ct, 0), min(ct + ch, h))
    if xs.start < xs.stop and ys.start < ys.stop:
        canvas[:, ys.start - ct : ys.stop - ct, xs.start - cl : xs.stop - cl] = planes[:, ys, xs]
    box = (left - cl, top - ct, left - cl + side, top - ct + side)
    filt = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(p, "F").resize((size, size), filt, box=box)) for p in canvas])


def reframe(rgb: np.ndarray, mask: np.ndarray, size: int,
            square: tuple[float, float, float] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The object of rgb (H, W, 3) under mask (H, W) framed like the renders, on black.

    Soft edges: each pixel is the object's own colour (the mask-weighted mean of its pixels, so no
    background colour bleeds in, lifted to at least AMBIENT) times the share of it the object
    covers. Returns image (size, size, 3) in [0, 1], mask (size, size) bool (covered at least
    half) and the square (left, top, side) in rgb's pixels.
    """
    left, top, side = square or crop_square(mask)
    m = mask.astype(np.float32)
    planes = np.concatenate([(rgb * m[..., None]).transpose(2, 0, 1), m[None]])  # (4, H, W) premultiplied
    out = _resampled(planes, left, top, side, size)  # (4, S, S)
    cover = np.clip(out[3], 0.0, 1.0)  # (S, S)
    colour = np.clip(out[:3] / np.maximum(out[3], 1e-6), AMBIENT, 1.0)  # (3, S, S): the object's own colours only
    image = np.where(cover > 0, colour * cover, 0.0).transpose(1, 2, 0)  # (S, S, 3)
    return image.astype(np.float32), cover >= 0.5, (left, top, side)


# ---------------------------------------------------------------------------------------------
# fit score


def _ramp(v: float, zero: float, ok: float) -> float:
    """1 at `ok` and beyond, 0 at `zero` and beyond the other way, linear between."""
    return float(min(1.0, max(0.0, (v - zero) / (ok - zero))))


def fit_score(background: Background, coverage: float, border_share: float, upscale: float, strong: float,
              extent: float, prepared: bool) -> tuple[float, dict[str, float]]:
    """How well a picture fits what the model knows, in [0, 1], and the factors it is the product of.

    coverage: share of the picture that is object (COVERAGE_OK / COVERAGE_ZERO); border_share:
    share of the picture's edge pixels that are object (> 0: it may be cut off, BORDER_TOUCH down
    to BORDER_TOUCH_FLOOR); upscale: how much the object is enlarged to its framed size
    (UPSCALE_OK / UPSCALE_ZERO: a blurred object); strong: share of the object clearly apart from
    the background (STRONG_*); the background's spread (SPREAD_*: texture or noise) and inliers
    (INLIERS_*: a border that is not one smooth background); extent: the object's extent in the
    picture. With prepared=False the model sees the picture as it is, so a background other than
    black (RAW_BACKGROUND) and an extent outside the training range count against it too.
    """
    factors = {
        "coverage": min(_ramp(coverage, COVERAGE_ZERO[0], COVERAGE_OK[0]), _ramp(coverage, COVERAGE_ZERO[1], COVERAGE_OK[1])),
        "border": 1.0 if border_share == 0 else max(BORDER_TOUCH_FLOOR, BORDER_TOUCH - 1.2 * border_share),
        "background": _ramp(background.spread, SPREAD_ZERO, SPREAD_OK),
        "inliers": _ramp(background.inliers, INLIERS_ZERO, INLIERS_OK),
        "separation": _ramp(strong, STRONG_ZERO, STRONG_OK),
        "resolution": _ramp(upscale, UPSCALE_ZERO, UPSCALE_OK),
    }
    if not prepared:
        factors["raw_background"] = 1.0 if background.kind in ("black", "alpha") else RAW_BACKGROUND
        factors["framing"] = min(_ramp(extent, EXTENT_LOW / 2, EXTENT_LOW), _ramp(extent, 1.0, EXTENT_HIGH))
    return float(np.prod(list(factors.values()))), factors


# ---------------------------------------------------------------------------------------------
# the entry point


def prepare_picture(source: str | Path | Image.Image, size: int, prepare: bool = True) -> Prepared:
    """Read a picture and bring it to the model's input, (3, size, size) on black.

    prepare=True: the object is found, re-framed like the training renders and put on black; a
    picture where no object is found is a FlowSDFError. prepare=False: `image` is exactly
    `images.load_image(source, size)`; the analysis is still run and reported (not finding an
    object is then a note and a fit of 0, not an error).
    """
    image, info = read_picture(source)
    w, h = image.size
    rgb, alpha, notes = picture_array(image, WORK_SIDE)
    info.notes += notes
    work = rgb.shape[1] / w  # analysed pixels per picture pixel (1 unless the picture was shrunk)
    found = find_foreground(rgb, alpha, lossless=info.format in LOSSLESS_FORMATS)
    mask, background = found.mask, found.background
    if not mask.any():
        if prepare:
            raise FlowSDFError(f"{info.name}: no object found on the {background.kind} background "
                               f"(nothing stands out from the picture's border)")
        plain, _ = load_picture(image, size)
        return Prepared(plain, torch.zeros(size, size), None, _plain_box(w, h), size / max(w, h), background,
                        0.0, 0.0, {"found": 0.0}, [f"no object found on the {background.kind} background"], info,
                        prepared=False)

    out_notes = []
    coverage = float(mask.mean())
    edges = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    border_share = float(edges.mean())
    if border_share > 0:
        out_notes.append("the object touches the picture's border: it may be cut off")
    if background.kind == "textured":
        out_notes.append(f"the background is textured (spread {background.spread:.3f}): the outline may be rough")
    if background.inliers < INLIERS_OK:
        out_notes.append(f"only {background.inliers:.0%} of the border looks like one smooth background")
    framing = framing_of(mask)
    framed_like_training = in_training_framing(framing, border_share)
    as_it_is = not prepare or (framed_like_training and background.kind == "black")
    if prepare and as_it_is:
        out_notes.append("already on black in the training framing: given to the model as it is")
    elif prepare and framed_like_training:
        out_notes.append("already in the training framing: kept in place, only the background replaced")
    if not as_it_is:
        pl, pt, pr, _ = _plain_box(rgb.shape[1], rgb.shape[0])  # the plain path's square, analysed pixels
        framed, inside, (left, top, side) = reframe(rgb, mask, size, (pl, pt, pr - pl) if framed_like_training else None)
        model_image = torch.from_numpy(framed).permute(2, 0, 1).contiguous()  # (3, S, S)
        model_mask = torch.from_numpy(inside.astype(np.float32))  # (S, S)
        crop = (left / work, top / work, (left + side) / work, (top + side) / work)
        scale, upscale = size / side * work, size / side  # upscale: model pixels per analysed pixel
    else:
        model_image, _ = load_picture(image, size)
        model_mask = foreground_mask(model_image[None])[0]
        crop, scale = _plain_box(w, h), size / max(w, h)
        upscale = size / max(rgb.shape[:2])
    fit, factors = fit_score(background, coverage, border_share, upscale, found.strong, framing.extent, prepare)
    if work == 1:
        picture_mask = mask
    else:  # back to the picture's size: a viewer can lay it over the picture
        picture_mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    return Prepared(model_image, model_mask, picture_mask, crop, scale, background, coverage, fit, factors,
                    out_notes, info, prepared=prepare)


def _plain_box(w: int, h: int) -> tuple[float, float, float, float]:
    """The square the plain path pads a w x h picture to, in its pixels."""
    side = max(w, h)
    left, top = -((side - w) // 2), -((side - h) // 2)
    return float(left), float(top), float(left + side), float(top + side)
