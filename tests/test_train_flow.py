import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow, build_stage1
from flowsdf.cli import main
from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError
from flowsdf.flow import flow_predictor
from flowsdf.metrics.views import evaluate_views
from flowsdf.train.flow import train_flow
from flowsdf.train.gradcheck import check_grads


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    """Stage 2 trained into a copy of the tiny Stage-1 run folder (3 Phase-2 epochs)."""
    run = tmp_path_factory.mktemp("flow") / "run"
    shutil.copytree(tiny_stage1_run, run)
    stage1_bytes = runs.checkpoint_path(run, "stage1").read_bytes()
    cfg = dataclasses.replace(tiny_cfg, phase2=dataclasses.replace(tiny_cfg.phase2, epochs=3))
    summary = train_flow(cfg, run, run, tiny_data_dir, progress=False)
    assert runs.checkpoint_path(run, "stage1").read_bytes() == stage1_bytes  # Stage 1 untouched
    return run, summary


def test_phase1_distillation_lowers_its_loss_and_reports_the_ablation(flow_run):
    run, _ = flow_run
    report = json.loads((run / "phase1" / "summary.json").read_text())
    history = report["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    # The collapse the noise scaling fixes: unscaled noise (norm ~sqrt(128)) lands far from the codes.
    assert report["with_scaling"]["cosine"] > report["without_scaling"]["cosine"] + 0.2
    assert report["without_scaling"]["noise_norm"] > 10 * report["with_scaling"]["noise_norm"]
    # sigma is the std of the Stage-1 codes, stored with the checkpoint
    meta = checkpoint.read_header(runs.checkpoint_path(run, "phase1"))["meta"]
    assert meta["sigma"] == pytest.approx(report["sigma"]) and 0 < meta["sigma"] < 1
    assert (run / "phase1" / "noscale.safetensors").exists()


def test_phase2_lowers_the_silhouette_loss_and_writes_its_outputs(flow_run, tiny_cfg):
    run, summary = flow_run
    rows = runs.read_metrics(run, "phase2")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["loss"] < rows[0]["loss"]  # constant tau in the tiny preset
    assert (run / "phase2" / "figures" / "flow_strip.png").stat().st_size > 1000
    assert summary["diversity"]["code_pairwise_l2"] > 0  # different seeds, different codes
    assert 0 <= summary["novel_views"]["iou"] <= 1
    # config.json still describes Stage 1 exactly, with the Stage-2 sections added
    recorded = runs.read_config(run)
    assert recorded.stage1 == tiny_cfg.stage1 and recorded.decoder == tiny_cfg.decoder
    assert recorded.phase2.epochs == 3


def test_phase2_records_where_it_starts(flow_run, tiny_cfg, tiny_data_dir):
    """start.json is the Phase-1 flow's codes through the Stage-1 decoder, before any Phase-2 step."""
    run, summary = flow_run
    encoder, decoder = build_stage1(tiny_cfg)
    checkpoint.load(runs.checkpoint_path(run, "stage1"), {"encoder": encoder, "decoder": decoder})
    conditioner, velocity = build_flow(tiny_cfg)
    meta = checkpoint.load(runs.checkpoint_path(run, "phase1"), {"conditioner": conditioner, "velocity": velocity})
    predict = flow_predictor(conditioner.eval(), velocity.eval(), meta["sigma"], tiny_cfg.flow.steps,
                             tiny_cfg.decoder.latent_shape)
    data = dataset.load(tiny_data_dir)
    expected = evaluate_views(predict, decoder.eval(), data.train, "input", tiny_cfg.render, tiny_cfg.phase2.tau_start, tiny_cfg.seed)
    assert summary["start_train_views"]["bce"] == pytest.approx(expected["bce"], rel=1e-5)
    assert summary["start_train_views"]["iou"] == pytest.approx(expected["iou"], rel=1e-5)
    assert summary["start_train_views"]["bce"] != pytest.approx(summary["train_views"]["bce"])  # training moved it


def test_gradient_check_reaches_all_three_parts(flow_run):
    run, _ = flow_run
    r = check_grads(run, device="cpu", batch_size=2)
    assert set(r["grad_norm"]) == {"conditioner", "velocity", "decoder"}
    assert all(v > 0 and v == v for v in r["grad_norm"].values())  # non-zero, not NaN
    assert r["all_nonzero"] and r["forward_ms"] > 0 and r["backward_ms"] > 0


def test_phase2_resume_equals_an_uninterrupted_run(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir, flow_run):
    run_full, _ = flow_run
    cfg = dataclasses.replace(tiny_cfg, phase2=dataclasses.replace(tiny_cfg.phase2, epochs=3))
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    assert train_flow(cfg, run, run, tiny_data_dir, progress=False, until_epoch=1) is None
    train_flow(cfg, run, run, tiny_data_dir, resume=True, progress=False)
    ta = load_file(str(runs.checkpoint_path(run_full, "phase2")))
    tb = load_file(str(runs.checkpoint_path(run, "phase2")))
    model_keys = [k for k in ta if k.startswith("model.")]
    assert model_keys and all(torch.equal(ta[k], tb[k]) for k in model_keys)


def test_stage2_refuses_a_missing_unfinished_or_mismatched_stage1(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir, capsys):
    with pytest.raises(FlowSDFError, match="not a flowsdf run"):
        train_flow(tiny_cfg, tmp_path / "out", tmp_path / "missing", tiny_data_dir, progress=False)
    # a Stage-1 run stopped before its last epoch
    unfinished = tmp_path / "unfinished"
    from flowsdf.train.stage1 import train_stage1

    train_stage1(tiny_cfg, unfinished, tiny_data_dir, progress=False, until_epoch=1)
    with pytest.raises(FlowSDFError, match="unfinished"):
        train_flow(tiny_cfg, tmp_path / "out", unfinished, tiny_data_dir, progress=False)
    assert not (tmp_path / "out").exists()
    # a Stage-1 run made with another preset: one line on stderr, exit 2
    code = main(["train", "--stage", "flow", "--preset", "quick", "--init", str(tiny_stage1_run),
                 "--out", str(tmp_path / "out2"), "--data", str(tiny_data_dir)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "preset 'tiny'" in err and "Traceback" not in err
    code = main(["train", "--stage", "flow", "--preset", "tiny", "--out", str(tmp_path / "out3")])
    assert code == 2 and "--init" in capsys.readouterr().err


def test_an_interrupted_phase1_is_redone_not_taken_as_finished(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    run = tmp_path / "run"
    shutil.copytree(tiny_stage1_run, run)
    cfg = dataclasses.replace(tiny_cfg, phase2=dataclasses.replace(tiny_cfg.phase2, epochs=1))
    # As if killed during the ablation: the main flow's checkpoint is never written before it.
    (run / "phase1").mkdir()
    (run / "phase1" / "noscale.safetensors").write_bytes(b"partial")
    with pytest.raises(FlowSDFError, match="nothing to resume"):
        train_flow(cfg, run, run, tiny_data_dir, resume=True, progress=False)
    train_flow(cfg, run, run, tiny_data_dir, progress=False)
    assert json.loads((run / "phase1" / "summary.json").read_text())["without_scaling"]["cosine"] is not None
    assert (run / "phase1" / "noscale.safetensors").read_bytes() != b"partial"
