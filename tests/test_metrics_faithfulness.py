"""Faithfulness measures with known answers: renders of a sphere, proportions of long and flat
solids, pair ordering, labels of composite shapes, and a classifier on very different families."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from flowsdf.data import shapes
from flowsdf.errors import FlowSDFError
from flowsdf.metrics.faithfulness import (
    FAMILIES,
    ClassifierConfig,
    FamilyViews,
    accuracy_by_family,
    elongation_statistic,
    family_label,
    family_renders,
    pair_order_rate,
    specs_field,
    train_family_classifier,
)

EYE = np.eye(3).tolist()


def prim(kind: str, rotation=EYE, translation=(0.0, 0.0, 0.0), **params) -> shapes.Spec:
    return {"kind": kind, "params": params, "rotation": rotation, "translation": list(translation)}


def field_of(spec: shapes.Spec):
    return lambda p: shapes.sdf(spec, p)


def test_a_sphere_renders_the_same_disc_from_every_camera():
    views = FamilyViews()
    r = 0.5
    renders = family_renders(specs_field([prim("sphere", radius=r)]), 1, views)  # (1, M, S, S)
    assert renders.shape == (1, views.count, views.size, views.size)
    for m in range(1, views.count):
        assert torch.equal(renders[0, m], renders[0, 0])
    # The disc's radius in pixels: the tangent cone's half-angle asin(r / d) through the pinhole.
    focal = 0.5 * views.size / math.tan(math.radians(views.fov_deg) / 2)
    radius_px = focal * math.tan(math.asin(r / views.distance))
    c = (torch.arange(views.size) + 0.5 - views.size / 2)  # pixel centres from the image centre
    dist = (c[:, None] ** 2 + c[None, :] ** 2).sqrt()  # (S, S)
    image = renders[0, 0]
    assert image[dist < radius_px - 1].min() == 1.0
    assert image[dist > radius_px + 1].max() == 0.0


def test_a_batch_of_shapes_renders_each_shape_as_alone():
    specs = [prim("sphere", radius=0.4), prim("box", half=[0.6, 0.2, 0.1]), prim("torus", major=0.5, minor=0.15)]
    together = family_renders(specs_field(specs), 3, batch=2)  # a batch boundary inside the list
    alone = torch.cat([family_renders(specs_field([s]), 1) for s in specs])
    assert torch.equal(together, alone)
    assert not torch.equal(together[0], together[1])


def test_elongation_is_positive_for_long_negative_for_flat_zero_for_a_sphere():
    assert elongation_statistic(field_of(prim("capsule", half_length=0.4, radius=0.15))) > 1.0
    assert elongation_statistic(field_of(prim("cylinder", radius=0.2, half_height=0.6))) > 1.0
    assert elongation_statistic(field_of(prim("box", half=[0.6, 0.6, 0.1]))) < -1.0
    assert elongation_statistic(field_of(prim("cylinder", radius=0.6, half_height=0.1))) < -1.0  # a disc
    assert abs(elongation_statistic(field_of(prim("sphere", radius=0.5)))) < 1e-6


def test_elongation_does_not_change_under_a_rotation():
    rng = np.random.default_rng(3)
    for spec in (prim("capsule", half_length=0.4, radius=0.15), prim("box", half=[0.6, 0.6, 0.1]),
                 prim("ellipsoid", radii=[0.6, 0.35, 0.2])):
        turned = {**spec, "rotation": shapes.random_rotation(rng).tolist()}
        a, b = elongation_statistic(field_of(spec)), elongation_statistic(field_of(turned))
        assert abs(a - b) < 0.1 * max(1.0, abs(a)), (spec["kind"], a, b)


def test_an_empty_shape_has_no_elongation():
    assert elongation_statistic(lambda p: torch.ones(p.shape[0])) is None


def test_pair_order_rate_known_answers():
    assert pair_order_rate([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert pair_order_rate([1.0], [2.0, 3.0]) == 0.0
    assert pair_order_rate([1.0, 3.0], [2.0]) == 0.5
    assert pair_order_rate([2.0, 0.0, 5.0], [1.0, 3.0]) == pytest.approx(3 / 6)
    assert pair_order_rate([1.0], [1.0]) == 0.0  # a tie is not "above"
    with pytest.raises(FlowSDFError):
        pair_order_rate([], [1.0])
    with pytest.raises(FlowSDFError):
        pair_order_rate([float("nan")], [1.0])


def test_composite_shapes_are_labelled_as_their_captions_name_them():
    small_sphere = prim("sphere", translation=(0.0, 0.0, 0.0), radius=0.2)
    big_box = prim("box", half=[0.5, 0.5, 0.5])
    cone = prim("cone", translation=(0.0, 0.45, 0.0), radius=0.3, half_height=0.3)
    assert family_label({"op": "union", "a": big_box, "b": cone}) == "box"
    assert family_label({"op": "difference", "a": big_box, "b": small_sphere}) == "box"
    # the second part swallows the first: only the box shows, as captions.describe says
    assert family_label({"op": "union", "a": small_sphere, "b": big_box}) == "box"


def three_families(n: int, seed: int) -> list[shapes.Spec]:
    """Spheres, flat boxes and long cylinders in random poses and sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rot, s = shapes.random_rotation(rng).tolist(), float(rng.uniform(0.8, 1.1))
        out.append([prim("sphere", radius=0.5 * s),
                    prim("box", rot, half=[0.55 * s, 0.5 * s, 0.1 * s]),
                    prim("cylinder", rot, radius=0.15 * s, half_height=0.6 * s)][i % 3])
    return out


def test_a_tiny_classifier_tells_very_different_families_apart():
    cfg = ClassifierConfig(n_shapes=60, seed=0, heldout=0.3, epochs=15, width=8, batch_size=8)
    model, report = train_family_classifier(cfg, FamilyViews(size=16), make_shapes=three_families)
    assert report["heldout_shapes"] == 18 and report["train_shapes"] == 42
    assert set(report["heldout_per_family"]) == {"sphere", "box", "cylinder"}
    assert report["heldout_accuracy"] > 0.6  # chance is 1/3
    assert model.head[-1].out_features == len(FAMILIES)


def test_accuracy_by_family_counts_box_for_rounded_box_only_when_merged():
    box, rounded, sphere = (FAMILIES.index(f) for f in ("box", "rounded_box", "sphere"))
    labels = torch.tensor([box, rounded, sphere, sphere])
    pred = torch.tensor([rounded, rounded, sphere, box])
    score = accuracy_by_family(pred, labels)
    assert score["accuracy"] == 0.5 and score["merged_boxes"] == 0.75
    assert score["per_family"] == {"box": 0.0, "rounded_box": 1.0, "sphere": 0.5}


def test_the_classifier_is_the_same_for_the_same_seed_and_leaves_the_global_rng_alone():
    cfg = ClassifierConfig(n_shapes=12, seed=5, heldout=0.25, epochs=2, width=4, batch_size=4)
    state = torch.random.get_rng_state()
    a, _ = train_family_classifier(cfg, FamilyViews(size=8), make_shapes=three_families)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = train_family_classifier(cfg, FamilyViews(size=8), make_shapes=three_families)
    c, _ = train_family_classifier(dataclasses.replace(cfg, seed=6), FamilyViews(size=8), make_shapes=three_families)
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), name
    assert not all(torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))
