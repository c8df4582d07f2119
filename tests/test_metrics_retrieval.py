"""The retrieval baseline: the training shape that looks most like a held-out picture, scored like a model."""

import torch

from flowsdf.data import dataset
from flowsdf.data.dataset import ShapeSplit, Views
from flowsdf.metrics.retrieval import nearest_by_silhouette, retrieval_baseline, retrieved_silhouettes


def subset(split: ShapeSplit, idx: list[int]) -> ShapeSplit:
    pick = lambda v: Views(*(x[idx] for x in (v.images, v.masks, v.K, v.c2w, v.light)))  # noqa: E731
    return ShapeSplit([split.shapes[i] for i in idx], split.albedo[idx], pick(split.input), pick(split.novel))


def test_a_training_shape_shown_again_retrieves_itself_and_scores_perfectly(tiny_data_dir):
    train = dataset.load(tiny_data_dir).train
    again = subset(train, [2, 0])  # two training shapes posing as held-out pictures
    idx, iou = nearest_by_silhouette(train, again)
    assert idx.tolist() == [2, 0] and torch.allclose(iou, torch.ones(2))
    r = retrieval_baseline(train, again, resolution=16, samples=64)  # the tiny preset's gt_samples
    assert r["heldout_input_iou"] == 1.0 and r["heldout_novel_iou"] == 1.0  # the same exact silhouettes
    assert r["mean"]["volumetric_iou"] == 1.0 and [row["retrieved"] for row in r["per_shape"]] == [2, 0]


def test_another_shape_scores_below_one(tiny_data_dir):
    data = dataset.load(tiny_data_dir)
    r = retrieval_baseline(data.train, data.heldout, resolution=16, samples=data.config.gt_samples)
    assert len(r["per_shape"]) == len(data.heldout)
    assert 0.0 <= r["mean"]["volumetric_iou"] < 1.0 and 0.0 <= r["heldout_novel_iou"] < 1.0
    assert set(r["mean"]) >= {"volumetric_iou", "chamfer_l1", "fscore", "fscore_2pct"}


def test_retrieved_silhouettes_are_the_datasets_own_masks(tiny_data_dir):
    train = dataset.load(tiny_data_dir).train
    v = train.novel
    sil = retrieved_silhouettes(train.shapes[1], v.K[1], v.c2w[1], v.masks.shape[-1], samples=64)
    assert torch.equal(sil, v.masks[1] > 0.5)  # the dataset renders masks with gt_samples=64 in the tiny preset
