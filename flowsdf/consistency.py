"""Samples that agree with their picture: a draw whose silhouette, seen from the input camera, falls
short of the flow's own central guess is drawn again.

Why: above temperature 1 the flow's samples spread where one picture leaves the shape open (depth
along the camera axis, the hidden back), which is what a generative flow is for; but a few also
stray from what the picture does show: measured on 40 fresh shapes at T = 1.25, 1-7 % of the samples,
depending on the draw, reach less than 0.9 of the mean code's input-view IoU (docs/scaling.md). What the
picture shows is known at inference (its foreground mask on the black background), and in the view
frame so is its camera, so each draw can be checked where it is cheap: one silhouette at the
picture's size.

The rule (flow.consistency c > 0, flow.consistency_tries n): the reference of a picture is the IoU
with its mask of its noiseless sample (source noise 0, the flow's path from the centre of its
noise). Draw 0 of a sample is the plain sample; while its IoU is below c x the reference it is drawn
again from fresh noise, up to n draws in all; if no draw reaches it, the draw with the highest IoU
is kept. Only a row's own draws decide its outcome, so with per-row noise (the pipeline's seeds)
sample k still depends only on (picture, seed, k).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# Retry j of a row whose plain noise has seed s draws from seed s + j * RETRY_SEED_STRIDE: far from
# the seeds seed + k of the other samples of a call (K would have to exceed the stride to collide).
RETRY_SEED_STRIDE = 1 << 20

Draw = Callable[[int, Tensor], Tensor]  # (draw j, row indices (R,)) -> codes (R, *latent)
Agreement = Callable[[Tensor, Tensor], Tensor]  # (codes (R, *latent), row indices (R,)) -> IoU (R,)


def retry_seeds(seeds: list[int], draw: int) -> list[int]:
    """The noise seeds of retry `draw` (0 = the plain draw) of rows with plain seeds `seeds`."""
    return [s + draw * RETRY_SEED_STRIDE for s in seeds]


@torch.no_grad()
def consistent_draws(draw: Draw, agreement: Agreement, reference: Tensor, ratio: float, tries: int) -> tuple[Tensor, Tensor]:
    """Codes (B, *latent) that agree with their pictures, and how many draws each row took (B,).

    `draw(j, rows)` gives draw j of the rows (indices into the batch); `agreement(codes, rows)` their
    IoU with the rows' picture masks; `reference` (B,) each row's reference IoU. A row is accepted
    at its first draw with IoU >= ratio x reference; after `tries` draws an unaccepted row keeps its
    best draw (ties: the earlier draw).
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    rows = torch.arange(reference.shape[0], device=reference.device)  # (B,)
    codes = draw(0, rows)  # (B, *latent)
    score = agreement(codes, rows)  # (B,)
    need = ratio * reference  # (B,)
    used = torch.ones_like(rows)  # (B,)
    for j in range(1, tries):
        pending = rows[score < need]  # (R,) rows still short of their reference
        if len(pending) == 0:
            break
        fresh = draw(j, pending)  # (R, *latent)
        fresh_score = agreement(fresh, pending)  # (R,)
        better = fresh_score > score[pending]  # (R,) keep the best draw so far; a reaching draw is better
        codes[pending[better]] = fresh[better]
        score[pending[better]] = fresh_score[better]
        used[pending] += 1
    return codes, used
