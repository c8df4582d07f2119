"""Run folders over their life: leftovers of a kill are cleaned, --until-epoch says what happened,
a moved or copied run still resumes (and a mismatched one is still refused)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1
from flowsdf.cli import main
from flowsdf.train.flow import train_flow


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stale_temporaries_are_removed_when_a_stage_resumes(capsys, tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", tiny_data_dir,
                           "--epochs", "3", "--until-epoch", "1", "--quiet")
    assert code == 0, err
    ckpt = runs.checkpoint_path(run, "stage1")
    # What a kill during a write leaves (names as mkstemp makes them), and files that are not that.
    stale = [run / "stage1" / ".last.safetensors.k3j_x9a2", run / ".config.json.abcdefgh",
             run / "stage1" / ".metrics.jsonl.q1w2e3r4", run / "stage1" / "figures" / ".epoch_0001.zz99yy88.png"]
    keep = [run / "stage1" / "notes.txt", run / "stage1" / ".hidden", run / "stage1" / ".last.safetensors.bak"]
    for path in stale:
        shutil.copyfile(ckpt, path)
    for path in keep:
        path.write_text("mine")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--out", run, "--resume", "--until-epoch", "2", "--quiet")
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in keep)
    assert runs.checkpoint_epoch(run, "stage1") == 2


def test_until_epoch_says_what_happened(capsys, tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", tiny_data_dir,
                             "--epochs", "3", "--until-epoch", "2", "--quiet")
    assert code == 0, err
    assert out.startswith("stopped after epoch 2 of 3; continue with: flowsdf train --stage cnn")
    code, out, err = run_cli(capsys, "train", "--stage", "cnn", "--out", run, "--resume", "--until-epoch", "1", "--quiet")
    assert code == 0, err
    assert "stopped after" not in out
    assert out.startswith("nothing to train: stage1 is already at epoch 2 of 3, not before --until-epoch 1")
    assert runs.checkpoint_epoch(run, "stage1") == 2 and len(runs.read_metrics(run, "stage1")) == 2


def _stage2_started(tmp_path: Path, stage1_run: Path, tiny_cfg, data_dir: Path) -> Path:
    run = tmp_path / "first" / "run"
    shutil.copytree(stage1_run, run)
    assert train_flow(tiny_cfg, run, run, data_dir, progress=False, until_epoch=1) is None
    return run


def test_a_moved_run_resumes_stage2(capsys, tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    run = _stage2_started(tmp_path, tiny_stage1_run, tiny_cfg, tiny_data_dir)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(run, moved)
    code, _, err = run_cli(capsys, "train", "--stage", "flow", "--init", moved, "--out", moved, "--resume", "--quiet")
    assert code == 0, err
    assert runs.checkpoint_epoch(moved, "phase2") == tiny_cfg.phase2.epochs


def test_a_run_with_another_stage1_is_still_refused(capsys, tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    run = _stage2_started(tmp_path, tiny_stage1_run, tiny_cfg, tiny_data_dir)
    # Same file, same epoch, valid digest, other weights: a different Stage 1.
    ckpt = runs.checkpoint_path(run, "stage1")
    encoder, decoder = build_stage1(tiny_cfg)
    meta = checkpoint.load(ckpt, {"encoder": encoder, "decoder": decoder})
    with torch.no_grad():
        decoder.l5.bias.add_(0.01)
    checkpoint.save(ckpt, {"encoder": encoder, "decoder": decoder}, meta=meta)
    code, _, err = run_cli(capsys, "train", "--stage", "flow", "--init", run, "--out", run, "--resume", "--quiet")
    assert code == 2 and "distilled from another Stage-1 checkpoint" in err and err.count("\n") == 1


def test_a_run_moved_with_its_dataset_finds_it(capsys, tmp_path, tiny_data_dir, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_data_dir, project / "data")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", project / "run",
                           "--data", project / "data", "--epochs", "2", "--until-epoch", "1", "--quiet")
    assert code == 0, err
    shutil.move(project, tmp_path / "moved")
    monkeypatch.chdir(tmp_path)  # where the preset's data cache would be made if the dataset were lost
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--out", tmp_path / "moved" / "run", "--resume", "--quiet")
    assert code == 0, err
    assert not (tmp_path / "data_cache").exists()
    assert runs.recorded_data(tmp_path / "moved" / "run", runs.read_config(tmp_path / "moved" / "run").data.hash()) \
        .resolve() == (tmp_path / "moved" / "data").resolve()


def test_fresh_heldout_shapes_are_new_reproducible_and_never_the_runs_own(tmp_path, tiny_cfg, tiny_data_dir):
    from flowsdf.data import dataset
    from flowsdf.errors import FlowSDFError

    fresh = runs.fresh_heldout(tiny_cfg, seed=5, n=3, base=tmp_path, progress=False)
    again = runs.fresh_heldout(tiny_cfg, seed=5, n=3, base=tmp_path / "elsewhere", progress=False)
    own = dataset.load(tiny_data_dir)
    assert len(fresh) == 3 and fresh.input.images.shape[1:] == own.heldout.input.images.shape[1:]
    assert fresh.shapes == again.shapes and torch.equal(fresh.input.images, again.input.images)
    seen = [*own.train.shapes, *own.heldout.shapes]
    assert not any(shape in seen for shape in fresh.shapes)
    with pytest.raises(FlowSDFError, match="not fresh"):
        runs.fresh_heldout(tiny_cfg, seed=tiny_cfg.data.seed, n=3, base=tmp_path, progress=False)
