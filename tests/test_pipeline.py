import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow, build_stage1
from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError
from flowsdf.flow import flow_predictor
from flowsdf.pipeline import FlowSDF


@pytest.fixture(scope="module")
def data(tiny_data_dir):
    return dataset.load(tiny_data_dir)


def test_flow_codes_equal_the_training_predictor_on_the_checkpoint(tiny_flow_run, tiny_cfg, data):
    # Reference built without the pipeline: the training code's own modules and predictor.
    cond, vel = build_flow(tiny_cfg)
    _, dec = build_stage1(tiny_cfg)
    meta = checkpoint.load(runs.checkpoint_path(tiny_flow_run, "phase2"), {"conditioner": cond, "velocity": vel, "decoder": dec})
    predict = flow_predictor(cond.eval(), vel.eval(), meta["sigma"], tiny_cfg.flow.steps, tiny_cfg.decoder.latent_shape)
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    images = data.train.input.images[:, 0]  # (N, 3, S, S)
    result = pipe(images, samples=2, seed=5)
    assert result.codes.shape == (len(images), 2, *tiny_cfg.decoder.latent_shape)
    with torch.no_grad():
        for i in range(len(images)):
            for k in range(2):  # sample k of every picture starts from the noise of seed 5 + k
                ref = predict(images[i : i + 1], torch.Generator().manual_seed(5 + k))[0]
                torch.testing.assert_close(result.codes[i, k], ref, rtol=1e-5, atol=1e-6)
    assert pipe.sigma == meta["sigma"]


def test_same_seed_same_codes_other_seed_other_codes(tiny_flow_run, data):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    images = data.train.input.images[:2, 0]
    a, b, c = pipe(images, samples=3, seed=1).codes, pipe(images, samples=3, seed=1).codes, pipe(images, samples=3, seed=2).codes
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not a.requires_grad and a.grad_fn is None  # inference: no autograd graph kept (callers call .numpy())
    # A code depends on its picture and seed only, not on the batch it came in.
    torch.testing.assert_close(pipe(images[1:2], samples=3, seed=1).codes[0], a[1], rtol=1e-5, atol=1e-6)


def test_zero_velocity_returns_exactly_the_scaled_noise(tiny_flow_run, data):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    with torch.no_grad():
        for p in pipe.velocity.parameters():
            p.zero_()
    result = pipe(data.train.input.images[:1, 0], samples=2, seed=7, trajectory=True)
    for k in range(2):
        eps = torch.randn(pipe.latent_shape[0], generator=torch.Generator().manual_seed(7 + k))
        assert torch.equal(result.codes[0, k], pipe.sigma * eps)
    assert pipe.sigma != 1.0  # the check above would not tell a predictor that ignored sigma otherwise
    assert result.trajectory.shape == (pipe.cfg.flow.steps + 1, 1, 2, pipe.latent_shape[0])
    assert torch.equal(result.trajectory[0], result.codes)  # nothing moves without a velocity


def test_temperature_scales_the_source_noise_and_nothing_else(tiny_flow_run, data):
    still, hot = FlowSDF.from_run(tiny_flow_run, "flow", "cpu"), FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    hot.cfg.flow.temperature = 1.5
    for pipe in (still, hot):
        with torch.no_grad():
            for p in pipe.velocity.parameters():
                p.zero_()
    image = data.train.input.images[:1, 0]
    # No velocity: the sample is its source noise, drawn at sigma x temperature.
    torch.testing.assert_close(hot(image, samples=2, seed=3).codes, 1.5 * still(image, samples=2, seed=3).codes,
                               rtol=1e-6, atol=0)
    still.cfg.flow.temperature = 1.5  # changed after sampling: the next samples use it, not a cached sampler
    torch.testing.assert_close(still(image, samples=2, seed=3).codes, hot(image, samples=2, seed=3).codes, rtol=0, atol=0)
    trained, warm = FlowSDF.from_run(tiny_flow_run, "flow", "cpu"), FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    warm.cfg.flow.temperature = 1.5
    assert trained.cfg.flow.temperature == 1.0  # the default: the noise the flow was trained from
    assert not torch.allclose(warm(image, seed=3).codes, trained(image, seed=3).codes)


