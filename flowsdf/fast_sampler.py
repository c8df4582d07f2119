"""Inference sampling of the flow: Euler steps with the per-step overhead taken out.

Every place that samples codes for inference (the pipeline, `reconstruct`, the viewer, evaluation)
goes through `make_sampler`. It returns a `FastSampler` for the MLP velocity net, and the
reference sampler (flowsdf.flow.euler_sample under inference mode) for a velocity net without a
fast path. Both give the same codes up to float rounding (tested).

Why a fast path: at batch 1 the MLP velocity net's arithmetic is tiny (~8 M multiply-adds per
step); the time goes to launching ~100 small ops per step. For fixed weights and step count, much
of that is constant:

- the step times are fixed (flow.step_times), so the time MLP's output for each is computed once;
- the conditioning vector of step i is time_i + cond_proj(cond), so the AdaLN modulations of
  all blocks (and the final layer) for all steps are one matrix product before the loop, instead
  of 7 small products per step;
- `1 + scale` is folded into the modulation bias, and `z + dt * v` into the output layer's
  weights, so each block is layer_norm, addcmul, linear, GELU, linear, addcmul.

Classifier-free guidance (flowsdf.flow.guided_velocity) runs the conditional and the null rows
of each guided step as one batch.

On CUDA, `CUDAGraphed` records a whole sampling call (conditioner included, if the caller wants)
for fixed input shapes into a CUDA graph and replays it: one launch instead of ~400.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from flowsdf.fields import Predictor
from flowsdf.flow import euler_sample, guided_velocity, sample_noise, seeded_noise, step_times, time_grid
from flowsdf.models.velocity import VelocityNet, timestep_embedding


class ReferenceSampler:
    """`steps` Euler steps of any velocity net from sigma-scaled noise, under inference mode.

    `time_shift` and `guidance_until` are flowsdf.flow.FlowConfig's (the grid of times; where
    classifier-free guidance applies); the guidance weight W is each call's.
    """

    def __init__(self, velocity: nn.Module, sigma: float, steps: int, latent_shape: Sequence[int],
                 time_shift: float = 1.0, guidance_until: float = 1.0):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.velocity, self.sigma, self.steps = velocity.eval(), sigma, steps
        self.latent_shape = tuple(latent_shape)
        self.time_shift, self.guidance_until = time_shift, guidance_until

    def noise(self, seeds: Sequence[int], device: torch.device | str) -> Tensor:
        """Source noise (B, *latent) of the given seeds, scaled by sigma (flow.seeded_noise)."""
        return seeded_noise(seeds, self.latent_shape, self.sigma, device)

    def __call__(self, cond: Tensor, z0: Tensor, trajectory: bool = False, cond_mask: Tensor | None = None,
                 guidance: float = 1.0) -> Tensor | tuple[Tensor, Tensor]:
        """Condition tokens (B, N, C) (cond_mask (B, N): True = a real token) and source noise z0
        (B, *latent) -> codes (B, *latent), and with `trajectory` the Euler states
        (steps + 1, B, *latent). `guidance` W: classifier-free guidance against the null condition
        (zero tokens); 1 = the plain conditional flow. No autograd; the results are ordinary
        tensors (copied out of inference mode), so callers may go on to optimise them."""
        with torch.inference_mode():
            prepared = self.velocity.prepare(cond, cond_mask)  # the condition, once
            null = self.velocity.prepare(torch.zeros_like(cond), cond_mask) if guidance != 1.0 else None
            out = self._sample(prepared, null, guidance, z0, trajectory)
        return tuple(x.clone() for x in out) if trajectory else out.clone()

    def _sample(self, cond, null, guidance: float, z0: Tensor, trajectory: bool) -> Tensor | tuple[Tensor, Tensor]:
        velocity = guided_velocity(self.velocity, null, guidance, self.guidance_until)
        return euler_sample(velocity, z0, cond, self.steps, return_trajectory=trajectory, shift=self.time_shift)


class FastSampler(ReferenceSampler):
    """The MLP velocity net's Euler steps with their constant parts computed once (module docstring).

    Reads the weights at construction: build a new one after the weights change.
    """

    def __init__(self, velocity: VelocityNet, sigma: float, steps: int = 8, time_shift: float = 1.0,
                 guidance_until: float = 1.0):
        super().__init__(velocity, sigma, steps, velocity.latent_shape, time_shift, guidance_until)
        v = self.velocity
        grid = time_grid(steps, time_shift).tolist()
        # Each step's dt, as euler_sample takes it (1 / steps on the uniform grid).
        self.dts = [1.0 / steps if time_shift == 1.0 else grid[i + 1] - grid[i] for i in range(steps)]
        self.times = grid[:-1]
        with torch.inference_mode():
            dev = next(v.parameters()).device
            t = step_times(steps, dev, shift=time_shift)  # (S,) the times euler_sample uses
            self.time_c = v.time_mlp(timestep_embedding(t, v.config.time_embed_dim))[:, None, :].clone()  # (S, 1, H)
            self.cond_w, self.cond_b = v.cond_proj.weight.clone(), v.cond_proj.bias.clone()
            self.in_w, self.in_b = v.input.weight.clone(), v.input.bias.clone()
            h = v.config.hidden
            # All modulation layers as one (H -> 3H * depth + 2H) product; "1 + scale" in the bias.
            mods = [blk.adaLN_modulation[-1] for blk in v.blocks] + [v.final.adaLN_modulation[-1]]
            self.mod_w = torch.cat([m.weight for m in mods])  # (M, H)
            bias = torch.cat([m.bias for m in mods]).clone()  # (M,)
            for i in range(len(v.blocks)):
                bias[i * 3 * h + h : i * 3 * h + 2 * h] += 1.0  # block i: shift, scale, gate
            bias[len(v.blocks) * 3 * h + h :] += 1.0  # final: shift, scale
            self.mod_b = bias
            self.mlps = [(b.mlp[0].weight.clone(), b.mlp[0].bias.clone(), b.mlp[2].weight.clone(), b.mlp[2].bias.clone())
                         for b in v.blocks]
            # z + dt * v in one product per step: the output layer scaled by that step's dt.
            self.out_w = [(v.final.linear.weight * dt).clone() for dt in self.dts]  # S x (D, H)
            self.out_b = [(v.final.linear.bias * dt).clone() for dt in self.dts]  # S x (D,)
        self.hidden, self.depth = h, len(v.blocks)

    def _sample(self, cond: Tensor, null: Tensor | None, guidance: float, z0: Tensor, trajectory: bool
                ) -> Tensor | tuple[Tensor, Tensor]:
        """cond (B, C) pooled (VelocityNet.prepare), null the same of zero tokens (guidance only), z0 (B, *latent)."""
        B, h, n = cond.shape[0], self.hidden, self.depth
        guided = null is not None
        both = torch.cat([cond, null]) if guided else cond  # (B or 2B, C): the conditional rows first
        c = self.time_c + F.linear(both, self.cond_w, self.cond_b)  # (S, B or 2B, H)
        mods = F.linear(F.silu(c), self.mod_w, self.mod_b)  # (S, B or 2B, M)
        z = z0.flatten(1)  # (B, D)
        states = [z]
        for i in range(self.steps):
            guide = guided and self.times[i] < self.guidance_until
            rows = 2 * B if guide else B
            parts = mods[i, :rows].split(h, dim=-1)  # 3 * depth + 2 tensors of (rows, H)
            zz = torch.cat([z, z]) if guide else z  # (rows, D)
            x = F.linear(zz, self.in_w, self.in_b)  # (rows, H)
            for j, (w1, b1, w2, b2) in enumerate(self.mlps):
                shift, scale1, gate = parts[3 * j : 3 * j + 3]
                y = torch.addcmul(shift, F.layer_norm(x, (h,), eps=1e-6), scale1)  # (rows, H)
                y = F.linear(F.gelu(F.linear(y, w1, b1), approximate="tanh"), w2, b2)  # (rows, H)
                x = torch.addcmul(x, gate, y)  # (rows, H)
            y = torch.addcmul(parts[3 * n], F.layer_norm(x, (h,), eps=1e-6), parts[3 * n + 1])  # (rows, H)
            if guide:  # dt * v for both conditions, mixed as v_null + W (v_cond - v_null)
                step = torch.addmm(self.out_b[i], y, self.out_w[i].t())  # (2B, D)
                z = z + step[B:] + guidance * (step[:B] - step[B:])  # (B, D)
            else:
                z = torch.addmm(z + self.out_b[i], y, self.out_w[i].t())  # (B, D) z + dt * v
            if trajectory:
                states.append(z)
        if trajectory:
            return z.view(z0.shape), torch.stack(states).view(-1, *z0.shape)  # (B, *latent), (S + 1, B, *latent)
        return z.view(z0.shape)  # (B, *latent)


def make_sampler(velocity: nn.Module, sigma: float, steps: int, latent_shape: Sequence[int], time_shift: float = 1.0,
                 guidance_until: float = 1.0) -> ReferenceSampler:
    """The inference sampler of a velocity net: the fast one where it exists, else the reference."""
    if isinstance(velocity, VelocityNet):
        return FastSampler(velocity, sigma, steps, time_shift, guidance_until)
    return ReferenceSampler(velocity, sigma, steps, latent_shape, time_shift, guidance_until)


def sampler_predictor(conditioner: nn.Module, sampler: ReferenceSampler, guidance: float = 1.0) -> Predictor:
    """The Predictor (images, generator) -> codes of a flow at inference: noise for the whole
    batch from the generator (as the training predictor draws it), then the inference sampler."""

    def predict(images: Tensor, gen: torch.Generator) -> Tensor:
        z0 = sample_noise((images.shape[0], *sampler.latent_shape), sampler.sigma, gen, images.device)  # (B, *latent)
        with torch.no_grad():
            cond = conditioner(images)
        return sampler(cond, z0, guidance=guidance)

    return predict


class CUDAGraphed:
    """A function of fixed-shape CUDA tensors recorded into a CUDA graph, then replayed.

    Recording follows PyTorch's recipe: warm up on a side stream, then capture. Calls copy their
    inputs into the recorded ones, replay, and return a copy of the output.
    """

    def __init__(self, fn: Callable[..., Tensor], *examples: Tensor):
        if not all(x.is_cuda for x in examples):
            raise ValueError("CUDA graphs need CUDA tensors")
        self.inputs = [x.clone() for x in examples]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *args: Tensor) -> Tensor:
        for static, x in zip(self.inputs, args, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.output.clone()
