"""The whole tiny protocol end to end: reproduce -> report, eval JSON, and a rerun that skips."""

import json

import pytest
import torch

from flowsdf import runs
from flowsdf.cli import main
from flowsdf.reproduce import reproduce


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro") / "tiny"
    return out, reproduce("tiny", out, device="cpu", progress=False)


def test_report_regenerates_the_published_table_and_embeds_the_figures(tiny_report):
    out, report = tiny_report
    text = report.read_text()
    assert "| Model | Silhouette loss | Training time | Inference (batch 1) |" in text
    assert "CNN encoder (Stage 1" in text and "Rectified flow (Stage 2" in text
    start = json.loads((out / "phase2" / "start.json").read_text())
    assert f"training-view BCE {start['bce']:.4f}" in text
    assert "Rectified flow + RGB (Stage 3)" in text and "Normal accuracy" in text
    for link in ("report_figures/stage3_shading.png", "stage3/phase2/figures/shading_0002.png",
                 "report_figures/loss_curves.png", "report_figures/meshes.png", "report_figures/flow_samples.png",
                 "phase2/figures/flow_strip.png", "stage1/figures/epoch_0001.png", "phase2/figures/epoch_0002.png"):
        assert f"]({link})" in text and (out / link).stat().st_size > 1000
    assert "Produced by flowsdf " in text and f"torch {torch.__version__}" in text and "1 process(es)" in text
    assert "nan" not in text.lower().replace("n/a", "") and "inf |" not in text  # nothing non-finite shown


def test_eval_json_has_every_split_and_per_shape_figures(tiny_report):
    out, _ = tiny_report
    result = json.loads((out / "eval" / "eval.json").read_text())
    cfg = runs.read_config(out)
    for name in ("cnn", "flow"):
        m = result["models"][name]
        assert set(m["silhouettes"]) == {"train_views", "novel_views", "heldout_input", "heldout_novel"}
        assert len(m["silhouettes"]["heldout_novel"]["per_shape_iou"]) == cfg.data.n_heldout_shapes
        assert len(m["shapes_3d"]["train"]["per_shape"]) == cfg.data.n_train_shapes
        assert 0.0 <= m["shapes_3d"]["heldout"]["mean"]["volumetric_iou"] <= 1.0
        assert m["latency"]["device"]
        assert set(m["normals"]) == {"train_views", "novel_views", "heldout_input", "heldout_novel"}
    s3 = json.loads((out / "eval" / "stage3.json").read_text())["models"]["flow"]
    assert runs.read_config(out / "stage3").phase2.rgb_weight > 0
    assert len(s3["shapes_3d"]["heldout"]["per_shape"]) == cfg.data.n_heldout_shapes
    s = result["models"]["flow"]["sampling"]
    assert s["novel_views"]["k"] == 4 and 0.0 <= s["novel_views"]["mean_of_k"] <= s["novel_views"]["best_of_k"] <= 1.0
    assert s["diversity"]["code_pairwise_l2"] > 0  # K seeds give K different codes


def test_rerunning_reproduce_skips_finished_steps(tiny_report):
    out, _ = tiny_report
    stamps = {s: runs.checkpoint_path(out, s).stat().st_mtime_ns for s in ("stage1", "phase1", "phase2")}
    stamps["stage3"] = runs.checkpoint_path(out / "stage3", "phase2").stat().st_mtime_ns
    eval_stamp = (out / "eval" / "eval.json").stat().st_mtime_ns
    reproduce("tiny", out, device="cpu", progress=False)
    again = {s: runs.checkpoint_path(out, s).stat().st_mtime_ns for s in ("stage1", "phase1", "phase2")}
    again["stage3"] = runs.checkpoint_path(out / "stage3", "phase2").stat().st_mtime_ns
    assert again == stamps
    assert (out / "eval" / "eval.json").stat().st_mtime_ns == eval_stamp


def test_eval_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["eval", str(tmp_path / "empty")]) == 2
    assert "not a flowsdf run" in capsys.readouterr().err


def test_a_run_remembers_the_dataset_it_was_trained_on(tmp_path, capsys):
    """Train on a non-default dataset (--data), then eval without --data: the same data is used."""
    data = tmp_path / "other-data"
    assert main(["data", "--preset", "tiny", "--seed", "5", "--out", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--stage", "cnn", "--preset", "tiny", "--epochs", "1", "--quiet",
                 "--out", str(run), "--data", str(data)]) == 0
    assert main(["eval", str(run), "--k", "1", "--mesh-resolution", "16", "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["data"] == str(data.resolve())
    assert runs.read_config(run).data.seed == 5
    capsys.readouterr()
    # the default dataset (seed 0) is a different dataset: refused, not silently used
    from flowsdf.config import preset
    from flowsdf.data.dataset import ensure

    ensure(preset("tiny").data, tmp_path / "seed0")
    assert main(["eval", str(run), "--data", str(tmp_path / "seed0")]) == 2
    assert "not the one" in capsys.readouterr().err
