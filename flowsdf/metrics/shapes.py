"""3-D accuracy of predicted SDFs against the analytic ground truth (never used in training).

What is measured, per shape:

- ``volumetric_iou``: IoU of the inside sets (sdf < 0), by ``metrics.volumetric_iou`` with
  ``n_volume`` (default 100 000) seeded uniform points in the evaluation box [-1, 1]^3.
- ``accuracy``, ``completeness``, ``chamfer_l1`` (OccNet definition, ½(accuracy + completeness),
  Euclidean distances), ``precision``, ``recall``, ``fscore`` at 0.02 = 1 % of the bounding size 2
  (and ``fscore_2pct`` at 2 %, which Tatarchenko et al. 2019 also report):
  from meshes extracted at resolution R (default 64 grid points per axis over [-1, 1]^3, a voxel of
  2/63 ≈ 0.032) with marching cubes, N area-weighted surface samples each (default N = 10 000),
  for the prediction and the analytic ground truth alike. The two clouds are drawn with different
  seeds (``seed`` and ``seed + 1``), so a perfect prediction scores the sampling floor rather
  than an artificial 0 from identical points.

Sampling floor (measured at the defaults, R = 64, N = 10 000, seeds 0-2): two independent
samplings of the marching-cubes mesh of the same sphere of radius 0.5 give Chamfer-L1 ≈ 0.0089
(0.0088-0.0090) and F-score ≈ 0.98, volumetric IoU exactly 1. The floor is set by the spacing of
the samples (mean nearest-neighbour distance ≈ ½·sqrt(area / N)), so it grows with the shape's
area: for a sphere of radius 0.85, the largest shapes, it is Chamfer-L1 ≈ 0.015 and F-score
≈ 0.75, because at that density a quarter of the samples have no partner within 0.02. Compare
models on the same shapes, and treat differences of the floor's size as noise.

The prediction is clipped to the renderer's bounding sphere first (``bounded``, radius
``RenderConfig.bound_radius`` = 0.9): the renderer never looks outside it, so whatever a decoder
predicts there was never trained and must not count. Every ground-truth shape lies within 0.85.

Empty predictions: when the predicted field has no zero crossing on the grid, ``empty_mesh`` is
True, precision, recall and F-score are 0 (as in ``flowsdf.metrics``), and accuracy, completeness
and Chamfer-L1 — infinite in ``flowsdf.metrics`` — are stored as ``None`` so the dict can be
written with ``json.dump`` (which would otherwise emit the non-standard ``Infinity``). Means skip
``None`` and report how many meshes were empty next to them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from flowsdf.data import shapes
from flowsdf.fields import PointField, bounded, code_field
from flowsdf.mesh.extract import surface_points
from flowsdf.metrics.surface import fscore, surface_metrics, volumetric_iou
from flowsdf.models.sdf import SDFDecoder
from flowsdf.render.rays import RenderConfig

BOUND_RADIUS = RenderConfig.bound_radius  # 0.9: the sphere the renderer marches inside

# The sampling floor at the defaults for a sphere of radius 0.5 (see the module docstring): a
# perfect prediction scores about this, so smaller differences between models are noise.
SPHERE_FLOOR = {"chamfer_l1": 0.009, "fscore": 0.98}

# The keys of one shape's metrics, in report order.
METRIC_KEYS = (
    "volumetric_iou",
    "chamfer_l1",
    "accuracy",
    "completeness",
    "precision",
    "recall",
    "fscore",
    "fscore_2pct",
)


def gt_field(spec: shapes.Spec) -> PointField:
    """The analytic ground-truth SDF of a shape spec as a field ``f(points (P, 3)) -> (P,)``."""
    return lambda points: shapes.sdf(spec, points)


def _json_safe(value: float) -> float | None:
    """None for inf / NaN (not valid JSON), the value otherwise."""
    return value if math.isfinite(value) else None


def shape_metrics(
    pred_field: PointField,
    spec: shapes.Spec,
    resolution: int = 64,
    n_surface: int = 10_000,
    n_volume: int = 100_000,
    seed: int = 0,
    fscore_threshold: float = 0.02,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Volumetric IoU, Chamfer-L1 and F-score of one predicted field against a ground-truth spec.

    Args:
        pred_field: the prediction, (P, 3) -> (P,); clip it with ``bounded`` first if it comes
            from a decoder (``evaluate_shapes`` does).
        spec: the ground-truth shape.
        resolution: marching-cubes grid points per axis over [-1, 1]^3, for both meshes.
        n_surface: area-weighted samples per mesh.
        n_volume: uniform points for the volumetric IoU.
        seed: seeds the volume points and the predicted surface samples (the ground-truth
            samples use ``seed + 1``).
        fscore_threshold: distance under which a sample counts as matched.
        device: where the grid and volume points are made, i.e. where the fields run.
    Returns:
        dict with the floats of ``METRIC_KEYS`` (accuracy, completeness and chamfer_l1 are
        None for an empty predicted mesh) and ``empty_mesh`` (bool).
    """
    truth = gt_field(spec)
    iou = volumetric_iou(pred_field, truth, n_points=n_volume, seed=seed, device=device)
    pred_pts = surface_points(pred_field, n_surface, resolution, seed=seed, device=device)  # (N, 3)
    gt_pts = surface_points(truth, n_surface, resolution, seed=seed + 1, device=device)  # (N, 3)
    if len(gt_pts) == 0:
        raise ValueError(f"ground truth {shapes.family(spec)} has no surface at resolution {resolution}")
    surf = surface_metrics(pred_pts, gt_pts, threshold=fscore_threshold)
    surf["fscore_2pct"] = fscore(pred_pts, gt_pts, threshold=2 * fscore_threshold)["fscore"]  # Tatarchenko et al.'s 2 %
    out: dict[str, Any] = {"volumetric_iou": iou}
    out.update({k: _json_safe(surf[k]) for k in METRIC_KEYS if k != "volumetric_iou"})
    out["empty_mesh"] = len(pred_pts) == 0
    return out


