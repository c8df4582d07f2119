import pytest
import torch

from flowsdf.consistency import RETRY_SEED_STRIDE, consistent_draws, retry_seeds
from flowsdf.data import dataset
from flowsdf.data.images import foreground_mask
from flowsdf.errors import FlowSDFError
from flowsdf.fast_sampler import sampler_predictor
from flowsdf.metrics.samples import pairwise_distance
from flowsdf.metrics.silhouette import silhouette_iou
from flowsdf.pipeline import FlowSDF

# SCORES[j, row]: the agreement of draw j of each row (a draw's code is (j, row)).
SCORES = torch.tensor([[0.95, 0.50, 0.20, 0.60],
                       [0.10, 0.92, 0.30, 0.70],
                       [0.99, 0.99, 0.40, 0.65]])


def scripted_draws():
    asked = []

    def draw(j, rows):
        asked.append((j, rows.tolist()))
        return torch.stack([torch.tensor([float(j), float(r)]) for r in rows.tolist()])  # (R, 2)

    def agreement(codes, rows):
        return SCORES[codes[:, 0].long(), rows]

    return draw, agreement, asked


FALLBACK = torch.full((4, 2), -1.0)  # each row's code of last resort


def test_a_row_keeps_its_first_draw_that_reaches_the_bar_else_its_fallback():
    draw, agreement, asked = scripted_draws()
    reference = torch.tensor([1.0, 1.0, 0.3, 1.0])  # the bar is 0.9 x each row's own reference
    codes, used = consistent_draws(draw, agreement, reference, 0.9, tries=3, fallback=FALLBACK)
    # Row 0 reaches at draw 0; row 1 at draw 1 (not its later, higher draw 2); row 2's bar is 0.27,
    # reached at draw 1; row 3 never reaches 0.9 (its best, 0.70, does not count) and takes its fallback.
    assert codes.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 2.0], [-1.0, -1.0]]
    assert used.tolist() == [1, 2, 2, 3]
    assert asked == [(0, [0, 1, 2, 3]), (1, [1, 2, 3]), (2, [3])]  # only rows short of their bar are drawn again


def test_one_try_keeps_the_plain_draws():
    draw, agreement, asked = scripted_draws()
    codes, used = consistent_draws(draw, agreement, torch.full((4,), 0.5), 0.9, tries=1, fallback=FALLBACK)
    assert codes[:, 0].tolist() == [0.0, 0.0, -1.0, 0.0] and used.tolist() == [1] * 4 and len(asked) == 1
    with pytest.raises(ValueError):
        consistent_draws(draw, agreement, torch.ones(4), 0.9, tries=0, fallback=FALLBACK)


def test_retry_seeds_start_at_the_plain_seeds_and_never_meet_another_samples():
    seeds = [5, 6, 7]
    assert retry_seeds(seeds, 0) == seeds
    tries = [retry_seeds(seeds, j) for j in range(4)]
    flat = [s for t in tries for s in t]
    assert len(set(flat)) == len(flat)
    assert all(s - 5 >= RETRY_SEED_STRIDE for t in tries[1:] for s in t)  # beyond any seed + k of a call with K < stride


@pytest.fixture(scope="module")
def images(tiny_data_dir):
    return dataset.load(tiny_data_dir).train.input.images[:2, 0]  # (2, 3, S, S)


def view_pipe(run, consistency: float, tries: int = 3) -> FlowSDF:
    """The tiny run's flow, read as a view-frame model (its input camera is then C0), seen through
    a stand-in renderer: the tiny world-frame decoder shows nothing from C0, and what is tested here
    is which draw is kept, not the renderer. A code's silhouette is a centred disc whose radius its
    first number sets (a draw of the noise moves it by about a tenth of the picture)."""
    pipe = FlowSDF.from_run(run, "flow", "cpu")
    pipe.cfg.frame = "view"
    pipe.cfg.flow.consistency, pipe.cfg.flow.consistency_tries = consistency, tries

    def disc_silhouettes(codes, K, c2w, size=None):
        size = size or pipe.image_size
        radius = 0.3 + 0.1 * codes.flatten(1)[:, 0] / pipe.sigma  # (M,) in picture widths
        ys, xs = torch.meshgrid(*(torch.linspace(-0.5, 0.5, size),) * 2, indexing="ij")  # (S, S)
        return (xs**2 + ys**2 <= radius[:, None, None] ** 2).float()  # (M, S, S)

    pipe.silhouettes = disc_silhouettes
    return pipe


