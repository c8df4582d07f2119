"""Data-parallel training: two gloo processes under torchrun take the same optimiser steps as one
process with the same global batch (up to the order of float reductions)."""

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from flowsdf import checkpoint, runs
from flowsdf.build import build_flow, build_stage1
from flowsdf.flow import draw_objective_noise, flow_loss
from flowsdf.train import distributed
from flowsdf.train.distill import DistillObjective
from flowsdf.train.flow import train_flow
from flowsdf.train.stage1 import train_stage1

# Two processes sum their halves of the gradient where one process sums them all at once; over a
# few Adam steps these rounding differences stay far below this (weights are ~1e-2..1e-1).
ATOL = 1e-5


def torchrun(*argv: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "flowsdf", *argv, "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def load(run, stage, modules):
    checkpoint.load(runs.checkpoint_path(run, stage), modules)
    return [p for m in modules.values() for p in m.parameters()]


def assert_same_weights(a, b):
    assert len(a) == len(b)
    worst = max((x - y).abs().max().item() for x, y in zip(a, b))
    assert worst <= ATOL, worst


def test_single_process_share_is_the_whole_batch():
    assert not distributed.active() and distributed.world_size() == 1
    assert distributed.share(5) == slice(0, 5) and distributed.loss_scale(5, 5) == 1.0


def test_distill_objective_shares_add_up_to_the_whole_batch(tiny_cfg):
    """Two shares of a batch (as two processes take them) draw the batch's noise and add up to the
    loss of the whole batch: what DDP's gradient average then turns into one process's step."""
    conditioner, velocity = build_flow(tiny_cfg)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero output layers, so the comparison is not trivially 0 == 0
        for p in velocity.parameters():
            p.normal_(0, 0.05)
    images, z1 = torch.rand(4, 3, 16, 16), 0.1 * torch.randn(4, 128)
    noise = draw_objective_noise(z1, 0.1, torch.Generator().manual_seed(3))
    ref, _ = flow_loss(velocity, z1, conditioner(images), noise, tiny_cfg.flow)
    objective = DistillObjective(conditioner, velocity, tiny_cfg.flow)
    whole, _ = objective(images, z1, 0.1, torch.Generator().manual_seed(3), slice(0, 4))
    halves = [objective(images, z1, 0.1, torch.Generator().manual_seed(3), part)[0]
              for part in (slice(0, 2), slice(2, 4))]
    assert ref.item() > 0
    assert torch.equal(whole, ref)
    torch.testing.assert_close(halves[0] + halves[1], whole)


def test_two_processes_train_stage1_like_one_and_resume(tmp_path, tiny_cfg, tiny_data_dir):
    # 4 shapes in batches of 3: the first step splits 1 + 2, the second 0 + 1 (an empty share).
    stage1 = dataclasses.replace(tiny_cfg.stage1, batch_size=3, epochs=2)
    cfg = dataclasses.replace(tiny_cfg, stage1=stage1)
    train_stage1(cfg, tmp_path / "one", tiny_data_dir, progress=False)

    ddp = tmp_path / "two"
    args = ("train", "--stage", "cnn", "--preset", "tiny", "--data", str(tiny_data_dir), "--out", str(ddp))
    torchrun(*args, "--batch-size", "3", "--epochs", "2", "--until-epoch", "1")
    assert runs.checkpoint_epoch(ddp, "stage1") == 1
    torchrun(*args, "--resume")

    assert runs.read_config(ddp) == runs.read_config(tmp_path / "one")
    one = load(tmp_path / "one", "stage1", dict(zip(("encoder", "decoder"), build_stage1(cfg))))
    two = load(ddp, "stage1", dict(zip(("encoder", "decoder"), build_stage1(cfg))))
    assert_same_weights(one, two)
    init = [p for m in build_stage1(cfg) for p in m.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(one, init)) > 100 * ATOL  # training moved them
    losses = [[r["loss"] for r in runs.read_metrics(run, "stage1")] for run in (tmp_path / "one", ddp)]
    assert len(losses[1]) == 2  # rank 0 alone wrote the log, once per epoch
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert (ddp / "stage1" / "summary.json").exists()


def test_two_processes_train_the_flow_like_one(tmp_path, tiny_cfg, tiny_stage1_run, tiny_data_dir):
    # Phase 1: batches of 4 split 2 + 2; Phase 2: batches of 3 (1 + 2, then 0 + 1).
    cfg = dataclasses.replace(tiny_cfg, phase2=dataclasses.replace(tiny_cfg.phase2, batch_size=3))
    train_flow(cfg, tmp_path / "one", tiny_stage1_run, tiny_data_dir, progress=False)
    torchrun("train", "--stage", "flow", "--preset", "tiny", "--init", str(tiny_stage1_run), "--data",
             str(tiny_data_dir), "--out", str(tmp_path / "two"), "--batch-size", "3")

    def weights(run, stage):
        conditioner, velocity = build_flow(cfg)
        modules = {"conditioner": conditioner, "velocity": velocity}
        if stage == "phase2":
            modules["decoder"] = build_stage1(cfg)[1]
        return load(run, stage, modules)

    for stage in ("phase1", "phase2"):
        assert_same_weights(weights(tmp_path / "one", stage), weights(tmp_path / "two", stage))
    losses = [[r["loss"] for r in runs.read_metrics(run, "phase2")] for run in (tmp_path / "one", tmp_path / "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert (tmp_path / "two" / "phase2" / "summary.json").exists()
