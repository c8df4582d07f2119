"""Test-time refinement: fitting a code to the input picture's mask lowers the input-view loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from flowsdf.data import dataset
from flowsdf.data.frames import apply_frame
from flowsdf.data.images import foreground_mask
from flowsdf.errors import FlowSDFError
from flowsdf.evaluate import evaluate_run
from flowsdf.pipeline import FlowSDF
from flowsdf.refine import refine_codes, silhouette_bce


@pytest.fixture(scope="module")
def view_run(tmp_path_factory, tiny_cfg, tiny_data_dir):
    """A tiny Stage-1 run trained in the view frame."""
    from flowsdf.train.stage1 import train_stage1

    run = tmp_path_factory.mktemp("runs") / "view"
    train_stage1(dataclasses.replace(tiny_cfg, frame="view"), run, tiny_data_dir, progress=False)
    return run


def test_refinement_lowers_the_input_view_loss_and_leaves_the_decoder_alone(tiny_stage1_run, tiny_data_dir):
    pipe = FlowSDF.from_run(tiny_stage1_run, "cnn")
    data = dataset.load(tiny_data_dir)
    v = data.heldout.input
    images, masks, K, c2w = v.images[:, 0], v.masks[:, 0], v.K[:, 0], v.c2w[:, 0]
    codes = pipe(images).codes[:, 0]  # (N, D)
    before = {k: p.clone() for k, p in pipe.decoder.state_dict().items()}
    refined = refine_codes(pipe.decoder, codes, masks, K, c2w, pipe.cfg.render, pipe.tau, steps=10)
    with torch.no_grad():
        loss0 = silhouette_bce(pipe.decoder, codes, masks, K, c2w, pipe.cfg.render, pipe.tau)  # (N,)
        loss1 = silhouette_bce(pipe.decoder, refined, masks, K, c2w, pipe.cfg.render, pipe.tau)
    assert (loss1 < loss0).all()
    assert all(torch.equal(p, before[k]) for k, p in pipe.decoder.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in pipe.decoder.parameters())


def test_view_frame_pipeline_refines_from_its_input_camera(view_run, tiny_data_dir):
    pipe = FlowSDF.from_run(view_run, "cnn")
    data = apply_frame(dataset.load(tiny_data_dir), "view")
    images = data.heldout.input.images[:, 0]
    camera = pipe.input_camera(torch.zeros(pipe.latent_shape), foreground_mask(images)[0])
    K, c2w = camera.K, camera.c2w
    assert not camera.searched
    # The training views of a view-frame run are all taken from the pipeline's input camera.
    assert torch.allclose(c2w.expand_as(data.train.input.c2w[:, 0]), data.train.input.c2w[:, 0], atol=1e-5)
    plain, refined = pipe(images, samples=2).codes, pipe(images, samples=2, refine=8).codes  # (N, 2, D)
    masks = foreground_mask(images)
    assert torch.equal(masks, data.heldout.input.masks[:, 0])  # the mask refinement fits is the true one
    n = len(images)
    with torch.no_grad():
        losses = [silhouette_bce(pipe.decoder, c[:, 0], masks, K.expand(n, 3, 3), c2w.expand(n, 4, 4),
                                 pipe.cfg.render, pipe.tau) for c in (plain, refined)]
    assert (losses[1] < losses[0]).all()


def test_bad_refinement_steps_fail(tiny_stage1_run):
    pipe = FlowSDF.from_run(tiny_stage1_run, "cnn")
    with pytest.raises(FlowSDFError, match="refine"):
        pipe(torch.zeros(1, 3, 16, 16), refine=-1)


def test_eval_with_refinement_raises_the_input_view_iou(view_run, tiny_data_dir):
    plain = evaluate_run(view_run, tiny_data_dir, k=1, mesh_resolution=16, timing_repeats=1, progress=False)
    refined = evaluate_run(view_run, tiny_data_dir, k=1, mesh_resolution=16, timing_repeats=1, progress=False, refine=10)
    assert refined["refine_steps"] == 10 and refined["frame"] == "view"
    p, r = plain["models"]["cnn"]["silhouettes"], refined["models"]["cnn"]["silhouettes"]
    assert r["heldout_input"]["bce"] < p["heldout_input"]["bce"]
    assert r["train_views"]["bce"] < p["train_views"]["bce"]


def test_eval_command_takes_refine_steps(view_run, tiny_data_dir, tmp_path, capsys):
    import json

    from flowsdf.cli import main

    out = tmp_path / "e.json"
    code = main(["eval", str(view_run), "--data", str(tiny_data_dir), "--refine", "3", "--k", "1",
                 "--mesh-resolution", "16", "--out", str(out), "--quiet"])
    assert code == 0 and json.loads(out.read_text())["refine_steps"] == 3
    assert main(["eval", str(view_run), "--refine", "-1"]) == 2
    assert "--refine must be from 0 to 100,000, got -1" in capsys.readouterr().err
