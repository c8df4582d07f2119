"""Phase 1 saves where it stands: an interrupted Phase 1 resumes, a finished one can be lengthened,
and either way the result is the one an uninterrupted Phase 1 of that length makes."""

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from flowsdf import checkpoint, runs
from flowsdf.cli import main
from flowsdf.errors import FlowSDFError
from flowsdf.train import distill
from flowsdf.train import flow as train_flow_mod
from flowsdf.train.flow import phase1_begun, train_flow


class AfterPhase1(Exception):
    """Raised where Phase 2 would begin: these tests stop there."""


def stop_before_phase2(*args, **kwargs):
    raise AfterPhase1


def phase1_only(cfg, run, data_dir, **kwargs):
    """train_flow up to the end of Phase 1 (Phase 2's loop replaced by a stop)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_flow_mod, "fit_silhouettes", stop_before_phase2)
        with pytest.raises(AfterPhase1):
            train_flow(cfg, run, run, data_dir, progress=False, **kwargs)


def counted(forward, calls):
    def forward_counted(self, *args):
        calls.append(1)
        return forward(self, *args)
    return forward_counted


def with_iterations(cfg, n):
    return dataclasses.replace(cfg, phase1=dataclasses.replace(cfg.phase1, iterations=n),
                               phase2=dataclasses.replace(cfg.phase2, epochs=1))


def weights(path):
    tensors = load_file(str(path))
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    """Phase 1 of 40 iterations in one go."""
    run = tmp_path_factory.mktemp("phase1") / "straight"
    shutil.copytree(tiny_stage1_run, run)
    phase1_only(with_iterations(tiny_cfg, 40), run, tiny_data_dir)
    return run


def test_a_lengthened_phase1_equals_one_run_that_long(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir, straight_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    phase1_only(with_iterations(tiny_cfg, 16), run, tiny_data_dir)
    assert checkpoint.read_header(runs.checkpoint_path(run, "phase1"))["meta"]["iteration"] == 16
    calls = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill.DistillObjective, "forward", counted(distill.DistillObjective.forward, calls))
        phase1_only(tiny_cfg, run, tiny_data_dir, resume=True, phase1_iterations=40)
    assert len(calls) == (40 - 16) + 40  # the main flow goes on; the ablation is distilled again at the new length
    assert_same_weights(runs.checkpoint_path(run, "phase1"), runs.checkpoint_path(straight_run, "phase1"))
    assert_same_weights(run / "phase1" / "noscale.safetensors", straight_run / "phase1" / "noscale.safetensors")
    a, b = (json.loads((r / "phase1" / "summary.json").read_text()) for r in (run, straight_run))
    assert a["iterations"] == 40
    # the same logged losses, and the point where the shorter Phase 1 ended
    assert [h for h in a["history"] if h["iteration"] != 16] == b["history"]
    assert [h["iteration"] for h in a["history"]] == sorted({h["iteration"] for h in b["history"]} | {16})
    assert runs.read_config(run).phase1.iterations == 40  # recorded
    assert not (run / "phase1" / "partial.safetensors").exists()


def test_an_interrupted_phase1_resumes_from_its_last_save(tmp_path, monkeypatch, tiny_cfg, tiny_stage1_run, tiny_data_dir,
                                                          straight_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    monkeypatch.setattr(distill, "SAVE_SECONDS", 0.0)  # save at every logged iteration: 1, 11, 21, ...
    monkeypatch.setattr(distill, "LOG_EVERY", 10)
    forward = distill.DistillObjective.forward
    calls = []

    def killed_at_iteration_25(self, *args):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return forward(self, *args)

    monkeypatch.setattr(distill.DistillObjective, "forward", killed_at_iteration_25)
    cfg = with_iterations(tiny_cfg, 40)
    with pytest.raises(KeyboardInterrupt):
        train_flow(cfg, run, run, tiny_data_dir, progress=False)
    partial = run / "phase1" / "partial.safetensors"
    assert checkpoint.read_header(partial)["meta"]["iteration"] == 21
    assert not runs.checkpoint_path(run, "phase1").exists()  # not taken as finished
    assert phase1_begun(run)  # what `flowsdf reproduce` asks before it resumes Stage 2
    calls.clear()
    monkeypatch.setattr(distill.DistillObjective, "forward", counted(forward, calls))
    phase1_only(cfg, run, tiny_data_dir, resume=True)
    assert len(calls) == (40 - 21) + 40  # the rest of the main flow, then the whole ablation
    assert_same_weights(runs.checkpoint_path(run, "phase1"), runs.checkpoint_path(straight_run, "phase1"))
    assert not partial.exists()


def test_a_finished_phase1_from_before_progress_saving_is_lengthened_with_a_warning(
        tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    phase1_only(with_iterations(tiny_cfg, 16), run, tiny_data_dir)
    # As an older flowsdf wrote it: weights and sigma only (its summary says how far it went).
    last = runs.checkpoint_path(run, "phase1")
    meta = checkpoint.read_header(last)["meta"]
    from flowsdf.build import build_flow

    conditioner, velocity = build_flow(tiny_cfg)
    checkpoint.load(last, {"conditioner": conditioner, "velocity": velocity})
    old_meta = {k: meta[k] for k in ("sigma", "stage", "init_sha256", "init_relative")}
    checkpoint.save(last, {"conditioner": conditioner, "velocity": velocity}, meta=old_meta)
    capsys.readouterr()
    phase1_only(tiny_cfg, run, tiny_data_dir, resume=True, phase1_iterations=24)
    assert "predates Phase-1 progress saving" in capsys.readouterr().err
    assert checkpoint.read_header(last)["meta"]["iteration"] == 24
    summary = json.loads((run / "phase1" / "summary.json").read_text())
    assert summary["iterations"] == 24 and summary["history"][-1]["iteration"] == 24


def test_phase1_is_not_lengthened_after_phase2_began_nor_shortened(tmp_path, tiny_flow_run, tiny_data_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_flow_run, run)
    n = runs.read_config(run).phase1.iterations
    before = runs.checkpoint_path(run, "phase2").read_bytes()
    code = main(["train", "--stage", "flow", "--init", str(run), "--out", str(run), "--data", str(tiny_data_dir),
                 "--resume", "--quiet", "--set", f"phase1.iterations={n + 10}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has begun Phase 2" in err
    assert runs.checkpoint_path(run, "phase2").read_bytes() == before
    assert runs.read_config(run).phase1.iterations == n  # nothing recorded
    # other settings still must match the run's
    code = main(["train", "--stage", "flow", "--init", str(run), "--out", str(run), "--data", str(tiny_data_dir),
                 "--resume", "--quiet", "--set", "phase1.lr=0.5"])
    assert code == 2 and "keeps its config" in capsys.readouterr().err
    # a Phase 1 is never shortened
    shutil.rmtree(run / "phase2")
    with pytest.raises(FlowSDFError, match="lengthened, not shortened"):
        train_flow(runs.read_config(run), run, run, tiny_data_dir, resume=True, progress=False, phase1_iterations=n - 1)


def test_a_finished_phase1_is_not_reused_for_another_length(tmp_path, tiny_cfg, tiny_data_dir, straight_run):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    with pytest.raises(FlowSDFError, match="Phase 1 of 40 iterations, not phase1.iterations=60"):
        train_flow(with_iterations(tiny_cfg, 60), run, run, tiny_data_dir, progress=False)
    assert checkpoint.read_header(runs.checkpoint_path(run, "phase1"))["meta"]["iteration"] == 40
