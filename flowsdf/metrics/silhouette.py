"""Silhouette metrics: the training loss (BCE from logits) and intersection over union.

``silhouette_iou`` is the one IoU of the package: evaluation, the camera search of a picture, the
viewer and the benchmarks all score silhouettes with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def silhouette_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Mean binary cross-entropy of silhouette logits against a {0, 1} target (the training loss).

    Args:
        logits: any shape, raw scores (before the sigmoid).
        target: same shape, values in [0, 1].
    Returns:
        A scalar tensor.
    """
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


def silhouette_bce_per_item(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy averaged over everything but the first (batch) dimension.

    Args:
        logits: (B, ...) raw scores.
        target: (B, ...) values in [0, 1].
    Returns:
        (B,) per-item BCE; its mean equals ``silhouette_bce`` when all items have the same size.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return bce.reshape(bce.shape[0], -1).mean(dim=1)  # (B,)


def _as_mask(x: Tensor, threshold: float) -> Tensor:
    """A boolean mask from a boolean mask or from probabilities (>= threshold is inside)."""
    return x if x.dtype == torch.bool else x >= threshold


def silhouette_iou(pred: Tensor, target: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-item intersection over union of silhouettes.

    Args:
        pred: (B, ...) probabilities (thresholded at ``threshold``) or a boolean mask.
            Pass probabilities, not logits: thresholding logits at 0.5 is a different cut.
        target: (B, ...) a {0, 1} float mask (thresholded at 0.5) or a boolean mask.
        threshold: probability at or above which a predicted pixel counts as inside.
    Returns:
        (B,) float IoU. Two empty masks agree perfectly, so their IoU is defined as 1.0.
    """
    p = _as_mask(pred, threshold).reshape(pred.shape[0], -1)  # (B, N)
    t = _as_mask(target, 0.5).reshape(target.shape[0], -1)  # (B, N)
    inter = (p & t).sum(dim=1).float()  # (B,)
    union = (p | t).sum(dim=1).float()  # (B,)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
