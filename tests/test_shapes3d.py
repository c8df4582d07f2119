"""3-D evaluation against answers known in closed form (spheres, balls, the ground truth itself)."""

import json
import math

import torch

from flowsdf.data import shapes
from flowsdf.fields import bounded, code_field
from flowsdf.metrics.shapes import (
    METRIC_KEYS,
    SPHERE_FLOOR,
    evaluate_shapes,
    gt_field,
    shape_metrics,
)
from flowsdf.metrics.surface import volumetric_iou
from flowsdf.models.sdf import DecoderConfig, SDFDecoder

EYE = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

# Small settings for speed; the floor test runs at the documented defaults instead.
FAST = dict(resolution=32, n_surface=2000, n_volume=20_000)


def sphere_spec(radius: float) -> dict:
    return {"kind": "sphere", "params": {"radius": radius}, "rotation": EYE, "translation": [0, 0, 0]}


def test_ground_truth_against_itself_scores_the_floor():
    spec = sphere_spec(0.5)
    m = shape_metrics(gt_field(spec), spec)  # defaults: R = 64, N = 10 000
    assert m["volumetric_iou"] == 1.0
    assert m["chamfer_l1"] < SPHERE_FLOOR["chamfer_l1"] * 1.05  # measured 0.0088-0.0090
    assert m["fscore"] >= 0.95
    assert m["empty_mesh"] is False


def test_ground_truth_of_a_csg_shape_against_itself():
    spec = shapes.random_shapes(1, seed=3, csg_fraction=1.0)[0]
    m = shape_metrics(gt_field(spec), spec, **FAST)
    assert m["volumetric_iou"] == 1.0
    assert m["chamfer_l1"] < 0.03  # the floor at N = 2000 is ~0.02 for a mid-sized shape


def test_concentric_spheres_chamfer_is_the_radius_gap():
    r, gap = 0.4, 0.05
    pred = lambda p: p.norm(dim=-1) - r  # noqa: E731
    m = shape_metrics(pred, sphere_spec(r + gap), **FAST)
    assert abs(m["chamfer_l1"] - gap) < 0.2 * gap
    # Every predicted point is 0.05 from the truth, beyond the 0.02 threshold.
    assert m["fscore"] < 0.05
    assert abs(m["volumetric_iou"] - (r / (r + gap)) ** 3) < 0.02


def test_bounded_closes_an_all_inside_field_to_the_ball():
    everywhere_inside = lambda p: -torch.ones(p.shape[0])  # noqa: E731
    ball = lambda p: p.norm(dim=-1) - 0.9  # noqa: E731
    clipped = bounded(everywhere_inside, radius=0.9)
    assert volumetric_iou(clipped, ball, n_points=20_000) > 0.999
    # A surface inside the ball is left alone.
    small = lambda p: p.norm(dim=-1) - 0.3  # noqa: E731
    p = torch.rand(1000, 3) * 2 - 1
    inner = p[p.norm(dim=-1) < 0.6]
    assert torch.equal(bounded(small, 0.9)(inner), small(inner))


def test_bounded_matches_the_plain_maximum_inside_and_skips_points_outside_the_ball():
    seen = []

    def wavy(p):
        seen.append(p.norm(dim=-1).max().item())
        return torch.sin(5 * p).sum(-1) - 0.5

    p = torch.rand(5000, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = torch.maximum(wavy(p), p.norm(dim=-1) - 0.9)
    seen.clear()
    out = bounded(wavy, radius=0.9)(p)
    inside = p.norm(dim=-1) < 0.9
    assert torch.allclose(out[inside], plain[inside], atol=1e-6)
    assert torch.equal(out < 0, plain < 0)  # the same inside set everywhere
    assert (out[~inside] > 0).all()
    assert max(seen) < 0.9  # the field never saw a point outside the ball


def test_decoder_field_matches_the_plain_forward():
    torch.manual_seed(0)
    decoder = SDFDecoder(DecoderConfig(latent_dim=8, hidden=32))
    code = torch.randn(8)
    p = torch.rand(50, 3) * 2 - 1
    expected = decoder(code[None], p[None])[0]  # (50,)
    out = code_field(decoder, code)(p)
    assert not out.requires_grad
    assert torch.allclose(out, expected, atol=1e-6)


def test_evaluate_shapes_rows_means_and_empty_meshes():
    torch.manual_seed(0)
    decoder = SDFDecoder(DecoderConfig(latent_dim=8, hidden=32))
    # Rewire the decoder so that sdf = 1 - relu(z[0]) everywhere: layer 3 passes z[0] through
    # the skip connection to unit 0, layer 4 copies unit 0, layer 5 subtracts it from 1.
    with torch.no_grad():
        decoder.l3.weight.zero_()
        decoder.l3.bias.zero_()
        decoder.l3.weight[0, -(8 + 3)] = 1.0  # the column that multiplies z[0]
        decoder.l4.weight.zero_()
        decoder.l4.bias.zero_()
        decoder.l4.weight[0, 0] = 1.0
        decoder.l5.weight.zero_()
        decoder.l5.weight[0, 0] = -1.0
        decoder.l5.bias.fill_(1.0)
    codes = torch.randn(3, 8)
    codes[:, 0] = torch.tensor([0.0, 5.0, -2.0])  # sdf 1, -4, 1: empty, the bounded ball, empty
    specs = shapes.random_shapes(3, seed=0)
    out = evaluate_shapes(decoder, codes, specs, **FAST)

    rows = out["per_shape"]
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["family"] for r in rows] == [shapes.family(s) for s in specs]
    assert rows[0]["empty_mesh"] and rows[2]["empty_mesh"]
    assert not rows[1]["empty_mesh"]
    for r in rows:
        for key in METRIC_KEYS:
            v = r[key]
            assert v is None or math.isfinite(v)
            if r["empty_mesh"] and key in ("chamfer_l1", "accuracy", "completeness"):
                assert v is None
        if r["empty_mesh"]:
            assert r["fscore"] == 0.0
    assert out["mean"]["empty_meshes"] == 2
    assert out["mean"]["shapes"] == 3
    assert out["mean"]["chamfer_l1"] == rows[1]["chamfer_l1"]  # the only non-empty one
    json.dumps(out, allow_nan=False)  # writer-safe: no inf / NaN anywhere


def test_evaluate_shapes_random_decoder_is_finite_or_flagged():
    torch.manual_seed(1)
    decoder = SDFDecoder(DecoderConfig(latent_dim=8, hidden=32))
    specs = shapes.random_shapes(2, seed=1)
    out = evaluate_shapes(decoder, torch.randn(2, 8), specs, resolution=16, n_surface=500, n_volume=5000)
    assert len(out["per_shape"]) == 2
    for r in out["per_shape"]:
        assert all(r[k] is None or math.isfinite(r[k]) for k in METRIC_KEYS)
        assert (r["chamfer_l1"] is None) == r["empty_mesh"]
    json.dumps(out, allow_nan=False)


def test_evaluate_shapes_progress_bar_can_be_silenced(capsys):
    decoder = SDFDecoder(DecoderConfig(latent_dim=8, hidden=32))
    codes, specs = torch.zeros(1, 8), shapes.random_shapes(1, seed=0)
    small = dict(resolution=16, n_surface=200, n_volume=2000)
    evaluate_shapes(decoder, codes, specs, progress=False, **small)
    assert "3-D metrics" not in capsys.readouterr().err
    evaluate_shapes(decoder, codes, specs, progress=True, **small)
    assert "3-D metrics" in capsys.readouterr().err
