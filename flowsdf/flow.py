"""Rectified flow: the one place the time convention lives.

Convention (every other module imports it from here, none restates it):

    t in [0, 1],  t = 0 is noise,  t = 1 is data
    z_t = (1 - t) * z0 + t * z1            z0 = sigma * eps (source),  z1 = target code
    d z_t / d t = z1 - z0                  the velocity the network learns to predict

Sampling integrates dz/dt = v(z_t, t, cond) from t = 0 to t = 1 with plain Euler steps. The sampler
is a pure, differentiable function: Phase 1's sampling loss and Phase 2's end-to-end training
back-propagate through all of its steps.

A velocity function is anything callable as
``velocity_fn(z_t (B, D), t (B,), cond (B, C)) -> (B, D)``,
e.g. a :class:`flowsdf.models.velocity.VelocityNet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the models import nothing from here
    from flowsdf.models.conditioner import ImageConditioner
    from flowsdf.models.velocity import VelocityNet

VelocityFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class FlowConfig:
    """How the flow is sampled and trained.

    steps: Euler steps from noise to code (the seed uses 8).
    noise_scaling: scale the source noise by sigma = std of the target codes (off = sigma 1.0,
        kept for the ablation that shows the collapse).
    velocity_weight / sampling_weight: weights of the two Phase-1 loss terms.
    """

    steps: int = 8
    noise_scaling: bool = True
    velocity_weight: float = 1.0
    sampling_weight: float = 1.0


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


def _uniform_t(batch: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    draw_device = generator.device if generator is not None else like.device
    t = torch.rand(batch, generator=generator, device=draw_device, dtype=like.dtype)
    return t.to(like.device)


def euler_sample(
    velocity_fn: VelocityFn,
    z0: Tensor,
    cond: Tensor,
    steps: int = 8,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrate dz/dt = velocity_fn(z, t, cond) from t = 0 (z0) to t = 1 with `steps` Euler steps.

    Differentiable: no no_grad here, so a loss on the result reaches the velocity net and cond.
    Callers that only sample should wrap the call in ``torch.no_grad()`` themselves.

    Returns z1 (B, D), or (z1, trajectory) with trajectory (steps + 1, B, D) holding z at
    t = 0, 1/steps, ..., 1 (trajectory[0] is z0, trajectory[-1] is z1).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dt = 1.0 / steps
    z = z0  # (B, D)
    states = [z]
    for i in range(steps):
        t = torch.full((z.shape[0],), i * dt, dtype=z.dtype, device=z.device)  # (B,)
        z = z + dt * velocity_fn(z, t, cond)  # (B, D)
        if return_trajectory:
            states.append(z)
    if return_trajectory:
        return z, torch.stack(states)  # (B, D), (steps + 1, B, D)
    return z


def velocity_loss(
    velocity_fn: VelocityFn,
    z1: Tensor,
    cond: Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Rectified-flow objective: MSE(v(z_t, t, cond), z1 - z0), z0 = sigma * eps, t ~ U(0, 1)."""
    z0 = sample_noise(z1.shape, sigma, generator, z1.device, z1.dtype)  # (B, D)
    t = _uniform_t(z1.shape[0], generator, z1)  # (B,)
    z_t = interpolate(z0, z1, t)  # (B, D)
    v_pred = velocity_fn(z_t, t, cond)  # (B, D)
    return F.mse_loss(v_pred, target_velocity(z0, z1))


def sampling_loss(
    velocity_fn: VelocityFn,
    z1: Tensor,
    cond: Tensor,
    sigma: float,
    steps: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MSE between the `steps`-step Euler sample from fresh noise and the target code.

    Back-propagates through the whole integration. The velocity loss alone teaches the field only
    on average; this term makes the few-step sampler itself land on the targets.
    """
    z0 = sample_noise(z1.shape, sigma, generator, z1.device, z1.dtype)  # (B, D)
    z_hat = euler_sample(velocity_fn, z0, cond, steps=steps)  # (B, D)
    return F.mse_loss(z_hat, z1)


def flow_loss(
    velocity_fn: VelocityFn,
    z1: Tensor,
    cond: Tensor,
    sigma: float,
    config: FlowConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Phase-1 loss: weighted velocity + sampling MSE -> (total, detached per-term losses).

    The terms stay tensors (no .item()) so logging them does not force a device sync every step.
    """
    lv = velocity_loss(velocity_fn, z1, cond, sigma, generator)
    ls = sampling_loss(velocity_fn, z1, cond, sigma, config.steps, generator)
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


def sample_latents(
    velocity_fn: VelocityFn,
    cond: Tensor,
    latent_dim: int,
    sigma: float,
    steps: int = 8,
    seed: int | list[int] | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sample one latent code per row of cond (B, C).

    seed: int -> every row starts from the noise of that seed, so a row's code depends only on its
    image and the seed (not on its position in the batch); list of B ints -> row i uses seed[i]
    (K samples of one image = cond repeated K times with K seeds); None -> fresh noise from torch's
    global generator. Noise is drawn with a CPU generator per row, so a seed gives the same code on
    any device, then moved to cond's device.

    Not wrapped in no_grad: callers sampling for inference should do that themselves.
    Returns (B, latent_dim), or with return_trajectory also (steps + 1, B, latent_dim).
    """
    batch = cond.shape[0]
    if seed is None:
        z0 = sample_noise((batch, latent_dim), sigma, None, cond.device, cond.dtype)  # (B, D)
    else:
        seeds = [seed] * batch if isinstance(seed, int) else list(seed)
        if len(seeds) != batch:
            raise ValueError(f"got {len(seeds)} seeds for a batch of {batch} conditions")
        gens = [torch.Generator().manual_seed(s) for s in seeds]  # CPU: same numbers on any device
        rows = [sample_noise((latent_dim,), sigma, g, "cpu", torch.float32) for g in gens]
        z0 = torch.stack(rows).to(device=cond.device, dtype=cond.dtype)  # (B, D)
    return euler_sample(velocity_fn, z0, cond, steps=steps, return_trajectory=return_trajectory)


def flow_predictor(conditioner: ImageConditioner, velocity: VelocityNet, sigma: float, steps: int) -> Callable[[Tensor, torch.Generator], Tensor]:
    """image -> conditioner -> `steps` Euler steps from sigma-scaled noise -> code (differentiable)."""

    def predict(images: Tensor, gen: torch.Generator) -> Tensor:
        cond = conditioner(images)  # (B, C)
        z0 = sample_noise((images.shape[0], velocity.config.latent_dim), sigma, gen, images.device)  # (B, D)
        return euler_sample(velocity, z0, cond, steps=steps)  # (B, D)

    return predict
