"""Damaged run folders: every command answers with one `flowsdf: error:` line and exit 2, never a
traceback; silent corruption is caught by the checkpoints' digest; outputs are checked first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from flowsdf import checkpoint, runs
from flowsdf.cli import main
from flowsdf.data import dataset
from flowsdf.errors import FlowSDFError


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, needle=""):
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("flowsdf: warning:")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("flowsdf: error: ") and needle in lines[0], err


def zero_bytes(path: Path, count: int = 1 << 20) -> None:
    """Overwrite up to `count` bytes in the middle of the tensor data with zeros, keeping the size
    (what a bad disk block or a partial copy does)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: u64 header length, header, data
    mid = (start + len(data)) // 2
    n = min(count, (len(data) - start) // 2)
    data[mid - n // 2 : mid - n // 2 + n] = bytes(n)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_cfg, tiny_stage1_run, tiny_data_dir) -> Path:
    """A tiny run with Stage 1 and Stage 2 finished, not yet evaluated (copy before use)."""
    from flowsdf.train.flow import train_flow

    run = tmp_path_factory.mktemp("damage") / "run"
    shutil.copytree(tiny_stage1_run, run)
    train_flow(tiny_cfg, run, run, tiny_data_dir, progress=False)
    return run


# --- 1. a checkpoint damaged in place is refused ------------------------------------------------


def test_zeroed_bytes_in_a_checkpoint_are_refused(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Linear(512, 512))  # ~1.3 MB
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"net": net}, meta={"epoch": 3})
    size = path.stat().st_size
    zero_bytes(path)
    assert path.stat().st_size == size
    with pytest.raises(FlowSDFError, match="c.safetensors is damaged: its tensors do not match the digest"):
        checkpoint.load(path, {"net": torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Linear(512, 512))})


def test_a_checkpoint_from_before_the_digest_loads_with_a_warning(tmp_path, capsys):
    from safetensors.torch import save_file

    net = torch.nn.Linear(4, 3)
    path = tmp_path / "old.safetensors"
    tensors = {f"model.lin.{k}": v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"flowsdf": json.dumps({"meta": {"epoch": 1}})})
    other = torch.nn.Linear(4, 3)
    assert checkpoint.load(path, {"lin": other}) == {"epoch": 1}
    assert torch.equal(other.weight, net.weight)
    assert "flowsdf: warning: checkpoint" in capsys.readouterr().err
    assert checkpoint.digest(path) == checkpoint.tensors_digest(tensors)


def test_the_digest_covers_names_shapes_dtypes_and_bytes():
    a = {"x": torch.zeros(2, 3)}
    variants = [{"y": torch.zeros(2, 3)}, {"x": torch.zeros(3, 2)}, {"x": torch.zeros(2, 3, dtype=torch.float64)},
                {"x": torch.tensor([[0.0, 0, 0], [0, 0, 1e-30]])}]
    assert checkpoint.tensors_digest(a) == checkpoint.tensors_digest({"x": torch.zeros(2, 3)})
    assert len({checkpoint.tensors_digest(v) for v in [a, *variants]}) == 5


# --- every command, every damage: one line, exit 2 ----------------------------------------------


def _config_garbage(run):
    (run / "config.json").write_text("{not json")


def _config_bad_value(run):
    cfg = json.loads((run / "config.json").read_text())
    cfg["render"]["n_samples"] = -5
    (run / "config.json").write_text(json.dumps(cfg))


def _config_wrong_type(run):
    cfg = json.loads((run / "config.json").read_text())
    cfg["render"]["n_samples"] = "abc"
    (run / "config.json").write_text(json.dumps(cfg))


def _config_not_an_object(run):
    (run / "config.json").write_text("[1, 2]")


def _checkpoints_zeroed(run):
    for stage in ("stage1", "phase1", "phase2"):
        zero_bytes(runs.checkpoint_path(run, stage))


def _checkpoints_truncated(run):
    for stage in ("stage1", "phase1", "phase2"):
        path = runs.checkpoint_path(run, stage)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _data_record_garbage(run):
    (run / "data.json").write_text("\x00\x01garbage")


DAMAGES = {
    "config garbage": (_config_garbage, "config"),
    "config bad value": (_config_bad_value, "render.n_samples must be an integer from 1 to 512, got -5"),
    "config wrong type": (_config_wrong_type, 'render.n_samples must be an integer from 1 to 512, got "abc"'),
    "config not an object": (_config_not_an_object, "config"),
    "checkpoints zeroed": (_checkpoints_zeroed, "damaged"),
    "checkpoints truncated": (_checkpoints_truncated, "damaged"),
    "data record garbage": (_data_record_garbage, "data.json"),
}

COMMANDS = {
    "train cnn": lambda run, data: ["train", "--stage", "cnn", "--out", run, "--resume", "--quiet"],
    "train flow": lambda run, data: ["train", "--stage", "flow", "--init", run, "--out", run, "--resume", "--quiet"],
    "check-grads": lambda run, data: ["check-grads", run, "--batch", "1"],
    "eval": lambda run, data: ["eval", run, "--quiet", "--mesh-resolution", "8", "--k", "1"],
    "reproduce": lambda run, data: ["reproduce", "--preset", "tiny", "--out", run, "--quiet"],
    "data": lambda run, data: ["data", "--preset", "tiny", "--out", run, "--quiet"],
}

