"""Outputs are checked before the work, a full disk is one line and a consistent run, and what a
kill leaves half-written is removed by the next run.

The full disk is a real one: a small tmpfs mounted for the test (root can; elsewhere these tests
skip, saying why). The kill is a real SIGKILL, at the rename that would publish a file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flowsdf import checkpoint, runs
from flowsdf.build import build_stage1
from flowsdf.errors import FlowSDFError
from run_helpers import assert_one_error_line, run_cli

REPO = Path(__file__).resolve().parent.parent






def temporaries(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if checkpoint.TEMPORARY.fullmatch(p.name) or ".tmp-" in p.name]


def assert_consistent(run: Path, stage: str) -> None:
    """Nothing of a stage is ahead of its checkpoint (which loads), and no temporary is left."""
    cfg = runs.read_config(run)
    encoder, decoder = build_stage1(cfg)
    at = checkpoint.load(runs.checkpoint_path(run, stage), {"encoder": encoder, "decoder": decoder})["epoch"]
    assert all(r["epoch"] <= at for r in runs.read_metrics(run, stage))
    assert all(int(f.stem.split("_")[1]) <= at for f in (run / stage / "figures").glob("epoch_*.png"))
    assert not (run / stage / "summary.json").exists() or at == getattr(cfg, stage).epochs
    assert temporaries(run) == []


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_bytes) -> a folder on a fresh tmpfs of that size, unmounted after the test."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k", "tmpfs", str(folder)],
                               capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.skip("no mount command here: a full disk is tested on a tmpfs that root mounts")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}): a full disk is tested as root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True, timeout=30)


def fill(folder: Path, leave: int) -> None:
    """Take all free space of `folder`'s file system but `leave` bytes (another program filling it)."""
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free - leave, 4096))


def _forbid(monkeypatch, target: str):
    def spy(*args, **kwargs):
        raise AssertionError(f"{target} ran although the output does not fit")

    monkeypatch.setattr(target, spy)


# --- 1. too little room: refused before any work ------------------------------------------------------


def test_too_little_room_is_refused_before_any_work(capsys, monkeypatch, small_disk, tiny_stage1_run, tiny_data_dir):
    size = runs.checkpoint_path(tiny_stage1_run, "stage1").stat().st_size  # ~9 MB with Adam's state
    disk = small_disk(size * 3 // 2)  # room for one checkpoint, not for the next beside it
    _forbid(monkeypatch, "flowsdf.train.loop.epoch_generator")  # called as each epoch starts
    _forbid(monkeypatch, "flowsdf.data.dataset._render_split")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", disk / "run",
                           "--data", tiny_data_dir, "--quiet")
    assert_one_error_line(code, err, f"not enough free space in {disk / 'run' / 'stage1'} for 2 checkpoint(s)",
                          "it needs about", "MiB free")
    assert not runs.checkpoint_path(disk / "run", "stage1").exists()
    # A dataset: its uncompressed size (an upper bound, ~90 KB for tiny) does not fit in 64 KiB.
    code, _, err = run_cli(capsys, "data", "--preset", "tiny", "--out", small_disk(64 * 1024) / "d", "--quiet")
    assert_one_error_line(code, err, "not enough free space", "for the dataset d")


@pytest.mark.parametrize("argv", [
    ["data", "--preset", "tiny", "--out", "FILE", "--quiet"],
    ["train", "--stage", "cnn", "--preset", "tiny", "--out", "FILE", "--quiet"],
    ["reproduce", "--preset", "tiny", "--out", "FILE", "--quiet"],
    ["eval", "RUN", "--out", "FILE/eval.json", "--quiet"],
    ["bench", "--quick", "--out", "FILE/bench.json"],
], ids=lambda argv: argv[0])
def test_an_output_in_the_place_of_a_file_is_one_line_and_the_file_is_kept(capsys, monkeypatch, tmp_path, tiny_flow_run,
                                                                          argv):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for target in ("flowsdf.data.dataset._render_split", "flowsdf.evaluate.evaluate_run", "flowsdf.speed.bench.run_bench",
                   "flowsdf.train.loop.epoch_generator"):
        _forbid(monkeypatch, target)
    code, _, err = run_cli(capsys, *[a.replace("FILE", str(blocker)).replace("RUN", str(tiny_flow_run)) for a in argv])
    assert "Traceback" not in err
    assert_one_error_line(code, err, "is not a folder")
    assert blocker.read_text() == "mine"


