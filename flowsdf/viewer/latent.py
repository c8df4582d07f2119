"""The latent plot's maths: where a code sits relative to the training codes.

A code has D (128) dimensions; the page draws it on the plane of the training codes' two
principal axes (the directions of largest spread around their mean), together with its norm
against the training codes' norms. Both are what makes the collapse without noise scaling
visible: unscaled noise starts ~25x farther out than any code, and a flow that has not learned
to bring it back ends far from the cloud or shrunk towards the empty code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowsdf.errors import FlowSDFError


@dataclass
class LatentFrame:
    """The training codes' frame for the latent plot."""

    mean: np.ndarray  # (D,) mean training code
    axes: np.ndarray  # (2, D) orthonormal principal directions, largest spread first
    explained: np.ndarray  # (2,) share of the codes' variance along each axis
    points: np.ndarray  # (N, 2) the training codes in the plane
    norms: np.ndarray  # (N,) the training codes' norms
    source: str  # what the codes are, in words for the page

    def project(self, codes: np.ndarray) -> np.ndarray:
        """Codes (T, D) -> their coordinates (T, 2) on the principal plane."""
        return (np.asarray(codes, dtype=np.float64) - self.mean) @ self.axes.T  # (T, 2)

    def norm_band(self, low: float = 5.0, high: float = 95.0) -> tuple[float, float, float]:
        """The training codes' norm: (low percentile, median, high percentile)."""
        lo, med, hi = np.percentile(self.norms, [low, 50.0, high])
        return float(lo), float(med), float(hi)


def fit_frame(codes: np.ndarray, source: str) -> LatentFrame:
    """Principal axes of training codes (N, D), N >= 2, via the SVD of the centred codes.

    Each axis's sign is fixed (its largest-magnitude entry positive) so the same codes always
    give the same picture.
    """
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 2:
        raise FlowSDFError(f"the latent plot needs at least 2 training codes of 2+ dimensions, got shape {codes.shape}")
    mean = codes.mean(axis=0)  # (D,)
    centred = codes - mean  # (N, D)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # s (min(N, D),), vt (min(N, D), D)
    axes = vt[:2].copy()  # (2, D)
    flip = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])  # (2,)
    axes *= flip[:, None]
    total = float((s**2).sum())
    explained = (s[:2] ** 2) / total if total > 0 else np.zeros(2)
    return LatentFrame(mean, axes, explained, centred @ axes.T, np.linalg.norm(codes, axis=1), source)