# `reproduce` names its dataset itself (the preset's cache), so it never reads data.json.
CASES = [(c, d) for c in COMMANDS for d in DAMAGES if (c, d) != ("reproduce", "data record garbage")]


@pytest.mark.parametrize("command, damage", CASES)
def test_every_command_on_a_damaged_run_is_one_error_line(capsys, tmp_path, finished_run, tiny_data_dir, command, damage,
                                                           monkeypatch, tiny_cfg):
    monkeypatch.chdir(tmp_path)  # the preset's data cache (reproduce) goes into tmp_path
    shutil.copytree(tiny_data_dir, dataset.default_root(tiny_cfg.data))  # the preset's cache, for reproduce
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    corrupt, needle = DAMAGES[damage]
    corrupt(run)
    code, _, err = run_cli(capsys, *COMMANDS[command](run, tiny_data_dir))
    assert "Traceback" not in err
    assert_one_error_line(code, err, "" if command == "data" else needle)


# --- 3. outputs are checked before any work ------------------------------------------------------


def _forbid(monkeypatch, target: str):
    def spy(*args, **kwargs):
        raise AssertionError(f"{target} ran although the output cannot be written")

    monkeypatch.setattr(target, spy)


UNWRITABLE = "/proc/flowsdf_unwritable"  # exists for nobody, root included


@pytest.mark.parametrize("argv, expensive", [
    (["train", "--stage", "cnn", "--preset", "tiny", "--out", UNWRITABLE],
     ["flowsdf.train.stage1.load_data", "flowsdf.train.stage1.fit_silhouettes"]),
    (["train", "--stage", "flow", "--init", "RUN", "--preset", "tiny", "--out", UNWRITABLE],
     ["flowsdf.train.flow.run_data", "flowsdf.train.flow.phase1", "flowsdf.train.flow.fit_silhouettes"]),
    (["eval", "RUN", "--out", UNWRITABLE + "/x.json"], ["flowsdf.evaluate.evaluate_run"]),
    (["eval", "RUN", "--out", "/proc/x.json"], ["flowsdf.evaluate.evaluate_run"]),
    (["data", "--preset", "tiny", "--out", UNWRITABLE], ["flowsdf.data.dataset._render_split"]),
    (["reproduce", "--preset", "tiny", "--out", UNWRITABLE],
     ["flowsdf.data.dataset.generate", "flowsdf.reproduce.train_stage1", "flowsdf.reproduce.train_flow"]),
])
def test_unwritable_outputs_fail_before_any_work(capsys, monkeypatch, finished_run, argv, expensive):
    for target in expensive:
        _forbid(monkeypatch, target)
    code, _, err = run_cli(capsys, *[str(finished_run) if a == "RUN" else a for a in argv])
    assert_one_error_line(code, err, "cannot write")


def test_train_default_data_cache_unwritable_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir("/proc")  # the default data cache, data_cache/, cannot be made here
    _forbid(monkeypatch, "flowsdf.data.dataset._render_split")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", tmp_path / "r", "--quiet")
    assert_one_error_line(code, err, "cannot write the dataset")


# --- 5. missing history --------------------------------------------------------------------------


def test_eval_without_metrics_reports_what_is_missing_and_goes_on(capsys, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stage1" / "metrics.jsonl").unlink()
    (run / "phase2" / "metrics.jsonl").write_text('{"epoch": 1, "loss": 0.5, "seconds": 1.0}\n{"epoch": 2, "lo')
    code, _, err = run_cli(capsys, "eval", run, "--quiet", "--mesh-resolution", "8", "--k", "1")
    assert code == 0, err
    assert "stage1/metrics.jsonl is missing or empty" in err and "phase2/metrics.jsonl: 1 damaged line(s) left out" in err
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["models"]["cnn"]["train_loss_last_epoch"] is None
    assert result["models"]["cnn"]["training_seconds"] is None and result["models"]["flow"]["training_seconds"] is None
    assert result["models"]["flow"]["train_loss_last_epoch"] == 0.5
    assert "| n/a |" in (run / "eval" / "eval.md").read_text()


def test_resume_says_which_epochs_the_history_lacks(capsys, tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", tiny_data_dir,
                           "--until-epoch", "1", "--quiet")
    assert code == 0, err
    (run / "stage1" / "metrics.jsonl").unlink()
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--out", run, "--resume", "--quiet", "--data", tiny_data_dir)
    assert code == 0, err
    assert "metrics.jsonl lacks epoch(s) 1 of the 1 in the checkpoint" in err
    assert [r["epoch"] for r in runs.read_metrics(run, "stage1")] == [2]


def test_reproduce_without_history_writes_its_report_and_says_what_is_missing(capsys, tmp_path, finished_run,
                                                                             tiny_data_dir, monkeypatch, tiny_cfg):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_data_dir, dataset.default_root(tiny_cfg.data))  # the preset's cache, for reproduce
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stage1" / "metrics.jsonl").unlink()
    (run / "phase1" / "summary.json").write_text("{trunc")
    code, _, err = run_cli(capsys, "reproduce", "--preset", "tiny", "--out", run, "--quiet")
    assert code == 0, err
    assert "stage1/metrics.jsonl is missing or empty" in err and "phase1/summary.json is missing or damaged" in err
    report = (run / "report.md").read_text()
    assert "n/a: `phase1/summary.json` is missing or damaged." in report and "| n/a |" in report
