"""`--set KEY=VALUE` config overrides: parsed, checked like a config.json, recorded in the run."""

from __future__ import annotations

import json
import shutil

import pytest

from flowsdf import config as config_mod
from flowsdf import overrides, runs
from flowsdf.cli import main
from flowsdf.errors import FlowSDFError


def test_values_are_json_literals_or_strings():
    pairs = overrides.parse(["a=2", "b=1e-4", "c=true", "d=[16, 32]", 'e={"decoder": 0.5}', "f=bfloat16", 'g="7"'])
    assert pairs == [("a", 2), ("b", 1e-4), ("c", True), ("d", [16, 32]), ("e", {"decoder": 0.5}),
                     ("f", "bfloat16"), ("g", "7")]


def test_valid_overrides_change_only_their_fields(tiny_cfg):
    cfg = overrides.apply(tiny_cfg, ["data.n_train_shapes=1000", "stage1.batch_size=2", "render.search_dtype=bfloat16",
                                     "conditioner.cnn.channels=[16, 32, 32, 32]", 'phase2.lr_scale={"decoder": 0.5}',
                                     "stage1.lr=0.01"])
    assert cfg.data.n_train_shapes == 1000 and cfg.stage1.batch_size == 2
    assert cfg.render.search_dtype == "bfloat16" and cfg.conditioner.cnn.channels == (16, 32, 32, 32)
    assert cfg.phase2.lr_scale == {"decoder": 0.5} and cfg.stage1.lr == 0.01
    assert tiny_cfg.stage1.batch_size == 1  # the input is left alone
    rest, original = config_mod.to_dict(cfg), config_mod.to_dict(tiny_cfg)
    for key in ("data.n_train_shapes", "stage1.batch_size", "render.search_dtype", "conditioner.cnn.channels",
                "phase2.lr_scale", "stage1.lr"):
        *path, leaf = key.split(".")
        a, b = rest, original
        for part in path:
            a, b = a[part], b[part]
        a[leaf] = b[leaf]
    assert rest == original


@pytest.mark.parametrize("item, words", [
    ("stage1.batchsize=2", ["stage1.batchsize", "unknown config key", "stage1.batch_size"]),
    ("nosuch.x=1", ["nosuch.x", "unknown config key"]),
    ("stage1=3", ["stage1 is a section"]),
    ("stage1.epochs.x=3", ["stage1.epochs is a single value"]),
    ("stage1.batch_size", ["expected KEY=VALUE"]),
    ("stage1.batch_size=two", ["stage1.batch_size must be an integer from 1 to 65,536", '"two"']),
    ("stage1.batch_size=0", ["stage1.batch_size must be an integer from 1 to 65,536", "got 0"]),
    ("stage1.batch_size=1.5", ["stage1.batch_size must be an integer from 1 to 65,536"]),
    ("render.naive=1", ["render.naive must be true or false"]),
    ("render.search_dtype=float16", ["render.search_dtype must be 'float32' or 'bfloat16'"]),
    ("stage1.lr=-1", ["stage1.lr must be a positive number"]),
    ("data.image_size=24", ["data.image_size (24) must be a multiple of 16"]),
])
def test_bad_overrides_are_one_line_naming_the_key(tiny_cfg, item, words):
    with pytest.raises(FlowSDFError) as e:
        overrides.apply(tiny_cfg, [item])
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_records_overrides_and_resume_keeps_them(capsys, tmp_path, tiny_data_dir):
    run = tmp_path / "r"
    code, _, err = _cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", str(run), "--data", str(tiny_data_dir),
                        "--quiet", "--until-epoch", "1", "--set", "stage1.batch_size=2", "--set", "stage1.lr=0.002")
    assert code == 0, err
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["stage1"]["batch_size"] == 2 and recorded["stage1"]["lr"] == 0.002
    # Repeating the same value on resume is fine; changing it is refused before anything runs.
    code, _, err = _cli(capsys, "train", "--stage", "cnn", "--out", str(run), "--resume", "--quiet", "--until-epoch", "1",
                        "--set", "stage1.batch_size=2")
    assert code == 0, err
    code, _, err = _cli(capsys, "train", "--stage", "cnn", "--out", str(run), "--resume", "--quiet",
                        "--set", "stage1.batch_size=3")
    assert code == 2 and err.count("\n") == 1 and "stage1.batch_size" in err and "keeps its config" in err


def test_cli_refuses_unknown_key_and_wrong_type(capsys, tmp_path):
    for item, word in (("stage1.nope=1", "unknown config key"), ("data.n_train_shapes=abc", "must be an integer from 1 to 1,000,000")):
        for cmd in (["train", "--stage", "cnn", "--preset", "tiny", "--out", str(tmp_path / "r")],
                    ["reproduce", "--preset", "tiny", "--out", str(tmp_path / "p")]):
            code, _, err = _cli(capsys, *cmd, "--set", item)
            assert code == 2 and err.startswith("flowsdf: error: ") and err.count("\n") == 1 and word in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


def test_flow_stage_refuses_stage1_sections(capsys, tmp_path):
    code, _, err = _cli(capsys, "train", "--stage", "flow", "--init", str(tmp_path / "s1"), "--preset", "tiny",
                        "--out", str(tmp_path / "r"), "--set", "data.n_train_shapes=9")
    assert code == 2 and "data.n_train_shapes" in err and "Stage-1 run" in err


def test_flow_stage_without_a_preset_continues_the_stage1_runs_settings(capsys, tmp_path, tiny_stage1_run, tiny_data_dir):
    """`--stage flow --init RUN` without --preset takes Phase 1 and Phase 2 from what RUN recorded
    (here the tiny preset's 40 iterations and 2 epochs), not from `quick` (300 and 30)."""
    run = tmp_path / "r"
    shutil.copytree(tiny_stage1_run, run)
    code, _, err = _cli(capsys, "train", "--stage", "flow", "--init", str(run), "--out", str(run), "--data",
                        str(tiny_data_dir), "--quiet", "--until-epoch", "1", "--set", "phase1.iterations=3")
    assert code == 0, err
    cfg = runs.read_config(run)
    assert (cfg.phase1.iterations, cfg.phase2.epochs, cfg.phase2.batch_size) == (3, 2, 1)
    assert cfg.phase2 == config_mod.preset("tiny").phase2
