"""A checkpoint's digest covers all it holds: its tensors and its header (epoch, sigma, stage,
optimiser settings). An edited header is refused, an older checkpoint (tensor-only digest) loads
with one warning, and a checkpoint that does not fit its model names the tensor and both shapes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from flowsdf import checkpoint, runs
from flowsdf.cli import main
from flowsdf.errors import FlowSDFError
from run_helpers import rewrite




def _saved(tmp_path: Path) -> Path:
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"lin": net}, opt, {"epoch": 3, "sigma": 0.25, "stage": "phase2"})
    return path


@pytest.mark.parametrize("edit", [
    lambda h: h["meta"].__setitem__("sigma", 0.5),
    lambda h: h["meta"].__setitem__("epoch", 4),
    lambda h: h["meta"].__setitem__("stage", "stage1"),
    lambda h: h["optimizer_groups"][0].__setitem__("lr", 1.0),
    lambda h: h.__setitem__("extra", 1),
], ids=["sigma", "epoch", "stage", "optimiser lr", "a new key"])
def test_an_edited_header_is_refused(tmp_path, edit):
    path = _saved(tmp_path)
    rewrite(path, edit_header=edit, reseal=False)
    with pytest.raises(FlowSDFError, match="damaged or was edited: its metadata"):
        checkpoint.load(path, {"lin": torch.nn.Linear(4, 3)})
    with pytest.raises(FlowSDFError, match="damaged or was edited"):  # every reader of the header, too
        checkpoint.read_header(path)


def test_an_edited_sigma_is_one_line_for_a_command(capsys, tmp_path, tiny_flow_run, tiny_data_dir):
    run = tmp_path / "run"
    shutil.copytree(tiny_flow_run, run)
    rewrite(runs.checkpoint_path(run, "phase2"), edit_header=lambda h: h["meta"].__setitem__("sigma", 2.0), reseal=False)
    code = main(["eval", str(run), "--quiet", "--mesh-resolution", "8", "--k", "1", "--data", str(tiny_data_dir)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "phase2/last.safetensors is damaged or was edited" in lines[0], lines


def test_a_checkpoint_whose_digest_covered_only_its_tensors_loads_with_a_warning(tmp_path, capsys):
    path = _saved(tmp_path)

    def older(header):  # what flowsdf wrote before the header digest: the tensors' digest only
        del header["header_sha256"]

    rewrite(path, edit_header=older, reseal=False)
    net = torch.nn.Linear(4, 3)
    assert checkpoint.load(path, {"lin": net})["sigma"] == 0.25
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("flowsdf: warning: checkpoint") and "before its metadata had a digest" in err
    # ... and its tensors are still verified
    rewrite(path, edit_tensors=lambda t: t.__setitem__("model.lin.bias", t["model.lin.bias"] + 1), reseal=False)
    with pytest.raises(FlowSDFError, match="its tensors do not match the digest"):
        checkpoint.load(path, {"lin": net})


@pytest.mark.parametrize("model, needle", [
    (torch.nn.Linear(5, 3), "model.lin.weight is (3, 4) in the checkpoint but (3, 5) in the model"),
    (torch.nn.Linear(4, 3, bias=False), "the checkpoint holds model.lin.bias, which the model lacks"),
    (torch.nn.Sequential(torch.nn.Linear(4, 3)), "the checkpoint lacks model.lin.0.weight (and 1 more)"),
], ids=["shape", "extra tensor", "missing tensor"])
def test_a_checkpoint_that_does_not_fit_names_the_tensor(tmp_path, model, needle):
    path = _saved(tmp_path)
    with pytest.raises(FlowSDFError) as e:
        checkpoint.load(path, {"lin": model})
    assert "\n" not in str(e.value) and f"does not fit the 'lin' model: {needle}" in str(e.value)
