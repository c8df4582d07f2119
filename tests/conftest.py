"""Shared fixtures: one tiny dataset per test session, single-threaded torch.

Single-threaded because the CI machine has 2 cores: two threads per test process contend badly
with anything else running, and these tests are tiny.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowsdf import config as config_mod
from flowsdf.data import dataset


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_cfg() -> config_mod.Config:
    return config_mod.preset("tiny")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_cfg) -> Path:
    root = tmp_path_factory.mktemp("data") / "tiny"
    dataset.generate(tiny_cfg.data, root)
    return root


@pytest.fixture(scope="session")
def tiny_stage1_run(tmp_path_factory, tiny_cfg, tiny_data_dir) -> Path:
    """A finished tiny Stage-1 run (copy it before writing into it)."""
    from flowsdf.train.stage1 import train_stage1

    run = tmp_path_factory.mktemp("runs") / "stage1"
    train_stage1(tiny_cfg, run, tiny_data_dir, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_flow_run(tmp_path_factory, tiny_cfg, tiny_stage1_run, tiny_data_dir) -> Path:
    """A finished tiny run with both models: Stage 2 trained into a copy of the Stage-1 run
    (copy it before writing into it)."""
    import shutil

    from flowsdf.train.flow import train_flow

    run = tmp_path_factory.mktemp("runs") / "flow"
    shutil.copytree(tiny_stage1_run, run)
    train_flow(tiny_cfg, run, run, tiny_data_dir, progress=False)
    return run
