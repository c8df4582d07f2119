"""3-D metrics of a predicted shape against the analytic ground truth.

  - ``volumetric_iou``: IoU of the inside sets (sdf < 0), estimated with seeded uniform points in
    the evaluation box [-1, 1]^3.
  - ``chamfer_l1``, ``fscore``, ``surface_metrics``: compare two *surface point clouds*. Both clouds
    are expected to be points sampled uniformly by area on meshes extracted with marching cubes at
    the same resolution, e.g. ``flowsdf.mesh.extract.surface_points(field, n=10_000)`` for the prediction
    and for the ground-truth SDF alike. Using the same extraction for both keeps the discretisation
    error out of the comparison. Distances are Euclidean (not squared), so Chamfer-L1 is the
    OccNet definition: ½(accuracy + completeness). The F-score threshold defaults to 0.02, i.e.
    1 % of the bounding size 2 of the evaluation box.

An empty point cloud (a predicted field with no surface) gives infinite accuracy, completeness and
Chamfer-L1 and zero precision, recall and F-score, so an empty mesh is reported, not hidden.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from flowsdf.fields import PointField

PointCloud = Tensor | np.ndarray


# ---------------------------------------------------------------------------------------------
# 3-D: volumes
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _inside(field: PointField, points: Tensor, chunk: int) -> Tensor:
    """Boolean (P,) mask of points with sdf < 0, evaluating the field in chunks."""
    out = []
    for start in range(0, points.shape[0], chunk):
        sdf = field(points[start : start + chunk]).reshape(-1)  # (C,)
        out.append((sdf < 0).cpu())
    return torch.cat(out)  # (P,)


def volumetric_iou(
    field_pred: PointField,
    field_gt: PointField,
    n_points: int = 100_000,
    seed: int = 0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
) -> float:
    """IoU of the inside sets (sdf < 0) of two fields, by Monte Carlo in the cube [-1, 1]^3.

    The same seeded uniform points are used for both fields, so the result is reproducible and the
    sampling error is that of a binomial proportion over the union (about 1e-3 for typical shapes at
    100k points). If neither field has an inside point the shapes agree and the IoU is 1.0.

    Args:
        field_pred, field_gt: callables mapping (P, 3) points to (P,) signed distances.
        n_points: number of uniform sample points.
        seed: seed of the point generator.
        chunk: points per field evaluation (bounds memory).
        device: where the points are created, i.e. where the fields run.
    """
    gen = torch.Generator().manual_seed(seed)
    points = (torch.rand(n_points, 3, generator=gen) * 2 - 1).to(device)  # (P, 3)
    a = _inside(field_pred, points, chunk)  # (P,)
    b = _inside(field_gt, points, chunk)  # (P,)
    union = (a | b).sum().item()
    if union == 0:
        return 1.0
    return (a & b).sum().item() / union


# ---------------------------------------------------------------------------------------------
# 3-D: surfaces
# ---------------------------------------------------------------------------------------------


def _points(x: PointCloud) -> Tensor:
    """A (N, 3) float32 CPU tensor from a numpy array or tensor."""
    t = torch.as_tensor(x).detach().to("cpu", torch.float32)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"expected points of shape (N, 3), got {tuple(t.shape)}")
    return t


def nearest_distances(query: PointCloud, ref: PointCloud) -> Tensor:
    """Distance from each query point to its nearest reference point (exact, via a k-d tree).

    scipy's cKDTree answers 10 k x 10 k queries in milliseconds with O(N + M) memory; a dense
    distance matrix (the naive reference in the tests) needs O(N M) work.

    Args:
        query: (N, 3) points.
        ref: (M, 3) points, M > 0.
    Returns:
        (N,) Euclidean distances.
    """
    q, r = _points(query), _points(ref)  # (N, 3), (M, 3)
    if r.shape[0] == 0:
        raise ValueError("nearest_distances needs at least one reference point")
    dist, _ = cKDTree(r.double().numpy()).query(q.double().numpy(), k=1)  # (N,)
    return torch.from_numpy(dist).float()


def _chamfer_from(d_pred_to_gt: Tensor, d_gt_to_pred: Tensor) -> dict[str, float]:
    accuracy = d_pred_to_gt.mean().item()
    completeness = d_gt_to_pred.mean().item()
    return {
        "accuracy": accuracy,
        "completeness": completeness,
        "chamfer_l1": 0.5 * (accuracy + completeness),
    }


def _fscore_from(d_pred_to_gt: Tensor, d_gt_to_pred: Tensor, threshold: float) -> dict[str, float]:
    precision = (d_pred_to_gt < threshold).float().mean().item()
    recall = (d_gt_to_pred < threshold).float().mean().item()
    total = precision + recall
    f = 2 * precision * recall / total if total > 0 else 0.0
    return {"precision": precision, "recall": recall, "fscore": f}


def _both_ways(points_pred: PointCloud, points_gt: PointCloud) -> tuple[Tensor, Tensor] | None:
    """Nearest distances pred→gt and gt→pred, or None when either cloud is empty."""
    p, g = _points(points_pred), _points(points_gt)
    if p.shape[0] == 0 or g.shape[0] == 0:
        return None
    return nearest_distances(p, g), nearest_distances(g, p)


_INF = float("inf")
_EMPTY_CHAMFER = {"accuracy": _INF, "completeness": _INF, "chamfer_l1": _INF}
_EMPTY_FSCORE = {"precision": 0.0, "recall": 0.0, "fscore": 0.0}


def chamfer_l1(points_pred: PointCloud, points_gt: PointCloud) -> dict[str, float]:
    """Chamfer-L1 distance, OccNet definition.

    accuracy = mean over predicted points of the distance to the nearest ground-truth point;
    completeness = mean over ground-truth points of the distance to the nearest predicted point;
    chamfer_l1 = ½(accuracy + completeness). Distances are Euclidean, not squared.

    Args:
        points_pred: (N, 3) points sampled on the predicted surface.
        points_gt: (M, 3) points sampled on the ground-truth surface.
    Returns:
        dict with float ``accuracy``, ``completeness``, ``chamfer_l1``; all inf if a cloud is
        empty.
    """
    d = _both_ways(points_pred, points_gt)
    return dict(_EMPTY_CHAMFER) if d is None else _chamfer_from(*d)


def fscore(
    points_pred: PointCloud, points_gt: PointCloud, threshold: float = 0.02
) -> dict[str, float]:
    """F-score of two surface samples at a distance threshold.

    precision = fraction of predicted points closer than ``threshold`` to the ground truth;
    recall = fraction of ground-truth points closer than ``threshold`` to the prediction;
    fscore = 2PR / (P + R), and 0 when both are 0. The default 0.02 is 1 % of the box size 2.

    Returns:
        dict with float ``precision``, ``recall``, ``fscore`` (all 0 if a cloud is empty).
    """
    d = _both_ways(points_pred, points_gt)
    return dict(_EMPTY_FSCORE) if d is None else _fscore_from(*d, threshold)


def surface_metrics(
    points_pred: PointCloud, points_gt: PointCloud, threshold: float = 0.02
) -> dict[str, float]:
    """Chamfer-L1 and F-score together, computing the nearest-neighbour distances once.

    Returns:
        dict with ``accuracy``, ``completeness``, ``chamfer_l1``, ``precision``, ``recall``,
        ``fscore``.
    """
    d = _both_ways(points_pred, points_gt)
    if d is None:
        return {**_EMPTY_CHAMFER, **_EMPTY_FSCORE}
    return {**_chamfer_from(*d), **_fscore_from(*d, threshold)}
