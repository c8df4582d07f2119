"""Per-vertex uncertainty: known answers from analytic fields."""

import numpy as np
import pytest
from matplotlib import colormaps

from flowsdf.mesh.uncertainty import sample_std, std_colors, vertex_std

POINTS = np.random.default_rng(0).uniform(-1, 1, size=(500, 3)).astype(np.float32)


def ball(radius: float):
    return lambda p: p.norm(dim=-1) - radius


def test_identical_samples_have_zero_std():
    std = vertex_std([ball(0.5)] * 4, POINTS)
    assert std.shape == (500,) and np.array_equal(std, np.zeros(500))


def test_two_offset_spheres_give_half_their_offset():
    # |p| - (r - d) and |p| - (r + d) differ by 2d everywhere: the population std is d.
    std = vertex_std([ball(0.5 - 0.03), ball(0.5 + 0.03)], POINTS)
    np.testing.assert_allclose(std, 0.03, atol=1e-6)


def test_std_is_local_where_the_samples_disagree():
    # Two samples that agree for x < 0 and differ by 0.1 for x > 0: the std is 0 / 0.05 there.
    shifted = lambda p: p.norm(dim=-1) - 0.5 - 0.1 * (p[:, 0] > 0).float()
    std = vertex_std([ball(0.5), shifted], POINTS)
    left = POINTS[:, 0] <= 0
    np.testing.assert_allclose(std[left], 0.0, atol=1e-7)
    np.testing.assert_allclose(std[~left], 0.05, atol=1e-6)


def test_sample_std_matches_numpy_and_needs_two_samples():
    values = np.random.default_rng(1).normal(size=(5, 7))
    np.testing.assert_allclose(sample_std(values), np.sqrt(((values - values.mean(0)) ** 2).mean(0)))
    with pytest.raises(ValueError):
        sample_std(values[:1])


def test_colours_span_the_colormap():
    colors, vmax = std_colors(np.array([0.0, 0.5, 2.0]), cmap="viridis")
    assert vmax == 2.0 and colors.dtype == np.uint8 and colors.shape == (3, 4)
    expected = (np.array(colormaps["viridis"]([0.0, 0.25, 1.0])) * 255).round().astype(np.uint8)
    assert np.array_equal(colors, expected)
    colors, vmax = std_colors(np.zeros(4))  # all certain: the low end, no division by zero
    assert np.array_equal(colors, np.repeat(colors[:1], 4, axis=0)) and vmax > 0
