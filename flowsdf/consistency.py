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
again from fresh noise, up to n draws in all; if no draw reaches it, the sample is the noiseless
one, which reaches it by definition, so no sample falls below the bar. Only a row's own draws
decide its outcome, so with per-row noise (the pipeline's seeds) sample k still depends only on
(picture, seed, k).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from flowsdf.errors import FlowSDFError

# Retry j of a row whose plain noise has seed s draws from seed s + j * RETRY_SEED_STRIDE: far from
# the seeds seed + k of the other samples of a call (K would have to exceed the stride to collide).
RETRY_SEED_STRIDE = 1 << 20

Draw = Callable[[int, Tensor], Tensor]  # (draw j, row indices (R,)) -> codes (R, *latent)
Agreement = Callable[[Tensor, Tensor], Tensor]  # (codes (R, *latent), row indices (R,)) -> IoU (R,)


def check_frame(frame: str, consistency: float, run: object) -> None:
    """One error line for consistency > 0 on a run that does not predict in the view frame."""
    if consistency > 0 and frame != "view":
        raise FlowSDFError(f"consistency needs a view-frame run; {run} predicts in the world frame, where a picture "
                           "does not say where it was seen from")


def retry_seeds(seeds: list[int], draw: int) -> list[int]:
    """The noise seeds of retry `draw` (0 = the plain draw) of rows with plain seeds `seeds`."""
    return [s + draw * RETRY_SEED_STRIDE for s in seeds]


@torch.no_grad()
def consistent_draws(draw: Draw, agreement: Agreement, reference: Tensor, ratio: float, tries: int, fallback: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Codes (B, *latent) that agree with their pictures, and how many draws each row took (B,).

    `draw(j, rows)` gives draw j of the rows (indices into the batch); `agreement(codes, rows)` their
    IoU with the rows' picture masks; `reference` (B,) each row's reference IoU, that of its
    `fallback` code (B, *latent). A row is accepted at its first draw with IoU >= ratio x
    reference; a row no draw of which is accepted in `tries` takes its fallback.
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
        codes[pending] = fresh
        score[pending] = fresh_score
        used[pending] += 1
    short = score < need  # (B,) no draw reached the bar
    codes[short] = fallback[short]
    return codes, used
