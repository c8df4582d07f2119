"""What K samples tell: best-of-K against mean-of-K, diversity, the flow's step-by-step strip."""

import pytest
import torch

from flowsdf.data import dataset
from flowsdf.fast_sampler import make_sampler
from flowsdf.metrics.samples import (
    best_and_mean,
    flow_trajectory,
    heldout_samples_3d,
    pairwise_distance,
    relative_spread,
    sample_codes,
    sample_diversity,
)
from flowsdf.pipeline import FlowSDF


def test_best_and_mean_of_k_known_answers():
    # 2 samples of 3 shapes: shape 0 is best in sample 1, shape 1 in sample 0, shape 2 ties.
    scores = torch.tensor([[0.2, 0.9, 0.5],
                           [0.6, 0.1, 0.5]])
    r = best_and_mean(scores)
    assert r["k"] == 2
    assert r["best_of_k"] == pytest.approx((0.6 + 0.9 + 0.5) / 3)  # per shape, then the mean
    assert r["mean_of_k"] == pytest.approx((0.2 + 0.9 + 0.5 + 0.6 + 0.1 + 0.5) / 6)
    # The best single sample overall would score only 0.533: best-of-K picks per shape.
    assert r["best_of_k"] > scores.mean(1).max().item()
    one = best_and_mean(scores[:1])
    assert one["best_of_k"] == pytest.approx(one["mean_of_k"])  # K = 1: nothing to choose
    with pytest.raises(ValueError):
        best_and_mean(torch.zeros(4))


def test_samples_follow_their_seeds_and_diversity_is_zero_for_equal_samples(tiny_flow_run, tiny_data_dir):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    data = dataset.load(tiny_data_dir)
    images = data.train.input.images[:2, 0]
    codes = sample_codes(pipe.conditioner, pipe.sampler(), images, 3, seed=4)  # (2, 3, D)
    torch.testing.assert_close(codes, pipe(images, samples=3, seed=4).codes)  # the pipeline's seeds
    assert not torch.equal(codes[:, 0], codes[:, 1])
    d = sample_diversity(codes, pipe.decoder, data.train, pipe.cfg.render, pipe.tau)
    assert d["code_pairwise_l2"] > 0 and d["shapes"] == 2 and d["k"] == 3
    frozen = make_sampler(pipe.velocity, 0.0, pipe.cfg.flow.steps, pipe.latent_shape)  # sigma 0: every seed alike
    alike = sample_codes(pipe.conditioner, frozen, images, 3, seed=4)
    same = sample_diversity(alike, pipe.decoder, data.train, pipe.cfg.render, pipe.tau)
    assert same["code_pairwise_l2"] == 0.0 and same["silhouette_pairwise_l1"] == 0.0


def test_flow_trajectory_starts_at_the_noise_and_ends_at_the_sample(tiny_flow_run, tiny_data_dir):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    views = dataset.load(tiny_data_dir).train.input
    images, K, c2w = views.images[:2, 0], views.K[:2, 0], views.c2w[:2, 0]
    latents, sils = flow_trajectory(pipe.conditioner, pipe.sampler(), pipe.decoder, images, K, c2w, 7,
                                    pipe.cfg.render, pipe.tau)
    steps = pipe.cfg.flow.steps
    assert latents.shape == (steps + 1, 2, *pipe.latent_shape) and sils.shape == (steps + 1, 2, 16, 16)
    torch.testing.assert_close(latents[0], pipe.sampler().noise([7, 7], "cpu"))  # state 0 is the noise
    torch.testing.assert_close(latents[-1], pipe(images, seed=7).codes[:, 0])  # the last is the sample
    torch.testing.assert_close(sils[-1], pipe.silhouettes(latents[-1], K, c2w))


def test_pairwise_distance_is_the_mean_over_distinct_pairs():
    # Item 0: three samples on a line at 0, 3 and 4 -> pairs 3, 4, 1 -> mean 8/3; item 1: identical samples -> 0.
    codes = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [4.0, 0.0]], [[1.0, 2.0]] * 3])  # (2, 3, 2)
    got = pairwise_distance(codes)
    assert torch.allclose(got, torch.tensor([8.0 / 3.0, 0.0]), atol=1e-6)


def test_heldout_samples_3d_draws_the_samples_of_seeds_first_seed_onwards(tiny_flow_run, tiny_data_dir):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    split = dataset.load(tiny_data_dir).heldout
    predict, seeds = pipe.predictor(), []

    def recording(images, gen):
        seeds.append(gen.initial_seed())
        return predict(images, gen)

    r = heldout_samples_3d(recording, pipe.decoder, split, pipe.cfg.render, pipe.tau, 2, n_volume=2000, first_seed=5)
    assert sorted(set(seeds)) == [5, 6] and r["k"] == 2 and len(r["per_shape_3d_iou"]) == len(split)


def test_relative_spread_is_the_pairwise_distance_over_the_norm():
    codes = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]],  # distance 2, norm 1
                          [[3.0, 4.0], [3.0, 4.0]]])  # one shape twice
    torch.testing.assert_close(relative_spread(codes), torch.tensor([2.0, 0.0]))
