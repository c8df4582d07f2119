"""Metrics against answers computed by hand or known in closed form."""

import math

import pytest
import torch

from flowsdf.metrics.silhouette import (
    silhouette_bce,
    silhouette_bce_per_item,
    silhouette_iou,
)
from flowsdf.metrics.surface import (
    chamfer_l1,
    fscore,
    nearest_distances,
    surface_metrics,
    volumetric_iou,
)


def sphere(radius: float, center=(0.0, 0.0, 0.0)):
    c = torch.tensor(center)
    return lambda p: (p - c).norm(dim=-1) - radius


def sphere_samples(n: int, radius: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)  # (n, 3)
    return radius * d / d.norm(dim=1, keepdim=True)


# --- silhouettes ---------------------------------------------------------------------------


def test_silhouette_iou_known_cases():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.allclose(silhouette_iou(mask, mask), torch.ones(2))
    assert torch.allclose(silhouette_iou(mask, ~mask), torch.zeros(2))
    # 2 pixels overlap, 6 in the union.
    pred = torch.tensor([[0.9, 0.9, 0.9, 0.9, 0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 1.0]])
    assert silhouette_iou(pred, target).item() == pytest.approx(2 / 6)


def test_silhouette_iou_threshold_and_empty():
    pred = torch.tensor([[0.4, 0.6]])
    target = torch.tensor([[1.0, 1.0]])
    assert silhouette_iou(pred, target).item() == pytest.approx(0.5)
    assert silhouette_iou(pred, target, threshold=0.3).item() == pytest.approx(1.0)
    empty = torch.zeros(1, 4, 4)
    assert silhouette_iou(empty, empty).item() == 1.0


def test_bce_matches_hand_computation():
    logits = torch.tensor([[2.0, -1.0], [0.5, -3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    def bce(z: float, y: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    rows = [
        [bce(z, y) for z, y in zip(lr, tr)]
        for lr, tr in zip(logits.tolist(), target.tolist())
    ]
    per_item = [sum(r) / len(r) for r in rows]
    assert silhouette_bce(logits, target).item() == pytest.approx(sum(per_item) / 2, rel=1e-6)
    assert silhouette_bce_per_item(logits, target).tolist() == pytest.approx(per_item, rel=1e-6)


# --- volumes -------------------------------------------------------------------------------


def test_volumetric_iou_spheres():
    a = sphere(0.5)
    assert volumetric_iou(a, a, n_points=20_000) == 1.0
    left, right = sphere(0.3, (-0.5, 0, 0)), sphere(0.3, (0.5, 0, 0))
    assert volumetric_iou(left, right, n_points=20_000) == 0.0
    # Concentric spheres: the small one lies inside the big one, IoU = (r1 / r2)^3 = 0.125.
    # About 12k of 100k points fall in the union, so the standard error is ~0.003.
    iou = volumetric_iou(sphere(0.4), sphere(0.8), n_points=100_000, chunk=30_000)
    assert iou == pytest.approx(0.125, abs=0.015)


def test_volumetric_iou_is_seeded():
    a, b = sphere(0.4), sphere(0.5, (0.1, 0, 0))
    first = volumetric_iou(a, b, n_points=5000, seed=3)
    assert first == volumetric_iou(a, b, n_points=5000, seed=3)
    assert 0.0 < first < 1.0


# --- surfaces ------------------------------------------------------------------------------


def test_nearest_distances_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    q, r = torch.rand(370, 3, generator=gen), torch.rand(530, 3, generator=gen)
    brute = ((q[:, None] - r[None]) ** 2).sum(-1).sqrt().min(dim=1).values  # (370,)
    assert torch.allclose(nearest_distances(q, r), brute, atol=1e-6)
    assert torch.equal(nearest_distances(r, r), torch.zeros(530))  # every point is its own neighbour


def test_chamfer_of_concentric_spheres_is_radius_gap():
    r, delta = 0.5, 0.05
    a = sphere_samples(5000, r, seed=0)
    # Same directions, scaled: every nearest neighbour is the radial partner at exactly delta.
    scaled = chamfer_l1(a, a * (r + delta) / r)
    assert scaled["chamfer_l1"] == pytest.approx(delta, rel=1e-4)
    # Independent samples: tangential gaps add a little on top of delta.
    b = sphere_samples(5000, r + delta, seed=1)
    out = chamfer_l1(a, b)
    assert out["chamfer_l1"] == pytest.approx(delta, rel=0.1)
    assert out["chamfer_l1"] == pytest.approx(0.5 * (out["accuracy"] + out["completeness"]))


def test_chamfer_and_fscore_of_identical_sets():
    a = sphere_samples(2000, 0.5, seed=0)
    out = surface_metrics(a, a.numpy())
    assert out["chamfer_l1"] == 0.0
    assert out["fscore"] == 1.0 and out["precision"] == 1.0 and out["recall"] == 1.0


def test_fscore_hand_case_and_far_sets():
    pred = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    gt = torch.tensor([[0.0, 0.0, 0.01]])
    out = fscore(pred, gt, threshold=0.02)
    assert out["precision"] == 0.5 and out["recall"] == 1.0
    assert out["fscore"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    far = fscore(sphere_samples(2000, 0.5, 0), sphere_samples(2000, 0.7, 1), threshold=0.02)
    assert far == {"precision": 0.0, "recall": 0.0, "fscore": 0.0}


def test_surface_metrics_agree_with_separate_calls():
    a, b = sphere_samples(1000, 0.5, 0), sphere_samples(1500, 0.52, 1)
    combined = surface_metrics(a, b, threshold=0.03)
    assert combined == {**chamfer_l1(a, b), **fscore(a, b, threshold=0.03)}


def test_empty_prediction_is_worst_score():
    gt = sphere_samples(100, 0.5, 0)
    out = surface_metrics(torch.zeros(0, 3), gt)
    assert out["chamfer_l1"] == math.inf and out["fscore"] == 0.0