def input_view_iou(pipe: FlowSDF, codes, image):
    """IoU (M,) of codes (M, *latent) seen from C0 with the picture's foreground mask, worked out
    here as the test's own account of the rule."""
    cam = pipe.input_camera(codes[0], None)
    n = len(codes)
    sil = pipe.silhouettes(codes, cam.K.expand(n, 3, 3), cam.c2w.expand(n, 4, 4))
    return silhouette_iou(sil, foreground_mask(image[None]).expand(n, -1, -1))


def test_the_pipeline_keeps_each_samples_first_agreeing_draw(tiny_flow_run, images):
    ratio, tries, seed, K = 0.97, 3, 4, 3
    pipe = view_pipe(tiny_flow_run, ratio, tries)
    got = pipe(images, samples=K, seed=seed, guidance=1).codes  # (2, K, *latent)
    sampler, redrawn, centred = pipe.sampler(), 0, 0
    with torch.no_grad():
        for i, image in enumerate(images):
            cond = pipe.conditioner(image[None])
            centre = sampler(cond, torch.zeros(1, *pipe.latent_shape))
            bar = ratio * input_view_iou(pipe, centre, image)[0]
            for k in range(K):
                draws = torch.cat([sampler(cond, sampler.noise(retry_seeds([seed + k], j), "cpu")) for j in range(tries)])
                iou = input_view_iou(pipe, draws, image)  # (tries,)
                reaching = (iou >= bar).nonzero()
                kept = draws[int(reaching[0])] if len(reaching) else centre[0]  # else the noiseless sample
                torch.testing.assert_close(got[i, k], kept, rtol=1e-5, atol=1e-6)
                redrawn += not (len(reaching) and int(reaching[0]) == 0)
                centred += not len(reaching)
    assert redrawn > centred > 0  # the bar was high enough to test both: a later draw kept, and the fallback
    # Sample k still depends only on (picture, seed, k), not on the batch it came in.
    torch.testing.assert_close(pipe(images[1:2], samples=1, seed=seed + 2, guidance=1).codes[0, 0], got[1, 2],
                               rtol=1e-5, atol=1e-6)


def test_the_predictor_starts_from_the_plain_predictors_noise(tiny_flow_run, images):
    pipe = view_pipe(tiny_flow_run, 1e-6)  # every draw with any overlap is kept
    plain = sampler_predictor(pipe.conditioner, pipe.sampler(), 1.0)
    ours = pipe.predictor(guidance=1.0)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = plain(images, gen_a), ours(images, gen_b)
    assert (input_view_iou(pipe, b, images[0]) > 0).any()
    kept = torch.stack([input_view_iou(pipe, b[i : i + 1], img)[0] > 0 for i, img in enumerate(images)])  # (2,)
    torch.testing.assert_close(b[kept], a[kept], rtol=1e-5, atol=1e-6)
    # The noise of every try was taken from the generator, whatever was accepted: the next batch's
    # noise does not depend on this one's outcome.
    torch.randn((pipe.cfg.flow.consistency_tries - 1, len(images), *pipe.latent_shape), generator=gen_a)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_consistency_refuses_a_world_frame_model_and_a_trajectory(tiny_flow_run, images):
    pipe = view_pipe(tiny_flow_run, 0.9)
    with pytest.raises(FlowSDFError, match="trajectory"):
        pipe(images, samples=2, trajectory=True)
    pipe.cfg.frame = "world"
    with pytest.raises(FlowSDFError, match="view-frame"):
        pipe(images, samples=2)


def test_eval_takes_the_sampling_settings_and_refuses_consistency_in_the_world_frame(tiny_flow_run, tiny_data_dir,
                                                                                     tmp_path, capsys):
    import json

    from flowsdf.cli import main

    out = tmp_path / "e.json"
    assert main(["eval", str(tiny_flow_run), "--data", str(tiny_data_dir), "--k", "2", "--mesh-resolution", "8",
                 "--temperature", "2", "--out", str(out), "--quiet"]) == 0
    sampling = json.loads(out.read_text())["models"]["flow"]["sampling"]
    assert sampling["temperature"] == 2.0 and sampling["consistency"] == 0.0
    # the diversity figure is of the samples drawn with these settings too
    pipe = FlowSDF.from_run(tiny_flow_run, "flow", "cpu")
    pipe.set_sampling(temperature=2.0)
    d = sampling["diversity"]
    pictures = dataset.load(tiny_data_dir).train.input.images[: d["shapes"], 0]
    hot = pipe(pictures, samples=2, seed=pipe.cfg.seed).codes
    assert d["k"] == 2 and d["code_pairwise_l2"] == pytest.approx(pairwise_distance(hot).mean().item(), rel=1e-5)
    refused = tmp_path / "c.json"
    assert main(["eval", str(tiny_flow_run), "--consistency", "0.9", "--out", str(refused), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowsdf: error: consistency needs a view-frame run") and err.count("\n") == 1
    assert not refused.exists()
