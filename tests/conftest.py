"""Shared fixtures: one tiny dataset per test session, single-threaded torch, CPU by default.

Single-threaded because the CI machine has 2 cores: two threads per test process contend badly
with anything else running, and these tests are tiny.

`--device auto` (every command's and training function's default) means the CPU in this suite,
on a GPU machine too, subprocesses included: the suite checks bit-exact properties (resume equals
an uninterrupted run, two runs are identical, two processes train like one), which hold on the
CPU; CUDA's atomic adds and cuDNN's algorithm choice change the last bits from run to run.
tests/test_device.py is what checks the device that FLOWSDF_TEST_DEVICE names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from flowsdf import config as config_mod
from flowsdf.data import dataset

os.environ["FLOWSDF_DEVICE"] = "cpu"


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


@pytest.fixture(scope="session")
def tiny_surface_run(tmp_path_factory, tiny_flow_run, tiny_data_dir) -> Path:
    """A copy of the tiny flow run whose decoded shapes have a surface (copy it before writing).

    Two tiny epochs do not teach the decoder a surface: its field stays above zero everywhere,
    so every mesh is empty. Here the flow decoder's output bias is lowered by the field's median
    over the inner ball for the first training picture's code, so about half of that ball is
    inside: meshes and silhouettes have something to show. For tests of what is done with a
    mesh (viewing, export), not of what the model learned.
    """
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from flowsdf import checkpoint, runs
    from flowsdf.data import dataset as data_mod
    from flowsdf.pipeline import FlowSDF

    run = tmp_path_factory.mktemp("runs") / "surface"
    shutil.copytree(tiny_flow_run, run)
    pipe = FlowSDF.from_run(run, "flow", "cpu")
    image = data_mod.load(tiny_data_dir).train.input.images[0, 0]  # (3, S, S)
    code = pipe(image, seed=0).codes[0, 0]  # (D,)
    points = torch.randn(4096, 3, generator=torch.Generator().manual_seed(0))
    points = 0.5 * points / points.norm(dim=1, keepdim=True) * torch.rand(4096, 1) ** (1 / 3)  # (P, 3) in the ball
    with torch.no_grad():
        shift = float(pipe.decoder.field(code[None])(points, 0).median())
    path = runs.checkpoint_path(run, "phase2")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    for key in [k for k in tensors if k.endswith("decoder.l5.bias")]:  # the model and, with EMA, its live copy
        tensors[key] = tensors[key] - shift
    header = checkpoint.seal(json.loads(metadata["flowsdf"]), tensors)  # a deliberate edit, not damage
    save_file(tensors, str(path), metadata={**metadata, "flowsdf": json.dumps(header)})
    return run


@pytest.fixture(scope="session")
def tiny_text_run(tmp_path_factory, tiny_stage1_run, tiny_data_dir) -> Path:
    """The tiny Stage-1 run with a tiny text flow (flowsdf.train.text), its Stage-1 decoder's output
    shifted so that generated codes have a surface (two tiny epochs leave the decoder positive
    everywhere; tiny_surface_run does the same for the flow). Copy it before writing into it."""
    import shutil

    from flowsdf import checkpoint, overrides, runs
    from flowsdf.pipeline import FlowSDF
    from flowsdf.train.text import train_text

    run = tmp_path_factory.mktemp("text") / "run"
    shutil.copytree(tiny_stage1_run, run)
    cfg = overrides.apply(config_mod.preset("tiny"), ["text_train.iterations=30", "text_train.batch_size=8",
                                                     "text.width=32", "text.depth=1"])
    train_text(cfg, run, run, tiny_data_dir, progress=False)
    code = FlowSDF.from_run(run, "text", "cpu").generate("a box").codes[0, 0]
    stage1 = FlowSDF.from_run(run, "cnn", "cpu")
    with torch.no_grad():
        p = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) - 0.5  # (P, 3) near the centre
        stage1.decoder.l5.bias -= stage1.decoder.field(code[None])(p, 0).median()
    path = runs.checkpoint_path(run, "stage1")
    checkpoint.save(path, {"encoder": stage1.encoder, "decoder": stage1.decoder}, meta=checkpoint.read_header(path)["meta"])
    return run
