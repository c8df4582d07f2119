"""Classifier-free guidance, condition dropout, logit-normal times and a shifted time grid."""

import math

import pytest
import torch

from flowsdf.build import build_flow
from flowsdf.fast_sampler import FastSampler, ReferenceSampler
from flowsdf.flow import (
    FlowConfig,
    draw_objective_noise,
    drop_condition,
    euler_sample,
    guided_velocity,
    sample_noise,
    time_grid,
)


def test_condition_dropout_replaces_exactly_the_dropped_rows_with_the_null_condition():
    tokens = torch.rand(6, 3, 4) + 1.0  # no zero anywhere
    keep = torch.tensor([True, False, True, True, False, True])
    out = drop_condition(tokens, keep)
    assert torch.equal(out[keep], tokens[keep])
    assert torch.equal(out[~keep], torch.zeros(2, 3, 4))


def test_dropout_draws_the_documented_share_and_leaves_the_seeds_draws_alone():
    z1 = torch.zeros(20000, 2)
    noise = draw_objective_noise(z1, 0.5, torch.Generator().manual_seed(0), FlowConfig(cond_dropout=0.1))
    assert abs((~noise.keep).float().mean().item() - 0.1) < 0.01
    seed = draw_objective_noise(z1, 0.5, torch.Generator().manual_seed(0), FlowConfig())
    assert seed.keep is None
    gen = torch.Generator().manual_seed(0)  # the seed's own order of draws: noise, times, noise
    torch.testing.assert_close(seed.z0_velocity, sample_noise(z1.shape, 0.5, gen), rtol=0, atol=0)
    torch.testing.assert_close(seed.t, torch.rand(20000, generator=gen), rtol=0, atol=0)
    torch.testing.assert_close(seed.z0_sampling, sample_noise(z1.shape, 0.5, gen), rtol=0, atol=0)
    # The dropout draws come after, so the other draws stay the seed's.
    assert torch.equal(noise.z0_velocity, seed.z0_velocity) and torch.equal(noise.t, seed.t)


def test_logit_normal_times_have_the_configured_logit_distribution():
    cfg = FlowConfig(time_sampling="logit_normal", logit_mean=-1.0, logit_std=0.5)
    t = draw_objective_noise(torch.zeros(40000, 1), 1.0, torch.Generator().manual_seed(1), cfg).t
    logits = torch.log(t / (1 - t))
    assert abs(logits.mean().item() + 1.0) < 0.02 and abs(logits.std().item() - 0.5) < 0.02


def constant_fields():
    """A velocity that is `cond` itself: v(z, t, c) = c; the null condition gives the null velocity."""
    return lambda z, t, c: c.expand_as(z)


def test_guidance_mixes_the_two_velocities_as_documented():
    v = constant_fields()
    cond, null = torch.full((2, 3), 2.0), torch.full((2, 3), 0.5)
    z, t = torch.zeros(2, 3), torch.zeros(2)
    for w in (0.0, 1.5, 3.0):
        torch.testing.assert_close(guided_velocity(v, null, w)(z, t, cond), null + w * (cond - null))
    assert guided_velocity(v, null, 1.0) is v  # W = 1: the conditional flow itself, exactly
    late = guided_velocity(v, null, 3.0, until=0.5)
    torch.testing.assert_close(late(z, torch.full((2,), 0.75), cond), cond)  # past `until`: unguided


def trained_like(tiny_cfg):
    conditioner, velocity = build_flow(tiny_cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in [*conditioner.parameters(), *velocity.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return conditioner.eval(), velocity.eval()


@pytest.mark.parametrize("guidance, until, shift", [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0), (3.0, 0.5, 1.0), (2.0, 1.0, 3.0)])
def test_the_fast_sampler_guides_and_shifts_like_the_reference(tiny_cfg, guidance, until, shift):
    conditioner, velocity = trained_like(tiny_cfg)
    tokens, z0 = conditioner(torch.rand(3, 3, 16, 16)).detach(), 0.1 * torch.randn(3, 128)
    fast = FastSampler(velocity, 0.1, 8, time_shift=shift, guidance_until=until)
    ref = ReferenceSampler(velocity, 0.1, 8, (128,), time_shift=shift, guidance_until=until)
    out, traj = fast(tokens, z0, trajectory=True, guidance=guidance)
    ref_out, ref_traj = ref(tokens, z0, trajectory=True, guidance=guidance)
    # Equal up to float rounding, which W amplifies: W (v_cond - v_null) is formed in another order.
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(traj, ref_traj, rtol=1e-5, atol=1e-5)
    if guidance == 1.0:  # exactly the plain conditional flow, with no guidance in it
        with torch.no_grad():
            torch.testing.assert_close(ref_out, euler_sample(velocity, z0, velocity.prepare(tokens), 8), rtol=0, atol=0)
    else:
        assert (out - fast(tokens, z0)).abs().max() > 1e-4  # guidance changes the samples


def test_shifted_grid_runs_from_noise_to_data_with_small_steps_near_the_noise():
    uniform, shifted = time_grid(8), time_grid(8, 3.0)
    assert uniform.tolist() == [i / 8 for i in range(9)]
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted.diff() > 0).all()
    assert shifted.diff()[0] < shifted.diff()[-1]  # finer near t = 0
    assert math.isclose(shifted[4].item(), 0.5 / (3 - 2 * 0.5))
