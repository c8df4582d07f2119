"""`flowsdf view` refuses what it cannot serve with one line, before it starts serving."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flowsdf.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("empty", "not a flowsdf run"),
    ("stage1", "no finished 'phase2'"),
])
def test_runs_it_cannot_load_are_one_error_line(case, message, tmp_path, tiny_stage1_run, capsys):
    run = {"missing": tmp_path / "nope", "empty": tmp_path, "stage1": tiny_stage1_run}[case]
    assert main(["view", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsdf: error: ") and message in err[0]


@pytest.mark.parametrize("flag, value", [("--port", "70000"), ("--max-upload-mb", "0"), ("--max-samples", "0"),
                                         ("--max-resolution", "8")])
def test_bad_limits_are_one_error_line(flag, value, tiny_flow_run, capsys):
    assert main(["view", str(tiny_flow_run), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsdf: error: ") and flag in err[0]


def test_damaged_run_through_the_command_prints_one_line_and_serves_nothing(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "flowsdf", "view", str(tmp_path), "--port", "1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                                   "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowsdf: error: "), proc.stderr
    assert "Running on" not in proc.stdout + proc.stderr


def test_a_port_in_use_is_one_error_line(tiny_flow_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["view", str(tiny_flow_run), "--device", "cpu", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"flowsdf: error: cannot serve on 127.0.0.1:{port}: the port is in use; choose another --port"]
