"""Per-vertex uncertainty: known answers from analytic fields."""

import numpy as np
import pytest
import torch
from matplotlib import colormaps

from flowsdf.mesh.uncertainty import SCALE_MAX, SLOPE_FLOOR, band_std, sample_std, std_colors, vertex_std

POINTS = np.random.default_rng(0).uniform(-1, 1, size=(500, 3)).astype(np.float32)


def ball(radius: float):
    return lambda p: p.norm(dim=-1) - radius


def test_identical_samples_have_zero_std():
    std = vertex_std([ball(0.5)] * 4, POINTS)
    assert std.shape == (500,) and np.array_equal(std, np.zeros(500))


def test_two_offset_spheres_give_half_their_offset():
    # |p| - (r - d) and |p| - (r + d) differ by 2d everywhere, with slope 1: the spread is d.
    std = vertex_std([ball(0.5 - 0.03), ball(0.5 + 0.03)], POINTS)
    np.testing.assert_allclose(std, 0.03, rtol=1e-3)  # the float32 central difference of the slope


def test_a_steep_field_spreads_as_far_as_its_surfaces_do():
    # Five times the distance: the values differ by 5 x 2d, the surfaces still by 2d.
    steep = [lambda p, r=r: 5.0 * ball(r)(p) for r in (0.47, 0.53)]
    np.testing.assert_allclose(vertex_std(steep, POINTS), 0.03, rtol=1e-3)
    # A flat spot (slope under SLOPE_FLOOR) divides by the floor, not by ~0.
    flat = [lambda p: 0.01 * ball(0.47)(p), lambda p: 0.01 * ball(0.53)(p)]
    np.testing.assert_allclose(vertex_std(flat, POINTS), 0.01 * 0.03 / SLOPE_FLOOR, rtol=1e-3)


def test_std_is_local_where_the_samples_disagree():
    # Two samples that agree for x < 0 and differ by 0.1 for x > 0: the spread is 0 / 0.05 there.
    shifted = lambda p: p.norm(dim=-1) - 0.5 - 0.1 * (p[:, 0] > 0).float()
    points = POINTS[np.abs(POINTS[:, 0]) > 0.01]  # the step itself is no surface position
    std = vertex_std([ball(0.5), shifted], points)
    left = points[:, 0] <= 0
    np.testing.assert_allclose(std[left], 0.0, atol=1e-7)
    np.testing.assert_allclose(std[~left], 0.05, rtol=1e-3)


def test_sample_std_matches_numpy_and_needs_two_samples():
    values = np.random.default_rng(1).normal(size=(5, 7))
    np.testing.assert_allclose(sample_std(values), np.sqrt(((values - values.mean(0)) ** 2).mean(0)))
    with pytest.raises(ValueError):
        sample_std(values[:1])


def test_colours_are_on_one_absolute_scale():
    colors, vmax = std_colors(np.array([0.0, 0.5, 2.0]), vmax=2.0, cmap="viridis")
    assert vmax == 2.0 and colors.dtype == np.uint8 and colors.shape == (3, 4)
    expected = (np.array(colormaps["viridis"]([0.0, 0.25, 1.0])) * 255).round().astype(np.uint8)
    assert np.array_equal(colors, expected)
    # The default scale is absolute (object units), not the mesh's own maximum: a tiny spread
    # stays dark, and the same spread has the same colour on every mesh.
    tiny, vmax = std_colors(np.array([0.0, 1e-4]))
    assert vmax == SCALE_MAX
    dark = (np.array(colormaps["viridis"](0.0)) * 255).round().astype(np.uint8)
    assert np.abs(tiny.astype(int) - dark).max() <= 2
    big, _ = std_colors(np.array([10 * SCALE_MAX]))  # saturates at the top
    assert np.array_equal(big[0], (np.array(colormaps["viridis"](1.0)) * 255).round().astype(np.uint8))
    with pytest.raises(ValueError):
        std_colors(np.zeros(3), vmax=0.0)


def together(*fields):
    return lambda p: torch.stack([f(p) for f in fields])  # (K, P)


SURFACE = POINTS[np.abs(np.linalg.norm(POINTS, axis=1) - 0.5) < 0.05]  # points near the sphere


def plane(normal, offset: float):
    n = torch.tensor(normal, dtype=torch.float32)
    return lambda p: p @ n - offset


@pytest.mark.parametrize("origin", [0.0, -1.0])
def test_band_std_is_exact_where_the_fields_are_affine(origin):
    # Planes of slope 2 and 1.5, shifted and tilted: trilinear interpolation reproduces each
    # field and the mean's gradient exactly, so the band equals the reference everywhere.
    fields = [plane([2.0, 0.0, 0.0], 0.1), plane([2.0, 0.0, 0.0], -0.1), plane([1.5, 0.3, -0.2], 0.0)]
    fast = band_std(together(*fields), 3, SURFACE, cell=0.06, origin=origin)
    np.testing.assert_allclose(fast, vertex_std(fields, SURFACE), rtol=1e-3)
    two = band_std(together(plane([2.0, 0.0, 0.0], 0.1), plane([2.0, 0.0, 0.0], -0.1)), 2, SURFACE, cell=0.25,
                   origin=origin)
    np.testing.assert_allclose(two, 0.05, rtol=1e-6)  # values 0.2 apart at slope 2: surfaces 0.1 apart
    # Offset spheres: the values' difference is exact (|p| interpolates wrongly, the same for both);
    # the interpolant's slope is off by |p|'s curvature over a cell (cell / radius ~ 0.12, ~4 %).
    shifted = band_std(together(ball(0.47), ball(0.53)), 2, SURFACE, cell=0.06, origin=origin)
    np.testing.assert_allclose(shifted, 0.03, rtol=0.05)


def test_band_std_evaluates_the_fields_together_at_cell_corners_only():
    calls = []

    def fields(p):
        calls.append(len(p))
        return together(plane([0.0, 1.0, 0.0], -0.02), plane([0.0, 1.0, 0.0], 0.02))(p)

    std = band_std(fields, 2, SURFACE, cell=0.25)
    assert len(calls) == 1 and calls[0] < 8 * len(SURFACE)  # shared corners, one call for both fields
    np.testing.assert_allclose(std, 0.02, rtol=1e-6)
    assert band_std(fields, 2, np.zeros((0, 3)), cell=0.25).shape == (0,)
    with pytest.raises(ValueError):
        band_std(fields, 1, SURFACE, cell=0.25)
