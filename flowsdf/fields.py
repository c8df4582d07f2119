"""The callables the renderer, meshing and the metrics pass around, named once.

- ``BatchField``: the decoded SDFs of a batch of codes, ``f(points (P, 3), item) -> (P,)``. `item`
  says which code each point belongs to: a (P,) long tensor, or one int when every point shares a
  code (the renderer's chunks never mix codes, so a decoder can broadcast its per-code terms
  instead of gathering them per point). Decoders make one with ``decoder.field(codes)``.
- ``PointField``: one shape's SDF, ``f(points (P, 3)) -> (P,)``: what meshing and the 3-D metrics
  take, for a decoded code (``code_field``) and an analytic shape alike.
- ``Predictor``: images (B, 3, H, W) and a generator for any noise it draws -> codes (B, *latent).
  Training, evaluation and figures call a model through it, CNN encoder and flow alike.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor, nn

BatchField = Callable[[Tensor, Union[Tensor, int]], Tensor]
PointField = Callable[[Tensor], Tensor]
Predictor = Callable[[Tensor, torch.Generator], Tensor]


def code_field(decoder: nn.Module, code: Tensor) -> PointField:
    """The decoder's SDF for one code (*latent) as a PointField.

    The code's per-code terms are computed once; each call runs under ``torch.no_grad`` on the
    decoder's device and returns the distances on the device the points came from.
    """
    device = next(decoder.parameters()).device
    with torch.no_grad():
        per_point = decoder.field(code.to(device)[None])  # a batch of one code

    @torch.no_grad()
    def field(points: Tensor) -> Tensor:
        return per_point(points.to(device), 0).to(points.device)  # (P,)

    return field


def bounded(field: PointField, radius: float) -> PointField:
    """A field intersected with the ball of ``radius`` (the renderer's bounding sphere).

    Inside the ball: max(field(p), |p| - radius); outside: |p| - radius. A surface the field has
    inside the ball is kept, a field that is negative up to the ball's edge is closed by the
    sphere, and everything outside is empty space: the renderer never looks there, so whatever a
    decoder predicts outside was never trained. Outside the ball this differs from the plain
    max(field, |p| - radius) only in magnitude, never in sign, so the inside set (volumetric IoU)
    is identical; but the field is never evaluated there, which skips ~60 % of a [-1, 1]^3 grid.
    """

    def clipped(points: Tensor) -> Tensor:
        out = torch.linalg.vector_norm(points, dim=-1) - radius  # (P,)
        inside = out < 0  # (P,)
        if inside.any():
            out[inside] = torch.maximum(field(points[inside]).reshape(-1).to(out.dtype), out[inside])
        return out

    return clipped