# --- 2. a disk that fills up mid-run -------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before epoch 2's checkpoint", "after epoch 2's checkpoint"])
def test_a_disk_that_fills_mid_run_is_one_line_and_a_consistent_run(capsys, monkeypatch, small_disk, tiny_stage1_run,
                                                                     tiny_data_dir, when):
    size = runs.checkpoint_path(tiny_stage1_run, "stage1").stat().st_size
    disk = small_disk(2 * size + (2 << 20))  # room for the check (two checkpoints) and the small files
    run = disk / "run"
    if when.startswith("before"):  # filled while epoch 2 trains: its checkpoint does not fit
        from flowsdf.train import loop

        real = loop.epoch_generator

        def epoch_generator(seed, epoch):
            if epoch == 1:
                fill(disk, size // 2)
            return real(seed, epoch)

        monkeypatch.setattr(loop, "epoch_generator", epoch_generator)
        needles = ("cannot write checkpoint", "No space left on device", "the previous one, if any, is kept")
    else:  # filled right after epoch 2's checkpoint: its metrics or figure do not fit
        real = checkpoint.save

        def save(path, modules, optimizer=None, meta=None):
            real(path, modules, optimizer, meta)
            if meta and meta.get("epoch") == 2:
                fill(disk, 0)

        monkeypatch.setattr(checkpoint, "save", save)
        needles = ("cannot write", "No space left on device")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", tiny_data_dir,
                           "--epochs", "3", "--quiet")
    assert "Traceback" not in err
    assert_one_error_line(code, err, *needles)
    assert runs.checkpoint_epoch(run, "stage1") == (1 if when.startswith("before") else 2)
    assert_consistent(run, "stage1")
    # Once there is room again, the run continues from its checkpoint and finishes.
    monkeypatch.undo()
    (disk / "filler").unlink()
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--out", run, "--data", tiny_data_dir, "--resume", "--quiet")
    assert code == 0, err
    assert [r["epoch"] for r in runs.read_metrics(run, "stage1")][-1] == 3 and (run / "stage1" / "summary.json").exists()


# --- 3. a kill mid-write leaves temporaries; the next run removes them ----------------------------------

KILLED_AT_RENAME = """
import os, signal, sys
target, argv = sys.argv[1], sys.argv[2:]
real = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(target):  # the file is complete, not yet published: die here
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
from flowsdf.cli import main
sys.exit(main(argv))
"""


def killed_at(target: str, argv: list) -> None:
    env = {**os.environ, "FLOWSDF_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", KILLED_AT_RENAME, target, *map(str, argv)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr


def _checkpoint(tmp_path, data):
    run = tmp_path / "run"
    argv = ["train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", data, "--quiet", "--until-epoch", "1"]
    return "last.safetensors", argv, argv, run  # killed before its first checkpoint: the rerun starts again


def _figure(tmp_path, data):
    run = tmp_path / "run"
    argv = ["train", "--stage", "cnn", "--preset", "tiny", "--out", run, "--data", data, "--quiet", "--until-epoch", "1"]
    return "epoch_0001.png", argv, argv + ["--resume"], run  # epoch 1's checkpoint is there: the rerun resumes


def _dataset(tmp_path, data):
    argv = ["data", "--preset", "tiny", "--out", tmp_path / "cache" / "tinydata", "--quiet"]
    return "tinydata", argv, argv, tmp_path / "cache"


@pytest.mark.parametrize("case", [_checkpoint, _figure, _dataset], ids=["checkpoint", "figure", "dataset folder"])
def test_a_kill_mid_write_leaves_temporaries_that_the_next_run_removes(capsys, tmp_path, tiny_data_dir, case):
    target, argv, rerun, folder = case(tmp_path, tiny_data_dir)
    killed_at(target, argv)
    left = temporaries(folder)
    assert left, "the kill left nothing to clean"
    code, _, err = run_cli(capsys, *rerun)
    assert code == 0, err
    assert temporaries(folder) == []


@pytest.mark.parametrize("command", ["eval", "reproduce"])
def test_eval_and_reproduce_remove_the_temporaries_of_their_outputs(capsys, monkeypatch, tmp_path, tiny_flow_run,
                                                                    command):
    run = tmp_path / "run"
    shutil.copytree(tiny_flow_run, run)
    (run / "eval").mkdir(exist_ok=True)
    (run / "report_figures").mkdir(exist_ok=True)
    # What a kill during these commands' writes leaves (names as checkpoint.temporary makes them).
    left = [checkpoint.temporary(run / "eval" / "eval.json"), checkpoint.temporary(run / "eval" / "eval.md")]
    if command == "reproduce":
        left += [checkpoint.temporary(run / "report.md"), checkpoint.temporary(run / "eval" / "stage3.json"),
                 checkpoint.temporary(run / "report_figures" / "meshes", suffix=".png")]
    mine = run / "eval" / ".notes.txt"
    mine.write_text("not ours")

    def stop(*args, **kwargs):
        raise FlowSDFError("stopped by the test after the clean-up")

    monkeypatch.setattr("flowsdf.evaluate.evaluate_run", stop)
    monkeypatch.setattr("flowsdf.reproduce.dataset.ensure", stop)
    argv = ["eval", run, "--quiet"] if command == "eval" else ["reproduce", "--preset", "tiny", "--out", run, "--quiet"]
    code, _, err = run_cli(capsys, *argv)
    assert_one_error_line(code, err, "stopped by the test")
    assert not any(Path(p).exists() for p in left) and mine.exists()


def test_every_writer_names_its_temporaries_so_that_they_are_cleaned(tmp_path):
    """checkpoint.temporary is the one namer; its names are the cleaner's, whatever the target."""
    for name, suffix in (("last.safetensors", ""), ("metrics.jsonl", ""), ("epoch_0001", ".png"), ("config.json", ""),
                         ("noscale.safetensors", ""), ("start.json", "")):
        tmp = Path(checkpoint.temporary(tmp_path / name, suffix))
        assert checkpoint.TEMPORARY.fullmatch(tmp.name), tmp.name
    removed = runs.clean_temporaries(tmp_path, ())
    assert len(removed) == 6 and list(tmp_path.iterdir()) == []
    with pytest.raises(FlowSDFError, match="cannot write"):
        checkpoint.temporary(Path("/proc/flowsdf_unwritable/x.json"))

