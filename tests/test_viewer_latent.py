"""The viewer's latent-plot maths and pane pictures (no web server)."""

import numpy as np
import pytest

from flowsdf.errors import FlowSDFError
from flowsdf.viewer import panes
from flowsdf.viewer.latent import fit_frame


def _planar_codes(n: int = 200, d: int = 16, seed: int = 0):
    """Codes = mean + 3 a e1 + 1 b e2 with known orthonormal e1, e2, and coefficient columns a, b
    of zero mean, equal length and uncorrelated, so the principal axes are exactly e1 then e2."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, 2)))  # (D, 2) orthonormal columns
    e1, e2 = basis.T
    mean = rng.normal(size=d)
    ab = rng.normal(size=(n, 2))
    ab, _ = np.linalg.qr(ab - ab.mean(axis=0))  # (N, 2) orthonormal, zero-mean columns
    codes = mean + 3.0 * ab[:, :1] * e1 + 1.0 * ab[:, 1:] * e2  # (N, D)
    return codes, mean, e1, e2, ab


def test_principal_axes_of_codes_on_a_known_plane():
    codes, mean, e1, e2, ab = _planar_codes()
    frame = fit_frame(codes, "test codes")
    np.testing.assert_allclose(frame.axes @ frame.axes.T, np.eye(2), atol=1e-10)  # orthonormal
    assert abs(frame.axes[0] @ e1) == pytest.approx(1.0, abs=1e-6)  # the larger spread first
    assert abs(frame.axes[1] @ e2) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(frame.explained.sum(), 1.0, atol=1e-10)  # all spread lies in the plane
    # Projections give back the coefficients (up to each axis's sign); the mean maps to 0.
    proj = frame.project(codes)
    np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(3.0 * ab[:, 0]), atol=1e-8)
    np.testing.assert_allclose(np.abs(proj[:, 1]), np.abs(ab[:, 1]), atol=1e-8)
    np.testing.assert_allclose(frame.project(mean[None]), 0.0, atol=1e-10)
    np.testing.assert_allclose(frame.points, proj, atol=1e-10)
    np.testing.assert_allclose(frame.norms, np.linalg.norm(codes, axis=1))


def test_axis_signs_are_fixed_and_norm_band_is_ordered():
    codes, *_ = _planar_codes()
    a, b = fit_frame(codes, "x"), fit_frame(codes[::-1].copy(), "x")  # same codes, other order
    np.testing.assert_allclose(a.axes, b.axes, atol=1e-8)
    lo, med, hi = a.norm_band()
    assert lo <= med <= hi
    assert med == pytest.approx(float(np.median(a.norms)))


def test_too_few_codes_is_a_clear_error():
    with pytest.raises(FlowSDFError, match="at least 2 training codes"):
        fit_frame(np.zeros((1, 8)), "x")


def test_gray_pane_keeps_each_model_pixel_a_square():
    sil = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    img = panes.gray_pane(sil, size=8)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[:4, 4:], 255)  # top-right model pixel, all 4x4 of it
    np.testing.assert_array_equal(img[:4, :4], 0)
    np.testing.assert_array_equal(img[4:, :4], 128)  # 0.5 -> 127.5 rounds to 128


def test_latent_figure_has_one_size_and_changes_with_the_step():
    codes, *_ = _planar_codes(d=8)
    frame = fit_frame(codes, "x")
    path = np.linspace(codes[0] * 20, codes[1], 9)  # (T, D) from far out into the cloud
    plane, norms = frame.project(path), np.linalg.norm(path, axis=1)
    first = panes.latent_figure(frame, plane, norms, 0, 8)
    last = panes.latent_figure(frame, plane, norms, 8, 8)
    assert first.shape == last.shape and first.shape[2] == 3 and first.dtype == np.uint8
    assert (first != last).any()
