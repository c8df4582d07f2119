"""What K flow samples of one picture tell: how much they differ, and the best one against the mean.

A flow's value over a deterministic encoder is that its samples may differ where a picture leaves
the shape open. Two measures:

- `sample_diversity`: mean pairwise distance of the K codes of a picture (against the codes' own
  norm) and of their soft silhouettes on the input view;
- `best_and_mean`: per shape, the best of the K samples' scores and their mean; best-of-K above
  mean-of-K is what diversity buys when one sample can be chosen (e.g. by the input view).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowsdf.data.dataset import ShapeSplit, Views
from flowsdf.fast_sampler import ReferenceSampler
from flowsdf.fields import bounded, code_field
from flowsdf.metrics.shapes import gt_field
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.metrics.surface import volumetric_iou
from flowsdf.metrics.views import predict_codes, render_group
from flowsdf.render.rays import RenderConfig
from flowsdf.render.silhouette import silhouettes


@torch.no_grad()
def sample_codes(conditioner: nn.Module, sampler: ReferenceSampler, images: Tensor, k: int, seed: int) -> Tensor:
    """K codes per picture (N, 3, H, W) -> (N, K, *latent); sample j of every picture starts from the
    noise of seed `seed + j`, as the pipeline samples."""
    n = images.shape[0]
    cond = conditioner(images).repeat_interleave(k, dim=0)  # (N*K, ...)
    z0 = sampler.noise([seed + j for j in range(k)] * n, images.device)  # (N*K, *latent)
    codes = sampler(cond, z0)  # (N*K, *latent)
    return codes.view(n, k, *codes.shape[1:])


def pairwise_distance(codes: Tensor) -> Tensor:
    """Mean L2 distance between the K >= 2 samples of each item: codes (N, K, *latent) -> (N,)."""
    flat = codes.reshape(*codes.shape[:2], -1).float()  # (N, K, D)
    k = flat.shape[1]
    pair = ~torch.eye(k, dtype=torch.bool, device=flat.device)  # off-diagonal pairs
    return torch.cdist(flat, flat)[:, pair].mean(1)  # (N,)


def relative_spread(codes: Tensor) -> Tensor:
    """Mean pairwise L2 distance of the K >= 2 samples of each item over their mean code norm:
    codes (N, K, *latent) -> (N,) (0 = one shape; the seed's flow: ~0.006)."""
    return pairwise_distance(codes) / codes.flatten(2).norm(dim=-1).mean(1)  # (N,)


DIVERSITY_SHAPES = 8  # sample_diversity scores the first shapes of a split, this many at most


@torch.no_grad()
def sample_diversity(codes: Tensor, decoder: nn.Module, split: ShapeSplit, render_cfg: RenderConfig, tau: float) -> dict:
    """K samples (n, K, *latent) of the input pictures of a split's first n shapes: mean pairwise
    code distance and soft silhouette difference on the input view (mean absolute difference;
    0 = identical), and the mean code norm to read the distance against. The caller draws the
    samples (the training summary: plain draws at temperature 1; eval: the run's sampling)."""
    n, k = codes.shape[:2]
    K, c2w = split.input.K[:n, 0].repeat_interleave(k, 0), split.input.c2w[:n, 0].repeat_interleave(k, 0)
    size = split.input.masks.shape[-1]
    sils = silhouettes(decoder.field(codes.flatten(0, 1)), K, c2w, size, render_cfg, tau)  # (n*k, S, S)
    flat, sils = codes.reshape(n, k, -1), sils.view(n, k, -1)
    pair = ~torch.eye(k, dtype=torch.bool, device=flat.device)  # off-diagonal pairs
    sil_d = (sils[:, :, None] - sils[:, None]).abs().mean(-1)[:, pair]
    return {
        "k": k,
        "shapes": n,
        "code_pairwise_l2": pairwise_distance(codes).mean().item(),
        "code_norm": flat.norm(dim=-1).mean().item(),
        "silhouette_pairwise_l1": sil_d.mean().item(),
    }


@torch.no_grad()
def flow_trajectory(conditioner: nn.Module, sampler: ReferenceSampler, decoder: nn.Module, images: Tensor, K: Tensor,
                    c2w: Tensor, seed: int, render_cfg: RenderConfig, tau: float) -> tuple[Tensor, Tensor]:
    """The flow step by step for pictures (N, 3, H, W), picture i from the noise of seed `seed`:
    its states (steps + 1, N, *latent) (state 0 is the noise) and their soft silhouettes
    (steps + 1, N, S, S) seen from cameras K (N, 3, 3), c2w (N, 4, 4): the write-up's strip."""
    n = images.shape[0]
    _, traj = sampler(conditioner(images), sampler.noise([seed] * n, images.device), trajectory=True)
    T = traj.shape[0]
    size = images.shape[-1]
    sils = torch.cat([silhouettes(decoder.field(traj[t]), K, c2w, size, render_cfg, tau) for t in range(T)])
    return traj, sils.view(T, n, size, size)


def best_and_mean(scores: Tensor) -> dict:
    """Scores (K, N) of K samples of N shapes -> the mean over shapes of each shape's best sample
    and of its mean sample ({"best_of_k", "mean_of_k"}); best >= mean by construction."""
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"expected scores of shape (K, N), got {tuple(scores.shape)}")
    return {"k": scores.shape[0], "best_of_k": scores.max(0).values.mean().item(), "mean_of_k": scores.mean().item()}


