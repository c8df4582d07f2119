"""Text to 3-D: the text-conditioned flow over the Stage-1 codes, trained and sampled end to end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from flowsdf.cli import main
from flowsdf.data import captions
from flowsdf.data import dataset as data_mod
from flowsdf.errors import FlowSDFError
from flowsdf.mesh.export import load_mesh
from flowsdf.pipeline import FlowSDF
from flowsdf.train.text import training_captions


def test_training_captions_describe_each_shape_and_never_an_unseen_pair(tiny_cfg, tiny_data_dir):
    data = data_mod.load(tiny_data_dir)
    caps = training_captions(tiny_cfg, data.train.shapes, data.train.albedo)
    assert len(caps) == len(data.train) and all(len(c) == tiny_cfg.text_train.captions_per_shape for c in caps)
    assert captions.unseen_pair_violations([c for cs in caps for c in cs]) == []
    nouns = {w for kind in captions.FAMILY_WORDS for w in captions.FAMILY_WORDS[kind]} | set(captions.GENERIC_NOUNS)
    assert all(any(n in c for n in nouns) for cs in caps for c in cs)  # every caption names what it is


def test_generate_samples_differ_and_guidance_one_is_the_conditional_flow(tiny_text_run):
    pipe = FlowSDF.from_run(tiny_text_run, "text", "cpu")
    r = pipe.generate(["a tall red cylinder", "a flat box"], samples=3, seed=2)
    assert r.codes.shape == (2, 3, *pipe.latent_shape)
    assert not torch.equal(r.codes[:, 0], r.codes[:, 1])  # K samples of one caption differ
    torch.testing.assert_close(pipe.generate("a flat box", samples=3, seed=2).codes[0], r.codes[1])  # per prompt
    plain = pipe.generate("a flat box", seed=5, guidance=1.0).codes
    assert not torch.allclose(pipe.generate("a flat box", seed=5, guidance=4.0).codes, plain)


def test_bad_prompts_and_runs_are_one_clear_error_each(tiny_text_run, tiny_stage1_run, capsys):
    pipe = FlowSDF.from_run(tiny_text_run, "text", "cpu")
    with pytest.raises(FlowSDFError, match="empty"):
        pipe.generate([""])
    with pytest.raises(FlowSDFError, match="none of its words is one the model knows"):
        pipe.generate(["ein rotes Würfelchen ☃"])
    assert pipe.generate(["a rotes Würfelchen box"]).codes.shape[0] == 1  # unknown words beside known ones ...
    assert "the model does not know" in capsys.readouterr().err  # ... are named in one warning
    assert pipe.generate(["box " * 10_000]).codes.shape[0] == 1  # cut to the encoder's length ...
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
    assert "only text, text_velocity, text_train can be set" in capsys.readouterr().err
    assert main([*base, "--set", "velocity.kind=dit"]) == 2  # the image flow's net is the Stage-1 run's
    assert main([*base, "--set", "text_train.iterations=4", "--set", "text.width=16", "--set", "text.heads=2",
                 "--set", "text.depth=1", "--set", "text_velocity.kind=dit", "--set", "text_velocity.dit.hidden=32",
                 "--set", "text_velocity.dit.heads=2", "--set", "text_velocity.dit.depth=1"]) == 0
    pipe = FlowSDF.from_run(run, "text", "cpu")
    assert type(pipe.velocity).__name__ == "DiTVelocity" and pipe.cfg.velocity.kind == "mlp"  # its own net
    assert pipe.generate("a ball").codes.shape == (1, 1, 128)


def test_a_text_flow_of_an_older_run_keeps_the_velocity_section_it_was_built_with(tiny_cfg):
    from flowsdf import config as config_mod

    old = config_mod.to_dict(tiny_cfg)
    del old["text_velocity"]  # runs from before the text flow had a velocity section of its own
    old["velocity"]["kind"] = "dit"
    assert config_mod.from_dict(old).text_velocity == config_mod.from_dict(old).velocity
    new = config_mod.to_dict(tiny_cfg)
    new["velocity"]["kind"] = "dit"
    assert config_mod.from_dict(new).text_velocity.kind == "mlp"  # today's runs: independent sections


def test_generate_writes_k_differing_meshes_an_uncertainty_mesh_and_a_summary(tiny_text_run, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main(["generate", "a tall red cylinder", "a flat box", "--run", str(tiny_text_run), "--out", str(out),
                 "--samples", "3", "--resolution", "16", "--format", "ply", "--guidance", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["temperature"] == 1.0  # the sampling noise, recorded for reproduction
    assert [e["prompt"] for e in summary["prompts"]] == ["a tall red cylinder", "a flat box"]
    for entry in summary["prompts"]:
        assert entry["guidance"] == 2.0 and entry["samples"] == 3 and len(entry["meshes"]) == 3
        meshes = [load_mesh(out / m["path"]) for m in entry["meshes"]]
        assert all(len(m.vertices) > 0 for m in meshes)
        # the K samples are different shapes (they start from different noise)
        assert any(m.vertices.shape != meshes[0].vertices.shape or not (m.vertices == meshes[0].vertices).all()
                   for m in meshes[1:])
        assert load_mesh(out / entry["uncertainty"]["path"]).visual.kind == "vertex"
        assert (out / entry["preview"]).stat().st_size > 1000
    # sample k of a prompt is sample k of the pipeline: its first mesh is the first code's
    pipe = FlowSDF.from_run(tiny_text_run, "text", "cpu")
    code = pipe.generate("a flat box", samples=3, guidance=2.0).codes[0, 0]
    first = load_mesh(out / summary["prompts"][1]["meshes"][0]["path"])
    vertices, _ = pipe.mesh(code, resolution=16)
    assert abs(len(vertices) - len(first.vertices)) <= 0.02 * len(vertices)


@pytest.mark.parametrize("argv, message", [
    (["", "--samples", "1"], "prompt 0 is empty"),
    (["日本語 ☃"], "none of its words is one the model knows"),
    (["a box", "--guidance", "-1"], "--guidance must be from"),
])
def test_generate_bad_prompts_are_one_line_and_write_nothing(tiny_text_run, tmp_path, capsys, argv, message):
    out = tmp_path / "nothing"
    assert main(["generate", *argv, "--run", str(tiny_text_run), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowsdf: error:") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_generate_from_a_run_without_a_text_model_is_one_line(tiny_stage1_run, tmp_path, capsys):
    assert main(["generate", "a box", "--run", str(tiny_stage1_run), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no text model" in err and err.count("\n") == 1
