"""Rectified flow: the one place the time convention lives.

Convention (every other module imports it from here, none restates it):

    t in [0, 1],  t = 0 is noise,  t = 1 is data
    z_t = (1 - t) * z0 + t * z1            z0 = sigma * eps (source),  z1 = target code
    d z_t / d t = z1 - z0                  the velocity the network learns to predict

Sampling integrates dz/dt = v(z_t, t, cond) from t = 0 to t = 1 with plain Euler steps. The sampler
is a pure, differentiable function: Phase 1's sampling loss and Phase 2's end-to-end training
back-propagate through all of its steps.

A velocity function is anything callable as ``velocity_fn(z_t (B, *latent), t (B,), cond) -> like z_t``,
e.g. a :class:`flowsdf.models.velocity.VelocityNet` or :class:`flowsdf.models.dit.DiTVelocity`; cond
is whatever the net reads (its `prepare` of the conditioner's tokens), passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowsdf.fields import Predictor
from flowsdf.schema import ANY_BOOL, FRACTION, NON_NEGATIVE, POSITIVE, Rule, int_range, one_of

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class FlowConfig:
    """How the flow is sampled and trained.

    steps: Euler steps from noise to code (the seed uses 8).
    noise_scaling: scale the source noise by sigma = std of the target codes (off = sigma 1.0,
        kept for the ablation that shows the collapse).
    velocity_weight / sampling_weight: weights of the two Phase-1 loss terms. The seed's sampling
        term pulls every sample onto its target, so the flow learns a near-deterministic map; a
        flow that generates (conditional flow matching) sets it to 0.
    cond_dropout: share of training rows whose condition is replaced by the null condition (all
        zero tokens), so the same net also learns the unconditional velocity (classifier-free
        guidance; TRELLIS and point-e use 0.1). 0 = the seed.
    guidance: W of classifier-free guidance at sampling, v = v_null + W (v_cond - v_null); W = 1 is
        the plain conditional flow (v_cond, exactly: the null branch is not even evaluated).
    guidance_until: guidance only while t < this (t = 0 is noise): TRELLIS guides only the noisier
        part of the path; 1 = everywhere.
    time_sampling: the velocity term's t: "uniform" (the seed) or "logit_normal",
        t = sigmoid(logit_mean + logit_std * N(0, 1)) (a negative mean puts more weight near the
        noise, as TRELLIS's mean 1 does in its convention, where t = 1 is noise).
    time_shift: the sampler's grid t_i = u / (s - (s - 1) u) at u = i / steps: s > 1 takes
        smaller steps near the noise (TRELLIS samples with s = 3); 1 = uniform steps (the seed).
    temperature: sampling only: the source noise is drawn at sigma x temperature. 1 = the noise the
        flow was trained from (the seed); above 1 the samples of one picture spread wider, for some
        mean accuracy (docs/scaling.md measures the trade). Training never reads it.
    consistency / consistency_tries: sampling only, view frame: a sample whose silhouette from the
        input camera reaches less than `consistency` x the input-view IoU of the noiseless sample
        (source noise 0) is drawn again, up to `consistency_tries` draws in all, else it is the
        noiseless sample (flowsdf.consistency). 0 = off (the seed): every draw is kept.
    """

    steps: int = 8
    noise_scaling: bool = True
    velocity_weight: float = 1.0
    sampling_weight: float = 1.0
    cond_dropout: float = 0.0
    guidance: float = 1.0
    guidance_until: float = 1.0
    time_sampling: str = "uniform"
    logit_mean: float = -1.0
    logit_std: float = 1.0
    time_shift: float = 1.0
    temperature: float = 1.0
    consistency: float = 0.0
    consistency_tries: int = 4

    RULES = {"steps": int_range(1, 1000), "noise_scaling": ANY_BOOL, "velocity_weight": NON_NEGATIVE,
             "sampling_weight": NON_NEGATIVE, "cond_dropout": FRACTION, "guidance": NON_NEGATIVE,
             "guidance_until": FRACTION, "time_sampling": one_of("uniform", "logit_normal"),
             "logit_mean": Rule("a number", lambda v: True), "logit_std": POSITIVE,
             "time_shift": Rule("a number >= 1", lambda v: v >= 1),
             "temperature": Rule("a number from 0.1 to 10", lambda v: 0.1 <= v <= 10),
             "consistency": FRACTION, "consistency_tries": int_range(1, 100)}


def _expand_t(t: Tensor | float, like: Tensor) -> Tensor:
    """Turn a scalar or per-sample t of shape (B,) into something that broadcasts against `like`."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 1:
        t = t.reshape(-1, *([1] * (like.ndim - 1)))  # (B, 1, ...)
    return t


def interpolate(z0: Tensor, z1: Tensor, t: Tensor | float) -> Tensor:
    """Point on the straight path at time t: z_t = (1 - t) * z0 + t * z1 (t = 0 noise, t = 1 data).

    t may be a Python float, a 0-d tensor or a per-sample tensor of shape (B,).
    """
    t = _expand_t(t, z0)
    return (1.0 - t) * z0 + t * z1


def target_velocity(z0: Tensor, z1: Tensor) -> Tensor:
    """The constant velocity of the straight path from z0 to z1: d z_t / d t = z1 - z0."""
    return z1 - z0


def sample_noise(
    shape: Sequence[int],
    sigma: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Source sample z0 = sigma * eps, eps ~ N(0, I).

    With a generator the noise is drawn on the generator's device (CPU generators give the same
    numbers on every machine) and then moved to `device`.
    """
    draw_device = generator.device if generator is not None else device
    eps = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype)
    return (sigma * eps).to(device) if device is not None else sigma * eps


def time_grid(steps: int, shift: float = 1.0) -> Tensor:
    """The Euler sampler's times t_0 = 0 < ... < t_steps = 1, (steps + 1,) float64.

    Uniform (shift 1): t_i = i * (1 / steps). With shift s > 1: t_i = u / (s - (s - 1) u) at
    u = i / steps, smaller steps near t = 0 (the noise), where the path turns most.
    """
    u = torch.arange(steps + 1, dtype=torch.float64) * (1.0 / steps)  # (S + 1,)
    u[-1] = 1.0
    return u if shift == 1.0 else u / (shift - (shift - 1.0) * u)


def step_times(steps: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
               shift: float = 1.0) -> Tensor:
    """The left end of each Euler step, (steps,): computed in float64 and then rounded, so every
    sampler sees the very same times."""
    return time_grid(steps, shift)[:-1].to(device=device, dtype=dtype)


def euler_sample(
    velocity_fn: VelocityFn,
    z0: Tensor,
    cond,
    steps: int = 8,
    return_trajectory: bool = False,
    shift: float = 1.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate dz/dt = velocity_fn(z, t, cond) from t = 0 (z0) to t = 1 with `steps` Euler steps
    on `time_grid(steps, shift)`.

    Differentiable: no no_grad here, so a loss on the result reaches the velocity net and cond.
    Callers that only sample use the inference sampler (flowsdf.fast_sampler), which equals this.

    Returns z1 (B, *latent), or (z1, trajectory) with trajectory (steps + 1, B, *latent) holding z
    at each grid time (trajectory[0] is z0, trajectory[-1] is z1).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = time_grid(steps, shift).tolist()
    z = z0  # (B, *latent)
    states = [z]
    for i in range(steps):
        # dt as 1 / steps on the uniform grid (the seed's arithmetic, bit for bit), else the gap.
        dt = 1.0 / steps if shift == 1.0 else grid[i + 1] - grid[i]
        t = torch.full((z.shape[0],), grid[i], dtype=z.dtype, device=z.device)  # (B,)
        z = z + dt * velocity_fn(z, t, cond)  # (B, *latent)
        if return_trajectory:
            states.append(z)
    if return_trajectory:
        return z, torch.stack(states)  # (B, *latent), (steps + 1, B, *latent)
    return z


def drop_condition(tokens: Tensor, keep: Tensor) -> Tensor:
    """Condition tokens (B, N, C) with the rows where keep (B,) is False replaced by the null
    condition (zeros): classifier-free guidance's condition dropout."""
    return tokens * keep.to(tokens.dtype).view(-1, *([1] * (tokens.ndim - 1)))


def guided_velocity(velocity_fn: VelocityFn, null_cond, weight: float, until: float = 1.0) -> VelocityFn:
    """Classifier-free guidance: v = v(z, t, null) + W (v(z, t, cond) - v(z, t, null)) where t < until,
    the conditional velocity elsewhere. W = 1 returns velocity_fn itself (exactly the conditional flow)."""
    if weight == 1.0:
        return velocity_fn

    def guided(z: Tensor, t: Tensor, cond) -> Tensor:
        v_c = velocity_fn(z, t, cond)  # (B, *latent)
        if float(t[0]) >= until:
            return v_c
        v_u = velocity_fn(z, t, null_cond)  # (B, *latent)
        return v_u + weight * (v_c - v_u)

    return guided


@dataclass
class ObjectiveNoise:
    """The random draws of one `flow_loss` over a batch.

    Drawn for the whole batch first, so that a share of its rows (one process of several) sees
    exactly the numbers one process would: `rows` takes that share.
    """

    z0_velocity: Tensor  # (B, *latent) source noise of the velocity term
    t: Tensor  # (B,) its times in [0, 1)
    z0_sampling: Tensor  # (B, *latent) source noise of the sampling term
    keep: Tensor | None = None  # (B,) bool: rows that keep their condition (None: all; no dropout)

    def rows(self, part: slice) -> "ObjectiveNoise":
        keep = None if self.keep is None else self.keep[part]
        return ObjectiveNoise(self.z0_velocity[part], self.t[part], self.z0_sampling[part], keep)


def draw_objective_noise(z1: Tensor, sigma: float, generator: torch.Generator | None = None,
                         config: FlowConfig | None = None) -> ObjectiveNoise:
    """The draws of `flow_loss` for target codes z1 (B, *latent): velocity noise, times, sampling
    noise, and (config.cond_dropout > 0) which rows keep their condition. With the seed's settings
    the draws are exactly the seed's (nothing more is drawn)."""
    config = config or FlowConfig()
    B, dev = z1.shape[0], z1.device
    draw_device = generator.device if generator is not None else dev
    z0_v = sample_noise(z1.shape, sigma, generator, dev, z1.dtype)  # (B, *latent)
    if config.time_sampling == "uniform":
        t = torch.rand(B, generator=generator, device=draw_device, dtype=z1.dtype).to(dev)  # (B,)
    else:  # logit-normal
        logits = torch.randn(B, generator=generator, device=draw_device, dtype=z1.dtype)  # (B,)
        t = torch.sigmoid(config.logit_mean + config.logit_std * logits).to(dev)  # (B,)
    z0_s = sample_noise(z1.shape, sigma, generator, dev, z1.dtype)  # (B, *latent)
    keep = None
    if config.cond_dropout > 0:
        keep = (torch.rand(B, generator=generator, device=draw_device) >= config.cond_dropout).to(dev)  # (B,)
    return ObjectiveNoise(z0_v, t, z0_s, keep)


def velocity_loss(velocity_fn: VelocityFn, z1: Tensor, cond: Tensor, z0: Tensor, t: Tensor) -> Tensor:
    """Rectified-flow objective: MSE(v(z_t, t, cond), z1 - z0) at z_t = (1 - t) z0 + t z1."""
    v_pred = velocity_fn(interpolate(z0, z1, t), t, cond)  # (B, *latent)
    return F.mse_loss(v_pred, target_velocity(z0, z1))


def sampling_loss(velocity_fn: VelocityFn, z1: Tensor, cond: Tensor, z0: Tensor, steps: int = 8) -> Tensor:
    """MSE between the `steps`-step Euler sample from z0 and the target code z1.

    Back-propagates through the whole integration. The velocity loss alone teaches the field only
    on average; this term makes the few-step sampler itself land on the targets.
    """
    return F.mse_loss(euler_sample(velocity_fn, z0, cond, steps=steps), z1)


def flow_loss(
    velocity_fn: VelocityFn, z1: Tensor, cond: Tensor, noise: ObjectiveNoise, config: FlowConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Phase 1's objective: weighted velocity + sampling MSE -> (total, detached per-term losses).

    The terms stay tensors (no .item()) so logging them does not force a device sync every step.
    """
    lv = velocity_loss(velocity_fn, z1, cond, noise.z0_velocity, noise.t)
    if config.sampling_weight > 0:
        ls = sampling_loss(velocity_fn, z1, cond, noise.z0_sampling, config.steps)
    else:  # conditional flow matching alone: no integration to back-propagate through
        ls = torch.zeros((), device=z1.device)
    total = config.velocity_weight * lv + config.sampling_weight * ls
    return total, {"velocity": lv.detach(), "sampling": ls.detach()}


def noise_scale(codes: Tensor) -> float:
    """Source-noise scale sigma: the std over all entries of the target codes (N, D).

    Why: 128-d unit noise has norm ~ sqrt(128) = 11.3, while trained SDF codes have norm ~ 0.42.
    Starting that far from the data, an 8-step flow cannot travel the distance precisely and the
    samples collapse toward the mean (an empty code); matching the noise to the codes' spread fixed
    this in the seed (cosine(sample, target) 0.08 -> 0.95). Store sigma with the checkpoint; with
    scaling switched off callers pass sigma = 1.0.
    """
    if codes.numel() < 2:
        raise ValueError("noise_scale needs at least two code entries to measure a std")
    sigma = codes.detach().float().std().item()
    if not (sigma > 0.0 and sigma < float("inf")):
        raise ValueError(f"target codes have a degenerate std ({sigma}); cannot scale the noise")
    return sigma


def seeded_noise(seeds: Sequence[int], latent_shape: Sequence[int], sigma: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Source noise (B, *latent_shape), row i from a CPU generator seeded with seeds[i]: a row's
    noise, hence its code, depends only on its seed, not on its position in a batch or the device."""
    rows = [sample_noise(tuple(latent_shape), sigma, torch.Generator().manual_seed(s), "cpu", torch.float32)
            for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)  # (B, *latent)


def sample_latents(
    velocity_fn: VelocityFn,
    cond: Tensor,
    latent_shape: Sequence[int],
    sigma: float,
    steps: int = 8,
    seed: int | Sequence[int] | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sample one latent code per row of cond (B, ...) with the reference sampler (differentiable).

    seed: int -> every row starts from the noise of that seed; a sequence of B ints -> row i uses
    seed[i] (`seeded_noise`: K samples of one image = cond repeated K times with K seeds); None ->
    fresh noise from torch's global generator.

    Returns (B, *latent_shape), or with return_trajectory also (steps + 1, B, *latent_shape).
    """
    batch = cond.shape[0]
    if seed is None:
        z0 = sample_noise((batch, *latent_shape), sigma, None, cond.device, cond.dtype)  # (B, *latent)
    else:
        seeds = [seed] * batch if isinstance(seed, int) else list(seed)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} conditions")
        z0 = seeded_noise(seeds, latent_shape, sigma, cond.device, cond.dtype)  # (B, *latent)
    return euler_sample(velocity_fn, z0, cond, steps=steps, return_trajectory=return_trajectory)


def flow_predictor(conditioner: nn.Module, velocity: nn.Module, sigma: float, steps: int,
                   latent_shape: Sequence[int]) -> Predictor:
    """image -> conditioner -> `steps` Euler steps from sigma-scaled noise -> code (differentiable)."""

    def predict(images: Tensor, gen: torch.Generator) -> Tensor:
        cond = velocity.prepare(conditioner(images))  # the condition as the net reads it, once for all steps
        z0 = sample_noise((images.shape[0], *latent_shape), sigma, gen, images.device)  # (B, *latent)
        return euler_sample(velocity, z0, cond, steps=steps)  # (B, *latent)

    return predict
