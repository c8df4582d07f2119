"""CPU training is repeatable at the default thread count: two uninterrupted runs of the same
command give the same checkpoints bit for bit, and so does a run stopped and resumed.

Stage 1 runs the command as subprocesses so that torch uses its default number of threads (the
test session itself is single-threaded, see conftest.py; OMP_NUM_THREADS is removed for the same
reason); Stage 2 runs in process at 2 threads to keep the suite short. Checkpoints are compared through their stored sha256 of every tensor (weights, weight
averages and optimiser state).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from flowsdf import checkpoint, runs
from flowsdf.train.flow import train_flow

ROOT = Path(__file__).resolve().parents[1]


def flowsdf(*argv) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-m", "flowsdf", *map(str, argv)], env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def digests(run: Path) -> dict[str, str]:
    return {s: checkpoint.read_header(runs.checkpoint_path(run, s))["tensors_sha256"] for s in ("stage1", "phase2")
            if runs.checkpoint_path(run, s).exists()}


def test_stage1_is_bit_identical_at_the_default_thread_count(tmp_path, tiny_data_dir):
    train = ["train", "--stage", "cnn", "--preset", "tiny", "--data", tiny_data_dir, "--quiet", "--set", "stage1.figure_every=100"]
    for name in ("a", "b"):
        flowsdf(*train, "--out", tmp_path / name)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    flowsdf(*train, "--out", tmp_path / "c", "--until-epoch", "1")
    flowsdf(*train, "--out", tmp_path / "c", "--resume")
    assert digests(tmp_path / "c") == digests(tmp_path / "a")
    assert "stage1" in digests(tmp_path / "a")


def test_stage2_is_bit_identical_at_two_threads(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    """In process (subprocesses cost seconds each), at 2 threads: the default on a 2-core machine.
    Runs stop after epoch 2 of 3, which skips the final evaluation and figures (not training)."""
    cfg = dataclasses.replace(tiny_cfg, phase1=dataclasses.replace(tiny_cfg.phase1, iterations=10, ablation=False),
                              phase2=dataclasses.replace(tiny_cfg.phase2, epochs=3, figure_every=100))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("a", "b"):
            assert train_flow(cfg, tmp_path / name, tiny_stage1_run, tiny_data_dir, progress=False, until_epoch=2) is None
        train_flow(cfg, tmp_path / "c", tiny_stage1_run, tiny_data_dir, progress=False, until_epoch=1)
        train_flow(cfg, tmp_path / "c", tiny_stage1_run, tiny_data_dir, resume=True, progress=False, until_epoch=2)
    finally:
        torch.set_num_threads(old)
    assert runs.checkpoint_epoch(tmp_path / "c", "phase2") == 2
    assert digests(tmp_path / "a") == digests(tmp_path / "b") == digests(tmp_path / "c")
    assert "phase2" in digests(tmp_path / "a")
