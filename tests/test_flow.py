"""The rectified-flow convention, sampler and losses (flowsdf.flow)."""

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from flowsdf.flow import (
    FlowConfig,
    draw_objective_noise,
    euler_sample,
    flow_loss,
    interpolate,
    noise_scale,
    sample_latents,
    sample_noise,
    sampling_loss,
    step_times,
    target_velocity,
    velocity_loss,
)
from flowsdf.models.velocity import VelocityConfig, VelocityNet


def straight_field(z1: torch.Tensor):
    """The exact velocity field of straight paths ending at z1: v(z_t, t) = (z1 - z_t) / (1 - t)."""

    def field(z, t, cond):
        return (z1 - z) / (1.0 - t)[:, None]

    return field


def test_flow_config_defaults_follow_the_seed():
    cfg = FlowConfig()
    assert cfg.steps == 8 and cfg.noise_scaling


def test_interpolate_endpoints_and_midpoint():
    z0 = torch.zeros(3, 5)
    z1 = torch.full((3, 5), 4.0)
    assert torch.equal(interpolate(z0, z1, 0.0), z0)  # t = 0 is noise
    assert torch.equal(interpolate(z0, z1, 1.0), z1)  # t = 1 is data
    t = torch.tensor([0.0, 0.25, 1.0])
    expected = torch.tensor([0.0, 1.0, 4.0])[:, None].expand(3, 5)
    assert torch.allclose(interpolate(z0, z1, t), expected)


def test_time_derivative_of_path_is_target_velocity():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    t = torch.rand(4, generator=g).requires_grad_()
    z_t = interpolate(z0, z1, t)  # (4, 7)
    # Row b depends only on t[b], so d(sum over rows of column j)/dt[b] = d z_t[b, j] / d t[b].
    columns = [torch.autograd.grad(z_t[:, j].sum(), t, retain_graph=True)[0] for j in range(7)]
    dz_dt = torch.stack(columns, dim=1)  # (4, 7)
    assert torch.allclose(dz_dt, target_velocity(z0, z1), atol=1e-6)
    assert torch.allclose(target_velocity(z0, z1), z1 - z0)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_euler_exact_for_constant_velocity(steps):
    z0 = torch.randn(2, 6)
    v = torch.randn(2, 6)
    z1 = euler_sample(lambda z, t, c: v, z0, cond=torch.zeros(2, 1), steps=steps)
    assert torch.allclose(z1, z0 + v, atol=1e-6)


def test_euler_follows_straight_path_of_known_pair():
    steps = 8
    z0 = torch.tensor([[1.0, -2.0, 0.5]])
    z1 = torch.tensor([[3.0, 2.0, -1.5]])
    out, traj = euler_sample(straight_field(z1), z0, None, steps=steps, return_trajectory=True)
    assert traj.shape == (steps + 1, 1, 3)
    assert torch.equal(traj[0], z0)
    assert torch.allclose(traj[-1], z1, atol=1e-6)
    assert torch.equal(traj[-1], out)
    for k in range(steps + 1):  # every Euler state lies on the line at t = k / steps
        assert torch.allclose(traj[k], z0 + (k / steps) * (z1 - z0), atol=1e-6)


def test_euler_time_grid_starts_at_noise():
    seen = []

    def v_equals_t(z, t, c):
        seen.append(t.clone())
        return t[:, None].expand_as(z)

    n = 4
    z = euler_sample(v_equals_t, torch.zeros(2, 3), None, steps=n)
    # Left-endpoint Euler on dz/dt = t: sum_k (k/n)(1/n) = (n-1)/(2n).
    assert torch.allclose(z, torch.full((2, 3), (n - 1) / (2 * n)))
    assert [float(t[0]) for t in seen] == [0.0, 0.25, 0.5, 0.75]
    assert all(t.shape == (2,) for t in seen)


def test_euler_rejects_zero_steps():
    with pytest.raises(ValueError):
        euler_sample(lambda z, t, c: z, torch.zeros(1, 2), None, steps=0)