def mean_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric means over the values that are not None, plus the count of empty meshes."""
    mean: dict[str, Any] = {}
    for key in METRIC_KEYS:
        values = [r[key] for r in rows if r[key] is not None]
        mean[key] = sum(values) / len(values) if values else None
    mean["empty_meshes"] = sum(bool(r["empty_mesh"]) for r in rows)
    mean["shapes"] = len(rows)
    return mean


def evaluate_shapes(
    decoder: SDFDecoder,
    codes: Tensor,
    specs: Sequence[shapes.Spec],
    bound_radius: float | None = BOUND_RADIUS,
    progress: bool = True,
    **kw: Any,
) -> dict[str, Any]:
    """3-D metrics of each predicted code (N, D) against its ground-truth spec, and their means.

    Args:
        decoder: the SDF decoder the codes belong to.
        codes: (N, D) one code per shape, in the order of ``specs``.
        specs: N ground-truth shape specs.
        bound_radius: clip each prediction to this ball (``bounded``); None to leave it as is.
        progress: show a progress bar over the shapes.
        **kw: passed to ``shape_metrics`` (resolution, n_surface, n_volume, seed,
            fscore_threshold). ``device`` defaults to the decoder's.
    Returns:
        ``{"per_shape": [ {index, family, <shape_metrics>}, ... ], "mean": {...}}``; the means are
        over the shapes whose value is not None (Chamfer terms skip empty meshes, whose F-score
        of 0 is averaged in), with ``empty_meshes`` and ``shapes`` counts.
    """
    if len(codes) != len(specs):
        raise ValueError(f"{len(codes)} codes for {len(specs)} shapes")
    kw.setdefault("device", next(decoder.parameters()).device)
    rows = []
    for i in tqdm(range(len(specs)), desc="3-D metrics", leave=False, disable=not progress):
        field = code_field(decoder, codes[i])
        if bound_radius is not None:
            field = bounded(field, bound_radius)
        row = {"index": i, "family": shapes.family(specs[i])}
        row.update(shape_metrics(field, specs[i], **kw))
        rows.append(row)
    return {"per_shape": rows, "mean": mean_metrics(rows)}
