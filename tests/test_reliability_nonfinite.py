"""Non-finite numbers never travel silently.

- a diverging learning rate (a real one: the optimiser really diverges) stops the phase with one
  line naming the phase, epoch and step, exit 2, and leaves the last good checkpoint as it was;
- a checkpoint holding a NaN, with a valid digest, is refused by every command that reads one,
  and none is ever written;
- every JSON the package writes is strict (no NaN / Infinity token) and says what produced it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsdf import checkpoint, runs
from flowsdf.cli import main
from flowsdf.data import dataset
from run_helpers import assert_one_error_line, rewrite, run_cli






def temporaries(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if checkpoint.TEMPORARY.fullmatch(p.name) or ".tmp" in p.name]


def assert_consistent(run: Path, stage: str, epochs: int) -> None:
    """Nothing of a stage is ahead of its checkpoint, and no temporary file is left."""
    at = runs.checkpoint_epoch(run, stage) or 0
    assert all(r["epoch"] <= at for r in runs.read_metrics(run, stage))
    figures = sorted((run / stage / "figures").glob("epoch_*.png")) if (run / stage / "figures").is_dir() else []
    assert all(int(f.stem.split("_")[1]) <= at for f in figures)
    assert (run / stage / "summary.json").exists() == (at == epochs)
    assert temporaries(run) == []




def nan_in_first_weight(tensors) -> None:
    key = sorted(k for k in tensors if k.startswith("model."))[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")


# --- 1. a diverging learning rate stops the run, keeping the last good checkpoint -----------------


def _stage1_fresh(run, data, tiny_stage1_run):
    return ["train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", data, "--quiet",
            "--set", "stage1.lr=1e30"], ("stage1 diverged at epoch 1 of 2, step ", "no checkpoint was written")


def _stage1_resumed(run, data, tiny_stage1_run):
    # Epoch 1 at the preset's lr, then the run's recorded lr raised by hand: epoch 2 diverges.
    assert main(["train", "--stage", "cnn", "--preset", "tiny", "--out", str(run), "--data", str(data), "--quiet",
                 "--until-epoch", "1"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    cfg["stage1"]["lr"] = 1e30
    (run / "config.json").write_text(json.dumps(cfg))
    return ["train", "--stage", "cnn", "--out", run, "--data", data, "--quiet", "--resume"], (
        "stage1 diverged at epoch 2 of 2, step ", "the checkpoint of epoch 1 is kept")


def _phase1(run, data, tiny_stage1_run):
    shutil.copytree(tiny_stage1_run, run)
    return ["train", "--stage", "flow", "--preset", "tiny", "--init", run, "--out", run, "--data", data, "--quiet",
            "--set", "phase1.lr=1e30"], ("phase1 distil diverged at iteration ", "nothing of Phase 1 is saved after its last good save")


@pytest.mark.parametrize("case", [_stage1_fresh, _stage1_resumed, _phase1],
                         ids=["stage 1, first epoch", "stage 1, resumed second epoch", "phase 1"])
def test_a_diverging_learning_rate_stops_with_one_line_and_keeps_the_last_checkpoint(
        capsys, tmp_path, tiny_data_dir, tiny_stage1_run, case):
    run = tmp_path / "run"
    argv, needles = case(run, tiny_data_dir, tiny_stage1_run)
    capsys.readouterr()
    kept = {s: runs.checkpoint_path(run, s).read_bytes() for s in ("stage1", "phase1") if runs.checkpoint_path(run, s).exists()}
    code, _, err = run_cli(capsys, *argv)
    assert_one_error_line(code, err, *needles)
    assert "lr (1e+30)" in err and "Traceback" not in err
    for stage, before in kept.items():  # the last good checkpoint: byte for byte, and loadable
        assert runs.checkpoint_path(run, stage).read_bytes() == before
        assert runs.checkpoint_epoch(run, stage) == checkpoint.load(runs.checkpoint_path(run, stage), {})["epoch"]
    assert not runs.checkpoint_path(run, "phase1").exists() or "phase1" in kept
    assert not (run / "phase1" / "summary.json").exists()
    assert_consistent(run, "stage1", 2)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    net = torch.nn.Linear(3, 2)
    with torch.no_grad():
        net.bias[1] = float("inf")
    path = tmp_path / "c.safetensors"
    with pytest.raises(checkpoint.NonFiniteError, match="model.lin.bias holds non-finite values"):
        checkpoint.save(path, {"lin": net})
    with pytest.raises(checkpoint.NonFiniteError, match="metadata holds a non-finite number"):
        checkpoint.save(path, {"lin": torch.nn.Linear(3, 2)}, meta={"sigma": float("nan")})
    assert list(tmp_path.iterdir()) == []


# --- 2. a checkpoint holding NaN is refused by every command that reads one -------------------------


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory, tiny_flow_run) -> Path:
    """A finished tiny run whose checkpoints hold one NaN each, each with a valid digest."""
    run = tmp_path_factory.mktemp("nan") / "run"
    shutil.copytree(tiny_flow_run, run)
    for stage in ("stage1", "phase1", "phase2"):
        rewrite(runs.checkpoint_path(run, stage), edit_tensors=nan_in_first_weight)
    return run


def _picture(tmp_path: Path, data_dir: Path) -> Path:
    image = dataset.load(data_dir).train.input.images[0, 0].permute(1, 2, 0).numpy()  # (S, S, 3)
    path = tmp_path / "pic.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    return path


READERS = {
    "train --resume": lambda run, data, tmp: ["train", "--stage", "cnn", "--out", run, "--resume", "--quiet", "--data", data],
    "train flow --resume": lambda run, data, tmp: ["train", "--stage", "flow", "--init", run, "--out", run, "--resume",
                                                   "--quiet", "--data", data],
    "eval": lambda run, data, tmp: ["eval", run, "--quiet", "--mesh-resolution", "8", "--k", "1", "--data", data],
    "reconstruct": lambda run, data, tmp: ["reconstruct", _picture(tmp, data), "--run", run, "--out", tmp / "rec",
                                           "--quiet", "--resolution", "8"],
    "view": lambda run, data, tmp: ["view", run, "--data", data, "--port", "65530"],
    "bench --run": lambda run, data, tmp: ["bench", "--quick", "--run", run, "--device", "cpu"],
    "check-grads": lambda run, data, tmp: ["check-grads", run, "--batch", "1", "--data", data],
}


@pytest.mark.parametrize("command", list(READERS))
def test_a_checkpoint_holding_nan_is_refused_by_every_command(capsys, tmp_path, nan_run, tiny_data_dir, command):
    code, _, err = run_cli(capsys, *READERS[command](nan_run, tiny_data_dir, tmp_path))
    assert "Traceback" not in err
    assert_one_error_line(code, err, "holds non-finite values (NaN or inf) in model.", "refusing to load it")


# --- 3. strict JSON, with what produced it ---------------------------------------------------------


def strict_load(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_turns_non_finite_numbers_into_null_with_the_reason_beside_them():
    value = {"loss": float("nan"), "ok": 1.5, "per_shape": [0.5, float("inf"), [float("-inf")]],
             "rows": [{"x": float("nan")}]}
    out = strict_load(checkpoint.strict_json(value))
    assert out == {"loss": None, "loss_not_finite": "nan", "ok": 1.5, "per_shape": [0.5, None, [None]],
                   "per_shape_not_finite": {"1": "inf", "2.0": "-inf"}, "rows": [{"x": None, "x_not_finite": "nan"}]}
    with pytest.raises(ValueError, match="top of a JSON document"):
        checkpoint.strict_json([float("nan")])


def undefined_3d_metrics(decoder, codes, specs, **kw):
    """3-D metrics as an untrained model can make them: undefined (the real ones take seconds here)."""
    rows = [{"index": i, "volumetric_iou": float("nan"), "chamfer_l1": float("inf")} for i in range(len(specs))]
    return {"per_shape": rows, "mean": {"volumetric_iou": float("nan"), "chamfer_l1": float("inf"), "fscore": 0.0,
                                        "empty_meshes": 0, "shapes": len(specs)}}


def test_a_tiny_run_writes_strict_json_that_says_what_produced_it(capsys, tmp_path, tiny_flow_run, tiny_data_dir,
                                                                  monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_flow_run, run)
    monkeypatch.setattr("flowsdf.evaluate.evaluate_shapes", undefined_3d_metrics)
    code, out, err = run_cli(capsys, "eval", run, "--quiet", "--mesh-resolution", "8", "--k", "1", "--data", tiny_data_dir)
    assert code == 0, err
    result = json.loads((run / "eval" / "eval.json").read_text())
    mean = result["models"]["flow"]["shapes_3d"]["heldout"]["mean"]
    assert mean["volumetric_iou"] is None and mean["volumetric_iou_not_finite"] == "nan"
    assert mean["chamfer_l1"] is None and mean["chamfer_l1_not_finite"] == "inf"
    for table in (out, (run / "eval" / "eval.md").read_text()):
        assert "| n/a / n/a |" in table and "nan" not in table.lower().replace("n/a", "") and "inf |" not in table
    for path in [*run.rglob("*.json"), *run.rglob("*.jsonl")]:
        for line in (path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]):
            strict_load(line)
    for path in ("stage1/summary.json", "phase1/summary.json", "phase2/summary.json", "eval/eval.json"):
        record = json.loads((run / path).read_text())["provenance"]
        assert record["torch"] == torch.__version__ and record["device"].startswith("CPU"), path
        assert record["processes"] == 1 and record["ddp_backend"] is None and record["threads"] >= 1, path
        assert {"flowsdf", "git_commit", "python"} <= set(record), path
        assert record["seconds"]["wall"] > 0, path
        assert path.startswith("eval") or record["seconds"]["training"] > 0, path
    assert json.loads((run / "eval" / "eval.json").read_text())["provenance"]["seconds"]["training"] > 0


def test_a_torchrun_run_records_its_processes_and_backend(monkeypatch):
    from flowsdf.provenance import provenance

    monkeypatch.setenv("WORLD_SIZE", "2")
    record = provenance("cpu", seconds={"wall": 1.234, "training": 0.5})
    assert record["processes"] == 2 and record["ddp_backend"] == "gloo"
    assert record["seconds"] == {"wall": 1.23, "training": 0.5}