def test_sample_noise_scale_and_reproducibility():
    a = sample_noise((4000, 8), 0.3, torch.Generator().manual_seed(5))
    b = sample_noise((4000, 8), 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert abs(a.std().item() - 0.3) < 0.01
    assert abs(a.mean().item()) < 0.01


def test_noise_scale_is_std_of_all_entries():
    codes = torch.tensor([[1.0, -1.0], [1.0, -1.0]])  # unbiased std of [1, -1, 1, -1] = sqrt(4/3)
    assert noise_scale(codes) == pytest.approx(math.sqrt(4.0 / 3.0))
    wide = 0.42 / math.sqrt(128) * torch.randn(500, 128, generator=torch.Generator().manual_seed(0))
    assert noise_scale(wide) == pytest.approx(0.42 / math.sqrt(128), rel=0.02)
    with pytest.raises(ValueError):
        noise_scale(torch.ones(4, 3))


def test_losses_vanish_for_exact_field():
    z1 = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    field = straight_field(z1)
    noise = draw_objective_noise(z1, 0.5, torch.Generator().manual_seed(2))
    assert velocity_loss(field, z1, None, noise.z0_velocity, noise.t).item() < 1e-10
    assert sampling_loss(field, z1, None, noise.z0_sampling, steps=8).item() < 1e-10
    total, parts = flow_loss(field, z1, None, noise, FlowConfig())
    assert total.item() < 1e-10 and set(parts) == {"velocity", "sampling"}


def test_velocity_loss_of_zero_field_is_noise_power():
    # With z1 = 0 and v = 0 the loss is mean(z0^2) = sigma^2 in expectation.
    z1 = torch.zeros(4096, 16)
    zero = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    noise = draw_objective_noise(z1, 0.2, torch.Generator().manual_seed(3))
    loss = velocity_loss(zero, z1, None, noise.z0_velocity, noise.t)
    assert loss.item() == pytest.approx(0.04, rel=0.03)


def test_objective_noise_rows_are_the_batch_draws_of_those_rows():
    z1 = torch.zeros(6, 4)
    noise = draw_objective_noise(z1, 0.3, torch.Generator().manual_seed(0))
    assert noise.z0_velocity.shape == noise.z0_sampling.shape == (6, 4) and noise.t.shape == (6,)
    assert ((noise.t >= 0) & (noise.t < 1)).all()
    part = noise.rows(slice(2, 5))
    assert torch.equal(part.z0_velocity, noise.z0_velocity[2:5]) and torch.equal(part.t, noise.t[2:5])
    assert torch.equal(part.z0_sampling, noise.z0_sampling[2:5])
    assert not torch.equal(noise.z0_velocity, noise.z0_sampling)  # two separate draws


def test_step_times_are_the_left_ends_of_the_steps():
    assert step_times(4).tolist() == [0.0, 0.25, 0.5, 0.75]
    assert step_times(3, dtype=torch.float64).tolist() == [i * (1.0 / 3) for i in range(3)]


def test_sample_latents_reproducible_by_seed():
    torch.manual_seed(0)
    net = VelocityNet(VelocityConfig(hidden=16, depth=2), 8, 4)
    with torch.no_grad():  # leave the zero init so the net actually moves the noise
        net.final.linear.weight.normal_(0.0, 0.1)
    cond = torch.randn(1, 4).expand(3, 4)
    with torch.no_grad():
        a = sample_latents(net, cond, (8,), sigma=0.5, steps=4, seed=[1, 1, 2])
        b = sample_latents(net, cond, (8,), sigma=0.5, steps=4, seed=[1, 1, 2])
        c = sample_latents(net, cond, (8,), sigma=0.5, steps=4, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(a[0], a[1])  # same seed, same image -> same code
    assert not torch.allclose(a[0], a[2])  # different seed -> different code
    assert torch.equal(c[0], c[1]) and torch.equal(c[1], c[2])  # an int seed is per row
    with pytest.raises(ValueError):
        sample_latents(net, cond, (8,), sigma=0.5, seed=[1, 2])


def test_sample_latents_noise_comes_from_cpu_generator_per_seed():
    cond = torch.zeros(2, 1)
    zero = lambda z, t, c: torch.zeros_like(z)  # noqa: E731
    z, traj = sample_latents(zero, cond, (6,), 0.3, steps=2, seed=[11, 12], return_trajectory=True)
    eps = [torch.randn(6, generator=torch.Generator().manual_seed(s)) for s in (11, 12)]
    expected = 0.3 * torch.stack(eps)
    assert torch.allclose(z, expected)
    assert traj.shape == (3, 2, 6)


def _perturb_zero_init(net: VelocityNet, std: float = 0.02) -> None:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, std, generator=torch.Generator().manual_seed(len(name)))


def test_sampling_loss_backpropagates_through_integration():
    torch.manual_seed(0)
    net = VelocityNet(VelocityConfig(hidden=16, depth=2), 8, 4)
    z1 = torch.randn(5, 8)
    cond = torch.randn(5, 4, requires_grad=True)

    # At init only the zero-initialised output layer can learn: that is how training starts.
    z0 = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    sampling_loss(net, z1, cond, z0, steps=4).backward()
    assert net.final.linear.weight.grad.abs().sum() > 0

    net.zero_grad()
    cond.grad = None
    _perturb_zero_init(net)
    sampling_loss(net, z1, cond, z0, steps=4).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert cond.grad.abs().sum() > 0  # the conditioner upstream receives a gradient too


@functools.lru_cache(maxsize=None)
def _train_tiny_flow(sigma_from_targets: bool) -> tuple[float, float, torch.Tensor]:
    """A few fixed 32-d codes of norm ~0.23, one one-hot condition each; 200 Adam steps."""
    torch.manual_seed(0)
    targets = 0.04 * torch.randn(4, 32)
    cond = torch.eye(4, 16)
    # hidden must be >= latent_dim: a narrower residual stream cannot cancel all noise directions.
    net = VelocityNet(VelocityConfig(hidden=64, depth=2, mlp_ratio=2, time_embed_dim=64), 32, 16)
    sigma = noise_scale(targets) if sigma_from_targets else 1.0
    cfg = FlowConfig()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    batch_z, batch_c = targets.repeat(8, 1), cond.repeat(8, 1)  # 8 noise draws per code per step
    losses = []
    # Matrices this small gain nothing from intra-op threads, and on a busy 2-core machine the
    # threads fight other processes (measured: 3.5 s with one thread, 33 s with two under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(200):
            loss, _ = flow_loss(net, batch_z, batch_c, draw_objective_noise(batch_z, sigma, g), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        z = sample_latents(net, cond, (32,), sigma, steps=cfg.steps, seed=[100, 101, 102, 103])
    cos = F.cosine_similarity(z, targets, dim=-1)
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10, cos


def test_tiny_flow_training_reaches_targets_with_noise_scaling():
    first, last, cos = _train_tiny_flow(sigma_from_targets=True)
    assert last < 0.2 * first
    assert cos.min().item() > 0.9, cos


def test_noise_scaling_beats_unit_noise():
    _, _, cos_scaled = _train_tiny_flow(sigma_from_targets=True)
    _, _, cos_unit = _train_tiny_flow(sigma_from_targets=False)
    assert cos_scaled.mean().item() > cos_unit.mean().item() + 0.1