def test_cnn_model_gives_the_encoder_codes_for_every_sample(tiny_flow_run, tiny_cfg, data):
    enc, dec = build_stage1(tiny_cfg)
    checkpoint.load(runs.checkpoint_path(tiny_flow_run, "stage1"), {"encoder": enc, "decoder": dec})
    pipe = FlowSDF.from_run(tiny_flow_run, "cnn", "cpu")
    images = data.train.input.images[:, 0]
    codes = pipe(images, samples=3).codes
    with torch.no_grad():
        ref = enc.eval()(images)
    for k in range(3):
        torch.testing.assert_close(codes[:, k], ref)


def test_flow_steps_end_at_the_sampled_code_and_silhouettes_match_the_renderer(tiny_flow_run, data):
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    views = data.train.input
    latents, sils = pipe.flow_steps(views.images[:, 0], views.K[:, 0], views.c2w[:, 0], seed=3)
    T = pipe.cfg.flow.steps + 1
    assert latents.shape[:2] == (T, len(data.train)) and sils.shape == (T, len(data.train), 16, 16)
    torch.testing.assert_close(latents[-1], pipe(views.images[:, 0], seed=3).codes[:, 0])
    assert ((sils >= 0) & (sils <= 1)).all()
    # The no-scaling ablation loads too, with sigma 1 and the Stage-1 decoder's temperature.
    off = FlowSDF.from_run(tiny_flow_run, "flow-noscale", "cpu")
    assert off.sigma == 1.0 and off.tau == pipe.cfg.stage1.tau_end


def test_pictures_of_any_form_become_model_input(tiny_flow_run, tmp_path):
    pipe = FlowSDF.from_run(tiny_flow_run, "cnn", "cpu")
    S = pipe.image_size
    rgba = np.zeros((30, 60, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent on the left half
    rgba[:, 30:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "wide.png")
    Image.fromarray(np.full((S, S), 128, np.uint8), "L").save(tmp_path / "grey.png")
    batch, _ = pipe.load_images([tmp_path / "wide.png", Image.open(tmp_path / "grey.png")], prepare=False)
    assert batch.shape == (2, 3, S, S)
    wide = batch[0]
    # Padded to a square on the black background: top and bottom quarters are black.
    assert wide[:, : S // 4 - 1].max() == 0 and wide[:, -(S // 4 - 1) :].max() == 0
    mid = S // 2
    assert wide[0, mid, S - 2] > 0.9 and wide[0, mid, 1] == 0  # transparent half composited on black
    torch.testing.assert_close(batch[1], torch.full((3, S, S), 128 / 255))


def test_pictures_are_prepared_like_the_training_renders_unless_asked_not_to(tiny_flow_run, tmp_path):
    """A grey disc off-centre on white: prepared, it is centred on black; not prepared, on white."""
    pipe = FlowSDF.from_run(tiny_flow_run, "cnn", "cpu")
    S = pipe.image_size
    yy, xx = np.mgrid[:120, :120]
    picture = np.full((120, 120, 3), 255, np.uint8)
    picture[(yy - 40) ** 2 + (xx - 80) ** 2 < 25**2] = (90, 120, 160)
    Image.fromarray(picture).save(tmp_path / "disc.png")
    result = pipe(tmp_path / "disc.png")
    image, mask = result.images[0], result.prepared[0].mask
    assert result.prepared[0].prepared and result.prepared[0].background.kind == "white"
    assert image[:, 0, 0].max() == 0 and image[:, -1, -1].max() == 0  # corners on black
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert abs(ys.float().mean().item() - (S - 1) / 2) < 1.0 and abs(xs.float().mean().item() - (S - 1) / 2) < 1.0
    plain = pipe(tmp_path / "disc.png", prepare=False)
    assert not plain.prepared[0].prepared and plain.images[0, :, 0, 0].min() == 1.0  # white corners kept
    assert pipe(plain.images).prepared is None  # a tensor is model input already


def test_runs_it_cannot_load_are_one_clear_error(tiny_flow_run, tiny_stage1_run, tmp_path):
    with pytest.raises(FlowSDFError, match="not a flowsdf run"):
        FlowSDF.from_run(tmp_path, "flow")
    with pytest.raises(FlowSDFError, match="unknown model"):
        FlowSDF.from_run(tiny_flow_run, "diffusion")
    with pytest.raises(FlowSDFError, match="no finished 'phase2'"):
        FlowSDF.from_run(tiny_stage1_run, "flow")
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    ckpt = runs.checkpoint_path(run, "stage1")
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(FlowSDFError):
        FlowSDF.from_run(run, "cnn")
