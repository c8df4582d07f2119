"""`flowsdf view` refuses what it cannot serve with one line, before it starts serving."""

import os
import signal
import socket
import subprocess
import sys
import time
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
                                         ("--max-resolution", "8"), ("--guidance", "9"), ("--temperature", "0"),
                                         ("--consistency", "1.5")])
def test_bad_limits_are_one_error_line(flag, value, tiny_flow_run, capsys):
    assert main(["view", str(tiny_flow_run), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsdf: error: ") and flag in err[0]


def test_consistency_on_a_world_frame_run_is_one_error_line(tiny_flow_run, capsys):
    assert main(["view", str(tiny_flow_run), "--device", "cpu", "--consistency", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsdf: error: consistency needs a view-frame run")


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


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.0.10"])
def test_a_host_other_machines_can_reach_needs_allow_remote(host, tiny_flow_run, capsys):
    assert main(["view", str(tiny_flow_run), "--host", host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"flowsdf: error: --host {host} lets other machines reach the viewer")
    assert "--allow-remote" in err[0]


def test_allow_remote_serves_with_a_warning(tiny_flow_run, capsys):
    with socket.socket() as busy:  # the port is taken, so the command stops right after the warning
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["view", str(tiny_flow_run), "--device", "cpu", "--host", "0.0.0.0", "--allow-remote",
                     "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("flowsdf: warning: serving on 0.0.0.0: anyone who can reach this address")
    assert err[-1] == f"flowsdf: error: cannot serve on 0.0.0.0:{port}: the port is in use; choose another --port"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_stopping_the_server_removes_its_uploads(stop, tiny_flow_run, tmp_path):
    """Uploads and every file the server writes live in one private folder, removed on SIGTERM as
    on Ctrl-C; the command then exits 0."""
    import httpx

    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(temp),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "flowsdf", "view", str(tiny_flow_run), "--device", "cpu",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url, timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the viewer did not serve within 180 s"
            time.sleep(0.5)
        reply = httpx.post(url + "gradio_api/upload", files={"files": ("mine.png", b"\x89PNG not really", "image/png")},
                           timeout=10, trust_env=False)
        assert reply.status_code == 200, reply.text
        (work,) = temp.glob("flowsdf-view-*")  # the server's private folder ...
        assert [p.name for p in work.rglob("mine.png")] == ["mine.png"]  # ... holds the upload
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert list(temp.iterdir()) == []  # nothing left behind
    assert "its temporary files are removed" in err and "Traceback" not in err


@pytest.mark.parametrize("sig, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, "Stopped")])
def test_a_signal_uvicorn_caught_ends_serving_however_it_resurfaces(monkeypatch, sig, raised):
    """uvicorn takes the signal, shuts down and raises it again; whether that second signal comes
    out of its run() depends on asyncio's timing. Serving ends the same way either way."""
    import gradio as gr
    import uvicorn

    from flowsdf.viewer import app

    def run(self, sockets=None):
        self.handle_exit(sig, None)  # what uvicorn's signal capture calls
        # ... and the re-raised signal is lost on the way out

    monkeypatch.setattr(uvicorn.Server, "run", run)
    expected = app.Stopped if raised == "Stopped" else raised
    with pytest.raises(expected) as caught:
        app.serve(gr.Blocks(), 1 << 20, 10, "127.0.0.1", 0)
    if expected is app.Stopped:
        assert str(caught.value) == "SIGTERM"