@torch.no_grad()
def novel_view_samples(predict, decoder: nn.Module, split: ShapeSplit, render_cfg: RenderConfig, tau: float,
                       k: int) -> dict:
    """Novel-view IoU of K samples per shape (sample j: the predictor's noise from seed j) ->
    `best_and_mean` of the per-shape IoUs."""
    ious = []
    for seed in range(k):
        codes = predict_codes(predict, split, seed)
        probs = torch.sigmoid(render_group(decoder, codes, split.novel, render_cfg, tau))  # (N, V, H, W)
        ious.append(silhouette_iou(probs.flatten(0, 1), split.novel.masks.flatten(0, 1)).view(len(split), -1).mean(1))
    return best_and_mean(torch.stack(ious))  # (K, N)


@torch.no_grad()
def heldout_samples_3d(predict, decoder: nn.Module, split: ShapeSplit, render_cfg: RenderConfig, tau: float, k: int,
                       n_volume: int = 50_000, first_seed: int = 0) -> dict:
    """K samples per shape (sample j: the predictor's noise from seed first_seed + j) scored in 3-D and on the
    input view: `best_and_mean` of the volumetric IoU with the true shape, the same for the mean of
    the K codes, and how well every sample agrees with the picture: each sample's input-view IoU
    over the mean code's (the share of samples at >= 0.9 of it, and the lowest ratio); and for
    K >= 2 the samples' spread: per shape, their mean pairwise code distance over their mean code
    norm, averaged over the shapes (0 = one shape)."""
    specs = split.shapes
    codes = torch.stack([predict_codes(predict, split, first_seed + j) for j in range(k)])  # (K, N, *latent)
    vol = torch.zeros(k, len(specs))  # (K, N)
    for j in range(k):
        for i, spec in enumerate(specs):
            field = bounded(code_field(decoder, codes[j, i]), render_cfg.bound_radius)
            vol[j, i] = volumetric_iou(field, gt_field(spec), n_points=n_volume, device=codes.device)
    mean_codes = codes.mean(0)  # (N, *latent)
    mean_vol = [volumetric_iou(bounded(code_field(decoder, c), render_cfg.bound_radius), gt_field(s),
                               n_points=n_volume, device=codes.device) for c, s in zip(mean_codes, specs)]
    first = Views(*(x[:, :1] for x in (split.input.images, split.input.masks, split.input.K, split.input.c2w,
                                         split.input.light)))  # the input view of each shape

    def input_iou(c: Tensor) -> Tensor:  # codes (N, *latent) -> (N,)
        probs = torch.sigmoid(render_group(decoder, c, first, render_cfg, tau))[:, 0]  # (N, S, S)
        return silhouette_iou(probs, first.masks[:, 0])
    sample_iou = torch.stack([input_iou(codes[j]) for j in range(k)])  # (K, N)
    ratio = sample_iou / input_iou(mean_codes).clamp(min=1e-6)  # (K, N)
    spread = relative_spread(codes.transpose(0, 1)) if k >= 2 else None  # (N,)
    return {**best_and_mean(vol), "mean_code_3d_iou": sum(mean_vol) / len(mean_vol),
            "code_spread": spread.mean().item() if spread is not None else None,
            "input_iou_best_of_k": sample_iou.max(0).values.mean().item(), "input_iou_mean_of_k": sample_iou.mean().item(),
            "samples_within_90pct_of_mean_input_iou": (ratio >= 0.9).float().mean().item(),
            "lowest_input_iou_ratio": ratio.min().item(), "per_shape_3d_iou": vol.T.tolist()}
