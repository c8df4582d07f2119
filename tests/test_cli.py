"""The command line: help everywhere, and one clear line + non-zero exit for bad input."""

import shutil
import subprocess
import sys

import pytest

from flowsdf import runs
from flowsdf.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    assert code != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowsdf: error:") and needle in lines[0], err


def test_console_script_help():
    for args in ([], ["data"], ["train"]):
        res = subprocess.run([sys.executable, "-m", "flowsdf", *args, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage: flowsdf" in res.stdout


def test_unknown_preset(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "huge", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown preset")
    assert not (tmp_path / "r").exists()


def test_missing_and_corrupt_dataset(capsys, tmp_path, tiny_data_dir):
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", str(tmp_path / "r"),
                           "--data", str(tmp_path / "none"))
    assert_one_line_error(code, err, "no dataset")
    assert not (tmp_path / "r").exists()
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data_dir, bad)
    (bad / "manifest.json").write_text("{ not json")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", str(tmp_path / "r"),
                           "--data", str(bad))
    assert_one_line_error(code, err, "damaged")


def test_unwritable_output(capsys, tmp_path, tiny_data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--out", str(blocker / "run"),
                           "--data", str(tiny_data_dir))
    assert_one_line_error(code, err, "cannot write")
    assert blocker.read_text() == "x"


def test_corrupt_checkpoint_on_resume(capsys, tmp_path, tiny_data_dir):
    out = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", "--stage", "cnn", "--preset", "tiny", "--epochs", "1", "--quiet",
                         "--out", str(out), "--data", str(tiny_data_dir))
    assert code == 0
    ckpt = runs.checkpoint_path(out, "stage1")
    ckpt.write_bytes(b"garbage" * 10)
    code, _, err = run_cli(capsys, "train", "--stage", "cnn", "--resume", "--quiet", "--out", str(out),
                           "--data", str(tiny_data_dir))
    assert_one_line_error(code, err, "damaged")
    assert ckpt.read_bytes() == b"garbage" * 10  # nothing overwritten


def test_data_command_writes_and_then_reuses_the_cache(capsys, tmp_path):
    code, out, err = run_cli(capsys, "data", "--preset", "tiny", "--out", str(tmp_path / "d"))
    assert code == 0 and "wrote" in out
    assert "rendering train" in err  # the progress bar
    code, out, _ = run_cli(capsys, "data", "--preset", "tiny", "--out", str(tmp_path / "d"))
    assert code == 0 and "up to date" in out
    code, out, err = run_cli(capsys, "data", "--preset", "tiny", "--out", str(tmp_path / "d"), "--force", "--quiet")
    assert code == 0 and "wrote" in out and err == ""


def test_data_command_takes_overrides_and_refuses_bad_workers(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "data", "--preset", "tiny", "--out", str(tmp_path / "d"), "--quiet",
                           "--set", "data.n_train_shapes=3")
    assert code == 0 and "3 training shapes" in out
    code, _, err = run_cli(capsys, "data", "--preset", "tiny", "--out", str(tmp_path / "e"), "--workers", "0")
    assert code == 2 and "--workers" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["train", "--stage", "cnn"], ["nope"]])
def test_argparse_errors_exit_nonzero(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code != 0
