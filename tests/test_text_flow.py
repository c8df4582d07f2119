"""Text to 3-D: the text-conditioned flow over the Stage-1 codes, trained and sampled end to end."""

from __future__ import annotations

import shutil

import pytest
import torch

from flowsdf import config as config_mod
from flowsdf import overrides
from flowsdf.cli import main
from flowsdf.data import captions
from flowsdf.data import dataset as data_mod
from flowsdf.errors import FlowSDFError
from flowsdf.pipeline import FlowSDF
from flowsdf.train.text import train_text, training_captions


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_stage1_run, tiny_data_dir):
    run = tmp_path_factory.mktemp("text") / "run"
    shutil.copytree(tiny_stage1_run, run)
    cfg = overrides.apply(config_mod.preset("tiny"), ["text_train.iterations=30", "text_train.batch_size=8",
                                                     "text.width=32", "text.depth=1"])
    train_text(cfg, run, run, tiny_data_dir, progress=False)
    return run


def test_training_captions_describe_each_shape_and_never_an_unseen_pair(tiny_cfg, tiny_data_dir):
    data = data_mod.load(tiny_data_dir)
    caps = training_captions(tiny_cfg, data.train.shapes, data.train.albedo)
    assert len(caps) == len(data.train) and all(len(c) == tiny_cfg.text_train.captions_per_shape for c in caps)
    assert captions.unseen_pair_violations([c for cs in caps for c in cs]) == []
    nouns = {w for kind in captions.FAMILY_WORDS for w in captions.FAMILY_WORDS[kind]} | set(captions.GENERIC_NOUNS)
    assert all(any(n in c for n in nouns) for cs in caps for c in cs)  # every caption names what it is


def test_generate_samples_differ_and_guidance_one_is_the_conditional_flow(text_run):
    pipe = FlowSDF.from_run(text_run, "text", "cpu")
    r = pipe.generate(["a tall red cylinder", "a flat box"], samples=3, seed=2)
    assert r.codes.shape == (2, 3, *pipe.latent_shape)
    assert not torch.equal(r.codes[:, 0], r.codes[:, 1])  # K samples of one caption differ
    torch.testing.assert_close(pipe.generate("a flat box", samples=3, seed=2).codes[0], r.codes[1])  # per prompt
    plain = pipe.generate("a flat box", seed=5, guidance=1.0).codes
    assert not torch.allclose(pipe.generate("a flat box", seed=5, guidance=4.0).codes, plain)


def test_bad_prompts_and_runs_are_one_clear_error_each(text_run, tiny_stage1_run, capsys):
    pipe = FlowSDF.from_run(text_run, "text", "cpu")
    with pytest.raises(FlowSDFError, match="empty"):
        pipe.generate([""])
    assert pipe.generate(["ein rotes Würfelchen ☃"]).codes.shape[0] == 1  # unknown words, no crash
    assert pipe.generate(["word " * 10_000]).codes.shape[0] == 1  # cut to the encoder's length ...
    assert "cut to fit" in capsys.readouterr().err  # ... and said so
    with pytest.raises(FlowSDFError, match="no text model"):
        FlowSDF.from_run(tiny_stage1_run, "text")
    with pytest.raises(FlowSDFError, match="takes prompts"):
        pipe(torch.rand(1, 3, 16, 16))


def test_the_cli_trains_the_text_stage_and_refuses_foreign_settings(tmp_path, tiny_stage1_run, tiny_data_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    base = ["train", "--stage", "text", "--preset", "tiny", "--init", str(run), "--out", str(run), "--data",
            str(tiny_data_dir), "--quiet"]
    assert main([*base, "--set", "decoder.mlp.hidden=200"]) == 2
    assert "only text, text_train can be set" in capsys.readouterr().err
    assert main([*base, "--set", "text_train.iterations=4", "--set", "text.width=16", "--set", "text.heads=2",
                 "--set", "text.depth=1"]) == 0
    assert FlowSDF.from_run(run, "text", "cpu").generate("a ball").codes.shape == (1, 1, 128)
